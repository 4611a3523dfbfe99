//! Starting a container's process group whose output feeds its [`PodLog`]: on the host (host mode), or
//! inside its image's rootfs with bubblewrap (image mode).

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::PodLog;
use super::user::RunAs;

/// The `PATH` a container gets when neither its image nor its spec sets one (containerd's default).
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `PATH` the emulator gives `bwrap`/`setpriv` in image mode.
const SANDBOX_TOOLS_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// `program` as an absolute path found in `path` (the child's own `PATH`), as `execvp` would find it; a
/// name with a `/` (or one not found, which then fails to spawn as before) unchanged.
///
/// Invariant: the standard library spawns with `posix_spawn` (a `vfork`-style clone that never copies the
/// emulator's address space) only when the program is a path or the child's environment keeps the parent's
/// `PATH`; a bare name with a `PATH` set for the child falls back to `fork`, which copies the whole (large)
/// emulator for every container. So every program is resolved here first.
pub(super) fn resolve_program(program: &OsStr, path: &OsStr) -> PathBuf {
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

/// Host mode: `argv` on the host with the container's env, `HOME` and cwd in `workdir`.
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
pub(super) fn container_env(container: &Value) -> Vec<(String, String)> {
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

/// What a container in image mode runs.
#[derive(Debug, Clone)]
pub(super) struct Sandboxed<'a> {
    /// The image's unpacked rootfs (never written: mounted read-only).
    pub rootfs: &'a Path,
    /// The resolved command line.
    pub argv: &'a [String],
    /// The final environment, in order (later entries win).
    pub env: &'a [(String, String)],
    /// The working directory inside the container.
    pub workdir: &'a str,
    /// Who runs it.
    pub user: RunAs,
    /// The pod's name, as the hostname.
    pub hostname: &'a str,
}

/// Image mode: `bwrap` with a read-only tmpfs root holding the image's top-level entries bind-mounted
/// read-only, a fresh `/proc`, a minimal `/dev`, a private `/tmp`, new user/pid/ipc/uts namespaces and
/// the host's network (pods reach services on 127.0.0.1, as `hostNetwork` pods do). As root, the process
/// gets its uid and gid for real (`setpriv`), otherwise only inside its user namespace.
pub(super) fn image_command(s: &Sandboxed<'_>) -> std::io::Result<tokio::process::Command> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |a: &[&str]| args.extend(a.iter().map(OsString::from));
    let root = rustix::process::geteuid().is_root();
    let program = if root && s.user.uid != 0 {
        push(&[
            &format!("--reuid={}", s.user.uid),
            &format!("--regid={}", s.user.gid),
            "--clear-groups",
            "--",
            "bwrap",
            "--unshare-user",
        ]);
        "setpriv"
    } else {
        push(&[
            "--unshare-user",
            "--uid",
            &s.user.uid.to_string(),
            "--gid",
            &s.user.gid.to_string(),
        ]);
        "bwrap"
    };
    push(&[
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        s.hostname,
        "--die-with-parent",
        "--tmpfs",
        "/",
    ]);
    const OWN: [&str; 3] = ["proc", "dev", "tmp"];
    let mut entries: Vec<_> = std::fs::read_dir(s.rootfs)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let Some(n) = name.to_str() else { continue };
        if OWN.contains(&n) {
            continue;
        }
        let dest = format!("/{n}");
        let ft = e.file_type()?;
        if ft.is_symlink() {
            let target = std::fs::read_link(e.path())?;
            args.push("--symlink".into());
            args.push(target.into_os_string());
            args.push(dest.into());
        } else if ft.is_dir() || ft.is_file() {
            args.push("--ro-bind".into());
            args.push(e.path().into_os_string());
            args.push(dest.into());
        }
    }
    let mut push = |a: &[&str]| args.extend(a.iter().map(OsString::from));
    push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    let top = s
        .workdir
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("");
    if !top.is_empty() && !s.rootfs.join(top).exists() {
        push(&["--dir", s.workdir]);
    }
    push(&["--remount-ro", "/", "--chdir", s.workdir, "--clearenv"]);
    for (k, v) in s.env {
        push(&["--setenv", k, v]);
    }
    push(&["--"]);
    args.extend(s.argv.iter().map(OsString::from));
    let mut cmd = tokio::process::Command::new(resolve_program(
        program.as_ref(),
        SANDBOX_TOOLS_PATH.as_ref(),
    ));
    cmd.args(args);
    cmd.env_clear();
    cmd.env("PATH", SANDBOX_TOOLS_PATH);
    Ok(cmd)
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
