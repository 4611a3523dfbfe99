//! Building the sandbox command line, per-run cgroups, and finding and killing a run's processes.
//!
//! The command is a chain of `exec`s, so the spawned pid ends up being `bwrap` itself:
//! `sh` (joins the run's cgroups, only when cgroups are used) → `prlimit` (rlimits) → `setpriv` (drops to the
//! run's own uid/gid, no supplementary groups, no new privileges) → `bwrap` (namespaces and mounts) → the job.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tracing::warn;

/// Where the job sees its files.
pub(crate) const SANDBOX_DIR: &str = "/run/airlock";
/// The job's private working directory (a size-capped tmpfs).
pub(crate) const SANDBOX_WORK: &str = "/run/airlock/work";
/// The job's result file (bind-mounted from the run's directory).
pub(crate) const SANDBOX_RESULT: &str = "/run/airlock/result.json";

/// Limits of one run, resolved from the request and the configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub memory_bytes: u64,
    /// Millicores for the CPU rate (cgroup quota), when set.
    pub cpu_millis: Option<u64>,
    pub cpu_seconds: u64,
    pub max_processes: u64,
    pub max_file_bytes: u64,
    pub tmp_bytes: u64,
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
    /// Host paths hidden behind an empty tmpfs (directories) or `/dev/null` (files).
    pub hide: Vec<PathBuf>,
    /// The run's result file on the host.
    pub result_file: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub argv: Vec<String>,
}

impl SandboxCommand<'_> {
    /// Program and arguments.
    pub fn build(&self) -> (OsString, Vec<OsString>) {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |s: &str| args.push(OsString::from(s));
        let l = &self.limits;
        let program: OsString;
        if self.cgroup_procs.is_empty() {
            program = self.prlimit.as_os_str().to_owned();
        } else {
            program = OsString::from("/bin/sh");
            push("-c");
            push(
                r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@""#,
            );
            push("airlock-sandbox");
            push(&self.cgroup_procs.len().to_string());
            for p in &self.cgroup_procs {
                args.push(p.as_os_str().to_owned());
            }
            args.push(self.prlimit.as_os_str().to_owned());
        }
        let mut push = |s: &str| args.push(OsString::from(s));
        push(&format!("--nproc={}", l.max_processes));
        // Soft limit: SIGXCPU (the reason becomes CpuLimit); one second later SIGKILL.
        push(&format!("--cpu={}:{}", l.cpu_seconds, l.cpu_seconds + 1));
        push(&format!("--fsize={}", l.max_file_bytes));
        push("--core=0");
        if !self.memory_cgroup {
            push(&format!("--as={}", l.memory_bytes));
        }
        push("--");
        args.push(self.setpriv.as_os_str().to_owned());
        let mut push = |s: &str| args.push(OsString::from(s));
        push(&format!("--reuid={}", self.uid));
        push(&format!("--regid={}", self.uid));
        push("--clear-groups");
        push("--no-new-privs");
        push("--");
        args.push(self.bwrap.as_os_str().to_owned());
        let mut push = |s: &str| args.push(OsString::from(s));
        for a in [
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ] {
            push(a);
        }
        for a in [
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/sys",
        ] {
            push(a);
        }
        for p in &self.hide {
            let kind =
                std::fs::symlink_metadata(p).map(|m| (m.is_dir(), m.file_type().is_symlink()));
            let p = p.as_os_str().to_owned();
            match kind {
                Ok((true, false)) => {
                    args.push("--tmpfs".into());
                    args.push(p);
                }
                Ok((false, false)) => {
                    args.extend(["--ro-bind".into(), "/dev/null".into(), p]);
                }
                // Absent paths need no hiding; symlinks resolve to something hidden or harmless.
                _ => {}
            }
        }
        let mut push = |s: &str| args.push(OsString::from(s));
        push("--size");
        push(&l.tmp_bytes.to_string());
        push("--tmpfs");
        push("/tmp");
        push("--tmpfs");
        push("/run");
        push("--dir");
        push(SANDBOX_DIR);
        push("--size");
        push(&l.tmp_bytes.to_string());
        push("--tmpfs");
        push(SANDBOX_WORK);
        push("--bind");
        args.push(self.result_file.as_os_str().to_owned());
        let mut push = |s: &str| args.push(OsString::from(s));
        push(SANDBOX_RESULT);
        push("--chdir");
        push(SANDBOX_WORK);
        push("--clearenv");
        for (k, v) in self.env {
            push("--setenv");
            push(k);
            push(v);
        }
        push("--");
        for a in &self.argv {
            push(a);
        }
        (program, args)
    }
}

/// Cgroup controllers available to the runtime: the parent directory of per-run groups for each. A run's group
/// is named by the caller (`<run_id>-<state directory tag>`), unique on the host.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cgroups {
    /// cgroup v2: `<root>/<name>`, with memory, pids and cpu enabled for children.
    pub v2: Option<PathBuf>,
    /// cgroup v1 memory hierarchy: `<root>/memory/<name>`.
    pub memory: Option<PathBuf>,
    /// cgroup v1 pids hierarchy.
    pub pids: Option<PathBuf>,
    /// cgroup v1 cpu hierarchy.
    pub cpu: Option<PathBuf>,
}

impl Cgroups {
    /// Detects and prepares writable controllers under `root` (`/sys/fs/cgroup`); missing ones are skipped.
    pub fn detect(root: &Path, name: &str) -> Self {
        let mut out = Cgroups::default();
        if root.join("cgroup.controllers").exists() {
            let dir = root.join(name);
            let ok = std::fs::create_dir_all(&dir).is_ok()
                && std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu")
                    .is_ok()
                && std::fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu").is_ok();
            if ok {
                out.v2 = Some(dir);
            } else {
                warn!(dir = %dir.display(), "cgroup v2 is not writable; falling back to rlimits");
            }
            return out;
        }
        let prepare = |ctl: &str, probe: &str| {
            let base = root.join(ctl);
            if !base.join(probe).exists() {
                return None;
            }
            let dir = base.join(name);
            match std::fs::create_dir_all(&dir) {
                Ok(()) => Some(dir),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cgroup v1 controller not writable; skipping it");
                    None
                }
            }
        };
        out.memory = prepare("memory", "memory.limit_in_bytes");
        out.pids = prepare("pids", "cgroup.procs");
        out.cpu = prepare("cpu", "cpu.cfs_quota_us");
        out
    }

    /// Whether memory is limited by a cgroup.
    pub fn has_memory(&self) -> bool {
        self.v2.is_some() || self.memory.is_some()
    }

    /// The run's group directories (whether or not they exist).
    pub fn run_dirs(&self, group: &str) -> Vec<PathBuf> {
        [&self.v2, &self.memory, &self.pids, &self.cpu]
            .into_iter()
            .flatten()
            .map(|d| d.join(group))
            .collect()
    }

    /// Creates the run's groups with its limits; returns the `cgroup.procs` files to join.
    pub fn create(&self, group: &str, l: &Limits) -> std::io::Result<Vec<PathBuf>> {
        let mut procs = Vec::new();
        if let Some(base) = &self.v2 {
            let d = base.join(group);
            mkdir_fresh(&d)?;
            std::fs::write(d.join("memory.max"), l.memory_bytes.to_string())?;
            let _ = std::fs::write(d.join("memory.swap.max"), "0");
            std::fs::write(d.join("pids.max"), l.max_processes.to_string())?;
            if let Some(m) = l.cpu_millis {
                std::fs::write(d.join("cpu.max"), format!("{} 100000", m * 100))?;
            }
            procs.push(d.join("cgroup.procs"));
            return Ok(procs);
        }
        if let Some(base) = &self.memory {
            let d = base.join(group);
            mkdir_fresh(&d)?;
            std::fs::write(d.join("memory.limit_in_bytes"), l.memory_bytes.to_string())?;
            let _ = std::fs::write(
                d.join("memory.memsw.limit_in_bytes"),
                l.memory_bytes.to_string(),
            );
            procs.push(d.join("cgroup.procs"));
        }
        if let Some(base) = &self.pids {
            let d = base.join(group);
            mkdir_fresh(&d)?;
            std::fs::write(d.join("pids.max"), l.max_processes.to_string())?;
            procs.push(d.join("cgroup.procs"));
        }
        if let (Some(base), Some(m)) = (&self.cpu, l.cpu_millis) {
            let d = base.join(group);
            mkdir_fresh(&d)?;
            std::fs::write(d.join("cpu.cfs_period_us"), "100000")?;
            std::fs::write(d.join("cpu.cfs_quota_us"), (m * 100).to_string())?;
            procs.push(d.join("cgroup.procs"));
        }
        Ok(procs)
    }

    /// How many times the kernel's OOM killer killed something in the run's memory group.
    pub fn oom_kills(&self, group: &str) -> u64 {
        let file = if let Some(b) = &self.v2 {
            b.join(group).join("memory.events")
        } else if let Some(b) = &self.memory {
            b.join(group).join("memory.oom_control")
        } else {
            return 0;
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("oom_kill ")
                        .and_then(|v| v.trim().parse().ok())
                })
            })
            .unwrap_or(0)
    }

    /// Pids in any of the run's groups.
    pub fn pids(&self, group: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for d in self.run_dirs(group) {
            if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(
                    s.lines()
                        .filter_map(|l| l.trim().parse::<u32>().ok())
                        .filter(|p| !is_zombie(*p)),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Removes the run's groups (they must be empty); missing ones are fine.
    pub fn remove(&self, group: &str) {
        for d in self.run_dirs(group) {
            if let Some(kill) = self.v2.as_ref().map(|_| d.join("cgroup.kill")) {
                let _ = std::fs::write(kill, "1");
            }
            match std::fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(group, dir = %d.display(), error = %e, "could not remove the run's cgroup")
                }
            }
        }
    }
}

/// Creates `d`, replacing a leftover empty group of the same name.
fn mkdir_fresh(d: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(d) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_dir(d);
            std::fs::create_dir(d).or_else(|e| if d.exists() { Ok(()) } else { Err(e) })
        }
        other => other,
    }
}

/// Whether `pid` is a zombie (or gone).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("State:") && (l.contains('Z') || l.contains('X')))
        })
        .unwrap_or(true)
}

/// The start time of a process (clock ticks since boot), from `/proc/<pid>/stat`.
pub(crate) fn proc_start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is the sandbox root of the run whose result file is `marker` (its command line names it).
pub(crate) fn is_our_sandbox(pid: u32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let marker = marker.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == marker)
}

/// Every live (not zombie) process whose real uid is `uid`.
///
/// Zombies are skipped: they run nothing, and the sandbox's init is reparented to the host's pid 1, which
/// reaps it when it gets to it.
pub(crate) fn pids_of_uid(uid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |name: &str| s.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
            let live =
                field("State:").is_some_and(|st| !st.starts_with('Z') && !st.starts_with('X'));
            let real_uid =
                field("Uid:").and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
            live && real_uid == Some(uid)
        })
        .collect()
}

/// Sends SIGKILL to `pid`, ignoring a process that is already gone.
pub(crate) fn sigkill(pid: u32) {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(p, rustix::process::Signal::KILL)
        && e != rustix::io::Errno::SRCH
    {
        warn!(pid, error = %e, "kill failed");
    }
}
