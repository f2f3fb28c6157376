//! The control channel's reader: pongs and closes for the writer, inline responses to the
//! requests they answer (here or on the node that waits), renewals, and a bound on what the
//! listener may send unasked.

use super::*;

impl Channel<'_> {
    /// Reads the listener's messages until the channel ends: renewals, inline responses
    /// (a text head, then its body message), pings. One loop over one stream, because a
    /// body message belongs to the head read just before it.
    pub(super) async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut reader: WsReader<R>,
        internal: &mpsc::Sender<Internal>,
    ) {
        let limit = self
            .shared
            .limits
            .max_control_message_bytes
            .max(MAX_INLINE_BODY_MESSAGE_BYTES);
        let mut state = ReadState::default();
        loop {
            let message = match reader.message(limit).await {
                Ok(Some(m)) => m,
                Ok(None) | Err(WsError::Io(_) | WsError::UnexpectedEof) => return,
                Err(e) => {
                    let (code, why) = match e {
                        WsError::MessageTooBig(n) => (
                            close_code::MESSAGE_TOO_BIG,
                            format!("Control message larger than {n} bytes"),
                        ),
                        e => (close_code::PROTOCOL_ERROR, format!("Protocol error: {e}")),
                    };
                    let _ = internal.send(Internal::Close(code, self.text(&why))).await;
                    return;
                }
            };
            self.touch();
            let verdict = match message {
                Message::Ping(payload) => {
                    let _ = internal.send(Internal::Pong(payload)).await;
                    Ok(())
                }
                Message::Pong(_) => Ok(()),
                Message::Close(status) => {
                    let code = status.map_or(close_code::NORMAL, |(c, _)| c);
                    let _ = internal.send(Internal::Close(code, String::new())).await;
                    return;
                }
                Message::Binary(body) => {
                    self.on_binary(&mut state, body);
                    Ok(())
                }
                Message::Text(text) => self.on_text(&mut state, &text),
            };
            if let Err((code, why)) = verdict {
                let _ = internal.send(Internal::Close(code, self.text(&why))).await;
                return;
            }
            if state.unsolicited > MAX_UNSOLICITED {
                let why = self.text("Too many unsolicited messages");
                let _ = internal
                    .send(Internal::Close(close_code::POLICY_VIOLATION, why))
                    .await;
                return;
            }
        }
    }

    fn unsolicited(&self, state: &mut ReadState, what: &str) {
        state.unsolicited += 1;
        crate::metrics::count(&self.shared.counters.unsolicited);
        tracing::debug!(what, "dropped unsolicited listener message");
    }

    fn on_binary(&self, state: &mut ReadState, body: Vec<u8>) {
        match state.awaiting_body.take() {
            Some((head, true)) => {
                let response = ListenerResponse {
                    head: head.clone(),
                    body: ResponseBody::Full(body.into()),
                };
                self.shared
                    .complete(&head.request_id, &self.handle.listener.key, response);
            }
            Some((_, false)) => {}
            // hyco-https follows a body-less response with an empty binary frame.
            None if body.is_empty() => {}
            None => self.unsolicited(state, "binary message"),
        }
    }

    fn on_text(&self, state: &mut ReadState, text: &str) -> Result<(), (u16, String)> {
        if let Some((head, true)) = state.awaiting_body.take() {
            // The promised body never came: the request fails rather than hang.
            self.shared
                .fail(&head.request_id, &self.handle.listener.key);
        }
        match ListenerCommand::decode(
            text.as_bytes(),
            self.shared.limits.max_control_message_bytes,
        ) {
            // A certificate's lifetime is not extended by a token.
            Ok(ListenerCommand::RenewToken(_)) if self.cert.is_some() => {
                self.unsolicited(state, "renewToken on a certificate channel");
            }
            Ok(ListenerCommand::RenewToken(renew)) => {
                match check_renewal(self.shared, &self.handle.listener.hc, &renew.token) {
                    Ok(left) => {
                        self.timers().renewed(now(), left);
                        tracing::debug!(left_secs = left.as_secs(), "token renewed");
                    }
                    Err(e) => {
                        return Err((
                            close_code::POLICY_VIOLATION,
                            format!("Token renewal refused: {e}"),
                        ));
                    }
                }
            }
            Ok(ListenerCommand::Response(head)) => {
                let pending = self
                    .shared
                    .expects(&head.request_id, &self.handle.listener.key);
                if !pending {
                    self.unsolicited(state, "response to no pending request");
                }
                if head.body {
                    state.awaiting_body = Some((head, pending));
                } else if pending {
                    let id = head.request_id.clone();
                    self.shared.complete(
                        &id,
                        &self.handle.listener.key,
                        ListenerResponse {
                            head,
                            body: ResponseBody::Empty,
                        },
                    );
                }
            }
            Ok(_) => self.unsolicited(state, "broker-only command"),
            Err(_) => self.unsolicited(state, "malformed control message"),
        }
        Ok(())
    }
}

#[derive(Default)]
struct ReadState {
    /// A `response` whose body message comes next, and whether its request is pending.
    awaiting_body: Option<(Response, bool)>,
    unsolicited: u32,
}
