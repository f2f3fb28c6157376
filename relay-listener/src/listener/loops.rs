//! The control channel's two loops: the writer (the queue, pongs, pings, renewals) and the
//! reader (accepts and requests, each within the listener's bound on work in flight).

use super::*;

impl Listener {
    pub(super) async fn write_loop(
        &self,
        mut writer: Writer,
        mut out: mpsc::Receiver<Out>,
        mut expires_at: Option<u64>,
        mut renewals: Option<watch::Receiver<u64>>,
        shutdown: &CancellationToken,
        done: &CancellationToken,
    ) -> Result<(), ListenerError> {
        let mut ping = tokio::time::interval_at(
            Instant::now() + self.config.keepalive,
            self.config.keepalive,
        );
        loop {
            let renew_at = renewal_deadline(expires_at);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let _ = writer.close(close_code::NORMAL, "listener shutting down").await;
                    return Ok(());
                }
                () = done.cancelled() => return Err(ListenerError::Protocol("control channel ended".into())),
                Some(msg) = out.recv() => match msg {
                    Out::Text(text) => writer.text(&text).await.map_err(relay_io::WsError::from)?,
                    Out::TextWithBody(text, body) => {
                        writer.send(true, OpCode::Text, text.as_bytes()).await.map_err(relay_io::WsError::from)?;
                        writer.send(true, OpCode::Binary, &body).await.map_err(relay_io::WsError::from)?;
                        writer.flush().await.map_err(relay_io::WsError::from)?;
                    }
                    Out::Pong(payload) => {
                        writer.send(true, OpCode::Pong, &payload).await.map_err(relay_io::WsError::from)?;
                        writer.flush().await.map_err(relay_io::WsError::from)?;
                    }
                },
                _ = ping.tick() => {
                    writer.send(true, OpCode::Ping, b"").await.map_err(relay_io::WsError::from)?;
                    writer.flush().await.map_err(relay_io::WsError::from)?;
                }
                Ok(()) = async {
                    match renewals.as_mut() {
                        Some(r) => r.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Move to the renewed certificate; relayed connections carry on.
                    let _ = writer.close(close_code::NORMAL, "certificate renewed").await;
                    return Err(ListenerError::Rotated);
                }
                () = tokio::time::sleep_until(renew_at) => {
                    let Credential::Token(source) = &self.config.credential else { continue };
                    let token = source.token(&self.config.audience());
                    expires_at = token.expires_at.filter(|e| Some(*e) != expires_at);
                    let renew = ListenerCommand::RenewToken(control::RenewToken { token: token.value });
                    writer.text(&renew.encode()).await.map_err(relay_io::WsError::from)?;
                    tracing::debug!("token renewed");
                }
            }
        }
    }

    pub(super) async fn read_loop<H: Handler>(
        &self,
        mut reader: Reader,
        handler: &Arc<H>,
        ctx: &Arc<http::Ctx>,
        out: &mpsc::Sender<Out>,
    ) -> Result<(), ListenerError> {
        let dead_after = self.config.keepalive * 3;
        loop {
            let message =
                tokio::time::timeout(dead_after, reader.message(MAX_INLINE_BODY_MESSAGE_BYTES))
                    .await
                    .map_err(|_| ListenerError::Dead(dead_after))??;
            let text = match message {
                Some(Message::Text(text)) => text,
                Some(Message::Ping(p)) => {
                    let _ = out.send(Out::Pong(p)).await;
                    continue;
                }
                Some(Message::Pong(_) | Message::Binary(_)) => continue,
                Some(Message::Close(status)) => {
                    let (code, reason) = status.unwrap_or((1005, String::new()));
                    return Err(ListenerError::Closed { code, reason });
                }
                None => {
                    return Err(ListenerError::Protocol(
                        "the broker closed the connection".into(),
                    ));
                }
            };
            match ListenerCommand::decode(text.as_bytes(), MAX_INLINE_BODY_MESSAGE_BYTES) {
                Ok(ListenerCommand::Accept(accept)) => self.accept(accept, handler),
                Ok(ListenerCommand::Request(request)) => {
                    let body = if request.body == Some(true) && !request.is_address_only() {
                        match reader.message(MAX_INLINE_BODY_MESSAGE_BYTES).await? {
                            Some(Message::Binary(body)) => Some(Bytes::from(body)),
                            _ => {
                                return Err(ListenerError::Protocol(
                                    "request body message missing".into(),
                                ));
                            }
                        }
                    } else {
                        None
                    };
                    match self.work.admit() {
                        Some(permit) => self.work.spawn(
                            permit,
                            http::serve(Arc::clone(handler), Arc::clone(ctx), request, body),
                        ),
                        None => http::refuse(ctx, &request.id, &self.work.busy_text()).await,
                    }
                }
                Ok(other) => tracing::debug!(?other, "ignoring unexpected command"),
                Err(e) => tracing::debug!(error = %e, "ignoring malformed control message"),
            }
        }
    }

    /// A sender's `accept`: handed to the handler when the agent has room, else rejected
    /// with 503 on its own rendezvous, so the control channel is never held up.
    fn accept<H: Handler>(&self, accept: relay_core::control::Accept, handler: &Arc<H>) {
        let answer = Answer::Rendezvous {
            address: accept.address.clone(),
            options: self.config.connect_options(),
        };
        let conn = incoming(accept, &self.config.hc, answer);
        match self.work.admit() {
            Some(permit) => {
                let handler = Arc::clone(handler);
                self.work.spawn(permit, async move {
                    handler.on_connection(conn).await;
                });
            }
            None => {
                let busy = self.work.busy_text();
                self.work.refuse(async move {
                    let _ = conn.reject(503, &busy).await;
                });
            }
        }
    }
}
