use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mysql_agent::cli::Cli;
use tracing_subscriber::EnvFilter;

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // Before anything else: a SIGTERM from now on waits for the handler instead of killing.
    let held = mysql_agent::shutdown::hold_signals();
    let cli = Cli::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // kubectl logs is not a terminal; colour codes would only garble it.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        held?;
        let cancel = mysql_agent::shutdown::on_signals()?;
        mysql_agent::run(cli, cancel).await
    });
    // Dropping a runtime waits for blocking tasks without limit; a stuck read must not
    // hold the container past its grace period.
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format_args!("{e:#}"), "mysql-agent failed");
            ExitCode::FAILURE
        }
    }
}
