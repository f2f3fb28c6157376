use super::*;

const NOW: u64 = 4_102_444_000;

/// Made by the real hyco-ws 1.0.5 `createRelayToken('ws://127.0.0.1:9443/$hc/hyco?sb-hc-action=listen',
/// 'RootManageSharedAccessKey', 's3cr3t/key=+', …)`: the port survives in `sr`.
const NODE_TOKEN: &str = "SharedAccessSignature sr=http%3A%2F%2F127.0.0.1%3A9443%2Fhyco&sig=6GBrIj8mR6DY53Lu4x63q77gaCw%2BI2ZtLRVbedtrCfk%3D&se=4102444800&skn=RootManageSharedAccessKey";

/// Node again, for a name with '/' and a suffix, and a key name with a space (Node leaves
/// `skn` unencoded).
const NODE_SUFFIX_TOKEN: &str = "SharedAccessSignature sr=http%3A%2F%2Fns.example.net%3A443%2Fa%2Fb%2Fsub&sig=4T3MHYSvTaeo8oVuphkhWWuoN9gG6yD3QrM%2FfeUOJrk%3D&se=4102444800&skn=Send Rule";

/// .NET-style audience (`http://host/hc/`, no port, trailing slash) with the lower-case
/// escapes of the old `HttpUtility`; signed independently with Python's hmac.
const DOTNET_TOKEN: &str = "SharedAccessSignature sr=http%3a%2f%2fns.example.net%2fhyco%2f&sig=7sByWGZ4Q6c4FI1NTMKiH3QG2HySnKmUv5SnZR6LhGQ%3D&se=4102444800&skn=net";

fn rule(name: &str, key: &str, rights: Rights, hc: Option<&str>) -> SharedAccessKey {
    SharedAccessKey {
        name: name.into(),
        key: key.into(),
        secondary_key: None,
        rights,
        hybrid_connection: hc.map(Into::into),
    }
}

fn target(path: &str, needs: Rights) -> Target<'_> {
    Target {
        hybrid_connection: path.split('/').next().unwrap_or(path),
        path,
        needs,
        mount: "",
    }
}

#[test]
fn verifies_the_real_node_token() {
    let t = SasToken::parse(NODE_TOKEN).unwrap();
    assert_eq!(t.audience(), "http://127.0.0.1:9443/hyco");
    t.verify("s3cr3t/key=+", NOW).unwrap();
    assert_eq!(
        t.verify("s3cr3t/key=", NOW),
        Err(SasError::InvalidSignature)
    );
    assert_eq!(
        t.verify("s3cr3t/key=+", 4_102_444_801),
        Err(SasError::Expired(1))
    );
    assert!(t.covers("hyco") && t.covers("HYCO/sub") && !t.covers("hycox") && !t.covers("other"));
}

#[test]
fn verifies_node_suffix_and_dotnet_audiences() {
    let t = SasToken::parse(NODE_SUFFIX_TOKEN).unwrap();
    assert_eq!(t.key_name, "Send Rule");
    t.verify("k", NOW).unwrap();
    assert!(t.covers("a/b/sub") && t.covers("a/b/sub/deeper") && !t.covers("a/b"));

    let t = SasToken::parse(DOTNET_TOKEN).unwrap();
    t.verify("k", NOW).unwrap();
    assert!(t.covers("hyco") && t.covers("hyco/x"));
}

#[test]
fn create_matches_node_encoding() {
    let made = create_token(
        "http://127.0.0.1:9443/hyco",
        "RootManageSharedAccessKey",
        "s3cr3t/key=+",
        4_102_444_800,
    );
    assert_eq!(made, NODE_TOKEN);
}

#[test]
fn audience_forms() {
    for (aud, target, ok) in [
        ("sb://ns/hyco", "hyco", true),
        ("http://ns/", "anything/at/all", true),
        ("http://ns", "anything", true),
        ("https://ns:9/$hc/hyco", "hyco", true),
        ("http://ns/hyco/", "hyco2", false),
        ("http://ns/a/b", "a", false),
    ] {
        let token = create_token(aud, "r", "k", NOW + 10);
        assert_eq!(
            SasToken::parse(&token).unwrap().covers(target),
            ok,
            "{aud} vs {target}"
        );
    }
}

#[test]
fn malformed_tokens() {
    for bad in [
        "",
        "Bearer abc",
        "SharedAccessSignature sr=a&sig=b",
        "SharedAccessSignature sr=a&sig=%%%&se=1&skn=r",
        "SharedAccessSignature sr=a&sig=AAAA&se=soon&skn=r",
        "SharedAccessSignature sr=a&sr=b&sig=AAAA&se=1&skn=r",
        "SharedAccessSignature garbage",
    ] {
        assert!(
            matches!(SasToken::parse(bad), Err(SasError::Malformed(_))),
            "{bad:?}"
        );
    }
    assert!(SasToken::parse(&"x".repeat(MAX_TOKEN_LEN + 1)).is_err());
    // The scheme word is optional, as some clients send the bare fields.
    assert!(SasToken::parse(NODE_TOKEN.trim_start_matches("SharedAccessSignature ")).is_ok());
}

#[test]
fn authorize_checks_scope_rights_and_secondary_keys() {
    let mut listen_only = rule("listen", "lk", Rights::LISTEN, Some("hyco"));
    listen_only.secondary_key = Some("lk2".into());
    let rules = vec![rule("root", "rk", Rights::MANAGE, None), listen_only];
    let root = create_token("http://x/hyco", "root", "rk", NOW + 60);
    assert!(authorize(&rules, &root, target("hyco", Rights::SEND), NOW).is_ok());
    assert!(authorize(&rules, &root, target("hyco", Rights::LISTEN), NOW).is_ok());

    let listen = create_token("http://x/hyco", "listen", "lk2", NOW + 60);
    assert!(authorize(&rules, &listen, target("hyco", Rights::LISTEN), NOW).is_ok());
    let err = authorize(&rules, &listen, target("hyco", Rights::SEND), NOW).unwrap_err();
    assert_eq!((err.status(), err), (403, SasError::MissingRight("Send")));

    // An HC-scoped rule is unknown on another HC, even with a namespace-wide audience.
    let wide = create_token("http://x/", "listen", "lk", NOW + 60);
    assert_eq!(
        authorize(&rules, &wide, target("other", Rights::LISTEN), NOW),
        Err(SasError::UnknownKey)
    );

    let other = create_token("http://x/other", "root", "rk", NOW + 60);
    assert_eq!(
        authorize(&rules, &other, target("hyco", Rights::SEND), NOW),
        Err(SasError::InvalidAudience)
    );
    let wrong = create_token("http://x/hyco", "root", "nope", NOW + 60);
    assert_eq!(
        authorize(&rules, &wrong, target("hyco", Rights::SEND), NOW),
        Err(SasError::InvalidSignature)
    );
    let old = create_token("http://x/hyco", "root", "rk", NOW - 1);
    assert_eq!(
        authorize(&rules, &old, target("hyco", Rights::SEND), NOW),
        Err(SasError::Expired(1))
    );
    assert_eq!(
        authorize(&rules, &old, target("hyco", Rights::SEND), NOW)
            .unwrap_err()
            .status(),
        401
    );
}

#[test]
fn rights_parse_and_manage_implies_all() {
    assert_eq!(Rights::parse("manage"), Some(Rights::MANAGE));
    assert!(Rights::MANAGE.contains(Rights::LISTEN.union(Rights::SEND)));
    assert!(!Rights::LISTEN.contains(Rights::SEND));
    assert_eq!(Rights::parse("Read"), None);
}

#[test]
fn mounted_broker_accepts_the_prefixed_audience_only_at_a_boundary() {
    let t = SasToken::parse(&create_token("http://h/relay/hyco", "r", "k", NOW + 9)).unwrap();
    assert!(t.covers_under("hyco", "/relay/"));
    assert!(!t.covers("hyco"));
    let t = SasToken::parse(&create_token("http://h/relayx/hyco", "r", "k", NOW + 9)).unwrap();
    assert!(!t.covers_under("hyco", "relay"));
}
