//! Per-endpoint limits: at most N connections and requests in flight (more are refused with
//! a status, never dropped), a bandwidth cap in bytes per second for each direction, and the
//! drain that graceful shutdown waits on.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::handler::{Handler, IncomingConnection, RelayBody, full_body};

/// Connections and requests in flight on one endpoint, bounded.
#[derive(Clone, Debug)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: u32,
}

impl Gate {
    /// At most `max` at once.
    #[must_use]
    pub fn new(max: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// The bound.
    #[must_use]
    pub fn max(&self) -> u32 {
        self.max
    }

    /// How many are in flight now.
    #[must_use]
    pub fn in_flight(&self) -> u32 {
        self.max - self.permits.available_permits() as u32
    }

    /// Waits until nothing is in flight, at most `deadline`; returns whether it got there.
    pub async fn drain(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.permits.acquire_many(self.max))
            .await
            .is_ok_and(|p| p.is_ok())
    }
}

/// A handler behind a [`Gate`]: over the bound, a sender is rejected with 503 and an HTTP
/// request answered with 503, both saying why.
#[derive(Debug)]
pub struct Limited<H> {
    inner: H,
    gate: Gate,
}

impl<H> Limited<H> {
    /// `inner` behind `gate`.
    pub fn new(inner: H, gate: Gate) -> Self {
        Self { inner, gate }
    }

    fn busy(&self) -> String {
        format!(
            "this endpoint serves at most {} connections at once; retry later",
            self.gate.max
        )
    }
}

impl<H: Handler> Handler for Limited<H> {
    async fn on_connection(&self, conn: IncomingConnection) {
        let Ok(_permit) = self.gate.permits.try_acquire() else {
            tracing::warn!(connection = %conn.id, max = self.gate.max, "connection limit reached; rejecting");
            let _ = conn.reject(503, &self.busy()).await;
            return;
        };
        self.inner.on_connection(conn).await;
    }

    fn on_request(
        &self,
        req: http::Request<RelayBody>,
    ) -> impl Future<Output = http::Response<RelayBody>> + Send {
        let permit = self.gate.permits.try_acquire();
        let busy = self.busy();
        async move {
            let Ok(_permit) = permit else {
                let mut resp = http::Response::new(full_body(busy));
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return resp;
            };
            self.inner.on_request(req).await
        }
    }
}

/// A token bucket in bytes per second, shared by every connection of an endpoint in one
/// direction. Bytes are charged after they move (the bucket may go into debt by one read),
/// and the next read or write waits the debt off: simple, and exact over time.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `bytes_per_sec`, with a burst of a tenth of a second (at least 16 KiB).
    #[must_use]
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        let rate = bytes_per_sec.max(1) as f64;
        let burst = (rate / 10.0).max(16.0 * 1024.0);
        Arc::new(Self {
            bytes_per_sec: rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// Charges `n` bytes; returns how long to wait before moving more.
    fn charge(&self, n: usize) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (tokens, last) = *state;
        let refilled = (tokens + (now - last).as_secs_f64() * self.bytes_per_sec).min(self.burst);
        let left = refilled - n as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.bytes_per_sec)
        }
    }
}

/// An I/O half whose reads or writes are paced by a [`RateLimit`].
#[derive(Debug)]
pub struct Throttled<T> {
    inner: T,
    limit: Option<Arc<RateLimit>>,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<T> Throttled<T> {
    /// `inner` paced by `limit` (`None`: unpaced).
    pub fn new(inner: T, limit: Option<Arc<RateLimit>>) -> Self {
        Self {
            inner,
            limit,
            wait: None,
        }
    }

    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(wait) = self.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        Poll::Ready(())
    }

    fn charge(&mut self, n: usize) {
        if let Some(limit) = &self.limit {
            let delay = limit.charge(n);
            if !delay.is_zero() {
                self.wait = Some(Box::pin(tokio::time::sleep(delay)));
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Throttled<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_wait(cx));
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.charge(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Throttled<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_wait(cx));
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.charge(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Virtual time: 1 MiB through a 256 KiB/s limit takes about four seconds of it.
    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_paces_to_its_rate() {
        let (mut a, b) = tokio::io::duplex(64 * 1024);
        let limit = RateLimit::new(256 * 1024);
        let mut reader = Throttled::new(b, Some(limit));
        let writer = tokio::spawn(async move {
            a.write_all(&vec![7u8; 1 << 20]).await.unwrap();
        });
        let started = Instant::now();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let took = started.elapsed().as_secs_f64();
        assert_eq!(got.len(), 1 << 20);
        // Burst of 25.6 KiB, then 256 KiB/s: (1024 - 25.6) / 256 ≈ 3.9 s.
        assert!((3.7..4.2).contains(&took), "{took}");
    }

    #[tokio::test]
    async fn a_gate_bounds_and_drains() {
        let gate = Gate::new(2);
        let a = gate.permits.try_acquire().unwrap();
        let _b = gate.permits.try_acquire().unwrap();
        assert!(gate.permits.try_acquire().is_err());
        assert_eq!(gate.in_flight(), 2);
        assert!(!gate.drain(Duration::from_millis(10)).await);
        drop(a);
        drop(_b);
        assert!(gate.drain(Duration::from_millis(10)).await);
    }
}
