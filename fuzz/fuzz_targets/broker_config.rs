//! The broker's TOML configuration, host mode included: refused with a message naming the
//! key, or validated, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = relay_broker::BrokerConfig::parse(text, "fuzz.toml") {
        if let Some(hosts) = &config.hosts {
            for (label, _) in &hosts.table {
                assert!(relay_core::web::is_host_label(label));
            }
        }
    }
});
