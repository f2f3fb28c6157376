//! One connection to PostgreSQL behind the store's synchronous methods.
//!
//! tokio-postgres splits a connection into a `Client` (requests over a channel) and a
//! `Connection` (the socket). The connection runs on a small runtime of the store's own, so
//! the store works the same from a runtime thread, a blocking thread or a plain test; the
//! client's futures need no runtime and are waited on with a plain executor. A call that
//! finds the connection gone reconnects first; one that gets no answer within
//! [`CALL_TIMEOUT`] drops the connection, so a hung server costs one bounded wait per
//! call, never a store stuck for good.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::store::StoreError;

/// How long one store call (its statements and commit) may take.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct Db {
    config: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
    /// Drives the connections; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's own Debug leaves the password out.
        f.debug_struct("Db").field("config", &self.config).finish()
    }
}

impl Db {
    pub(super) fn new(mut config: tokio_postgres::Config) -> Result<Self, StoreError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives(true);
        config.application_name("relay-broker");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Database(format!("starting the PostgreSQL driver: {e}")))?;
        Ok(Self {
            config,
            client: Mutex::new(None),
            runtime: Some(runtime),
        })
    }

    /// Runs `f` on the connection (connecting first if needed), bounded by
    /// [`CALL_TIMEOUT`].
    pub(super) fn run<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect(runtime)?);
        }
        let client = slot.as_mut().expect("connected above");
        // The timer belongs to the store's runtime, whatever thread waits here.
        let bounded = {
            let _context = runtime.enter();
            tokio::time::timeout(CALL_TIMEOUT, f(client))
        };
        match futures_executor::block_on(bounded) {
            // A connection that closed meanwhile is replaced by the next call.
            Ok(result) => result,
            Err(_) => {
                // A request may still be in flight: this connection cannot be trusted.
                *slot = None;
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                )))
            }
        }
    }

    fn connect(&self, runtime: &tokio::runtime::Runtime) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let connecting = runtime.spawn(async move {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "the PostgreSQL connection ended");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        match futures_executor::block_on(connecting) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "connecting to PostgreSQL: {e}"
            ))),
            Err(e) => Err(StoreError::Database(format!(
                "connecting to PostgreSQL: {e}"
            ))),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which a runtime thread may not do; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A transaction that fails like these is rolled back whole: nothing half-written.
        let Some(state) = e.code() else {
            // No SQLSTATE: the connection itself failed.
            return Self::Unavailable(e.to_string());
        };
        let code = state.code();
        let retriable = code.starts_with("08") // connection exception
            || code.starts_with("53") // insufficient resources: disk full, out of memory
            || code.starts_with("57") // operator intervention: shutdown, cancel
            || code.starts_with("40") // serialization failure, deadlock
            || code == "55P03" // lock not available
            || code == "25006"; // read-only transaction (a standby)
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        if retriable {
            Self::Unavailable(message)
        } else {
            Self::Database(message)
        }
    }
}

/// Whether `e` is a unique or primary-key violation.
pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}
