//! `airlock-dispatcher`: see the library docs. Configured by flags or `AIRLOCK_*` environment variables.

use airlock_dispatcher::Config;
use airlock_runtime::{shutdown, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.common.log_format);
    let shutdown = shutdown::on_signals();
    airlock_dispatcher::run(config, shutdown).await?;
    Ok(())
}
