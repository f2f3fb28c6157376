//! Azure-style connection strings and the resolution of the CLI's target flags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::connection_string::{ConnectionString, Target, TargetArgs, http_base, ws_base};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cs) = ConnectionString::parse(text) {
        let ws = cs.ws_endpoint();
        assert!(!ws.ends_with('/'), "{ws}");
        assert!(
            !ws.starts_with("http://") && !ws.starts_with("https://"),
            "{ws}"
        );
        // Debug output never depends on the key: the same string with another key prints
        // the same (a substring test would trip on the key "ndpo" inside "endpoint").
        let other = ConnectionString {
            key: cs.key.as_ref().map(|_| "another key".to_owned()),
            ..cs.clone()
        };
        assert_eq!(
            format!("{cs:?}"),
            format!("{other:?}"),
            "the key leaks into Debug"
        );
    }
    let _ = ws_base(text);
    let _ = http_base(text);
    let _ = Target::resolve(&TargetArgs {
        endpoint: None,
        hc: None,
        key_name: None,
        key: None,
        connection_string: Some(text),
    });
});
