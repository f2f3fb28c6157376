//! The Windows service: install and uninstall through the Service Control Manager, and the
//! service entry that reports StartPending → Running → StopPending → Stopped around the agent.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::NAME;

/// The configuration `service run` was given, for the service entry.
static CONFIG: OnceLock<PathBuf> = OnceLock::new();

pub(super) fn install(config: &Path) -> anyhow::Result<()> {
    let config = std::path::absolute(config)?;
    relay_listener::agent::AgentConfig::load(&config)?;
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .context("opening the Service Control Manager (run as Administrator)")?;
    let info = ServiceInfo {
        name: NAME.into(),
        display_name: "Relay listener agent".into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe()?,
        launch_arguments: vec![
            "service".into(),
            "run".into(),
            "--config".into(),
            config.clone().into_os_string(),
        ],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager
        .create_service(&info, ServiceAccess::CHANGE_CONFIG | ServiceAccess::START)
        .with_context(|| format!("creating service {NAME} (already installed?)"))?;
    service.set_description(
        "Connects this site's services to the relay broker; outbound connections only",
    )?;
    // Come back by itself: restart 5 s after a failure, three times a day.
    let restart = ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(5),
    };
    service.update_failure_actions(ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart.clone(), restart.clone(), restart]),
    })?;
    println!(
        "installed service {NAME} for {}; start it with `sc start {NAME}`",
        config.display()
    );
    Ok(())
}

pub(super) fn uninstall() -> anyhow::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
        .context("opening the Service Control Manager (run as Administrator)")?;
    let service = manager
        .open_service(
            NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .with_context(|| format!("opening service {NAME} (is it installed?)"))?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        service.stop()?;
        let started = Instant::now();
        while service.query_status()?.current_state != ServiceState::Stopped {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "service {NAME} did not stop within 60 s"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    service.delete()?;
    println!("removed service {NAME}");
    Ok(())
}

pub(super) fn run(config: PathBuf) -> anyhow::Result<()> {
    let _ = CONFIG.set(config);
    service_dispatcher::start(NAME, ffi_service_main).context(
        "not started by the Service Control Manager; use `relay-listener run --config FILE` in a console",
    )
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    if let Err(e) = serve() {
        tracing::error!(error = %format!("{e:#}"), "service failed");
    }
}

/// The service's life as the Service Control Manager sees it: register the handler, report
/// StartPending, Running, StopPending with their waits, Stopped with the exit code. One
/// sequence, in the order the SCM requires.
fn serve() -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let status = service_control_handler::register(NAME, move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            tracing::info!(
                ?control,
                "stop requested: no new connections; in-flight ones may finish"
            );
            stop.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    })?;
    let report = |state, controls, exit: u32, wait: Duration| {
        status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: controls,
            exit_code: ServiceExitCode::Win32(exit),
            checkpoint: u32::from(state != ServiceState::Running && state != ServiceState::Stopped),
            wait_hint: wait,
            process_id: None,
        })
    };
    report(
        ServiceState::StartPending,
        ServiceControlAccept::empty(),
        0,
        Duration::from_secs(10),
    )?;
    let config = CONFIG.get().context("no --config")?;
    let outcome = relay_listener::agent::AgentConfig::load(config)
        .map_err(anyhow::Error::new)
        .and_then(|config| {
            let runtime = tokio::runtime::Runtime::new()?;
            report(
                ServiceState::Running,
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN,
                0,
                Duration::ZERO,
            )?;
            tracing::info!("service running");
            runtime.block_on(relay_listener::agent::run_config(config, shutdown))?;
            Ok(())
        });
    report(
        ServiceState::StopPending,
        ServiceControlAccept::empty(),
        0,
        Duration::from_secs(30),
    )?;
    if let Err(e) = &outcome {
        tracing::error!(error = %format!("{e:#}"), "agent failed");
    }
    tracing::info!("service stopped");
    report(
        ServiceState::Stopped,
        ServiceControlAccept::empty(),
        u32::from(outcome.is_err()),
        Duration::ZERO,
    )?;
    Ok(())
}
