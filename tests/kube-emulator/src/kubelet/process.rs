//! Starting a container's command as a process group whose output feeds its [`PodLog`].

use std::io::Read;
use std::sync::Arc;

use serde_json::Value;

use super::PodLog;

/// Spawn `argv` in its own process group with the container's env, logging into `log`.
pub(super) fn spawn(
    argv: &[String],
    container: &Value,
    pod_name: &str,
    workdir: Option<&std::path::Path>,
    log: &Arc<PodLog>,
) -> std::io::Result<tokio::process::Child> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    cmd.env("HOSTNAME", pod_name);
    if let Some(dir) = workdir {
        cmd.env("HOME", dir);
        cmd.current_dir(dir);
    }
    if let Some(wd) = container.get("workingDir").and_then(Value::as_str)
        && std::path::Path::new(wd).is_dir()
    {
        cmd.current_dir(wd);
    }
    if let Some(env) = container.get("env").and_then(Value::as_array) {
        for e in env {
            if let (Some(k), Some(v)) = (
                e.get("name").and_then(Value::as_str),
                e.get("value").and_then(Value::as_str),
            ) {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(std::process::Stdio::null());
    cmd.stdout(writer.try_clone()?);
    cmd.stderr(writer);
    cmd.process_group(0);
    cmd.kill_on_drop(true);
    let child = cmd.spawn();
    drop(cmd);
    let child = child?;
    let log = log.clone();
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log.append(&buf[..n]),
            }
        }
        log.close();
    });
    Ok(child)
}
