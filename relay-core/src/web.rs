//! Browser access to a web UI behind a listener: the session cookie that stands in for a SAS
//! token after one login, the rules for the `Cookie` header, and host names per hybrid
//! connection (`site-7--ui.relay.example.com` → `site-7/ui`).
//!
//! A session cookie is `v1.<rule>.<expires>.<cap>.<mac>`: the rule name (base64url), the
//! Unix second the cookie ends, the Unix second it may never be extended past (the expiry of
//! the token that opened it), and an HMAC-SHA256 over those and the hybrid connection, keyed
//! with the rule's key. It holds no secret, needs no server state, works on every broker that
//! has the rule, and dies with the rule's key: rotating or removing the key ends every
//! session it signed. The rules a broker applies around it are in ARCHITECTURE.md
//! ("Browser access").

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::sas::{Rights, SharedAccessKey};

/// Cookie name in path mode (`Path=/{hc}`).
pub const SESSION_COOKIE: &str = "relay-session";
/// Cookie name in host mode over TLS: the `__Host-` prefix makes the browser refuse it
/// unless it is `Secure`, host-only and `Path=/`, so a sibling host cannot plant or shadow it.
pub const HOST_SESSION_COOKIE: &str = "__Host-relay-session";
/// Longest session cookie value read; anything longer is not ours.
pub const MAX_COOKIE_VALUE: usize = 512;
/// Longest host label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

const CONTEXT: &[u8] = b"relay-browser-session/v1\n";
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A session cookie that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The rule whose key signed it.
    pub rule: String,
    /// When it ends (Unix seconds).
    pub expires_at: u64,
    /// The latest it may be extended to (Unix seconds).
    pub cap: u64,
}

/// Why a session cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Not in the cookie format.
    #[error("malformed session cookie")]
    Malformed,
    /// No rule of that name covers this hybrid connection with the Send right.
    #[error("the session's rule is unknown or does not grant Send here")]
    UnknownRule,
    /// The MAC does not match (another hybrid connection, or a rotated key).
    #[error("the session cookie's signature does not match")]
    BadSignature,
    /// It ended.
    #[error("the session expired")]
    Expired,
}

/// A cookie value for a session on `hc` signed with `rule`'s primary key.
#[must_use]
pub fn issue(rule: &SharedAccessKey, hc: &str, expires_at: u64, cap: u64) -> String {
    let tag = mac(&rule.key, &rule.name, hc, expires_at, cap).finalize();
    format!(
        "v1.{}.{expires_at}.{cap}.{}",
        B64URL.encode(&rule.name),
        B64URL.encode(tag.into_bytes())
    )
}

/// Checks a cookie value for `hc` at `now` against the namespace's rules (primary and
/// secondary keys).
pub fn verify(
    value: &str,
    rules: &[SharedAccessKey],
    hc: &str,
    now: u64,
) -> Result<Session, SessionError> {
    if value.len() > MAX_COOKIE_VALUE {
        return Err(SessionError::Malformed);
    }
    let mut parts = value.split('.');
    let (Some("v1"), Some(rule), Some(expires), Some(cap), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(SessionError::Malformed);
    };
    let rule = B64URL
        .decode(rule)
        .ok()
        .and_then(|r| String::from_utf8(r).ok())
        .ok_or(SessionError::Malformed)?;
    let tag = B64URL.decode(tag).map_err(|_| SessionError::Malformed)?;
    let number = |t: &str| {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
            .ok_or(SessionError::Malformed)
    };
    let (expires_at, cap) = (number(expires)?, number(cap)?);
    let candidates = rules.iter().filter(|r| {
        r.name == rule
            && r.rights.contains(Rights::SEND)
            && r.hybrid_connection
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(hc))
    });
    let mut found = Err(SessionError::UnknownRule);
    for candidate in candidates {
        let keys =
            std::iter::once(candidate.key.as_str()).chain(candidate.secondary_key.as_deref());
        for key in keys {
            // `verify_slice` compares in constant time.
            if mac(key, &rule, hc, expires_at, cap)
                .verify_slice(&tag)
                .is_ok()
            {
                found = Ok(());
            } else if found.is_err() {
                found = Err(SessionError::BadSignature);
            }
        }
    }
    found?;
    if now >= expires_at || expires_at > cap {
        return Err(SessionError::Expired);
    }
    Ok(Session {
        rule,
        expires_at,
        cap,
    })
}

/// The new end of a session in use at `now`, once less than half of `life` is left; never
/// past its cap. `None` while it has time enough or cannot be extended.
#[must_use]
pub fn renewal(session: &Session, now: u64, life: u64) -> Option<u64> {
    let left = session.expires_at.saturating_sub(now);
    let renewed = now.saturating_add(life).min(session.cap);
    (left < life / 2 && renewed > session.expires_at).then_some(renewed)
}

fn mac(key: &str, rule: &str, hc: &str, expires_at: u64, cap: u64) -> Hmac<Sha256> {
    // Any key length is valid for HMAC.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(CONTEXT);
    for field in [rule, &hc.to_ascii_lowercase()] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac.update(&expires_at.to_be_bytes());
    mac.update(&cap.to_be_bytes());
    mac
}

/// The `Set-Cookie` value for a session: HttpOnly (page scripts never see it), SameSite=Strict
/// (no other site's page can make the browser send it), `Secure` over TLS.
#[must_use]
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// Values of every cookie called `name` in `Cookie` header values (a path-mode browser may
/// hold one per hybrid connection on the way to this one).
pub fn cookie_values<'a>(
    headers: impl IntoIterator<Item = &'a str>,
    name: &'a str,
) -> impl Iterator<Item = &'a str> {
    headers
        .into_iter()
        .flat_map(|h| h.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// A `Cookie` header value without the cookies called `name`; `None` when nothing is left.
#[must_use]
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

/// Whether a fetch's `Origin` is the origin it was sent to (`scheme://host[:port]`, the
/// default port omitted as browsers do).
#[must_use]
pub fn same_origin(origin: &str, scheme: &str, host: &str) -> bool {
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let host = host.strip_suffix(default_port).unwrap_or(host);
    origin
        .strip_prefix(scheme)
        .and_then(|o| o.strip_prefix("://"))
        .is_some_and(|o| o.eq_ignore_ascii_case(host))
}

/// Whether `label` is a DNS label a host name per hybrid connection may use: 1 to 63 lower-case
/// letters, digits and `-`, not starting or ending with `-`.
#[must_use]
pub fn is_host_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The hybrid connection a host label names by the rule: `/` is written `--`
/// (`site-7--ui` → `site-7/ui`).
#[must_use]
pub fn hc_for_label(label: &str) -> String {
    label.replace("--", "/")
}

/// The host label of a hybrid connection by the rule, when its name can be one.
#[must_use]
pub fn label_for_hc(hc: &str) -> Option<String> {
    let label = hc.to_ascii_lowercase().replace('/', "--");
    (is_host_label(&label) && hc_for_label(&label).eq_ignore_ascii_case(hc)).then_some(label)
}

/// A wildcard base for host names, `*.relay.example.com`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostBase {
    /// `.relay.example.com`, lower case.
    suffix: String,
}

impl HostBase {
    /// Parses `*.<domain>`; the domain needs at least two labels.
    pub fn parse(text: &str) -> Result<Self, String> {
        let domain = text
            .strip_prefix("*.")
            .ok_or_else(|| {
                format!("'{text}' must start with '*.' (for example *.relay.example.com)")
            })?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || !labels.iter().all(|l| is_host_label(l)) {
            return Err(format!(
                "'{text}': the domain after '*.' needs two or more DNS labels"
            ));
        }
        Ok(Self {
            suffix: format!(".{domain}"),
        })
    }

    /// The label a `Host` header names under this base (`site-7--ui.relay.example.com:443`
    /// → `site-7--ui`); `None` for any other host, the base itself included.
    #[must_use]
    pub fn label<'a>(&self, host: &'a str) -> Option<&'a str> {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let cut = name.len().checked_sub(self.suffix.len())?;
        let (label, suffix) = (name.get(..cut)?, name.get(cut..)?);
        (suffix.eq_ignore_ascii_case(&self.suffix) && !label.contains('.') && !label.is_empty())
            .then_some(label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, key: &str, rights: Rights, hc: Option<&str>) -> SharedAccessKey {
        SharedAccessKey {
            name: name.into(),
            key: key.into(),
            secondary_key: None,
            rights,
            hybrid_connection: hc.map(Into::into),
        }
    }

    #[test]
    fn a_session_verifies_for_its_hc_only_and_until_it_ends() {
        let root = rule("root", "k", Rights::MANAGE, None);
        let value = issue(&root, "site/ui", 2000, 3000);
        let rules = [root];
        let s = verify(&value, &rules, "Site/UI", 1000).unwrap();
        assert_eq!((s.rule.as_str(), s.expires_at, s.cap), ("root", 2000, 3000));
        assert_eq!(
            verify(&value, &rules, "site/other", 1000),
            Err(SessionError::BadSignature)
        );
        assert_eq!(
            verify(&value, &rules, "site/ui", 2000),
            Err(SessionError::Expired)
        );
        let rotated = [rule("root", "k2", Rights::MANAGE, None)];
        assert_eq!(
            verify(&value, &rotated, "site/ui", 1000),
            Err(SessionError::BadSignature)
        );
        let mut secondary = rotated[0].clone();
        secondary.secondary_key = Some("k".into());
        assert!(verify(&value, &[secondary], "site/ui", 1000).is_ok());
    }

    #[test]
    fn a_session_in_use_is_renewed_up_to_its_cap() {
        let s = Session {
            rule: "r".into(),
            expires_at: 1900,
            cap: 5000,
        };
        assert_eq!(renewal(&s, 1000, 1000), None, "half its life is left");
        assert_eq!(renewal(&s, 1500, 1000), Some(2500));
        assert_eq!(renewal(&s, 1899, 1000), Some(2899));
        let capped = Session {
            cap: 2000,
            ..s.clone()
        };
        assert_eq!(renewal(&capped, 1500, 1000), Some(2000));
        let at_cap = Session { cap: 1900, ..s };
        assert_eq!(renewal(&at_cap, 1800, 1000), None, "never past the token");
    }

    #[test]
    fn rules_without_send_or_scoped_elsewhere_do_not_count() {
        let listen = rule("l", "k", Rights::LISTEN, None);
        let value = issue(&listen, "a", 2000, 2000);
        assert_eq!(
            verify(&value, &[listen], "a", 1),
            Err(SessionError::UnknownRule)
        );
        let scoped = rule("s", "k", Rights::SEND, Some("b"));
        let value = issue(&scoped, "a", 2000, 2000);
        assert_eq!(
            verify(&value, &[scoped], "a", 1),
            Err(SessionError::UnknownRule)
        );
    }

    #[test]
    fn tampered_or_malformed_values_are_refused() {
        let root = rule("root", "k", Rights::SEND, None);
        let rules = [root.clone()];
        let value = issue(&root, "a", 2000, 3000);
        let extended = value.replacen(".2000.", ".2999.", 1);
        assert_eq!(
            verify(&extended, &rules, "a", 1),
            Err(SessionError::BadSignature)
        );
        let past_cap = issue(&root, "a", 4000, 3000);
        assert_eq!(
            verify(&past_cap, &rules, "a", 1),
            Err(SessionError::Expired)
        );
        for bad in [
            "",
            "v1",
            "v2.cm9vdA.1.2.AA",
            "v1.cm9vdA.x.2.AA",
            "v1.cm9vdA.1.2.AA.x",
            "v1.!.1.2.AA",
        ] {
            assert!(verify(bad, &rules, "a", 0).is_err(), "{bad}");
        }
        assert_eq!(
            verify(&"x".repeat(MAX_COOKIE_VALUE + 1), &rules, "a", 0),
            Err(SessionError::Malformed)
        );
    }

    #[test]
    fn cookie_header_rules() {
        let headers = ["a=1; relay-session=one", "relay-session=\"two\";b=2"];
        let found: Vec<&str> = cookie_values(headers, SESSION_COOKIE).collect();
        assert_eq!(found, ["one", "two"]);
        assert_eq!(
            without_cookie("a=1; relay-session=x; b=2", SESSION_COOKIE).as_deref(),
            Some("a=1; b=2")
        );
        assert_eq!(without_cookie("relay-session=x", SESSION_COOKIE), None);
        assert_eq!(
            without_cookie("xrelay-session=1", SESSION_COOKIE).as_deref(),
            Some("xrelay-session=1")
        );
        assert_eq!(
            set_cookie(SESSION_COOKIE, "v", "/site/ui", 900, true),
            "relay-session=v; Path=/site/ui; Max-Age=900; HttpOnly; SameSite=Strict; Secure"
        );
    }

    #[test]
    fn origins() {
        assert!(same_origin(
            "https://relay.example.com",
            "https",
            "relay.example.com:443"
        ));
        assert!(same_origin(
            "http://127.0.0.1:9400",
            "http",
            "127.0.0.1:9400"
        ));
        assert!(!same_origin(
            "https://evil.example.com",
            "https",
            "relay.example.com"
        ));
        assert!(!same_origin(
            "http://relay.example.com",
            "https",
            "relay.example.com"
        ));
        assert!(!same_origin("null", "https", "relay.example.com"));
    }

    #[test]
    fn host_names() {
        let base = HostBase::parse("*.relay.example.com").unwrap();
        assert_eq!(
            base.label("site-7--ui.relay.example.com"),
            Some("site-7--ui")
        );
        assert_eq!(
            base.label("Site-7--UI.Relay.Example.com.:8443"),
            Some("Site-7--UI")
        );
        for other in [
            "relay.example.com",
            "a.b.relay.example.com",
            "evilrelay.example.com",
            ".relay.example.com",
            "example.com",
        ] {
            assert_eq!(base.label(other), None, "{other}");
        }
        for bad in ["relay.example.com", "*.com", "*.bad_label.com", "*."] {
            assert!(HostBase::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(hc_for_label("site-7--ui"), "site-7/ui");
        assert_eq!(label_for_hc("Site-7/UI").as_deref(), Some("site-7--ui"));
        assert_eq!(label_for_hc("a--b"), None, "would read back as a/b");
        assert_eq!(label_for_hc("under_score"), None);
        assert!(is_host_label("a") && !is_host_label("-a") && !is_host_label(&"a".repeat(64)));
    }
}
