//! `airlock-api`: serves Airlock's request-reply API. See the library crate for what it does.

use airlock_runtime::{shutdown, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = airlock_api::Config::parse();
    let _telemetry = telemetry::init(config.common.log_format, "airlock-api");
    let shutdown = shutdown::on_signals();
    airlock_api::run(config, shutdown).await?;
    Ok(())
}
