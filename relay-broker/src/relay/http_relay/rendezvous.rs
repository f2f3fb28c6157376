//! The listener's side of an HTTP rendezvous (`sb-hc-action=request`): the request goes out
//! over it when it was too large to go inline, and the response comes back over it, its
//! body streamed to the sender as it arrives.

use super::*;

/// Serves the listener's side of an HTTP rendezvous once its upgrade completes.
pub(crate) fn spawn_rendezvous(
    shared: &Arc<Relay>,
    upgrade: OnUpgrade,
    listener_id: ListenerKey,
    request_id: String,
) {
    let shared = Arc::clone(shared);
    let span =
        tracing::info_span!("http_rendezvous", request = %request_id, listener = %listener_id);
    shared.tasks.clone().spawn(
        async move {
            let Ok(upgraded) = upgrade.await else { return };
            let (mut reader, mut writer) =
                relay_io_halves(upgraded, shared.limits.relay_buffer_bytes);
            let idle = shared.limits.http_request_timeout;
            if let Some(outgoing) = shared.rendezvous.take_outgoing(&request_id) {
                let sent = &shared.counters.bytes_to_listener;
                if let Err(e) = send_request(&mut writer, outgoing, idle, sent).await {
                    tracing::debug!(error = %e, "sending the request over the rendezvous failed");
                    shared.rendezvous.fail(&request_id, &listener_id);
                    let _ = writer.close(close_code::GOING_AWAY, "sender gone").await;
                    return;
                }
            }
            let rendezvous = Rendezvous {
                shared: &shared,
                request_id: &request_id,
                listener_id: &listener_id,
                idle,
            };
            match rendezvous.relay_response(&mut reader, &mut writer).await {
                Ok(()) => {
                    let _ = writer.close(close_code::NORMAL, "").await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "relaying the response failed");
                    shared.rendezvous.fail(&request_id, &listener_id);
                    let _ = writer
                        .close(close_code::PROTOCOL_ERROR, "bad response")
                        .await;
                }
            }
        }
        .instrument(span),
    );
}

/// Streams the request JSON and body (one binary message, in fragments) to the listener.
async fn send_request<W: AsyncWrite + Unpin>(
    writer: &mut WsWriter<W>,
    outgoing: OutgoingRequest,
    idle: Duration,
    sent: &AtomicU64,
) -> Result<(), WsError> {
    writer.text(&outgoing.json).await?;
    let Some(mut body) = outgoing.body else {
        return Ok(());
    };
    let mut opcode = OpCode::Binary;
    loop {
        let frame = tokio::time::timeout(idle, body.frame())
            .await
            .map_err(|_| WsError::Io(std::io::ErrorKind::TimedOut.into()))?;
        match frame {
            None => break,
            Some(Err(e)) => return Err(WsError::Io(std::io::Error::other(e))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                        writer.send(false, opcode, &data).await?;
                        opcode = OpCode::Continuation;
                    }
                }
            }
        }
    }
    writer.send(true, opcode, &[]).await?;
    writer.flush().await?;
    Ok(())
}

/// One request's rendezvous, as its task holds it.
pub(super) struct Rendezvous<'a> {
    pub(super) shared: &'a Relay,
    pub(super) request_id: &'a str,
    pub(super) listener_id: &'a ListenerKey,
    /// The longest gap allowed between the listener's frames.
    pub(super) idle: Duration,
}

impl Rendezvous<'_> {
    /// Reads the listener's response on the rendezvous and hands it to the waiting sender,
    /// its body streamed as it arrives.
    pub(super) async fn relay_response<R, W>(
        &self,
        reader: &mut WsReader<R>,
        writer: &mut WsWriter<W>,
    ) -> Result<(), WsError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let head = self.response_head(reader, writer).await?;
        if !head.body {
            self.shared.rendezvous.complete(
                self.request_id,
                self.listener_id,
                ListenerResponse {
                    head,
                    body: ResponseBody::Empty,
                },
            );
            return Ok(());
        }
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        let answer = ListenerResponse {
            head,
            body: ResponseBody::Stream(rx),
        };
        if !self
            .shared
            .rendezvous
            .complete(self.request_id, self.listener_id, answer)
        {
            return Ok(());
        }
        let result = self.stream_body(reader, writer, &tx).await;
        if let Err(e) = &result {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
        result
    }

    /// The listener's `response` for this request, answering pings while it waits; anything
    /// else first is a protocol error.
    async fn response_head<R, W>(
        &self,
        reader: &mut WsReader<R>,
        writer: &mut WsWriter<W>,
    ) -> Result<control::Response, WsError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let limit = self.shared.limits.max_control_message_bytes;
        loop {
            let message = tokio::time::timeout(self.idle, reader.message(limit))
                .await
                .map_err(|_| timed_out())??;
            match message {
                Some(Message::Text(text)) => {
                    match ListenerCommand::decode(text.as_bytes(), limit) {
                        Ok(ListenerCommand::Response(head))
                            if head.request_id == self.request_id =>
                        {
                            return Ok(head);
                        }
                        _ => {
                            return Err(WsError::Handshake(
                                "expected the response for this request".into(),
                            ));
                        }
                    }
                }
                Some(Message::Ping(p)) => {
                    writer.send(true, OpCode::Pong, &p).await?;
                    writer.flush().await?;
                }
                Some(Message::Pong(_)) => {}
                Some(Message::Binary(b)) if b.is_empty() => {}
                Some(Message::Binary(_)) => {
                    return Err(WsError::Handshake("body before response".into()));
                }
                Some(Message::Close(_)) | None => return Err(WsError::UnexpectedEof),
            }
        }
    }

    /// Moves the body message's fragments into the sender's response as they arrive.
    async fn stream_body<R, W>(
        &self,
        reader: &mut WsReader<R>,
        writer: &mut WsWriter<W>,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Result<(), WsError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut started = false;
        loop {
            let header = tokio::time::timeout(self.idle, reader.header())
                .await
                .map_err(|_| timed_out())??;
            let header = header.ok_or(WsError::UnexpectedEof)?;
            match header.opcode {
                OpCode::Binary | OpCode::Continuation
                    if (header.opcode == OpCode::Continuation) == started =>
                {
                    started = true;
                    while tokio::time::timeout(self.idle, reader.fill_payload())
                        .await
                        .map_err(|_| timed_out())??
                        > 0
                    {
                        let chunk = Bytes::copy_from_slice(reader.payload());
                        let n = chunk.len();
                        reader.consume(n);
                        self.shared
                            .counters
                            .bytes_to_sender
                            .fetch_add(n as u64, Ordering::Relaxed);
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the sender went away
                        }
                    }
                    if header.fin {
                        return Ok(());
                    }
                }
                OpCode::Ping => {
                    let mut payload = Vec::new();
                    reader.read_small_payload(&mut payload).await?;
                    writer.send(true, OpCode::Pong, &payload).await?;
                    writer.flush().await?;
                }
                OpCode::Pong => reader.read_small_payload(&mut Vec::new()).await?,
                _ => {
                    return Err(WsError::Handshake(
                        "unexpected frame in the response body".into(),
                    ));
                }
            }
        }
    }
}

fn timed_out() -> WsError {
    WsError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "listener idle",
    ))
}
