//! Every status the data plane answers with is decided here, with the tracking id that goes
//! into the status text (hyco and .NET clients show it) and the JSON error body. The identity
//! plane decides its own in `identity/error.rs` and renders them with `json_error`.

use axum::body::Body;
use http::{Response, StatusCode, header};
use relay_core::sas::SasError;
use relay_core::tracking::TrackingId;

/// A failure the broker reports to a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Path outside the relay grammar, or an unknown action.
    #[error("{0}")]
    BadRequest(String),
    /// No hybrid connection with that name.
    #[error("Endpoint does not exist")]
    EndpointNotFound,
    /// Token missing or invalid.
    #[error("{0}")]
    Unauthorized(SasError),
    /// A browser session cookie was refused (expired, or signed by a key since rotated).
    #[error("{0}; open the address with a token again")]
    Session(relay_core::web::SessionError),
    /// A browser session cookie came with a fetch from another origin (CSRF guard).
    #[error("A browser session is only accepted from pages of its own origin")]
    CrossOrigin,
    /// A person's password or an enrollment token was refused.
    #[error("{0}")]
    BadCredentials(&'static str),
    /// A proof-of-possession login or session ticket was refused.
    #[error("proof of possession refused: {0}")]
    ProofRejected(String),
    /// Valid token without the needed right, or a full listener quota.
    #[error("{0}")]
    Forbidden(String),
    /// A rendezvous address that is unknown, used or expired.
    #[error("The rendezvous address is invalid or has expired")]
    RendezvousExpired,
    /// Too many failed attempts from this client with this credential.
    #[error("Too many failed authorization attempts; retry later")]
    Throttled,
    /// No listener is connected (HTTP sender: 502).
    #[error("No listener is connected to this hybrid connection")]
    NoListener,
    /// No listener is connected (WebSocket sender: 404, which .NET treats as transient).
    #[error("No listener is connected to this hybrid connection")]
    ListenerNotConnected,
    /// The request's headers exceed the 32 kB limit.
    #[error("Request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    /// An administered entity (person) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// An administered entity already exists.
    #[error("{0}")]
    Conflict(String),
    /// The durable store failed.
    #[error("Internal error: {0}")]
    Internal(String),
    /// The durable store cannot take a write now (locked, disk full); nothing was changed.
    #[error("The broker's store is unavailable, nothing was changed; retry later ({0})")]
    StoreUnavailable(String),
    /// CONNECT cannot be relayed.
    #[error("The method cannot be relayed")]
    MethodNotAllowed,
    /// The listener went away or broke protocol before answering.
    #[error("The listener failed to answer: {0}")]
    ListenerFailed(String),
    /// The listener did not answer in time.
    #[error(
        "The request was routed to the listener but the listener did not respond in the required time"
    )]
    GatewayTimeout,
    /// The listener rejected the connection with its own status.
    #[error("{description}")]
    Rejected {
        /// The listener's status.
        status: StatusCode,
        /// The listener's description.
        description: String,
    },
    /// A bound (pending rendezvous, control queue) is exhausted.
    #[error("The broker is at capacity: {0}")]
    Busy(&'static str),
    /// The broker is shutting down.
    #[error("The broker is shutting down")]
    ShuttingDown,
    /// This node has lost the cluster (NATS) and fenced itself: it takes no listeners and
    /// says not ready until it is back.
    #[error("This broker node is not in its cluster now; retry on another node ({0})")]
    Fenced(String),
}

impl RelayError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::EndpointNotFound | Self::ListenerNotConnected => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unauthorized(e) if e.status() == 403 => StatusCode::FORBIDDEN,
            Self::Unauthorized(_)
            | Self::Session(_)
            | Self::BadCredentials(_)
            | Self::ProofRejected(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::RendezvousExpired | Self::CrossOrigin => {
                StatusCode::FORBIDDEN
            }
            Self::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Self::NoListener | Self::ListenerFailed(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Rejected { status, .. } => *status,
            Self::Busy(_) | Self::ShuttingDown | Self::StoreUnavailable(_) | Self::Fenced(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// A stable error code for the JSON body, in Azure's spelling where one exists.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::EndpointNotFound => "EndpointNotFound",
            Self::Unauthorized(_) | Self::Session(_) => "TokenMissingOrInvalid",
            Self::CrossOrigin => "CrossOrigin",
            Self::BadCredentials(_) | Self::ProofRejected(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::RendezvousExpired => "RendezvousExpired",
            Self::Throttled => "TooManyRequests",
            Self::NoListener | Self::ListenerNotConnected => "NoListener",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::HeadersTooLarge(_) => "HeadersTooLarge",
            Self::NotFound(_) => "NotFound",
            Self::Conflict(_) => "Conflict",
            Self::Internal(_) => "InternalServerError",
            Self::ListenerFailed(_) => "BadGateway",
            Self::GatewayTimeout => "GatewayTimeout",
            Self::Rejected { .. } => "RejectedByListener",
            Self::Busy(_) => "ServerBusy",
            Self::StoreUnavailable(_) => "StoreUnavailable",
            Self::ShuttingDown => "ServiceUnavailable",
            Self::Fenced(_) => "ClusterUnavailable",
        }
    }

    /// The text used in status lines and close reasons: message plus tracking id.
    #[must_use]
    pub fn text(&self, tracking: &TrackingId) -> String {
        tracked_text(self, tracking)
    }

    /// The HTTP response: status with the tracking id in the reason phrase, and a JSON body.
    #[must_use]
    pub fn into_response(self, tracking: &TrackingId) -> Response<Body> {
        let retry_after = match self {
            Self::Throttled => Some("5"),
            Self::Busy(_) | Self::ShuttingDown | Self::StoreUnavailable(_) | Self::Fenced(_) => {
                Some("1")
            }
            _ => None,
        };
        json_error(
            self.status(),
            self.code(),
            &self.text(tracking),
            tracking,
            retry_after,
        )
    }
}

/// A message with its tracking id, on one line (it goes into status lines and close
/// reasons): `"<message>. TrackingId:<id>"`.
pub(crate) fn tracked_text(message: &dyn std::fmt::Display, tracking: &TrackingId) -> String {
    format!(
        "{}. TrackingId:{tracking}",
        message.to_string().replace(['\r', '\n'], " ")
    )
}

/// The broker's one shape of an error answer, for both planes: the status with the tracking
/// id in its reason phrase (hyco and .NET clients show it), `x-ms-tracking-id`, an optional
/// `Retry-After`, and `{"error": {"code", "message"}}`.
pub(crate) fn json_error(
    status: StatusCode,
    code: &str,
    text: &str,
    tracking: &TrackingId,
    retry_after: Option<&'static str>,
) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": text } }).to_string();
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(id) = http::HeaderValue::from_str(tracking.as_str()) {
        headers.insert("x-ms-tracking-id", id);
    }
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static(secs));
    }
    let reason = format!("{} {text}", status.canonical_reason().unwrap_or("Error"));
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.into_bytes()) {
        resp.extensions_mut().insert(phrase);
    }
    resp
}

/// Identity's refusal of a certificate listener, in the data plane's statuses.
impl From<crate::seams::authority::Refusal> for RelayError {
    fn from(r: crate::seams::authority::Refusal) -> Self {
        use crate::seams::authority::Refusal;
        match r {
            Refusal::Unknown(why) => Self::BadCredentials(why),
            Refusal::Forbidden(why) => Self::Forbidden(why),
            Refusal::Unavailable(why) => Self::StoreUnavailable(why),
            Refusal::Internal(why) => Self::Internal(why),
        }
    }
}

/// What a store failure means to a client: an existing name is a conflict, anything else is
/// the broker's own failure.
impl From<crate::store::StoreError> for RelayError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
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
