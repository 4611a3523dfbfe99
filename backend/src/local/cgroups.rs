//! Per-run cgroups: detecting writable controllers, creating a run's groups with its limits, reading its
//! OOM kills and pids, removing them.
//!
//! A run's group is named by the caller (`<run_id>-<state directory tag>`), unique on the host, so two
//! runtimes never share (or `cgroup.kill`) one, even for the same run id.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::procs::is_zombie;
use super::sandbox::Limits;

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
                warn!(dir = %dir.display(), "Cgroup v2 is not writable; falling back to rlimits");
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
                    warn!(dir = %dir.display(), error = %e, "Cgroup v1 controller not writable; skipping it");
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

    /// Whether a run's group holds every process of the run: v2, or v1 `memory` or `pids` (always created
    /// for a run; `cpu` only with a CPU limit).
    pub fn holds_every_process(&self) -> bool {
        self.v2.is_some() || self.memory.is_some() || self.pids.is_some()
    }

    /// Kills every process of the run's v2 group at once (`cgroup.kill`, Linux 5.14); on v1, or where it is
    /// missing, the caller SIGKILLs what [`Self::pids`] lists.
    pub fn kill(&self, group: &str) {
        if let Some(base) = &self.v2 {
            match std::fs::write(base.join(group).join("cgroup.kill"), "1") {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!(group, error = %e, "cgroup.kill failed; killing the group's pids"),
            }
        }
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
                    warn!(group, dir = %d.display(), error = %e, "Could not remove the run's cgroup")
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
