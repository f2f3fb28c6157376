//! What the application plugs in: a [`Handler`] gets WebSocket connections (to accept as a
//! byte stream, or reject with a status) and HTTP requests (to answer with a response).
//! Closures handle connections through a blanket impl; [`ServiceHandler`] serves any tower
//! or axum service over the relay.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use relay_core::standby::StandbyReply;
use relay_io::client::ConnectOptions;
use relay_io::{WsByteStream, WsError};

use crate::ListenerError;

/// An accepted relayed connection: binary messages as bytes, Close as end of stream.
pub type RelayStream = relay_io::client::ClientStream;

/// Boxed error for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Request and response bodies on the relay: streaming, boxed.
pub type RelayBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body from bytes.
#[must_use]
pub fn full_body(bytes: impl Into<Bytes>) -> RelayBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A sender waiting to be accepted or rejected.
#[derive(Debug)]
pub struct IncomingConnection {
    /// The tracking id (the sender's `sb-hc-id`, or the broker's).
    pub id: String,
    /// The path after the hybrid connection name (empty or starting with `/`).
    pub path: String,
    /// The sender's query without `sb-hc-*` parameters.
    pub query: String,
    /// The sender's upgrade headers.
    pub headers: http::HeaderMap,
    /// The sender's address, as the broker saw it.
    pub remote: Option<SocketAddr>,
    pub(crate) answer: Answer,
}

/// Where the listener answers a sender.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The standard way: dial the single-use rendezvous address.
    Rendezvous {
        address: String,
        options: ConnectOptions,
    },
    /// On the standby socket the `accept` came on (our broker's extension). The token is
    /// dropped once answered, which lets the next standby open off the critical path.
    Standby(
        Box<relay_io::client::Connected>,
        tokio::sync::oneshot::Sender<()>,
    ),
}

impl IncomingConnection {
    /// The sub-protocols the sender offered, in its order.
    #[must_use]
    pub fn offered_protocols(&self) -> Vec<String> {
        relay_io::server::offered_protocols(&self.headers)
    }

    /// Accepts, choosing the sender's first offered sub-protocol (as Azure's clients do).
    pub async fn accept(self) -> Result<RelayStream, ListenerError> {
        let protocol = self.offered_protocols().into_iter().next();
        self.accept_with_protocol(protocol).await
    }

    /// Accepts with a chosen sub-protocol (or none).
    pub async fn accept_with_protocol(
        self,
        protocol: Option<String>,
    ) -> Result<RelayStream, ListenerError> {
        match self.answer {
            Answer::Rendezvous {
                address,
                mut options,
            } => {
                options.protocols = protocol.into_iter().collect();
                let connected = crate::rendezvous::dial(&address, &options).await?;
                Ok(WsByteStream::new(connected.reader, connected.writer))
            }
            Answer::Standby(connected, _answered) => {
                let relay_io::client::Connected {
                    mut reader,
                    mut writer,
                    ..
                } = *connected;
                let reply = StandbyReply::Accepted { protocol };
                writer.text(&reply.encode()).await.map_err(WsError::from)?;
                // Parked with a small buffer; relaying wants the full one.
                reader.set_capacity(relay_io::reader::DEFAULT_BUFFER);
                Ok(WsByteStream::new(reader, writer))
            }
        }
    }

    /// Rejects the sender, who sees `status` and `description` on its upgrade.
    pub async fn reject(self, status: u16, description: &str) -> Result<(), ListenerError> {
        let (address, options) = match self.answer {
            Answer::Rendezvous { address, options } => (address, options),
            Answer::Standby(connected, _answered) => {
                let mut writer = connected.writer;
                let reply = StandbyReply::Rejected {
                    status_code: status,
                    status_description: description.to_owned(),
                };
                writer.text(&reply.encode()).await.map_err(WsError::from)?;
                return Ok(());
            }
        };
        let url =
            relay_core::address::append_query(&address, "sb-hc-statusCode", &status.to_string());
        let url = relay_core::address::append_query(&url, "sb-hc-statusDescription", description);
        match crate::rendezvous::dial(&url, &options).await {
            // 410 Gone is how the broker confirms a reject.
            Err(WsError::Refused { status: 410, .. }) => Ok(()),
            Err(e) => Err(e.into()),
            Ok(_) => Err(ListenerError::Protocol(
                "the broker accepted a reject".into(),
            )),
        }
    }
}

/// The application side of a listener.
pub trait Handler: Send + Sync + 'static {
    /// A sender opened a WebSocket. The default rejects it with 404.
    fn on_connection(&self, conn: IncomingConnection) -> impl Future<Output = ()> + Send {
        async move {
            let _ = conn
                .reject(404, "This listener accepts no WebSocket connections")
                .await;
        }
    }

    /// A sender made an HTTP request. The default answers 501.
    fn on_request(
        &self,
        req: http::Request<RelayBody>,
    ) -> impl Future<Output = http::Response<RelayBody>> + Send {
        drop(req);
        async {
            let mut resp = http::Response::new(full_body("This listener serves no HTTP requests"));
            *resp.status_mut() = http::StatusCode::NOT_IMPLEMENTED;
            resp
        }
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(IncomingConnection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn on_connection(&self, conn: IncomingConnection) -> impl Future<Output = ()> + Send {
        self(conn)
    }
}

/// Serves a tower (or axum) service over relayed HTTP; WebSocket senders are rejected.
#[derive(Clone, Debug)]
pub struct ServiceHandler<S>(pub S);

impl<S, B, E, F> Handler for ServiceHandler<S>
where
    S: tower::Service<
            http::Request<RelayBody>,
            Response = http::Response<B>,
            Error = E,
            Future = F,
        > + Clone
        + Send
        + Sync
        + 'static,
    F: Future<Output = Result<http::Response<B>, E>> + Send,
    E: std::fmt::Display + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn on_request(
        &self,
        req: http::Request<RelayBody>,
    ) -> impl Future<Output = http::Response<RelayBody>> + Send {
        let service = self.0.clone();
        // Boxed so the compiler checks `Send` on this concrete future; an unboxed one trips
        // a higher-ranked lifetime limitation of return-position `impl Trait` in traits.
        let future: std::pin::Pin<Box<dyn Future<Output = http::Response<RelayBody>> + Send>> =
            Box::pin(async move {
                let mut service = service;
                let called: Result<http::Response<B>, E> =
                    match tower::ServiceExt::ready(&mut service).await {
                        Ok(ready) => {
                            let future: F = tower::Service::call(ready, req);
                            future.await
                        }
                        Err(e) => Err(e),
                    };
                match called {
                    Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed_unsync()),
                    Err(e) => {
                        tracing::warn!(error = %e, "service failed");
                        let mut resp = http::Response::new(full_body("internal error"));
                        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        resp
                    }
                }
            });
        future
    }
}
