/// Listener failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The WebSocket layer failed (transport, TLS, or a refused upgrade).
    #[error(transparent)]
    Ws(#[from] relay_io::WsError),
    /// The broker broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The broker closed the control channel.
    #[error("closed by the broker: {code} {reason}")]
    Closed {
        /// Close code (1008 = token expired or refused, 1001 = going away).
        code: u16,
        /// Close reason, with the broker's tracking id.
        reason: String,
    },
    /// The certificate was renewed; the control channel reconnects with it at once.
    #[error("certificate renewed; reconnecting")]
    Rotated,
    /// The proof-of-possession login before connecting failed.
    #[error("proof-of-possession login: {0}")]
    Login(#[from] crate::IdentityError),
    /// Nothing was heard from the broker for too long.
    #[error("no traffic from the broker for {0:?}; the link is dead")]
    Dead(std::time::Duration),
}

impl ListenerError {
    /// Whether the broker refused this listener as revoked (close 4401 on a live channel,
    /// or a refused connect or login that says so).
    #[must_use]
    pub fn is_revoked(&self) -> bool {
        match self {
            Self::Closed { code, .. } => *code == 4401,
            Self::Ws(relay_io::WsError::Refused {
                status: 403,
                reason,
            }) => reason.contains("revoked"),
            Self::Login(crate::IdentityError::Refused { message, .. }) => {
                message.contains("revoked")
            }
            _ => false,
        }
    }

    /// A hint for the operator: what to check for this failure.
    #[must_use]
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Ws(relay_io::WsError::Refused { status: 401, .. }) => {
                Some("the key is wrong, expired, or not valid for this hybrid connection")
            }
            Self::Ws(relay_io::WsError::Refused { status: 403, .. }) => Some(
                "the rule lacks the Listen right, or the listener quota of the hybrid connection is full",
            ),
            Self::Ws(relay_io::WsError::Refused { status: 404, .. }) => {
                Some("the hybrid connection does not exist on this broker")
            }
            Self::Ws(relay_io::WsError::Tls(_)) => {
                Some("check --ca-cert and the broker's certificate")
            }
            Self::Closed { code: 1008, .. } => {
                Some("the token or certificate expired, or the token's renewal was refused")
            }
            Self::Login(crate::IdentityError::Refused { status: 404, .. }) => Some(
                "the broker does not allow proof-of-possession logins ([ca].proof_of_possession)",
            ),
            Self::Login(crate::IdentityError::Refused { .. }) => Some(
                "the broker refused the certificate: revoked, expired, or the broker's address (aud) differs; check --endpoint",
            ),
            Self::Closed { code: 4409, .. } => Some(
                "a newer agent with the same instance name took over; if this one is still wanted, give it its own [agent].instance",
            ),
            Self::Closed { code: 4401, .. } => {
                Some("this listener was revoked (or its person disabled); register it again")
            }
            _ => None,
        }
    }
}
