//! `relay-listener service install|uninstall|run`: the agent as a Windows service (the
//! Service Control Manager starts `service run --config FILE`, and it stops cleanly on
//! Stop or Shutdown). Elsewhere `install` and `uninstall` point to the systemd unit, and
//! `run` runs the agent in the foreground.

use std::path::PathBuf;

use clap::Subcommand;

#[cfg(windows)]
mod windows;

/// The service's name in the Service Control Manager.
pub(crate) const NAME: &str = "relay-agent";

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCommand {
    /// Install the agent as an auto-start service running `service run --config FILE`.
    Install {
        /// The agent configuration (validated now; its absolute path is recorded).
        #[arg(long)]
        config: PathBuf,
    },
    /// Stop the service if it runs, and remove it.
    Uninstall,
    /// What the Service Control Manager starts; logs go to relay-agent.log beside the config.
    Run {
        /// The agent configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

pub(crate) fn dispatch(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Install { config } => install(&config),
        ServiceCommand::Uninstall => uninstall(),
        ServiceCommand::Run { config } => run(&config),
    }
}

/// The log file of a service run: beside the configuration, as services have no console.
fn log_path(config: &std::path::Path) -> PathBuf {
    config
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("relay-agent.log")
}

#[cfg(windows)]
fn install(config: &std::path::Path) -> anyhow::Result<()> {
    windows::install(config)
}

#[cfg(windows)]
fn uninstall() -> anyhow::Result<()> {
    windows::uninstall()
}

#[cfg(windows)]
fn run(config: &std::path::Path) -> anyhow::Result<()> {
    relay_cli::init_logging_to_file(relay_cli::LogFormat::Text, "info", &log_path(config))?;
    windows::run(config.to_path_buf())
}

#[cfg(not(windows))]
fn install(_config: &std::path::Path) -> anyhow::Result<()> {
    anyhow::bail!(
        "`service install` is for Windows; on Linux install dist/systemd/relay-agent.service (README: \"Run the agent as a service\")"
    )
}

#[cfg(not(windows))]
fn uninstall() -> anyhow::Result<()> {
    anyhow::bail!("`service uninstall` is for Windows; on Linux: systemctl disable --now {NAME}")
}

#[cfg(not(windows))]
fn run(config: &std::path::Path) -> anyhow::Result<()> {
    relay_cli::init_logging_to_file(relay_cli::LogFormat::Text, "info", &log_path(config))?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let config = relay_listener::agent::AgentConfig::load(config)?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            relay_cli::shutdown_signal().await;
            stop.cancel();
        });
        relay_listener::agent::run_config(config, shutdown).await?;
        Ok(())
    })
}
