//! Authorization of upgrades and relayed requests: find the token, check it against the
//! store's rules, and throttle repeated failures.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use relay_core::RelayQuery;
use relay_core::auth::{Presented, presented_token};
use relay_core::keepalive::credential_left;
use relay_core::sas::{self, Rights, SasError, SasToken, Target};

use crate::RelayError;
use crate::limiter::AuthLimiter;
use crate::relay::Relay;
use crate::seams::Transport;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What an authorized request presented.
#[derive(Debug)]
pub(crate) struct Authorized {
    /// Where the token came from (decides what is stripped).
    pub(crate) presented: Presented,
    /// What was left of the token's life by the wall clock the check read, when a token
    /// was checked: one reading, so that a clock stepped just after cannot make the channel
    /// it opens expire at once or late.
    pub(crate) left: Option<Duration>,
    /// The rule whose key signed the token, when a token was checked.
    pub(crate) rule: Option<String>,
}

/// The request being authorized.
pub(crate) struct Claim<'a> {
    pub(crate) headers: &'a HeaderMap,
    pub(crate) query: &'a RelayQuery,
    pub(crate) transport: Option<Transport>,
    pub(crate) hc: &'a str,
    /// `hc` or `hc/suffix`, decoded.
    pub(crate) path: &'a str,
    pub(crate) needs: Rights,
    /// False for senders of a hybrid connection that allows anonymous senders.
    pub(crate) required: bool,
}

/// Checks a claim; failures are counted and, when repeated, throttled.
pub(crate) async fn authorize(shared: &Relay, claim: Claim<'_>) -> Result<Authorized, RelayError> {
    let presented = presented_token(claim.headers, claim.query.token.as_deref(), claim.required);
    if !claim.required {
        return Ok(Authorized {
            presented,
            left: None,
            rule: None,
        });
    }
    let ip = claim
        .transport
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |t| t.peer.ip());
    let credential = AuthLimiter::fingerprint(presented.token.as_deref());
    if shared.limiter.is_throttled(ip, credential) {
        crate::metrics::count(&shared.counters.auth_failures);
        shared.limiter.hold().await;
        return Err(RelayError::Throttled);
    }
    let now = unix_now();
    let result = match presented.token.as_deref() {
        None => Err(SasError::Missing),
        Some(token) => {
            let target = Target {
                hybrid_connection: claim.hc,
                path: claim.path,
                needs: claim.needs,
                mount: &shared.mount,
            };
            sas::authorize(&shared.store.rules(), token, target, now).map(|rule| rule.name.clone())
        }
    };
    match result {
        Ok(rule) => {
            let left = presented
                .token
                .as_deref()
                .and_then(|t| SasToken::parse(t).ok())
                .map(|t| credential_left(t.expires_at, now));
            Ok(Authorized {
                presented,
                left,
                rule: Some(rule),
            })
        }
        Err(e) => {
            crate::metrics::count(&shared.counters.auth_failures);
            shared.limiter.record_failure(ip, credential);
            tracing::debug!(hc = claim.hc, error = %e, "authorization refused");
            Err(RelayError::Unauthorized(e))
        }
    }
}

/// Checks a `renewToken` for a listener's control channel; returns what is left of the new
/// token's life, by the same reading of the wall clock as the check.
pub(crate) fn check_renewal(shared: &Relay, hc: &str, token: &str) -> Result<Duration, SasError> {
    let target = Target {
        hybrid_connection: hc,
        path: hc,
        needs: Rights::LISTEN,
        mount: &shared.mount,
    };
    let now = unix_now();
    sas::authorize(&shared.store.rules(), token, target, now)?;
    SasToken::parse(token).map(|t| credential_left(t.expires_at, now))
}
