//! The local runtime's settings: [`LocalArgs`] (flags and environment) and [`LocalConfig`].
//!
//! Every default is a `DEFAULT_*` constant below, read by both the flags and [`LocalConfig::new`]; sizes
//! are spelled as quantities (`512Mi`) so `--help` shows them that way.

use std::path::PathBuf;

use airlock_images::RegistryConfig;
use airlock_schemas::quantity;

/// Default state directory (`--local-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/airlock-local";
/// Default `bwrap` binary.
pub const DEFAULT_BWRAP: &str = "bwrap";
/// Default memory limit of a run whose request sets none.
pub const DEFAULT_MEMORY: &str = "512Mi";
/// Default largest CPU time of any process of a run, in seconds.
pub const DEFAULT_MAX_CPU_SECONDS: u64 = 6 * 3600;
/// Default largest number of processes of a run.
pub const DEFAULT_MAX_PROCESSES: u64 = 256;
/// Default largest file a job may write.
pub const DEFAULT_MAX_FILE_SIZE: &str = "256Mi";
/// Default size of each of the private `/tmp` and working directory.
pub const DEFAULT_TMP_SIZE: &str = "256Mi";
/// Default first sandbox uid/gid.
pub const DEFAULT_UID_BASE: u32 = 1_000_000_000;
/// Default number of slots (concurrent runs).
pub const DEFAULT_SLOTS: u32 = 256;
/// Default host-wide directory of sandbox uid locks.
pub const DEFAULT_UID_LOCK_DIR: &str = "/run/airlock/uids";
/// Default largest result file published, in bytes.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1024 * 1024;
/// Default largest log kept per run, in bytes (not a flag).
pub const DEFAULT_MAX_LOG_BYTES: u64 = 4 * 1024 * 1024;
/// Whether cgroups are used (when writable) by default.
pub const DEFAULT_CGROUPS: bool = true;

/// Default static shell that starts each job inside its sandbox (Debian's `busybox-static`).
pub const DEFAULT_LAUNCHER: &str = "/bin/busybox";
/// Default bound of the image cache.
pub const DEFAULT_IMAGE_CACHE_SIZE: &str = "20Gi";
/// Name of the image store under the state directory when `--local-image-dir` is not set.
pub const DEFAULT_IMAGE_SUBDIR: &str = "images";

/// Who supervises a run (owns its sandbox, deadline, image lease and result file until its final status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervisor {
    /// A task of the launching process: its runs die with it (for tests and embedding).
    InProcess,
    /// A process of its own per run, `program args… <run dir>`, not killed with the launching process: a
    /// restarted dispatcher adopts its runs. The program calls [`super::supervise_if_asked`] (or is the
    /// `airlock-supervisor` binary).
    Process {
        /// The executable.
        program: PathBuf,
        /// Arguments before the run directory.
        args: Vec<String>,
    },
}

impl Supervisor {
    /// This executable in its hidden supervisor mode (`<exe> __airlock-supervise <run dir>`).
    pub fn this_executable() -> std::io::Result<Self> {
        Ok(Supervisor::Process {
            program: std::env::current_exe()?,
            args: vec![super::SUPERVISE_ARG.into()],
        })
    }
}

/// Configuration of the local sandbox runtime.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// State directory shared by the dispatcher and janitor on this machine; created 0711 (its parents must be
    /// traversable by other users, since `bwrap` runs as the sandbox uid and bind-mounts the result file).
    pub state_dir: PathBuf,
    /// The `bwrap` binary.
    pub bwrap: PathBuf,
    /// The `setpriv` binary (util-linux).
    pub setpriv: PathBuf,
    /// The `prlimit` binary (util-linux).
    pub prlimit: PathBuf,
    /// Memory limit when the request sets none, in bytes.
    pub default_memory_bytes: u64,
    /// Largest CPU time of any process of a run, in seconds (also capped at deadline × CPU limit).
    pub max_cpu_seconds: u64,
    /// Largest number of processes (threads included) of a run.
    pub max_processes: u64,
    /// Largest file a job may write, in bytes.
    pub max_file_bytes: u64,
    /// Size of each writable in-memory mount of a sandbox (`/tmp`, the work directory, `/dev/shm`, the
    /// image's `WorkingDir` when it is missing from the image), in bytes.
    pub tmp_bytes: u64,
    /// First uid (and gid) of the sandbox range; run slot `n` runs as `sandbox_uid_base + n`.
    pub sandbox_uid_base: u32,
    /// Number of slots, i.e. of runs that may run at once.
    pub sandbox_slots: u32,
    /// Host-wide directory of uid locks (`<uid>.lock`, created 0700 root). Every local runtime on the host must
    /// use the same one: it is what keeps runtimes with different state directories off each other's uids.
    pub uid_lock_dir: PathBuf,
    /// Largest result file published, in bytes.
    pub max_result_bytes: usize,
    /// Largest log kept per run, in bytes (the rest is discarded).
    pub max_log_bytes: u64,
    /// Use cgroups (v2, or v1 `memory`/`pids`/`cpu`) when writable; otherwise rlimits only.
    pub cgroups: bool,
    /// Cgroup filesystem root.
    pub cgroup_root: PathBuf,
    /// Name of the parent group of the per-run groups.
    pub cgroup_name: String,
    /// Run without a memory cgroup (memory bounded by `RLIMIT_AS` only, in-memory mounts not charged to the
    /// run): refused unless set, and then warned about at start-up.
    pub allow_no_memory_cgroup: bool,
    /// The image store directory (shared with `airlock image --store-dir`); `None`: `<state_dir>/images`.
    /// Its parents must be traversable by the sandbox uids (they mount the rootfs).
    pub image_dir: Option<PathBuf>,
    /// Bound of the image cache in bytes (least recently used images no run uses are evicted past it).
    pub image_cache_bytes: u64,
    /// How to reach registries: from the environment (`AIRLOCK_INSECURE_REGISTRIES`,
    /// `AIRLOCK_REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, and
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR` for extra trust roots); see [`RegistryConfig`].
    pub registry: RegistryConfig,
    /// Who supervises runs. [`LocalConfig::new`]: [`Supervisor::InProcess`]; [`LocalArgs::config`]: a
    /// process per run (this executable, or `--local-supervisor`).
    pub supervisor: Supervisor,
    /// A statically linked busybox, mounted read-only into every sandbox to start the job: it reads the
    /// job's argv and environment from a file (never from a command line) and resolves the command in the
    /// image's `PATH`.
    pub launcher: PathBuf,
}

impl LocalConfig {
    /// Defaults for everything but the state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            bwrap: DEFAULT_BWRAP.into(),
            setpriv: "setpriv".into(),
            prlimit: "prlimit".into(),
            default_memory_bytes: default_bytes(DEFAULT_MEMORY),
            max_cpu_seconds: DEFAULT_MAX_CPU_SECONDS,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_file_bytes: default_bytes(DEFAULT_MAX_FILE_SIZE),
            tmp_bytes: default_bytes(DEFAULT_TMP_SIZE),
            sandbox_uid_base: DEFAULT_UID_BASE,
            sandbox_slots: DEFAULT_SLOTS,
            uid_lock_dir: DEFAULT_UID_LOCK_DIR.into(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            cgroups: DEFAULT_CGROUPS,
            cgroup_root: "/sys/fs/cgroup".into(),
            cgroup_name: "airlock".into(),
            allow_no_memory_cgroup: false,
            image_dir: None,
            image_cache_bytes: default_bytes(DEFAULT_IMAGE_CACHE_SIZE),
            registry: RegistryConfig::from_env(),
            supervisor: Supervisor::InProcess,
            launcher: DEFAULT_LAUNCHER.into(),
        }
    }

    /// The image store directory.
    pub fn image_dir(&self) -> PathBuf {
        self.image_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join(DEFAULT_IMAGE_SUBDIR))
    }
}

/// A `DEFAULT_*` quantity in bytes.
fn default_bytes(q: &str) -> u64 {
    quantity::bytes(q).expect("the DEFAULT_* quantities are valid (tested)")
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    quantity::bytes(s).ok_or_else(|| format!("not a quantity: {s:?} (e.g. 256Mi)"))
}

/// Command-line/environment options of the local runtime (embedded by the dispatcher and janitor).
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// State directory shared by dispatcher and janitor on this machine.
    #[arg(long = "local-dir", env = "AIRLOCK_LOCAL_DIR", default_value = DEFAULT_STATE_DIR)]
    pub local_dir: PathBuf,
    /// The bubblewrap binary.
    #[arg(long = "local-bwrap", env = "AIRLOCK_LOCAL_BWRAP", default_value = DEFAULT_BWRAP)]
    pub local_bwrap: PathBuf,
    /// Memory limit when the request sets none.
    #[arg(long = "local-memory", env = "AIRLOCK_LOCAL_MEMORY", default_value = DEFAULT_MEMORY, value_parser = parse_bytes)]
    pub local_memory: u64,
    /// Largest CPU time per process, in seconds.
    #[arg(long = "local-max-cpu-seconds", env = "AIRLOCK_LOCAL_MAX_CPU_SECONDS", default_value_t = DEFAULT_MAX_CPU_SECONDS)]
    pub local_max_cpu_seconds: u64,
    /// Largest number of processes per run.
    #[arg(long = "local-max-processes", env = "AIRLOCK_LOCAL_MAX_PROCESSES", default_value_t = DEFAULT_MAX_PROCESSES)]
    pub local_max_processes: u64,
    /// Largest file a job may write.
    #[arg(long = "local-max-file-size", env = "AIRLOCK_LOCAL_MAX_FILE_SIZE", default_value = DEFAULT_MAX_FILE_SIZE, value_parser = parse_bytes)]
    pub local_max_file_size: u64,
    /// Size of the private /tmp and working directory, each.
    #[arg(long = "local-tmp-size", env = "AIRLOCK_LOCAL_TMP_SIZE", default_value = DEFAULT_TMP_SIZE, value_parser = parse_bytes)]
    pub local_tmp_size: u64,
    /// First sandbox uid/gid.
    #[arg(long = "local-uid-base", env = "AIRLOCK_LOCAL_UID_BASE", default_value_t = DEFAULT_UID_BASE)]
    pub local_uid_base: u32,
    /// Number of concurrent runs (uids from the base).
    #[arg(long = "local-slots", env = "AIRLOCK_LOCAL_SLOTS", default_value_t = DEFAULT_SLOTS)]
    pub local_slots: u32,
    /// Host-wide directory of sandbox uid locks; the same for every local runtime on the host.
    #[arg(long = "local-uid-lock-dir", env = "AIRLOCK_LOCAL_UID_LOCK_DIR", default_value = DEFAULT_UID_LOCK_DIR)]
    pub local_uid_lock_dir: PathBuf,
    /// Largest result file published, in bytes.
    #[arg(long = "local-max-result-bytes", env = "AIRLOCK_LOCAL_MAX_RESULT_BYTES", default_value_t = DEFAULT_MAX_RESULT_BYTES)]
    pub local_max_result_bytes: usize,
    /// Use cgroups when writable.
    #[arg(long = "local-cgroups", env = "AIRLOCK_LOCAL_CGROUPS", default_value_t = DEFAULT_CGROUPS, action = clap::ArgAction::Set)]
    pub local_cgroups: bool,
    /// Accept running without a memory cgroup (weaker bounds: RLIMIT_AS only); refused otherwise.
    #[arg(long = "local-allow-no-memory-cgroup", env = "AIRLOCK_LOCAL_ALLOW_NO_MEMORY_CGROUP", default_value_t = false, action = clap::ArgAction::Set)]
    pub local_allow_no_memory_cgroup: bool,
    /// Image store directory (default: <local-dir>/images); the same as `airlock image --store-dir`.
    #[arg(long = "local-image-dir", env = "AIRLOCK_IMAGE_DIR")]
    pub local_image_dir: Option<PathBuf>,
    /// Bound of the image cache (LRU eviction of images no run uses).
    #[arg(long = "local-image-cache-size", env = "AIRLOCK_IMAGE_CACHE_SIZE", default_value = DEFAULT_IMAGE_CACHE_SIZE, value_parser = parse_bytes)]
    pub local_image_cache_size: u64,
    /// Per-run supervisor processes: `self` (this executable's hidden mode, the default), `in-process`
    /// (tasks of the dispatcher: runs die with it), or the path of an `airlock-supervisor` binary.
    #[arg(
        long = "local-supervisor",
        env = "AIRLOCK_LOCAL_SUPERVISOR",
        default_value = "self"
    )]
    pub local_supervisor: String,
    /// Static busybox that starts jobs inside their sandboxes.
    #[arg(long = "local-launcher", env = "AIRLOCK_LOCAL_LAUNCHER", default_value = DEFAULT_LAUNCHER)]
    pub local_launcher: PathBuf,
}

impl LocalArgs {
    /// The configuration these options describe.
    pub fn config(&self) -> LocalConfig {
        let mut c = LocalConfig::new(&self.local_dir);
        c.bwrap.clone_from(&self.local_bwrap);
        c.default_memory_bytes = self.local_memory;
        c.max_cpu_seconds = self.local_max_cpu_seconds;
        c.max_processes = self.local_max_processes;
        c.max_file_bytes = self.local_max_file_size;
        c.tmp_bytes = self.local_tmp_size;
        c.sandbox_uid_base = self.local_uid_base;
        c.sandbox_slots = self.local_slots;
        c.uid_lock_dir.clone_from(&self.local_uid_lock_dir);
        c.max_result_bytes = self.local_max_result_bytes;
        c.cgroups = self.local_cgroups;
        c.allow_no_memory_cgroup = self.local_allow_no_memory_cgroup;
        c.image_dir.clone_from(&self.local_image_dir);
        c.image_cache_bytes = self.local_image_cache_size;
        c.launcher.clone_from(&self.local_launcher);
        c.supervisor = match self.local_supervisor.as_str() {
            "in-process" => Supervisor::InProcess,
            // Without a path to this executable, runs are supervised in process.
            "self" => Supervisor::this_executable().unwrap_or(Supervisor::InProcess),
            path => Supervisor::Process {
                program: path.into(),
                args: Vec::new(),
            },
        };
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_defaults_and_new_agree() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            local: LocalArgs,
        }
        let args = <Cli as clap::Parser>::try_parse_from(["test"]).map(|c| c.local);
        let Ok(args) = args else {
            panic!("the defaults parse: {args:?}");
        };
        let (a, n) = (args.config(), LocalConfig::new(DEFAULT_STATE_DIR));
        assert_eq!(a.state_dir, n.state_dir);
        assert_eq!(
            (a.default_memory_bytes, a.max_file_bytes, a.tmp_bytes),
            (n.default_memory_bytes, n.max_file_bytes, n.tmp_bytes)
        );
        assert_eq!(n.default_memory_bytes, 512 * 1024 * 1024);
        assert_eq!(
            (
                a.max_cpu_seconds,
                a.max_processes,
                a.sandbox_uid_base,
                a.sandbox_slots
            ),
            (
                n.max_cpu_seconds,
                n.max_processes,
                n.sandbox_uid_base,
                n.sandbox_slots
            )
        );
        assert_eq!(
            (
                &a.bwrap,
                &a.uid_lock_dir,
                a.max_result_bytes,
                a.cgroups,
                a.allow_no_memory_cgroup,
                a.image_cache_bytes,
                &a.launcher,
            ),
            (
                &n.bwrap,
                &n.uid_lock_dir,
                n.max_result_bytes,
                n.cgroups,
                n.allow_no_memory_cgroup,
                n.image_cache_bytes,
                &n.launcher,
            )
        );
    }
}
