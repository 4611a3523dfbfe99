//! `airlock-janitor`: reaps Airlock runs on timer events. See the library crate for what it does.

use airlock_runtime::{shutdown, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = airlock_janitor::Config::parse();
    let _telemetry = telemetry::init(config.common.log_format, "airlock-janitor");
    let shutdown = shutdown::on_signals();
    airlock_janitor::run(config, shutdown).await?;
    Ok(())
}
