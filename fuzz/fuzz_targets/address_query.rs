//! The URL and query grammar: `sb-hc-*` parameters, the app query kept in its encoding,
//! longest-prefix name resolution at `/` boundaries, and the standby request header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::address::{HcPath, RelayQuery, strip_reserved};

const NAMES: [&str; 4] = ["hyco", "a/b", "a/b/c", "site-7/ui"];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = text.split_once('?').unwrap_or((text, ""));
    let q = RelayQuery::parse(query);
    // No sb-hc-* parameter survives in the app query, whatever its case or encoding.
    for pair in q.app_query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        let decoded = percent_decode(key).to_ascii_lowercase();
        assert!(
            !decoded.starts_with("sb-hc-"),
            "{key} kept in {}",
            q.app_query
        );
    }
    let stripped = strip_reserved(query);
    assert!(stripped.len() <= query.len());
    let rest = HcPath::strip_ws_prefix(path).unwrap_or(path.trim_start_matches('/'));
    if let Some(hit) = HcPath::resolve(rest, |n| {
        NAMES
            .iter()
            .find(|k| k.eq_ignore_ascii_case(n))
            .map(|k| (*k).to_owned())
    }) {
        assert!(NAMES.contains(&hit.name.as_str()));
        assert!(
            hit.suffix.is_empty() || hit.suffix.starts_with('/'),
            "{}",
            hit.suffix
        );
    }
    let _ = relay_core::standby::requested(text, 8).map(|n| assert!(n <= 8));
});

fn percent_decode(s: &str) -> String {
    let plus = s.replace('+', " ");
    let bytes = plus.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
