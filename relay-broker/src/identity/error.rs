//! Every status the identity plane (registration, renewal, proof of possession, the admin
//! API) answers with, rendered in the broker's one error shape.

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use relay_core::sas::SasError;
use relay_core::tracking::TrackingId;

use crate::seams::authority::Refusal;
use crate::store::StoreError;

/// A failure of a control-plane call.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The call is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No token, or a token without the right (an administrator's SAS token).
    #[error("{0}")]
    Unauthorized(SasError),
    /// A person's password, an enrollment or personal API token was refused.
    #[error("{0}")]
    BadCredentials(&'static str),
    /// A proof-of-possession login or session ticket was refused.
    #[error("proof of possession refused: {0}")]
    ProofRejected(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The entity (or the feature: registration without `[ca]`) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The entity already exists, or is defined in the configuration file.
    #[error("{0}")]
    Conflict(String),
    /// Too many failed attempts from this client with this credential.
    #[error("Too many failed authorization attempts; retry later")]
    Throttled,
    /// A bound (pending proof-of-possession challenges) is exhausted.
    #[error("The broker is at capacity: {0}")]
    Busy(&'static str),
    /// The store cannot take the write now; nothing was changed.
    #[error("The broker's store is unavailable, nothing was changed; retry later ({0})")]
    StoreUnavailable(String),
    /// The broker's own failure.
    #[error("Internal error: {0}")]
    Internal(String),
}

impl IdentityError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(e) if e.status() == 403 => StatusCode::FORBIDDEN,
            Self::Unauthorized(_) | Self::BadCredentials(_) | Self::ProofRejected(_) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Self::Busy(_) | Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable error code for the JSON body (the same spelling as the data plane's).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized(_) => "TokenMissingOrInvalid",
            Self::BadCredentials(_) | Self::ProofRejected(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound(_) => "NotFound",
            Self::Conflict(_) => "Conflict",
            Self::Throttled => "TooManyRequests",
            Self::Busy(_) => "ServerBusy",
            Self::StoreUnavailable(_) => "StoreUnavailable",
            Self::Internal(_) => "InternalServerError",
        }
    }

    fn retry_after(&self) -> Option<&'static str> {
        match self {
            Self::Throttled => Some("5"),
            Self::Busy(_) | Self::StoreUnavailable(_) => Some("1"),
            _ => None,
        }
    }
}

impl IntoResponse for IdentityError {
    fn into_response(self) -> Response {
        let tracking = TrackingId::new();
        let text = crate::error::tracked_text(&self, &tracking);
        crate::error::json_error(
            self.status(),
            self.code(),
            &text,
            &tracking,
            self.retry_after(),
        )
    }
}

/// What a store failure means to a caller: an existing name is a conflict, a store that
/// cannot write now is a 503 to retry, anything else is the broker's own failure.
impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(name) => Self::Conflict(format!("'{name}' already exists")),
            StoreError::FromConfig(name) => Self::Conflict(format!(
                "'{name}' is defined in the broker's configuration file"
            )),
            StoreError::Unavailable(why) => Self::StoreUnavailable(why),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Identity's answer to the data plane's question, in the seam's terms.
impl From<IdentityError> for Refusal {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::BadCredentials(why) => Self::Unknown(why),
            IdentityError::StoreUnavailable(why) => Self::Unavailable(why),
            IdentityError::Internal(why) => Self::Internal(why),
            other => Self::Forbidden(other.to_string()),
        }
    }
}

/// A blocking task that did not finish (it panicked or the runtime is stopping).
impl From<tokio::task::JoinError> for IdentityError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(e.to_string())
    }
}
