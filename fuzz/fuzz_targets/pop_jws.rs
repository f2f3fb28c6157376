//! The proof-of-possession JWS a listener presents behind a TLS-ending proxy: parsing and
//! the claim checks never panic, whatever the header, claims or signature hold.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(proof) = relay_core::pop::parse(text) {
        let _ = proof.claims.check("relay.example.com:443", 1_800_000_000);
    }
    let _ = relay_core::pop::authority(text);
});
