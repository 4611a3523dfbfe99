//! What a run executes inside its image, as Kubernetes decides it, and the launcher script that starts it.
//!
//! - **Command**: the request's `command` replaces the image's `Entrypoint`, its `args` replace `Cmd`; a
//!   request with only `command` drops `Cmd`, one with only `args` keeps `Entrypoint`. Nothing at all to run
//!   is a `CreateContainerError`.
//! - **Environment**: the image's `Env`, then the request's (it wins), then Airlock's reserved variables; the
//!   result file replaces the NATS URL. `PATH`, `HOME` and `TMPDIR` get defaults when nobody sets them.
//! - **Working directory**: the image's `WorkingDir` when it sets one (a size-capped tmpfs is mounted there
//!   when the image lacks it and it can be created on the sandbox's own root), else the private work dir.
//! - The image's `User` is never used: the job always runs as the run's own uid.
//!
//! The job's argv and environment never go through a command line (bwrap refuses more than 9,000
//! arguments): they are written, shell-quoted, into the run's launch script, which a static busybox reads
//! inside the sandbox. The script resolves the command in the job's `PATH` (as runc does, and not to a
//! busybox applet), reports on the status pipe (its stdin) that the job starts, or why it cannot, then
//! `exec`s the job with its exact argv[0].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use airlock_images::ImageConfig;
use airlock_schemas::{RunRequest, env};

use super::sandbox::{SANDBOX_RESULT, SANDBOX_WORK};

/// Top-level directories of the sandbox that Airlock mounts itself; the image's are not used.
pub(crate) const OWN_TOP_DIRS: [&str; 4] = ["dev", "proc", "tmp", "run"];

/// Line the launcher writes on its status pipe right before `exec`ing the job.
pub(crate) const STARTED: &str = "started";
/// Prefix of the line the launcher writes when the job cannot be started.
pub(crate) const START_ERROR: &str = "error: ";

/// The job, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Job {
    /// argv, argv[0] first (never empty).
    pub argv: Vec<String>,
    /// The environment.
    pub env: BTreeMap<String, String>,
    /// Where the job starts.
    pub workdir: Workdir,
}

/// The job's working directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Workdir {
    /// The private work dir (the image sets no `WorkingDir`).
    Private,
    /// A directory the image has (or one bubblewrap resolves inside the sandbox, through a symlink).
    InImage(PathBuf),
    /// Missing from the image: a size-capped tmpfs is mounted there.
    Tmpfs(PathBuf),
}

impl Workdir {
    /// The path the job starts in.
    pub fn path(&self) -> &Path {
        match self {
            Workdir::Private => Path::new(SANDBOX_WORK),
            Workdir::InImage(p) | Workdir::Tmpfs(p) => p,
        }
    }
}

/// Why a job cannot be created from its request and image (`CreateContainerError`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CreateError {
    /// No command, and the image has no `Entrypoint` or `Cmd`.
    #[error(
        "no command specified: the request sets no command and image {image} has no Entrypoint or Cmd"
    )]
    NothingToRun {
        /// The image reference.
        image: String,
    },
    /// `WorkingDir` is unusable.
    #[error("working directory {dir:?} of image {image}: {why}")]
    Workdir {
        /// The image reference.
        image: String,
        /// The `WorkingDir`.
        dir: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// Resolves the job of `req` in the image (`rootfs`, `config`), with the dispatcher's environment `given`
/// (the request's env plus the reserved variables).
pub(crate) fn resolve(
    req: &RunRequest,
    config: &ImageConfig,
    rootfs: &Path,
    given: &BTreeMap<String, String>,
) -> Result<Job, CreateError> {
    let argv: Vec<String> = match (req.command.is_empty(), req.args.is_empty()) {
        (false, _) => req.command.iter().chain(&req.args).cloned().collect(),
        (true, false) => config.entrypoint.iter().chain(&req.args).cloned().collect(),
        (true, true) => config.default_command(),
    };
    if argv.is_empty() {
        return Err(CreateError::NothingToRun {
            image: req.image.clone(),
        });
    }
    let workdir = match &config.working_dir {
        None => Workdir::Private,
        Some(dir) => workdir_in(rootfs, dir).map_err(|why| CreateError::Workdir {
            image: req.image.clone(),
            dir: dir.clone(),
            why,
        })?,
    };
    Ok(Job {
        argv,
        env: job_env(&config.env, given),
        workdir,
    })
}

/// The job environment: the image's (valid names only), under the given one, the result file instead of a
/// NATS URL, sane defaults.
pub(crate) fn job_env(
    image: &[(String, String)],
    given: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = image
        .iter()
        .filter(|(k, _)| is_env_name(k) && !k.starts_with(env::RESERVED_PREFIX))
        .cloned()
        .collect();
    env.extend(given.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.remove(env::NATS_URL);
    env.insert(env::RESULT_FILE.into(), SANDBOX_RESULT.into());
    env.entry("PATH".into())
        .or_insert_with(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    env.entry("HOME".into())
        .or_insert_with(|| SANDBOX_WORK.into());
    env.entry("TMPDIR".into()).or_insert_with(|| "/tmp".into());
    env
}

/// `[A-Za-z_][A-Za-z0-9_]*`, the names a shell can export (and the contract allows).
fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Where `WorkingDir` `dir` is: in the image, or missing and mountable (its first missing component is at
/// the top, on the sandbox's own root). Components are inspected without following symlinks: a symlink is
/// left to bubblewrap, which resolves it inside the sandbox.
fn workdir_in(rootfs: &Path, dir: &str) -> Result<Workdir, &'static str> {
    let path = Path::new(dir);
    if !path.is_absolute() {
        return Err("not an absolute path");
    }
    let mut rel = PathBuf::new();
    for (depth, c) in path.components().skip(1).enumerate() {
        let Component::Normal(name) = c else {
            return Err("contains `.` or `..`");
        };
        if depth == 0 && OWN_TOP_DIRS.iter().any(|d| name == *d) {
            // Airlock's own mounts (a tmpfs at /tmp, /run...): bubblewrap creates or refuses it.
            return Ok(Workdir::InImage(path.to_path_buf()));
        }
        rel.push(name);
        match std::fs::symlink_metadata(rootfs.join(&rel)) {
            Ok(m) if m.file_type().is_symlink() => return Ok(Workdir::InImage(path.to_path_buf())),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err("not a directory in the image"),
            Err(_) if depth == 0 => return Ok(Workdir::Tmpfs(path.to_path_buf())),
            Err(_) => {
                return Err("missing from the image, inside one of its (read-only) directories");
            }
        }
    }
    Ok(Workdir::InImage(path.to_path_buf()))
}

/// `s` in single quotes, for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The launcher script of `job` (run by `busybox sh`, stdin being the status pipe).
pub(crate) fn script(job: &Job) -> String {
    let mut s = String::from("# Airlock launcher: resolve the command, report, exec. Generated.\n");
    let argv0 = &job.argv[0];
    let args: Vec<String> = job.argv[1..].iter().map(|a| quote(a)).collect();
    let _ = writeln!(s, "set -- {}", args.join(" "));
    let not_found = |what: &str| quote(&format!("{START_ERROR}exec: {argv0:?}: {what}"));
    if argv0.contains('/') {
        let _ = writeln!(
            s,
            "if [ ! -f {q} ] || [ ! -x {q} ]; then printf '%s\\n' {e} >&0; exit 127; fi\nset -- {q} \"$@\"",
            q = quote(argv0),
            e = not_found("no such executable file"),
        );
    } else {
        let path = job.env.get("PATH").map(String::as_str).unwrap_or_default();
        let _ = writeln!(
            s,
            "airlock_found=; airlock_path={path}\nset -f; IFS=:\nfor airlock_d in $airlock_path; do [ -n \"$airlock_d\" ] || airlock_d=.; \
             if [ -f \"$airlock_d\"/{n} ] && [ -x \"$airlock_d\"/{n} ]; then airlock_found=\"$airlock_d\"/{n}; break; fi; done\n\
             unset -v IFS; set +f\n\
             if [ -z \"$airlock_found\" ]; then printf '%s\\n' {e} >&0; exit 127; fi\n\
             set -- \"$airlock_found\" \"$@\"\nunset -v airlock_found airlock_d airlock_path",
            path = quote(path),
            n = quote(argv0),
            e = not_found("executable file not found in $PATH"),
        );
    }
    let _ = writeln!(s, "printf '{STARTED}\\n' >&0\nexec 0</dev/null");
    for (k, v) in &job.env {
        let _ = writeln!(s, "export {k}={}", quote(v));
    }
    let _ = writeln!(s, "exec -a {} \"$@\"", quote(argv0));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: &[&str], args: &[&str]) -> RunRequest {
        serde_json::from_value(serde_json::json!({
            "id": "r", "image": "img", "command": command, "args": args,
        }))
        .expect("request")
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            env: vec![
                ("FROM_IMAGE".into(), "1".into()),
                ("BOTH".into(), "image".into()),
                ("bad-name".into(), "x".into()),
            ],
            ..ImageConfig::default()
        }
    }

    fn argv(command: &[&str], args: &[&str]) -> Result<Vec<String>, CreateError> {
        let given = BTreeMap::new();
        resolve(
            &req(command, args),
            &image(&["/ep", "e1"], &["c1", "c2"]),
            Path::new("/nonexistent"),
            &given,
        )
        .map(|j| j.argv)
    }

    #[test]
    fn command_replaces_the_entrypoint_and_args_replace_cmd_as_kubernetes_does() {
        let v = |s: &[&str]| Ok(s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(argv(&[], &[]), v(&["/ep", "e1", "c1", "c2"]));
        assert_eq!(argv(&["/cmd"], &[]), v(&["/cmd"]));
        assert_eq!(argv(&[], &["a"]), v(&["/ep", "e1", "a"]));
        assert_eq!(argv(&["/cmd"], &["a"]), v(&["/cmd", "a"]));
        let none = resolve(
            &req(&[], &[]),
            &ImageConfig::default(),
            Path::new("/nonexistent"),
            &BTreeMap::new(),
        );
        assert!(matches!(none, Err(CreateError::NothingToRun { .. })));
    }

    #[test]
    fn the_image_env_comes_under_the_requests_and_the_nats_url_is_dropped() {
        let given = BTreeMap::from([
            ("BOTH".to_string(), "request".to_string()),
            (env::NATS_URL.to_string(), "nats://x".to_string()),
        ]);
        let e = job_env(&image(&[], &[]).env, &given);
        assert_eq!(e["BOTH"], "request");
        assert_eq!(e["FROM_IMAGE"], "1");
        assert!(!e.contains_key("bad-name") && !e.contains_key(env::NATS_URL));
        assert_eq!(e[env::RESULT_FILE], SANDBOX_RESULT);
    }

    #[test]
    fn a_working_dir_is_used_mounted_or_refused_by_where_it_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("usr/src")).expect("mkdir");
        let w = |d: &str| workdir_in(dir.path(), d);
        assert_eq!(w("/usr/src"), Ok(Workdir::InImage("/usr/src".into())));
        assert_eq!(w("/work/x"), Ok(Workdir::Tmpfs("/work/x".into())));
        assert!(w("/usr/src/app").is_err());
        assert!(w("relative").is_err());
        assert!(w("/usr/../etc").is_err());
    }

    #[test]
    fn the_script_quotes_everything_and_execs_with_the_exact_argv0() {
        let job = Job {
            argv: vec!["sh".into(), "-c".into(), "echo 'it''s' $HOME".into()],
            env: BTreeMap::from([
                ("PATH".to_string(), "/bin".to_string()),
                ("Q".to_string(), "a'b\nc".to_string()),
            ]),
            workdir: Workdir::Private,
        };
        let s = script(&job);
        assert!(
            s.contains(r#"set -- '-c' 'echo '\''it'\'''\''s'\'' $HOME'"#),
            "{s}"
        );
        assert!(s.contains("export Q='a'\\''b\nc'"), "{s}");
        assert!(s.trim_end().ends_with("exec -a 'sh' \"$@\""), "{s}");
    }
}
