//! Proof-of-possession login for certificate listeners behind an L7 proxy that ends TLS.
//!
//! Where no client certificate reaches the broker, the listener proves it holds the key of
//! its certificate instead: it asks for a single-use nonce, then sends a compact JWS signed
//! with its key, carrying the certificate chain in `x5c` and the nonce, the broker's address
//! (`aud`), `iat`, `exp` (at most [`MAX_LIFETIME_SECS`] after `iat`) and a `jti`. The broker
//! checks the chain as the TLS handshake would, the signature with the leaf's key, and the
//! claims here, burns the nonce, and answers with a single-use session ticket that the
//! listener presents in [`SESSION_HEADER`] on its next call (control channel or renewal).
//!
//! This module is the format and the claim rules, with `now` injected; signing and
//! verification live with the key holders.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Header carrying a session ticket from a proof-of-possession login.
pub const SESSION_HEADER: &str = "relay-pop-session";
/// Longest JWS accepted (a P-256 leaf and two CA certificates fit several times over).
pub const MAX_JWS_BYTES: usize = 16 * 1024;
/// Longest accepted span between `iat` and `exp`.
pub const MAX_LIFETIME_SECS: u64 = 60;
/// Clock skew tolerated on `iat` and `exp`.
pub const LEEWAY_SECS: u64 = 60;
/// The `typ` the listener writes; anything else is refused, so a JWS made for another
/// purpose with the same key cannot be replayed here.
pub const TYP: &str = "relay-pop+jwt";

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const B64STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why a proof-of-possession JWS was refused. Every variant is a 401 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PopError {
    /// Not three base64url parts of JSON, too large, or fields missing.
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    /// `alg` is not ES256 or EdDSA (`none` and HMAC included).
    #[error("algorithm not allowed: {0}")]
    Algorithm(String),
    /// `iat`/`exp` outside the allowed window.
    #[error("proof expired or not yet valid")]
    Expired,
    /// `exp` more than [`MAX_LIFETIME_SECS`] after `iat`.
    #[error("proof lifetime longer than {MAX_LIFETIME_SECS} s")]
    TooLong,
    /// `aud` names another broker.
    #[error("proof is for another audience")]
    Audience,
}

/// Signature algorithms a listener key may sign with (the CA issues P-256 and Ed25519).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, signature as `r || s` (64 bytes).
    Es256,
    /// Ed25519.
    EdDsa,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: String,
    x5c: Vec<String>,
}

/// The claims of a proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The broker the proof is for: its base URL as the listener addresses it.
    pub aud: String,
    /// The nonce the broker issued.
    pub nonce: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Unique id of this proof.
    pub jti: String,
}

/// A parsed proof whose signature is still to be checked.
#[derive(Debug, Clone)]
pub struct Proof {
    /// The signing algorithm from the header.
    pub alg: Algorithm,
    /// The certificate chain, DER, leaf first.
    pub x5c: Vec<Vec<u8>>,
    /// The claims.
    pub claims: Claims,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: String,
    /// The signature.
    pub signature: Vec<u8>,
}

/// What the listener signs: returns the signing input (`header.payload`, base64url) for
/// `claims`, to which it appends `.` and the base64url signature.
#[must_use]
pub fn signing_input(alg: Algorithm, chain_der: &[&[u8]], claims: &Claims) -> String {
    let header = Header {
        alg: alg.name().into(),
        typ: TYP.into(),
        x5c: chain_der.iter().map(|der| B64STD.encode(der)).collect(),
    };
    // Serializing these plain structs cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    format!("{}.{}", B64URL.encode(header), B64URL.encode(claims))
}

/// Appends the signature to a signing input: the compact JWS.
#[must_use]
pub fn compact(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", B64URL.encode(signature))
}

/// Parses a compact JWS, refusing anything oversized, malformed or with a disallowed `alg`.
pub fn parse(jws: &str) -> Result<Proof, PopError> {
    if jws.len() > MAX_JWS_BYTES {
        return Err(PopError::Malformed("larger than 16 KiB"));
    }
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PopError::Malformed("a compact JWS has three parts"));
    };
    let decode = |part: &str| {
        B64URL
            .decode(part)
            .map_err(|_| PopError::Malformed("base64url"))
    };
    let header: Header = serde_json::from_slice(&decode(h)?)
        .map_err(|_| PopError::Malformed("header needs alg, typ and x5c"))?;
    let alg = match header.alg.as_str() {
        "ES256" => Algorithm::Es256,
        "EdDSA" => Algorithm::EdDsa,
        other => return Err(PopError::Algorithm(other.chars().take(16).collect())),
    };
    if header.typ != TYP {
        return Err(PopError::Malformed("typ must be relay-pop+jwt"));
    }
    if header.x5c.is_empty() || header.x5c.len() > 4 {
        return Err(PopError::Malformed(
            "x5c needs the leaf and at most three CAs",
        ));
    }
    let x5c = header
        .x5c
        .iter()
        .map(|c| B64STD.decode(c))
        .collect::<Result<_, _>>()
        .map_err(|_| PopError::Malformed("x5c entries are base64 DER"))?;
    let claims: Claims = serde_json::from_slice(&decode(p)?)
        .map_err(|_| PopError::Malformed("claims need aud, nonce, iat, exp and jti"))?;
    if claims.nonce.is_empty() || claims.jti.is_empty() {
        return Err(PopError::Malformed("empty nonce or jti"));
    }
    Ok(Proof {
        alg,
        x5c,
        claims,
        signing_input: format!("{h}.{p}"),
        signature: decode(s)?,
    })
}

impl Claims {
    /// Checks the time window and the audience. `expected_authority` is the broker's own
    /// `host[:port]`; the scheme is ignored, as the proxy in front changes it.
    pub fn check(&self, expected_authority: &str, now: u64) -> Result<(), PopError> {
        if self.exp <= self.iat {
            return Err(PopError::Expired);
        }
        if self.exp - self.iat > MAX_LIFETIME_SECS {
            return Err(PopError::TooLong);
        }
        if self.iat > now + LEEWAY_SECS || self.exp + LEEWAY_SECS < now {
            return Err(PopError::Expired);
        }
        let ours = normalize_authority(expected_authority);
        if ours.is_empty() || authority(&self.aud).is_none_or(|a| normalize_authority(a) != ours) {
            return Err(PopError::Audience);
        }
        Ok(())
    }
}

/// The `host[:port]` of a URL.
#[must_use]
pub fn authority(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|a| !a.is_empty() && !a.contains('@'))
}

/// Lower case, without a default port: `Relay.example.com:443` and `relay.example.com` agree.
fn normalize_authority(authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let trimmed = lower
        .strip_suffix(":443")
        .or_else(|| lower.strip_suffix(":80"))
        .unwrap_or(&lower);
    trimmed.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: u64, exp: u64) -> Claims {
        Claims {
            aud: "https://relay.example.com:443".into(),
            nonce: "n".into(),
            iat,
            exp,
            jti: "j".into(),
        }
    }

    #[test]
    fn round_trip() {
        let input = signing_input(Algorithm::Es256, &[b"leaf", b"ca"], &claims(100, 160));
        let proof = parse(&compact(&input, b"sig")).expect("parses");
        assert_eq!(proof.alg, Algorithm::Es256);
        assert_eq!(proof.x5c, vec![b"leaf".to_vec(), b"ca".to_vec()]);
        assert_eq!(proof.claims, claims(100, 160));
        assert_eq!(proof.signing_input, input);
        assert_eq!(proof.signature, b"sig");
    }

    #[test]
    fn refuses_bad_algorithms_and_shapes() {
        let header =
            |alg: &str| B64URL.encode(format!(r#"{{"alg":"{alg}","typ":"{TYP}","x5c":["AA=="]}}"#));
        let body = B64URL.encode(br#"{"aud":"a","nonce":"n","iat":1,"exp":2,"jti":"j"}"#);
        for alg in ["none", "HS256", "RS256", "ES384"] {
            let jws = format!("{}.{body}.", header(alg));
            assert!(matches!(parse(&jws), Err(PopError::Algorithm(_))), "{alg}");
        }
        assert!(parse(&format!("{}.{body}.AA", header("ES256"))).is_ok());
        for bad in [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            format!("{}.{body}.!!", header("ES256")),
            format!("{}.e30.AA", header("ES256")),
            "x".repeat(MAX_JWS_BYTES + 1),
        ] {
            assert!(
                matches!(parse(&bad), Err(PopError::Malformed(_))),
                "{bad:.40}"
            );
        }
        let no_x5c = B64URL.encode(format!(r#"{{"alg":"ES256","typ":"{TYP}","x5c":[]}}"#));
        assert!(matches!(
            parse(&format!("{no_x5c}.{body}.AA")),
            Err(PopError::Malformed(_))
        ));
        let wrong_typ = B64URL.encode(r#"{"alg":"ES256","typ":"JWT","x5c":["AA=="]}"#);
        assert!(matches!(
            parse(&format!("{wrong_typ}.{body}.AA")),
            Err(PopError::Malformed(_))
        ));
    }

    #[test]
    fn checks_window_lifetime_and_audience() {
        let now = 1_000;
        assert_eq!(
            claims(now, now + 60).check("relay.example.com", now),
            Ok(())
        );
        assert_eq!(
            claims(now, now + 60).check("RELAY.example.com:443", now),
            Ok(())
        );
        assert_eq!(
            claims(now, now + 61).check("relay.example.com", now),
            Err(PopError::TooLong)
        );
        assert_eq!(
            claims(now, now).check("relay.example.com", now),
            Err(PopError::Expired)
        );
        // Skew within the leeway passes; beyond it fails, both ways.
        assert_eq!(
            claims(now + 50, now + 100).check("relay.example.com", now),
            Ok(())
        );
        assert_eq!(
            claims(now + 61, now + 100).check("relay.example.com", now),
            Err(PopError::Expired)
        );
        assert_eq!(
            claims(now - 200, now - 150).check("relay.example.com", now),
            Err(PopError::Expired)
        );
        assert_eq!(
            claims(now, now + 60).check("other.example.com", now),
            Err(PopError::Audience)
        );
        assert_eq!(
            claims(now, now + 60).check("relay.example.com:8443", now),
            Err(PopError::Audience)
        );
        assert_eq!(
            claims(now, now + 60).check("", now),
            Err(PopError::Audience)
        );
    }

    #[test]
    fn authority_of_urls() {
        assert_eq!(authority("https://h:1/x?y"), Some("h:1"));
        assert_eq!(authority("wss://h"), Some("h"));
        assert_eq!(authority("https://user@h"), None);
        assert_eq!(authority("https://"), None);
    }
}
