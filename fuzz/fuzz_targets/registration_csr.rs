//! The CSR a registering listener sends: the broker's CA refuses anything but one PEM
//! `CERTIFICATE REQUEST` with a valid self-signature and an allowed key, without a panic, and
//! what it issues names only the listener it was asked for.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay_broker::ca::CertificateAuthority;

fn ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("relay-fuzz-ca-{}", std::process::id()));
        CertificateAuthority::load_or_create(&dir, "fuzz", time::OffsetDateTime::now_utc())
            .expect("a CA in a temp dir")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    if let Ok(issued) = ca().issue(text, "l-1", std::time::Duration::from_secs(3600), now) {
        assert!(issued.pem.contains("BEGIN CERTIFICATE"));
    }
});
