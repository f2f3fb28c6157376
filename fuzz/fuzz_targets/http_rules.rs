//! HTTP header rules for relayed requests: hop-by-hop names from `Connection`, `Via`, and the
//! IMF-fixdate parser behind the agent's clock-skew warning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::http_rules::{clock_skew, connection_tokens, is_hop_by_hop, parse_http_date, via};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(text) {
        headers.append(http::header::CONNECTION, v);
    }
    let tokens = connection_tokens(&headers);
    for t in &tokens {
        assert!(is_hop_by_hop(t, &tokens));
    }
    assert!(is_hop_by_hop("transfer-encoding", &tokens));
    let _ = via(Some(text), "1.1", "relay");
    if let Some(at) = parse_http_date(text) {
        assert_eq!(clock_skew(text, at), None, "no skew against itself");
    }
});
