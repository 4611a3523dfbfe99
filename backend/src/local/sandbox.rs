//! What a run executes: its resolved limits, its environment, and the sandbox command line.
//!
//! The command is a chain of `exec`s, so the spawned pid ends up being `bwrap` itself:
//! `sh` (joins the run's cgroups, only when cgroups are used) → `prlimit` (rlimits) → `setpriv` (drops to the
//! run's own uid/gid, no supplementary groups, no new privileges) → `bwrap` (namespaces and mounts) → the job.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use airlock_schemas::{env, quantity};

use super::LocalConfig;
use crate::LaunchSpec;

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
            tmp_bytes: c.tmp_bytes.max(4096),
        }
    }
}

/// The job environment: the contract's variables, the result file instead of a NATS URL, sane defaults.
pub(crate) fn job_env(given: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = given.clone();
    env.remove(env::NATS_URL);
    env.insert(env::RESULT_FILE.into(), SANDBOX_RESULT.into());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/bin:/usr/bin:/bin".into());
    env.entry("HOME".into())
        .or_insert_with(|| SANDBOX_WORK.into());
    env.entry("TMPDIR".into()).or_insert_with(|| "/tmp".into());
    env
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

    /// `bwrap`'s arguments: namespaces, mounts, environment, then the job's argv.
    fn bwrap_args(&self, args: &mut Argv) {
        args.extend([
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
        ])
        .extend([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--tmpfs",
            "/sys",
        ]);
        for p in &self.hide {
            let kind =
                std::fs::symlink_metadata(p).map(|m| (m.is_dir(), m.file_type().is_symlink()));
            match kind {
                Ok((true, false)) => {
                    args.push("--tmpfs").push(p);
                }
                Ok((false, false)) => {
                    args.extend([
                        OsStr::new("--ro-bind"),
                        OsStr::new("/dev/null"),
                        p.as_os_str(),
                    ]);
                }
                // Absent paths need no hiding; symlinks resolve to something hidden or harmless.
                _ => {}
            }
        }
        let tmp_size = self.limits.tmp_bytes.to_string();
        args.extend(["--size", &tmp_size, "--tmpfs", "/tmp", "--tmpfs", "/run"])
            .extend([
                "--dir",
                SANDBOX_DIR,
                "--size",
                &tmp_size,
                "--tmpfs",
                SANDBOX_WORK,
            ])
            .push("--bind")
            .push(self.result_file)
            .extend([SANDBOX_RESULT, "--chdir", SANDBOX_WORK, "--clearenv"]);
        for (k, v) in self.env {
            args.extend(["--setenv", k, v]);
        }
        args.push("--").extend(&self.argv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_an_exec_chain_ending_in_the_jobs_argv() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
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
            hide: Vec::new(),
            result_file: Path::new("/state/runs/r/sandbox/result.json"),
            env: &env,
            argv: vec!["sh".into(), "-c".into(), "true".into()],
        };
        let (program, args) = cmd.build();
        let args: Vec<&str> = args.iter().filter_map(|a| a.to_str()).collect();
        let at = |s: &str| args.iter().position(|a| *a == s);
        assert_eq!(program, "prlimit");
        assert!(args.contains(&"--as=1"), "no memory cgroup: RLIMIT_AS");
        assert!(at("setpriv") < at("--reuid=42") && at("--no-new-privs") < at("bwrap"));
        assert!(at("bwrap") < at("--unshare-all") && at("--clearenv") < at("--setenv"));
        assert_eq!(args[args.len() - 4..], ["--", "sh", "-c", "true"]);
    }
}
