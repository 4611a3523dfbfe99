//! `airlock-test-cluster up DIR --bin BIN` / `down DIR`: the test cluster for people and for checks outside
//! the test runner (see `scripts/test-cluster`, which builds the components and calls this).

use std::path::PathBuf;

use anyhow::{Result, bail};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["up", dir, "--bin", bin] => {
            if let Err(e) =
                airlock_test_support::cluster::up(&PathBuf::from(dir), &PathBuf::from(bin)).await
            {
                // Leave nothing half-started behind.
                let _ = airlock_test_support::cluster::down(&PathBuf::from(dir)).await;
                return Err(e);
            }
            Ok(())
        }
        ["down", dir] => airlock_test_support::cluster::down(&PathBuf::from(dir)).await,
        _ => bail!("usage: airlock-test-cluster up DIR --bin BIN | down DIR"),
    }
}
