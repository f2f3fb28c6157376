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
        // The key never shows in Debug output (unless the same text is in another field).
        if let Some(key) = cs.key.as_deref().filter(|k| k.len() >= 4) {
            let elsewhere = [
                Some(cs.endpoint.as_str()),
                cs.key_name.as_deref(),
                cs.entity_path.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|f| f.contains(key));
            assert!(
                elsewhere || !format!("{cs:?}").contains(key),
                "the key leaks into Debug"
            );
        }
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
