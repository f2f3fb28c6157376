//! What a person may do: the closed list of rights, and name patterns.

use crate::store::Person;

use super::error::IdentityError;

/// A right a person can hold, on a pattern of hybrid connection names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Register listeners (and create dynamic hybrid connections) under the pattern.
    ListenerRegister,
    /// List and revoke listeners under the pattern.
    ListenerManage,
    /// Read the audit trail.
    AuditRead,
}

impl Right {
    /// Every right, in the order the API documents them.
    pub const ALL: [Self; 3] = [
        Self::ListenerRegister,
        Self::ListenerManage,
        Self::AuditRead,
    ];

    /// The right's name on the wire and in the store.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ListenerRegister => "listener.register",
            Self::ListenerManage => "listener.manage",
            Self::AuditRead => "audit.read",
        }
    }

    /// The right named `name`, if it is one.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `person` holds `right` on `hc`.
#[must_use]
pub fn holds(person: &Person, right: Right, hc: &str) -> bool {
    person
        .rights
        .iter()
        .any(|g| g.right == right.as_str() && pattern_covers(&g.pattern, hc))
}

/// Whether a grant's pattern covers a hybrid connection: exact (case-insensitive), or a
/// prefix when the pattern ends in `*`.
pub(crate) fn pattern_covers(pattern: &str, hc: &str) -> bool {
    let (pattern, hc) = (pattern.to_ascii_lowercase(), hc.to_ascii_lowercase());
    match pattern.strip_suffix('*') {
        Some(prefix) => hc.starts_with(prefix),
        None => pattern == hc,
    }
}

/// Checks that an active person may register listeners on every one of `hcs`.
pub(crate) fn may_register(person: &Person, hcs: &[String]) -> Result<(), IdentityError> {
    if person.disabled {
        return Err(IdentityError::Forbidden(format!(
            "person '{}' is disabled",
            person.name
        )));
    }
    for hc in hcs {
        if !holds(person, Right::ListenerRegister, hc) {
            return Err(IdentityError::Forbidden(format!(
                "person '{}' lacks listener.register on '{hc}'",
                person.name
            )));
        }
    }
    Ok(())
}

/// Validates the hybrid connection list of a registration.
pub(crate) fn checked_hcs(hcs: &[String]) -> Result<Vec<String>, IdentityError> {
    let hcs: Vec<String> = hcs
        .iter()
        .map(|h| h.trim().trim_matches('/').to_owned())
        .filter(|h| !h.is_empty())
        .collect();
    if hcs.is_empty()
        || hcs.len() > 32
        || hcs
            .iter()
            .any(|h| h.len() > relay_core::address::MAX_NAME_LEN)
    {
        return Err(IdentityError::BadRequest(
            "hybrid_connections: 1 to 32 names".into(),
        ));
    }
    Ok(hcs)
}
