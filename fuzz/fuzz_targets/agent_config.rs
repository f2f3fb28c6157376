//! The agent's TOML configuration: any text is refused with a message or validated into
//! endpoints, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = relay_listener::agent::AgentConfig::parse(
        text,
        "fuzz.toml",
        std::path::Path::new("/nonexistent"),
        |_| None,
    );
});
