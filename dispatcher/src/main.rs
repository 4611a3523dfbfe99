//! `airlock-dispatcher`: see the library docs. Configured by flags or `AIRLOCK_*` environment variables.

use airlock_dispatcher::Config;
use airlock_runtime::{shutdown, telemetry};
use clap::Parser;

fn main() -> std::process::ExitCode {
    // A local run's supervisor process is this executable in a hidden mode (see `airlock_backend::local`).
    if let Some(code) = airlock_backend::local::supervise_if_asked() {
        return code;
    }
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = telemetry::init(config.common.log_format, "airlock-dispatcher");
    let shutdown = shutdown::on_signals();
    airlock_dispatcher::run(config, shutdown).await?;
    Ok(())
}
