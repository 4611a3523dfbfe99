//! What a run executes: its resolved limits, its environment, and the sandbox command line.
//!
//! The command is a chain of `exec`s, so the spawned pid ends up being `bwrap` itself:
//! `sh` (joins the run's cgroups, only when cgroups are used) → `prlimit` (rlimits) → `setpriv` (drops to the
//! run's own uid/gid, no supplementary groups, no new privileges) → `bwrap` (namespaces and mounts) → the
//! launcher (`busybox sh` reading the run's launch script, see `launch`) → the job.
//!
//! # Mounts
//! The sandbox's root is bubblewrap's own tmpfs, remounted read-only once everything is mounted. On it:
//! every top-level entry of the image's rootfs (directories and files bound read-only, symlinks recreated),
//! except `/dev`, `/proc`, `/tmp` and `/run`, which are Airlock's: a minimal `/dev` (read-only, with a
//! size-capped tmpfs at `/dev/shm`), a new `/proc`, a size-capped tmpfs at `/tmp`, and `/run/airlock` with
//! the size-capped work dir, the result file (the only host file the job can write), the launcher and the
//! launch script (read-only). Nothing else of the host is visible. Every writable mount is a tmpfs of
//! `tmp_bytes`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use airlock_schemas::quantity;

use super::LocalConfig;
use super::launch::{OWN_TOP_DIRS, Workdir};
use crate::LaunchSpec;

/// Where the job sees its files.
pub(crate) const SANDBOX_DIR: &str = "/run/airlock";
/// The job's private working directory (a size-capped tmpfs).
pub(crate) const SANDBOX_WORK: &str = "/run/airlock/work";
/// The job's result file (bind-mounted from the run's directory).
pub(crate) const SANDBOX_RESULT: &str = "/run/airlock/result.json";
/// The launcher (a static busybox, read-only).
const SANDBOX_LAUNCHER: &str = "/run/airlock/busybox";
/// The launch script (read-only).
const SANDBOX_LAUNCH: &str = "/run/airlock/.launch";

/// Limits of one run, resolved from the request and the configuration.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    /// Millicores for the CPU rate (cgroup quota), when set.
    pub cpu_millis: Option<u64>,
    pub cpu_seconds: u64,
    pub max_processes: u64,
    pub max_file_bytes: u64,
    pub tmp_bytes: u64,
}

impl Limits {
    /// The request's limits (the configuration's defaults where it sets none), with sane floors; CPU time is
    /// capped at deadline × CPU limit.
    pub fn resolve(c: &LocalConfig, spec: &LaunchSpec) -> Self {
        let lim = &spec.run.request.resources.limits;
        let memory_bytes = lim
            .memory
            .as_deref()
            .and_then(quantity::bytes)
            .unwrap_or(c.default_memory_bytes);
        let cpu_millis = lim.cpu.as_deref().and_then(quantity::cpu_millis);
        let deadline = spec.run.deadline_seconds.max(1);
        let by_deadline = cpu_millis
            .map(|m| (deadline.saturating_mul(m)).div_ceil(1000))
            .unwrap_or(deadline);
        Limits {
            memory_bytes: memory_bytes.max(1024 * 1024),
            cpu_millis,
            cpu_seconds: c.max_cpu_seconds.min(by_deadline).max(1),
            max_processes: c.max_processes.max(1),
            max_file_bytes: c.max_file_bytes,
            // Each in-memory mount is also capped at the memory limit (it is memory, charged to the run only
            // when there is a memory cgroup).
            tmp_bytes: c.tmp_bytes.min(memory_bytes).max(4096),
        }
    }
}

/// Everything needed to build one sandbox command.
#[derive(Debug)]
pub(crate) struct SandboxCommand<'a> {
    pub bwrap: &'a Path,
    pub setpriv: &'a Path,
    pub prlimit: &'a Path,
    pub uid: u32,
    pub limits: Limits,
    /// Whether the memory limit is enforced by a cgroup (otherwise RLIMIT_AS is set).
    pub memory_cgroup: bool,
    /// `cgroup.procs` files the sandbox joins before anything else runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// The image's unpacked root filesystem (read-only).
    pub rootfs: &'a Path,
    /// The static busybox that runs the launch script.
    pub launcher: &'a Path,
    /// The run's launch script on the host.
    pub launch_file: &'a Path,
    /// The run's result file on the host.
    pub result_file: &'a Path,
    /// Where the job starts.
    pub workdir: &'a Workdir,
}

/// An argument vector being built.
#[derive(Default)]
struct Argv(Vec<OsString>);

impl Argv {
    fn push(&mut self, s: impl AsRef<OsStr>) -> &mut Self {
        self.0.push(s.as_ref().to_owned());
        self
    }

    fn extend<S: AsRef<OsStr>>(&mut self, items: impl IntoIterator<Item = S>) -> &mut Self {
        for s in items {
            self.push(s);
        }
        self
    }
}

impl SandboxCommand<'_> {
    /// Program and arguments.
    pub fn build(&self) -> (OsString, Vec<OsString>) {
        let mut args = Argv::default();
        let program = if self.cgroup_procs.is_empty() {
            self.prlimit.as_os_str().to_owned()
        } else {
            args.extend([
                "-c",
                r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#,
                "airlock-sandbox",
            ])
            .push(self.cgroup_procs.len().to_string())
            .extend(&self.cgroup_procs)
            .push(self.prlimit);
            OsString::from("/bin/sh")
        };
        self.prlimit_args(&mut args);
        args.push(self.setpriv).extend([
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.uid),
            "--clear-groups".into(),
            "--no-new-privs".into(),
            "--".into(),
        ]);
        args.push(self.bwrap);
        self.bwrap_args(&mut args);
        (program, args.0)
    }

    /// `prlimit`'s own arguments, up to its `--`.
    fn prlimit_args(&self, args: &mut Argv) {
        let l = &self.limits;
        args.push(format!("--nproc={}", l.max_processes))
            // Soft limit: SIGXCPU (the reason becomes CpuLimit); one second later SIGKILL.
            .push(format!("--cpu={}:{}", l.cpu_seconds, l.cpu_seconds + 1))
            .push(format!("--fsize={}", l.max_file_bytes))
            .push("--core=0");
        if !self.memory_cgroup {
            args.push(format!("--as={}", l.memory_bytes));
        }
        args.push("--");
    }

    /// `bwrap`'s arguments: namespaces, mounts (see the module documentation), then the launcher.
    fn bwrap_args(&self, args: &mut Argv) {
        args.extend([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ]);
        self.image_mounts(args);
        let size = self.limits.tmp_bytes.to_string();
        let capped_tmpfs = |args: &mut Argv, at: &OsStr| {
            args.extend(["--size", &size, "--tmpfs"]).push(at);
        };
        args.extend(["--dev", "/dev"]);
        capped_tmpfs(args, OsStr::new("/dev/shm"));
        args.extend(["--remount-ro", "/dev", "--proc", "/proc"]);
        capped_tmpfs(args, OsStr::new("/tmp"));
        args.extend(["--dir", SANDBOX_DIR]);
        capped_tmpfs(args, OsStr::new(SANDBOX_WORK));
        args.push("--bind")
            .push(self.result_file)
            .push(SANDBOX_RESULT)
            .push("--ro-bind")
            .push(self.launcher)
            .push(SANDBOX_LAUNCHER)
            .push("--ro-bind")
            .push(self.launch_file)
            .push(SANDBOX_LAUNCH);
        if let Workdir::Tmpfs(dir) = self.workdir {
            capped_tmpfs(args, dir.as_os_str());
        }
        args.extend(["--remount-ro", "/", "--chdir"])
            .push(self.workdir.path())
            .extend(["--clearenv", "--", SANDBOX_LAUNCHER, "sh", SANDBOX_LAUNCH]);
    }

    /// The image's top-level entries on the sandbox's root: directories and files bound read-only,
    /// symlinks recreated (bubblewrap resolves them inside), Airlock's own directories skipped.
    fn image_mounts(&self, args: &mut Argv) {
        let Ok(entries) = std::fs::read_dir(self.rootfs) else {
            return; // bwrap then fails to find the command: a StartError
        };
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if OWN_TOP_DIRS.iter().any(|d| name == *d) {
                continue;
            }
            let at = Path::new("/").join(&name);
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_symlink() {
                if let Ok(target) = std::fs::read_link(e.path()) {
                    args.push("--symlink").push(target).push(at);
                }
            } else if kind.is_dir() || kind.is_file() {
                args.push("--ro-bind").push(e.path()).push(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_an_exec_chain_ending_in_the_launcher_on_a_read_only_root() {
        let rootfs = tempfile::tempdir().expect("tempdir");
        for d in ["bin", "etc", "dev", "tmp"] {
            std::fs::create_dir(rootfs.path().join(d)).expect("mkdir");
        }
        std::os::unix::fs::symlink("bin", rootfs.path().join("sbin")).expect("symlink");
        let workdir = Workdir::Tmpfs("/app".into());
        let cmd = SandboxCommand {
            bwrap: Path::new("bwrap"),
            setpriv: Path::new("setpriv"),
            prlimit: Path::new("prlimit"),
            uid: 42,
            limits: Limits {
                memory_bytes: 1,
                cpu_millis: None,
                cpu_seconds: 3,
                max_processes: 4,
                max_file_bytes: 6,
                tmp_bytes: 7,
            },
            memory_cgroup: false,
            cgroup_procs: Vec::new(),
            rootfs: rootfs.path(),
            launcher: Path::new("/bin/busybox"),
            launch_file: Path::new("/state/runs/r/launch.sh"),
            result_file: Path::new("/state/runs/r/sandbox/result.json"),
            workdir: &workdir,
        };
        let (program, args) = cmd.build();
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = |s: &str| args.iter().position(|a| a == s);
        assert_eq!(program, "prlimit");
        assert!(
            args.contains(&"--as=1".into()),
            "no memory cgroup: RLIMIT_AS"
        );
        assert!(at("setpriv") < at("--reuid=42") && at("--no-new-privs") < at("bwrap"));
        let bin = rootfs.path().join("bin").display().to_string();
        assert!(
            args.windows(3)
                .any(|w| w == ["--ro-bind", bin.as_str(), "/bin"]),
            "{args:?}"
        );
        assert!(
            args.windows(3).any(|w| w == ["--symlink", "bin", "/sbin"]),
            "{args:?}"
        );
        assert!(
            !args
                .iter()
                .any(|a| a.ends_with("/dev") && a.starts_with('/') && a != "/dev")
        );
        assert!(
            !args.iter().any(|a| a.ends_with("/tmp") && a != "/tmp"),
            "{args:?}"
        );
        for writable in ["/dev/shm", "/tmp", SANDBOX_WORK, "/app"] {
            let i = at(writable).expect(writable);
            assert_eq!(args[i - 3..i], ["--size", "7", "--tmpfs"], "{writable}");
        }
        assert!(at("--remount-ro") < at("--chdir"));
        assert!(args.windows(2).any(|w| w == ["--remount-ro", "/"]));
        assert_eq!(
            args[args.len() - 4..],
            ["--", SANDBOX_LAUNCHER, "sh", SANDBOX_LAUNCH]
        );
    }
}
