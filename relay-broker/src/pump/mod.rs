//! The data path: relays frames between a sender's and a listener's rendezvous sockets.
//!
//! Frames are moved as they arrive, a buffer's worth at a time, so a 100 MB message costs
//! the broker one read buffer per direction. Each direction unmasks in place and writes the
//! same bytes out; nothing is allocated per frame.
//!
//! - Close frames are forwarded verbatim and never echoed, so one side may half-close and
//!   keep reading while the other keeps sending.
//! - Pings are answered by the broker; pongs (solicited or not) are dropped.
//! - A side that vanishes without a Close gets the other side a Close 1001.
//! - A framing violation gets its sender a Close 1002, and the other side a 1001.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::Counters;

use relay_core::frame::{self, FrameError, FrameHeader, OpCode, close_code};
use relay_io::{WsError, WsReader, WsWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A control frame one direction asks the other to write (a pong or a close).
struct Control {
    opcode: OpCode,
    payload: Vec<u8>,
}

/// How a direction ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Forwarded the source's Close.
    Closed,
    /// The source vanished or broke protocol; the pair is torn down.
    Aborted,
}

/// Bytes relayed in each direction, for metrics and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Sender to listener.
    pub to_listener: u64,
    /// Listener to sender.
    pub to_sender: u64,
}

/// Relays until both sides have closed, or one side vanished. `sender` and `listener` are
/// the broker's (server-role) ends of the two upgraded sockets.
pub async fn relay<R1, W1, R2, W2>(
    sender: (WsReader<R1>, WsWriter<W1>),
    listener: (WsReader<R2>, WsWriter<W2>),
    shutdown: CancellationToken,
    counters: &Counters,
) -> Relayed
where
    R1: AsyncRead + Unpin,
    W1: AsyncWrite + Unpin,
    R2: AsyncRead + Unpin,
    W2: AsyncWrite + Unpin,
{
    let (mut s_read, mut s_write) = sender;
    let (mut l_read, mut l_write) = listener;
    // Each direction owns one writer; control frames for its source go through the other.
    let (to_sender_tx, to_sender_rx) = mpsc::channel(4);
    let (to_listener_tx, to_listener_rx) = mpsc::channel(4);
    let abort = shutdown.child_token();
    let up = Direction {
        bytes: &counters.bytes_to_listener,
        abort: abort.clone(),
        peer: to_sender_tx,
        inbox: to_listener_rx,
        relayed: 0,
        closed_dst: false,
    };
    let down = Direction {
        bytes: &counters.bytes_to_sender,
        abort: abort.clone(),
        peer: to_listener_tx,
        inbox: to_sender_rx,
        relayed: 0,
        closed_dst: false,
    };
    let (up_bytes, down_bytes) = tokio::join!(
        up.run(&mut s_read, &mut l_write),
        down.run(&mut l_read, &mut s_write)
    );
    let _ = s_write.shutdown().await;
    let _ = l_write.shutdown().await;
    Relayed {
        to_listener: up_bytes,
        to_sender: down_bytes,
    }
}

struct Direction<'a> {
    /// The broker-wide byte counter of this direction, bumped per chunk.
    bytes: &'a AtomicU64,
    abort: CancellationToken,
    /// Control frames for our source, written by the other direction.
    peer: mpsc::Sender<Control>,
    /// Control frames for our destination, from the other direction.
    inbox: mpsc::Receiver<Control>,
    relayed: u64,
    /// A Close was written to the destination.
    closed_dst: bool,
}

/// How long a direction stuck mid-frame may linger after the pair is aborted.
const ABORT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl Direction<'_> {
    async fn run<R, W>(mut self, src: &mut WsReader<R>, dst: &mut WsWriter<W>) -> u64
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let abort = self.abort.clone();
        // A direction stuck inside a frame is cut loose a moment after the pair is aborted;
        // at a frame boundary it notices at once and sends its destination a Close.
        let end = tokio::select! {
            biased;
            end = self.forward(src, dst) => end,
            () = async { abort.cancelled().await; tokio::time::sleep(ABORT_GRACE).await } => End::Aborted,
        };
        let peer = std::mem::replace(&mut self.peer, mpsc::channel(1).0);
        drop(peer);
        if end == End::Aborted {
            self.abort.cancel();
            return self.relayed;
        }
        // Our source closed cleanly: keep writing control frames (pongs, the peer's Close
        // echo) to our destination until the other direction is done.
        loop {
            tokio::select! {
                () = self.abort.cancelled() => break,
                ctrl = self.inbox.recv() => match ctrl {
                    Some(ctrl) => if self.send_control(dst, &ctrl).await.is_err() { break },
                    None => break,
                },
            }
        }
        self.relayed
    }

    async fn forward<R, W>(&mut self, src: &mut WsReader<R>, dst: &mut WsWriter<W>) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut in_message = false;
        loop {
            let header = tokio::select! {
                biased;
                Some(ctrl) = self.inbox.recv() => {
                    if self.send_control(dst, &ctrl).await.is_err() {
                        return End::Aborted;
                    }
                    continue;
                }
                () = self.abort.cancelled() => {
                    self.close_dst(dst, close_code::GOING_AWAY, "relay closed").await;
                    return End::Aborted;
                }
                header = poll_fn(|cx| src.poll_header(cx)) => header,
            };
            let header = match header {
                Ok(Some(h)) => h,
                Ok(None) | Err(WsError::Io(_) | WsError::UnexpectedEof) => {
                    self.close_dst(dst, close_code::GOING_AWAY, "peer disconnected")
                        .await;
                    return End::Aborted;
                }
                Err(e) => return self.protocol_error(dst, &e.to_string()).await,
            };
            match header.opcode {
                OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                    let continuation = header.opcode == OpCode::Continuation;
                    if continuation != in_message {
                        return self
                            .protocol_error(dst, &FrameError::BadFragment.to_string())
                            .await;
                    }
                    in_message = !header.fin;
                    if self.copy_frame(header, src, dst).await.is_err() {
                        self.abort.cancel();
                        return End::Aborted;
                    }
                }
                OpCode::Ping | OpCode::Pong | OpCode::Close => {
                    if let Some(end) = self.control_frame(header, src, dst).await {
                        return end;
                    }
                }
            }
        }
    }

    /// A control frame from `src`: a ping is answered by the peer's writer, a pong
    /// dropped, a close passed on as the end of this direction.
    async fn control_frame<R, W>(
        &mut self,
        header: FrameHeader,
        src: &mut WsReader<R>,
        dst: &mut WsWriter<W>,
    ) -> Option<End>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut payload = Vec::with_capacity(header.payload_len as usize);
        if src.read_small_payload(&mut payload).await.is_err() {
            self.close_dst(dst, close_code::GOING_AWAY, "peer disconnected")
                .await;
            return Some(End::Aborted);
        }
        match header.opcode {
            OpCode::Ping => {
                let _ = self.peer.try_send(Control {
                    opcode: OpCode::Pong,
                    payload,
                });
                None
            }
            OpCode::Close => {
                if let Err(e) = frame::parse_close(&payload) {
                    return Some(self.protocol_error(dst, &e.to_string()).await);
                }
                let close = Control {
                    opcode: OpCode::Close,
                    payload,
                };
                let _ = self.send_control(dst, &close).await;
                Some(End::Closed)
            }
            _ => None,
        }
    }

    /// Streams one frame's payload from `src` to `dst`.
    async fn copy_frame<R, W>(
        &mut self,
        header: FrameHeader,
        src: &mut WsReader<R>,
        dst: &mut WsWriter<W>,
    ) -> Result<(), WsError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let out = FrameHeader::new(header.fin, header.opcode, header.payload_len);
        let first = src.fill_payload().await?;
        dst.start_frame(out, &src.payload()[..first]).await?;
        src.consume(first);
        self.count(first);
        loop {
            let n = src.fill_payload().await?;
            if n == 0 {
                break;
            }
            dst.write_raw(src.payload()).await?;
            src.consume(n);
            self.count(n);
        }
        if !src.has_buffered() {
            dst.flush().await?;
        }
        Ok(())
    }

    fn count(&mut self, n: usize) {
        self.relayed += n as u64;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    async fn protocol_error<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut WsWriter<W>,
        why: &str,
    ) -> End {
        let reason = format!("protocol error: {why}");
        let _ = self.peer.try_send(Control {
            opcode: OpCode::Close,
            payload: frame::close_payload(close_code::PROTOCOL_ERROR, &reason),
        });
        self.close_dst(dst, close_code::GOING_AWAY, "peer broke protocol")
            .await;
        End::Aborted
    }

    /// Writes a control frame; at most one Close ever reaches a destination.
    async fn send_control<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut WsWriter<W>,
        ctrl: &Control,
    ) -> std::io::Result<()> {
        if self.closed_dst {
            return Ok(());
        }
        self.closed_dst = ctrl.opcode == OpCode::Close;
        dst.send(true, ctrl.opcode, &ctrl.payload).await?;
        dst.flush().await
    }

    async fn close_dst<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut WsWriter<W>,
        code: u16,
        reason: &str,
    ) {
        let ctrl = Control {
            opcode: OpCode::Close,
            payload: frame::close_payload(code, reason),
        };
        let _ = self.send_control(dst, &ctrl).await;
    }
}

#[cfg(test)]
mod tests;
