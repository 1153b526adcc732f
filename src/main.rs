use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mysql_agent::cli::Cli;
use mysql_agent::{errors, telemetry};

/// How long blocking work may hold the process after a mode has returned.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // Before anything else: a SIGTERM from now on waits for the handler instead of killing.
    let held = mysql_agent::shutdown::hold_signals();
    let cli = Cli::parse();
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    telemetry::init_logging(cli.log.log_format);
    let termination_log = cli.log.termination_log.clone();
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
            let message = errors::report(&e);
            tracing::error!(error = %message, "mysql-agent failed");
            telemetry::write_termination_message(termination_log.as_deref(), &message);
            errors::exit_code(&e)
        }
    }
}
