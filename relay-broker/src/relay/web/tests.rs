use super::*;

fn view(host_mode: bool, scheme: &'static str) -> View {
    View {
        scheme,
        host: "relay.example.com".into(),
        prefix: Some(if host_mode {
            String::new()
        } else {
            "/site/ui".into()
        }),
        host_mode,
    }
}

#[test]
fn the_session_cookie_and_forwarded_headers_never_reach_the_listener() {
    let sent = Headers(vec![
        ("Cookie".into(), "app=1; relay-session=v1.x".into()),
        ("Cookie".into(), "__Host-relay-session=v1.y".into()),
        ("X-Forwarded-Host".into(), "spoofed".into()),
        ("Accept".into(), "*/*".into()),
    ]);
    let out = for_listener(sent, &view(false, "https"));
    assert_eq!(
        out.0,
        [
            ("Cookie".to_owned(), "app=1".to_owned()),
            ("Accept".to_owned(), "*/*".to_owned()),
            (
                "X-Forwarded-Host".to_owned(),
                "relay.example.com".to_owned()
            ),
            ("X-Forwarded-Proto".to_owned(), "https".to_owned()),
            ("X-Forwarded-Prefix".to_owned(), "/site/ui".to_owned()),
        ]
    );
    let host = view(true, "http").forwarded();
    assert_eq!(host[2].1, "/");
}

#[test]
fn only_same_origin_fetches_may_use_the_session() {
    let v = view(true, "https");
    let with = |pairs: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (k, val) in pairs {
            h.insert(*k, HeaderValue::from_static(val));
        }
        v.same_origin_fetch(&h)
    };
    assert!(with(&[]));
    assert!(with(&[
        ("sec-fetch-site", "same-origin"),
        ("origin", "https://relay.example.com")
    ]));
    assert!(with(&[("sec-fetch-site", "none")]));
    assert!(!with(&[("sec-fetch-site", "same-site")]));
    assert!(!with(&[("sec-fetch-site", "cross-site")]));
    assert!(!with(&[("origin", "https://other.relay.example.com")]));
    assert_eq!(v.cookie_name(), HOST_SESSION_COOKIE);
    assert_eq!(view(true, "http").cookie_name(), SESSION_COOKIE);
}
