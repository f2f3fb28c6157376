use super::*;

fn proxy(base: &str) -> HttpProxy {
    HttpProxy::new("site/ui", base, None).unwrap()
}

#[test]
fn maps_paths_under_the_base() {
    let p = proxy("http://127.0.0.1:8080/app/");
    assert_eq!(
        p.backend_target("/site/ui/login?next=%2F"),
        "/app/login?next=%2F"
    );
    assert_eq!(p.backend_target("/site/ui"), "/app/");
    let root = proxy("http://127.0.0.1:8080");
    assert_eq!(root.backend_target("/site/ui/"), "/");
    assert_eq!(
        root.backend_target("/site/uix"),
        "/site/uix",
        "another name is not stripped"
    );
}

#[test]
fn rewrites_redirects_and_cookies_into_the_relay() {
    let p = proxy("http://127.0.0.1:8080/app");
    for (from, to) in [
        (
            "http://127.0.0.1:8080/app/home?x=1",
            Some("/site/ui/home?x=1"),
        ),
        ("/app/home", Some("/site/ui/home")),
        ("/apple", Some("/site/ui/apple")),
        ("/other", Some("/site/ui/other")),
        ("http://127.0.0.1:8080", Some("/site/ui/")),
        ("https://elsewhere.example/", None),
        ("//evil.example/x", None),
        ("relative/path", None),
    ] {
        assert_eq!(
            p.rewrite_location(from, "/site/ui").as_deref(),
            to,
            "{from}"
        );
    }
    assert_eq!(
        p.rewrite_cookie("sid=1; Path=/app; HttpOnly", "/site/ui"),
        "sid=1; Path=/site/ui; HttpOnly"
    );
    assert_eq!(
        proxy("http://h:1").rewrite_cookie("a=b; path=/", "/site/ui"),
        "a=b; Path=/site/ui"
    );
}

#[test]
fn in_host_mode_paths_stay_at_the_root() {
    let p = proxy("http://127.0.0.1:8080/app");
    assert_eq!(
        p.rewrite_location("/app/home", "").as_deref(),
        Some("/home")
    );
    assert_eq!(p.rewrite_location("/app", "").as_deref(), Some("/"));
    assert_eq!(p.rewrite_cookie("a=b; Path=/app", ""), "a=b; Path=/");
    assert_eq!(p.rewrite_cookie("a=b; Path=/app/x", ""), "a=b; Path=/x");
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-prefix", HeaderValue::from_static("/"));
    assert_eq!(p.prefix(&h), "");
    h.insert("x-forwarded-prefix", HeaderValue::from_static("/site/ui/"));
    assert_eq!(p.prefix(&h), "/site/ui");
    assert_eq!(p.prefix(&HeaderMap::new()), "/site/ui");
}

#[test]
fn forwarded_headers_replace_host_and_drop_hop_by_hop() {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("relay.example.com"));
    h.insert(
        header::CONNECTION,
        HeaderValue::from_static("keep-alive, x-private"),
    );
    h.insert("x-private", HeaderValue::from_static("1"));
    h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    let remote = "192.0.2.7:5000".parse().ok();
    forwarded_headers(&mut h, "/site/ui", "127.0.0.1:8080", remote);
    assert_eq!(h[header::HOST], "127.0.0.1:8080");
    assert_eq!(h["x-forwarded-host"], "relay.example.com");
    assert_eq!(h["x-forwarded-prefix"], "/site/ui");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
    assert!(h.get("x-private").is_none() && h.get(header::CONNECTION).is_none());
}
