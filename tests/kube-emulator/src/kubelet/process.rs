//! Starting a container's process group on the host, its output feeding its [`PodLog`].

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::PodLog;

/// `program` as an absolute path found in `path` (the child's own `PATH`), as `execvp` would find it; a
/// name with a `/` (or one not found, which then fails to spawn as before) unchanged.
///
/// Invariant: the standard library spawns with `posix_spawn` (a `vfork`-style clone that never copies the
/// emulator's address space) only when the program is a path or the child's environment keeps the parent's
/// `PATH`; a bare name with a `PATH` set for the child falls back to `fork`, which copies the whole (large)
/// emulator for every container. So every program is resolved here first.
fn resolve_program(program: &OsStr, path: &OsStr) -> PathBuf {
    let p = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') || program.is_empty() {
        return p.to_path_buf();
    }
    std::env::split_paths(path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(p))
        .find(|f| {
            std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| p.to_path_buf())
}

/// `argv` on the host with the container's env, `HOME` and cwd in `workdir`.
pub(super) fn host_command(
    argv: &[String],
    container: &Value,
    pod_name: &str,
    workdir: Option<&Path>,
) -> tokio::process::Command {
    let env = container_env(container);
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| OsString::from(v))
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut cmd = tokio::process::Command::new(resolve_program(argv[0].as_ref(), &path));
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env("PATH", &path);
    cmd.env("HOSTNAME", pod_name);
    if let Some(dir) = workdir {
        cmd.env("HOME", dir);
        cmd.current_dir(dir);
    }
    if let Some(wd) = container.get("workingDir").and_then(Value::as_str)
        && Path::new(wd).is_dir()
    {
        cmd.current_dir(wd);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `env[].value` entries of the container (`valueFrom` is not resolved).
fn container_env(container: &Value) -> Vec<(String, String)> {
    container
        .get("env")
        .and_then(Value::as_array)
        .map(|env| {
            env.iter()
                .filter_map(|e| {
                    Some((
                        e.get("name")?.as_str()?.to_string(),
                        e.get("value")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Spawns `cmd` in its own process group, logging stdout and stderr into `log`.
pub(super) fn spawn(
    mut cmd: tokio::process::Command,
    log: &Arc<PodLog>,
) -> std::io::Result<tokio::process::Child> {
    let (mut reader, writer) = std::io::pipe()?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_program_name_is_resolved_to_an_absolute_path_in_the_childs_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let not_exe = dir.path().join("data");
        std::fs::write(&not_exe, "x").unwrap();
        let path = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(resolve_program("tool".as_ref(), &path), exe);
        // Not executable, not found, or already a path: unchanged (spawning then fails or runs as asked).
        assert_eq!(resolve_program("data".as_ref(), &path), Path::new("data"));
        assert_eq!(
            resolve_program("missing".as_ref(), &path),
            Path::new("missing")
        );
        assert_eq!(
            resolve_program("./tool".as_ref(), &path),
            Path::new("./tool")
        );
        assert!(resolve_program("sh".as_ref(), "/usr/bin:/bin".as_ref()).is_absolute());
    }
}
