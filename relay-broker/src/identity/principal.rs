//! Who calls the admin API: one [`Principal`] type for every kind of caller, so that a later
//! console session (OIDC) joins as one more variant without the handlers changing.

use std::sync::Arc;

use http::HeaderMap;
use relay_core::sas::{self, Rights, Target};

use super::Identity;
use super::error::IdentityError;
use super::policy::{Right, holds};
use crate::metrics::count;
use crate::store::{ListenerRecord, Person};

/// Who is calling.
pub(crate) enum Principal {
    /// A namespace Manage credential: everything.
    Admin,
    /// A person with a personal API token: their rights only.
    Person(Person),
}

impl Principal {
    /// Whether the caller holds `right` on `hc` (an admin holds every right).
    pub(crate) fn holds(&self, right: Right, hc: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::Person(p) => holds(p, right, hc),
        }
    }

    /// Whether the caller holds `right` on any pattern at all.
    pub(crate) fn holds_any(&self, right: Right) -> bool {
        match self {
            Self::Admin => true,
            Self::Person(p) => p.rights.iter().any(|g| g.right == right.as_str()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Admin => "admin",
            Self::Person(p) => &p.name,
        }
    }

    pub(crate) fn may_manage(&self, listener: &ListenerRecord) -> bool {
        match self {
            Self::Admin => true,
            Self::Person(p) => {
                p.name.eq_ignore_ascii_case(&listener.person)
                    || listener
                        .hybrid_connections
                        .iter()
                        .all(|hc| self.holds(Right::ListenerManage, hc))
            }
        }
    }
}

/// Prefix of personal API tokens, so they are recognisable in logs and secret scanners.
pub(crate) const PERSON_TOKEN_PREFIX: &str = "rpt_";

/// The enabled person a personal API token belongs to; the same answer for every failure.
pub(crate) fn person_by_token(
    store: &dyn crate::store::Store,
    token: &str,
) -> std::result::Result<Person, IdentityError> {
    const WRONG: &str = "the personal API token is unknown or its person is disabled";
    if !token.starts_with(PERSON_TOKEN_PREFIX) {
        return Err(IdentityError::BadCredentials(WRONG));
    }
    let name = store
        .person_for_token(&super::secrets::sha256_hex(token))?
        .ok_or(IdentityError::BadCredentials(WRONG))?;
    match store.person(&name)? {
        Some((person, _)) if !person.disabled => Ok(person),
        _ => Err(IdentityError::BadCredentials(WRONG)),
    }
}

/// The caller: a personal API token (`Bearer rpt_...`) or a namespace Manage SAS token.
pub(crate) async fn caller(
    state: &Arc<Identity>,
    headers: &HeaderMap,
) -> Result<Principal, IdentityError> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| t.starts_with(PERSON_TOKEN_PREFIX))
        .map(str::to_owned);
    let Some(token) = bearer else {
        require_manage(state, headers)?;
        return Ok(Principal::Admin);
    };
    let store = Arc::clone(&state.store);
    let found = tokio::task::spawn_blocking(move || person_by_token(&*store, &token))
        .await
        .map_err(|e| IdentityError::Internal(e.to_string()))?;
    found.map(Principal::Person).inspect_err(|_| {
        count(&state.counters.auth_failures);
    })
}

pub(crate) fn forbidden(caller: &Principal, right: Right) -> IdentityError {
    IdentityError::Forbidden(format!("{} lacks {right} for this", caller.name()))
}
/// Checks for a namespace-wide Manage token in `ServiceBusAuthorization` or `Authorization`.
pub(crate) fn require_manage(state: &Identity, headers: &HeaderMap) -> Result<(), IdentityError> {
    let token = ["servicebusauthorization", "authorization"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .ok_or(IdentityError::Unauthorized(sas::SasError::Missing))?;
    let target = Target {
        hybrid_connection: "",
        path: "",
        needs: Rights::MANAGE,
        mount: &state.mount,
    };
    sas::authorize(
        &state.store.rules(),
        token,
        target,
        crate::store::now_ms() / 1000,
    )
    .map_err(|e| {
        count(&state.counters.auth_failures);
        match e {
            sas::SasError::MissingRight(_) => {
                IdentityError::Unauthorized(sas::SasError::MissingRight("Manage"))
            }
            other => IdentityError::Unauthorized(other),
        }
    })?;
    Ok(())
}
