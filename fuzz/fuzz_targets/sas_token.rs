//! SAS tokens and where a request's token is taken from: parsing never panics, a token the
//! fuzzer did not sign never authorizes, and the extraction rules keep their precedence.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::sas::{self, Rights, SasToken, SharedAccessKey, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = [SharedAccessKey {
        name: "root".into(),
        key: "fuzz-secret".into(),
        secondary_key: None,
        rights: Rights::MANAGE,
        hybrid_connection: None,
    }];
    let parsed = SasToken::parse(text);
    let target = Target {
        hybrid_connection: "hyco",
        path: "hyco/x",
        needs: Rights::SEND,
        mount: "",
    };
    // Without the key, no input can carry a valid signature.
    assert!(sas::authorize(&rules, text, target, 0).is_err() || parsed.is_ok());
    if let Ok(token) = parsed {
        let _ = token.covers_under("hyco", "");
    }
    // A token signed here verifies, whatever the fuzzer chose as its audience.
    let signed = sas::create_token(&format!("http://h/{text}"), "root", "fuzz-secret", 10);
    if let Ok(token) = SasToken::parse(&signed) {
        assert!(token.verify("fuzz-secret", 0).is_ok(), "{signed}");
        assert!(token.verify("other", 0).is_err());
    }
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(text) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let p = relay_core::auth::presented_token(&headers, None, true);
    // A header that is not visible ASCII cannot be a token, and is not taken for one.
    let readable = headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.to_str().is_ok());
    assert_eq!(p.token.is_some(), readable);
    let p = relay_core::auth::presented_token(&headers, Some(text), true);
    assert_eq!(
        p.token.as_deref(),
        Some(text),
        "the query wins over Authorization"
    );
});
