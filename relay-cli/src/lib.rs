//! What the `relay-broker`, `relay-listener` and `relay-sender` binaries share: the log
//! format flag and subscriber, the shutdown signal, and the connection flags of the CLI
//! contract. Binary-only dependencies (clap, tracing-subscriber) stay here, out of the
//! libraries' APIs.

use relay_core::connection_string::{Target, TargetArgs};

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the subscriber: `RUST_LOG` or `default_filter`, to stderr (stdout carries the
/// lines scripts parse, such as `listening on ...`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Like [`init_logging`], appending to `path` (services have no console).
pub fn init_logging_to_file(
    format: LogFormat,
    default_filter: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

pub mod http;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The connection flags of the CLI contract, shared by the listener and sender tools.
#[derive(clap::Args, Debug)]
pub struct ConnectionArgs {
    /// Broker URL, e.g. ws://127.0.0.1:9400 or wss://relay.example.com.
    #[arg(long, env = "RELAY_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Hybrid connection name.
    #[arg(long)]
    pub hc: Option<String>,
    /// SAS rule name.
    #[arg(long, env = "RELAY_SAS_KEY_NAME")]
    pub sas_key_name: Option<String>,
    /// SAS key (prefer RELAY_SAS_KEY: command lines are visible to other users).
    #[arg(long, env = "RELAY_SAS_KEY", hide_env_values = true)]
    pub sas_key: Option<String>,
    /// Azure-style connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...;EntityPath=...).
    #[arg(long, env = "RELAY_CONNECTION_STRING", hide_env_values = true)]
    pub connection_string: Option<String>,
}

impl ConnectionArgs {
    /// Resolves flags and connection string into a target.
    pub fn target(&self) -> anyhow::Result<Target> {
        Ok(Target::resolve(&TargetArgs {
            endpoint: self.endpoint.as_deref(),
            hc: self.hc.as_deref(),
            key_name: self.sas_key_name.as_deref(),
            key: self.sas_key.as_deref(),
            connection_string: self.connection_string.as_deref(),
        })?)
    }
}
