//! The `faultlab` command line: flags in, library calls out. Each
//! subcommand is a file of `cli/`; this file only parses, starts telemetry
//! and the runtime, dispatches, and turns the result into an exit code.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let cli = cli::Cli::parse();
    // Spans are flushed when `telemetry` drops, after the run, on every exit.
    let telemetry = match faultlab_telemetry::Telemetry::start("faultlab", &cli.otlp) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("faultlab: {error}");
            return ExitCode::from(2);
        }
    };
    // Warnings only (e.g. that traces are not being delivered): stdout is the report's.
    let warnings = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    tracing_subscriber::registry()
        .with(warnings)
        .with(telemetry.layer())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("faultlab: cannot start: {error}");
            return ExitCode::from(2);
        }
    };
    let code = match runtime.block_on(cli::dispatch(cli.command, cli.tls)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) if stdout_closed(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("faultlab: {}", faultlab::error_chain(error.chain()));
            ExitCode::from(2)
        }
    };
    drop(runtime);
    drop(telemetry);
    code
}

/// Whether an error is only that the reader of our output went away.
fn stdout_closed(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}
