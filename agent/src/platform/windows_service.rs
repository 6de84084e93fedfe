//! The agent as a Windows service: `faultlab-agent service install`,
//! `service uninstall`, and `service run` (what the Service Control Manager
//! starts). The binary's serving code runs unchanged; a Stop from the SCM
//! is its shutdown signal.

// define_windows_service! expands to the service's FFI entry point.
#![allow(unsafe_code)]

use crate::sync::lock;
use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;
use windows_service::service::{
    ServiceAccess, ServiceControl, ServiceControlAccept, ServiceErrorControl, ServiceExitCode,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

/// The service's name.
pub const NAME: &str = "faultlab-agent";

/// A future that completes when the service is told to stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Serves until its stop signal; the error is reported to the SCM.
pub type Runner = Box<dyn FnOnce(StopSignal) -> Result<(), String> + Send>;

static RUNNER: Mutex<Option<Runner>> = Mutex::new(None);

/// Register with the SCM (the process must have been started by it) and
/// run `runner` until the service is stopped.
pub fn run(runner: Runner) -> windows_service::Result<()> {
    *lock(&RUNNER) = Some(runner);
    service_dispatcher::start(NAME, ffi_service_main)
}

define_windows_service!(ffi_service_main, service_main);

fn service_main(_arguments: Vec<OsString>) {
    if let Err(error) = serve_as_service() {
        tracing::error!(%error, "the service failed");
    }
}

fn status(state: ServiceState, exit: u32) -> ServiceStatus {
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code: ServiceExitCode::Win32(exit),
        checkpoint: 0,
        wait_hint: Duration::from_secs(10),
        process_id: None,
    }
}

fn serve_as_service() -> windows_service::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_tx = Mutex::new(Some(stop_tx));
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            if let Some(stop) = lock(&stop_tx).take() {
                let _ = stop.send(());
            }
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = service_control_handler::register(NAME, handler)?;
    handle.set_service_status(status(ServiceState::Running, 0))?;
    let result = match lock(&RUNNER).take() {
        Some(runner) => runner(Box::pin(async {
            let _ = stop_rx.await;
        })),
        None => Err("no runner was set".to_owned()),
    };
    if let Err(error) = &result {
        tracing::error!(%error, "the agent stopped with an error");
    }
    handle.set_service_status(status(ServiceState::Stopped, u32::from(result.is_err())))
}

/// Install the service (automatic start, LocalSystem), running this
/// executable as `service run --config CONFIG`.
pub fn install(config: &Path) -> windows_service::Result<()> {
    let manager = ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )?;
    let executable_path = std::env::current_exe().map_err(windows_service::Error::Winapi)?;
    let info = ServiceInfo {
        name: OsString::from(NAME),
        display_name: OsString::from("faultlab agent"),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path,
        launch_arguments: vec![
            OsString::from("service"),
            OsString::from("run"),
            OsString::from("--config"),
            config.as_os_str().to_owned(),
        ],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let service = manager.create_service(&info, ServiceAccess::CHANGE_CONFIG)?;
    service.set_description("TCP fault injection on this lab host (faultlab)")
}

/// Stop (if running) and delete the service.
pub fn uninstall() -> windows_service::Result<()> {
    let manager = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)?;
    let service = manager.open_service(
        NAME,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
    )?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        service.stop()?;
    }
    service.delete()
}
