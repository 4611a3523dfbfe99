//! `airlock-ingester`: verifies job results and stores them in Redis.

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = airlock_ingester::Config::parse();
    let _telemetry = airlock_runtime::telemetry::init(config.common.log_format, "airlock-ingester");
    let shutdown = airlock_runtime::shutdown::on_signals();
    airlock_ingester::run(config, shutdown)
        .await
        .context("ingester failed")
}
