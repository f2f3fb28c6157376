//! Where a listener's control-channel token comes from. SAS keys and ready tokens today;
//! the registration issue adds certificate-based sources behind the same trait.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A token and when it stops being valid.
#[derive(Clone)]
pub struct Token {
    /// `SharedAccessSignature ...`
    pub value: String,
    /// Unix seconds; `None` when unknown (a ready token that cannot be parsed).
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Supplies tokens for an audience (the hybrid connection's URL).
pub trait TokenSource: Send + Sync + 'static {
    /// A token valid for `audience` now.
    fn token(&self, audience: &str) -> Token;

    /// What an operator should look at when the broker refuses the token (never the secret).
    fn describe(&self) -> String {
        "the SAS token".into()
    }
}

/// Mints SAS tokens from a rule name and key.
#[derive(Clone)]
pub struct SasKeySource {
    key_name: String,
    key: String,
    lifetime: Duration,
}

impl std::fmt::Debug for SasKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SasKeySource")
            .field("key_name", &self.key_name)
            .finish_non_exhaustive()
    }
}

impl SasKeySource {
    /// Tokens valid for one hour, as Azure's clients mint them.
    #[must_use]
    pub fn new(key_name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            key_name: key_name.into(),
            key: key.into(),
            lifetime: Duration::from_secs(3600),
        }
    }

    /// Changes the lifetime of minted tokens.
    #[must_use]
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl TokenSource for SasKeySource {
    fn describe(&self) -> String {
        format!("the key of rule '{}'", self.key_name)
    }

    fn token(&self, audience: &str) -> Token {
        let expires_at = unix_now() + self.lifetime.as_secs().max(1);
        Token {
            value: relay_core::sas::create_token(audience, &self.key_name, &self.key, expires_at),
            expires_at: Some(expires_at),
        }
    }
}

/// A token made elsewhere; it is never renewed.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl TokenSource for StaticToken {
    fn token(&self, _audience: &str) -> Token {
        let expires_at = relay_core::sas::SasToken::parse(&self.0)
            .ok()
            .map(|t| t.expires_at);
        Token {
            value: self.0.clone(),
            expires_at,
        }
    }
}
