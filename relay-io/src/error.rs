use relay_core::frame::FrameError;

/// Errors on a WebSocket connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke RFC 6455 framing.
    #[error("protocol error: {0}")]
    Protocol(#[from] FrameError),
    /// The connection ended in the middle of a frame.
    #[error("connection closed mid-frame")]
    UnexpectedEof,
    /// The connection ended without a Close: the stream was cut, not finished.
    #[error("the connection was lost without a Close")]
    ConnectionLost,
    /// The peer ended the stream with a Close other than 1000: an abort, not an end.
    #[error("the peer aborted the stream: close {code} {reason}")]
    Aborted {
        /// The Close code.
        code: u16,
        /// The Close reason.
        reason: String,
    },
    /// A message exceeded the caller's limit.
    #[error("message of more than {0} bytes")]
    MessageTooBig(usize),
    /// The server answered the upgrade with something other than 101.
    #[error("upgrade refused: {status} {reason}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Reason phrase, which carries the broker's tracking id.
        reason: String,
    },
    /// The upgrade response was malformed or did not match the request.
    #[error("bad upgrade response: {0}")]
    Handshake(String),
    /// The URL could not be used.
    #[error("bad URL: {0}")]
    Url(String),
    /// TLS setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The proxy could not be reached, refused the tunnel, or wants credentials.
    #[error("proxy: {0}")]
    Proxy(String),
}

impl WsError {
    /// Whether retrying later can help: transport trouble and 5xx or throttling statuses,
    /// not bad credentials or a missing hybrid connection.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io(_)
            | Self::UnexpectedEof
            | Self::ConnectionLost
            | Self::Handshake(_)
            | Self::Proxy(_) => true,
            Self::Refused { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}
