//! Browser access: session cookies from any bytes never verify unless signed with the key,
//! `Cookie` header rules never lose a foreign cookie, and host labels map one way only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::sas::{Rights, SharedAccessKey};
use relay_core::web::{self, HostBase, SESSION_COOKIE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rule = SharedAccessKey {
        name: "root".into(),
        key: "fuzz-secret".into(),
        secondary_key: None,
        rights: Rights::SEND,
        hybrid_connection: None,
    };
    let rules = [rule.clone()];
    // Only a cookie that carries this key's MAC verifies.
    if web::verify(text, &rules, "hyco", 0).is_ok() {
        assert_eq!(
            text,
            web::issue(
                &rule,
                "hyco",
                text.split('.')
                    .nth(2)
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(0),
                text.split('.')
                    .nth(3)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0)
            )
        );
    }
    let issued = web::issue(&rule, text, 100, 200);
    assert!(web::verify(&issued, &rules, text, 50).is_ok(), "{issued}");
    let stripped = web::without_cookie(text, SESSION_COOKIE);
    if let Some(kept) = &stripped {
        assert!(
            web::cookie_values([kept.as_str()], SESSION_COOKIE)
                .next()
                .is_none()
        );
    }
    let _: Vec<&str> = web::cookie_values([text], SESSION_COOKIE).collect();
    if let Ok(base) = HostBase::parse(text) {
        let _ = base.label(text);
    }
    if let Some(label) = web::label_for_hc(text) {
        assert!(web::is_host_label(&label));
        assert!(web::hc_for_label(&label).eq_ignore_ascii_case(text));
    }
    let _ = web::same_origin(text, "https", "relay.example.com");
});
