//! Shared Access Signature tokens, as Azure Service Bus and Relay use them.
//!
//! `SharedAccessSignature sr={urlenc(uri)}&sig={urlenc(base64(hmac))}&se={expiry}&skn={rule}`,
//! fields in any order. The HMAC-SHA256 key is the UTF-8 bytes of the key *string*, and the
//! signed text is the `sr` value exactly as it appears in the token, a newline, then `se`.
//! Clients encode `sr` differently, so it is never re-encoded before checking.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The scheme word that starts every token.
pub const SCHEME: &str = "SharedAccessSignature";

/// Longest token accepted; anything longer is rejected before parsing.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Characters `encodeURIComponent` leaves alone, so `create` matches the Node clients.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The rights a rule can grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    /// No rights.
    pub const NONE: Self = Self(0);
    /// Open a control channel, accept and renew.
    pub const LISTEN: Self = Self(1);
    /// Connect and send HTTP requests.
    pub const SEND: Self = Self(2);
    /// Administer the namespace; implies Listen and Send.
    pub const MANAGE: Self = Self(4 | 1 | 2);

    /// Parses `Listen`, `Send` or `Manage` (case-insensitive).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "listen" => Some(Self::LISTEN),
            "send" => Some(Self::SEND),
            "manage" => Some(Self::MANAGE),
            _ => None,
        }
    }

    /// Union of two sets.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every right in `needed` is present.
    #[must_use]
    pub fn contains(self, needed: Self) -> bool {
        self.0 & needed.0 == needed.0
    }
}

/// A named authorization rule: a key and the rights it grants, at namespace or HC scope.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedAccessKey {
    /// Rule name (`skn`).
    pub name: String,
    /// Primary key string.
    pub key: String,
    /// Optional secondary key, so keys can be rotated without downtime.
    pub secondary_key: Option<String>,
    /// What tokens signed with this key may do.
    pub rights: Rights,
    /// `None` for the whole namespace, otherwise the one hybrid connection the rule covers.
    pub hybrid_connection: Option<String>,
}

impl std::fmt::Debug for SharedAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedAccessKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("rights", &self.rights)
            .field("hybrid_connection", &self.hybrid_connection)
            .finish()
    }
}

/// Why a token was refused. Each maps to one HTTP status (see [`SasError::status`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SasError {
    /// No token was presented.
    #[error("authorization token is missing")]
    Missing,
    /// The token is not a well-formed SAS token.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// No rule with the token's key name exists for this entity.
    #[error("unknown key name or key not valid for this entity")]
    UnknownKey,
    /// The signature does not match.
    #[error("invalid signature")]
    InvalidSignature,
    /// `se` is in the past, by this many seconds of the verifier's clock. Named, because a
    /// token made on a machine whose clock runs behind is already old when it arrives.
    #[error("token expired {0} s ago by this server's clock (check the clock where it was made)")]
    Expired(u64),
    /// The token's audience (`sr`) does not cover the requested path.
    #[error("invalid audience")]
    InvalidAudience,
    /// The rule lacks the right the action needs.
    #[error("the rule lacks the {0} right")]
    MissingRight(&'static str),
}

impl SasError {
    /// The HTTP status Azure answers with: 403 for a valid token lacking a right, 401 otherwise.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingRight(_) => 403,
            _ => 401,
        }
    }
}

/// A parsed SAS token.
#[derive(Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as it appears in the token (still percent-encoded).
    raw_sr: String,
    /// `se` exactly as it appears.
    raw_se: String,
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Rule name (`skn`).
    pub key_name: String,
    /// Decoded signature bytes.
    signature: Vec<u8>,
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasToken")
            .field("sr", &self.raw_sr)
            .field("expires_at", &self.expires_at)
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasToken {
    /// Parses a token, with or without the leading `SharedAccessSignature ` word.
    pub fn parse(text: &str) -> Result<Self, SasError> {
        if text.len() > MAX_TOKEN_LEN {
            return Err(SasError::Malformed("token too long"));
        }
        let text = text.trim();
        let body = match text.split_once(' ') {
            Some((scheme, body)) if scheme.eq_ignore_ascii_case(SCHEME) => body.trim_start(),
            Some(_) => return Err(SasError::Malformed("not a SharedAccessSignature")),
            None => text,
        };
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for pair in body.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or(SasError::Malformed("field without '='"))?;
            let slot = match key {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(SasError::Malformed("repeated field"));
            }
        }
        let (Some(sr), Some(sig), Some(se), Some(skn)) = (sr, sig, se, skn) else {
            return Err(SasError::Malformed("sr, sig, se and skn are all required"));
        };
        let expires_at = se
            .parse()
            .map_err(|_| SasError::Malformed("se is not a number"))?;
        let sig = percent_decode_str(sig)
            .decode_utf8()
            .map_err(|_| SasError::Malformed("sig"))?;
        let signature = base64::engine::general_purpose::STANDARD
            .decode(sig.as_bytes())
            .map_err(|_| SasError::Malformed("sig is not base64"))?;
        let key_name = percent_decode_str(skn)
            .decode_utf8()
            .map_err(|_| SasError::Malformed("skn"))?;
        Ok(Self {
            raw_sr: sr.to_owned(),
            raw_se: se.to_owned(),
            expires_at,
            key_name: key_name.into_owned(),
            signature,
        })
    }

    /// The decoded audience.
    #[must_use]
    pub fn audience(&self) -> String {
        percent_decode_str(&self.raw_sr)
            .decode_utf8_lossy()
            .into_owned()
    }

    /// Checks the signature against `key` in constant time, then the expiry against `now`
    /// (seconds since the Unix epoch).
    pub fn verify(&self, key: &str, now: u64) -> Result<(), SasError> {
        let mut mac =
            HmacSha256::new_from_slice(key.as_bytes()).map_err(|_| SasError::InvalidSignature)?;
        mac.update(self.raw_sr.as_bytes());
        mac.update(b"\n");
        mac.update(self.raw_se.as_bytes());
        mac.verify_slice(&self.signature)
            .map_err(|_| SasError::InvalidSignature)?;
        if self.expires_at < now {
            return Err(SasError::Expired(now - self.expires_at));
        }
        Ok(())
    }

    /// Whether the audience covers `target` (`hc` or `hc/suffix`, decoded), leniently:
    /// scheme, host and port are ignored, case and surrounding slashes too, and an
    /// audience path that ends at a segment boundary covers everything below it.
    #[must_use]
    pub fn covers(&self, target: &str) -> bool {
        self.covers_under(target, "")
    }

    /// Like [`SasToken::covers`] for a broker mounted under a path prefix (`mount`, e.g.
    /// `relay` when nested at `/relay`): an audience that includes the prefix is accepted.
    #[must_use]
    pub fn covers_under(&self, target: &str, mount: &str) -> bool {
        let full = audience_path(&self.audience());
        let mount = mount.trim_matches('/').to_ascii_lowercase();
        let audience = match full.strip_prefix(mount.as_str()) {
            Some(rest) if !mount.is_empty() && (rest.is_empty() || rest.starts_with('/')) => {
                rest.trim_start_matches('/').to_owned()
            }
            _ => full,
        };
        let target = target.trim_matches('/').to_ascii_lowercase();
        audience.is_empty()
            || target == audience
            || (target.starts_with(&audience)
                && target.as_bytes().get(audience.len()) == Some(&b'/'))
    }
}

/// The path part of an audience URI, lower-cased, without slashes at either end or `$hc/`.
fn audience_path(audience: &str) -> String {
    let without_scheme = audience
        .split_once("://")
        .map_or(audience, |(_, rest)| rest);
    let path = without_scheme.split_once('/').map_or("", |(_, path)| path);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let path = path.trim_matches('/');
    let path = path.strip_prefix("$hc/").unwrap_or(path);
    path.trim_matches('/').to_ascii_lowercase()
}

/// Creates a token for `resource_uri` that expires at `expires_at` (Unix seconds), encoded
/// the way the Node clients' `createRelayToken` does it.
#[must_use]
pub fn create_token(resource_uri: &str, key_name: &str, key: &str, expires_at: u64) -> String {
    let sr = utf8_percent_encode(resource_uri, URI_COMPONENT).to_string();
    let se = expires_at.to_string();
    let Ok(mut mac) = HmacSha256::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.update(sr.as_bytes());
    mac.update(b"\n");
    mac.update(se.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let sig = utf8_percent_encode(&sig, URI_COMPONENT);
    let skn = utf8_percent_encode(key_name, URI_COMPONENT);
    format!("{SCHEME} sr={sr}&sig={sig}&se={se}&skn={skn}")
}

/// What a request asks to do, for [`authorize`].
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The hybrid connection, as registered.
    pub hybrid_connection: &'a str,
    /// The full decoded path the token must cover: `hc` or `hc/suffix`.
    pub path: &'a str,
    /// The right the action needs.
    pub needs: Rights,
    /// Path prefix the broker is mounted under (empty when at the root).
    pub mount: &'a str,
}

/// Checks a token against a set of rules: known key name at the right scope, signature,
/// expiry, audience, then rights. Returns the matching rule.
pub fn authorize<'r>(
    rules: &'r [SharedAccessKey],
    token: &str,
    target: Target<'_>,
    now: u64,
) -> Result<&'r SharedAccessKey, SasError> {
    let token = SasToken::parse(token)?;
    let mut candidates = rules.iter().filter(|r| {
        r.name == token.key_name
            && r.hybrid_connection
                .as_deref()
                .is_none_or(|hc| hc.eq_ignore_ascii_case(target.hybrid_connection))
    });
    let mut last = SasError::UnknownKey;
    let rule = loop {
        let Some(rule) = candidates.next() else {
            return Err(last);
        };
        let keys = std::iter::once(rule.key.as_str()).chain(rule.secondary_key.as_deref());
        match keys
            .map(|k| token.verify(k, now))
            .find(|r| !matches!(r, Err(SasError::InvalidSignature)))
        {
            Some(Ok(())) => break rule,
            Some(Err(e)) => last = e,
            None => last = SasError::InvalidSignature,
        }
    };
    if !token.covers_under(target.path, target.mount) {
        return Err(SasError::InvalidAudience);
    }
    if !rule.rights.contains(target.needs) {
        return Err(SasError::MissingRight(if target.needs == Rights::LISTEN {
            "Listen"
        } else {
            "Send"
        }));
    }
    Ok(rule)
}

#[cfg(test)]
mod tests;
