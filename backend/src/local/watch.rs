//! The watch of runs supervised by processes of their own: their changes are read from the state directory
//! when inotify says a run's `status.json` was replaced, not by rescanning it.
//!
//! # Events, and a slow rescan
//! One inotify instance watches `runs/` (run directories renamed into place or away) and each run directory
//! (`status.json` renamed over: every status write is atomic). A change reads that run alone. What inotify
//! cannot tell is a supervisor that died without a word: a full rescan every [`RESCAN`] finds those
//! (`SupervisorLost`), and also covers an inotify queue overflow or a watch the kernel refused (the watch
//! limit; then that run is only seen by the rescans). Without inotify at all, the rescans are all there is.
//! Every file read runs on a blocking thread.
//!
//! # Pending results
//! A run whose supervisor process left its result pending is reported `Running` first; its result is
//! published (and the run seen finished) on the next step of the stream, which the consumer only asks for
//! once it has handled the `Running` change: nothing can end the run before it was recorded running.

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tracing::warn;

use super::LocalBackend;
use super::rundir::STATUS;
use crate::{Observed, Phase};
use airlock_schemas::is_valid_name;

/// How often the whole state directory is read again (lost supervisors, missed events).
const RESCAN: Duration = Duration::from_secs(2);
/// How often it is read when inotify is not available.
const RESCAN_WITHOUT_INOTIFY: Duration = Duration::from_millis(250);

/// What the watch keeps between steps.
struct State {
    backend: LocalBackend,
    /// The last observation emitted per run.
    seen: HashMap<String, Observed>,
    inotify: Option<Notify>,
    /// Runs to read again at the next step without waiting (a pending result to publish).
    again: HashSet<String>,
    next_rescan: Instant,
    first: bool,
}

/// The inotify instance and which run each of its watches is on.
struct Notify {
    fd: AsyncFd<OwnedFd>,
    runs_wd: i32,
    wds: HashMap<i32, String>,
    buf: Vec<MaybeUninit<u8>>,
}

/// What a read of the inotify queue says to look at.
enum Wake {
    Runs(HashSet<String>),
    Everything,
}

impl LocalBackend {
    /// The watch's changes read from the state directory (see the module documentation).
    pub(super) fn watch_state_dir(&self) -> BoxStream<'static, Observed> {
        let state = State {
            backend: self.clone(),
            seen: HashMap::new(),
            inotify: None,
            again: HashSet::new(),
            next_rescan: Instant::now(),
            first: true,
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                let changed = st.step().await;
                if !changed.is_empty() {
                    return Some((changed, st));
                }
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
    }
}

impl State {
    /// Waits for something to read, reads it; the changes (maybe none).
    async fn step(&mut self) -> Vec<Observed> {
        if self.first {
            self.first = false;
            // Watches first, so nothing written after the listing is missed.
            self.inotify = Notify::new(&self.backend);
            return self.rescan().await;
        }
        if !self.again.is_empty() {
            let ids = std::mem::take(&mut self.again);
            return self.publish_due(ids).await;
        }
        let wake = match &mut self.inotify {
            Some(n) => tokio::select! {
                w = n.wait(&self.backend) => Some(w),
                () = tokio::time::sleep_until(self.next_rescan) => None,
            },
            None => {
                tokio::time::sleep_until(self.next_rescan).await;
                None
            }
        };
        match wake {
            Some(Wake::Runs(ids)) => self.read_runs(ids).await,
            Some(Wake::Everything) | None => self.rescan().await,
        }
    }

    /// Reads every run of the state directory; forgets the runs that are gone.
    async fn rescan(&mut self) -> Vec<Observed> {
        let every = if self.inotify.is_some() {
            RESCAN
        } else {
            RESCAN_WITHOUT_INOTIFY
        };
        self.next_rescan = Instant::now() + every;
        let b = self.backend.clone();
        let Ok(Ok(all)) = tokio::task::spawn_blocking(move || b.run_ids()).await else {
            return Vec::new();
        };
        if let Some(n) = &mut self.inotify {
            for id in &all {
                n.add_run(&self.backend, id);
            }
        }
        let present: HashSet<String> = all.iter().cloned().collect();
        self.seen.retain(|id, _| present.contains(id));
        self.read_runs(present).await
    }

    /// Publishes the pending results of `ids`, each just reported `Running`, and returns what changed. No read
    /// of its own first: `publish_pending` reads the status under the run's publish lock, and a run that is
    /// no longer pending is observed as it is.
    async fn publish_due(&mut self, ids: HashSet<String>) -> Vec<Observed> {
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let Some(o) = self.publish(&id).await else {
                continue;
            };
            if self.seen.get(&id) != Some(&o) {
                self.seen.insert(id, o.clone());
                out.push(o);
            }
        }
        out
    }

    /// Publishes the pending result of run `id` and returns the run as it is then: the final status just
    /// written (finished, so no liveness to ask), or, when another publisher had it or it was no longer
    /// pending, as observed; `None` when it is gone (forgotten) or cannot be read.
    async fn publish(&mut self, id: &str) -> Option<Observed> {
        if let Some(done) = self.backend.publish_pending(id).await {
            return Some(done.to_observed(false));
        }
        match self.backend.observe(id).await {
            Ok(Some(now)) => Some(now),
            Ok(None) => {
                self.seen.remove(id);
                None
            }
            Err(_) => None,
        }
    }

    /// Reads the runs `ids`, publishes their pending results when due, and returns what changed.
    async fn read_runs(&mut self, ids: HashSet<String>) -> Vec<Observed> {
        let b = self.backend.clone();
        let mut ids: Vec<String> = ids.into_iter().collect();
        ids.sort();
        let Ok(read) = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| match b.observe_status_blocking(&id) {
                    Ok(Some((o, s))) => (id, Some(o), s.result_pending),
                    _ => (id, None, false),
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (id, o, pending) in read {
            let Some(mut o) = o else {
                self.seen.remove(&id);
                continue;
            };
            if pending {
                // Reported `Running` until published; published at the next step, once the consumer has
                // recorded it running.
                if self.seen.get(&id).map(|p| p.phase) != Some(Phase::Running) {
                    self.seen.insert(id.clone(), o.clone());
                    self.again.insert(id);
                    out.push(o);
                    continue;
                }
                match self.publish(&id).await {
                    Some(now) => o = now,
                    None => continue,
                }
            }
            let before = self.seen.get(&id).map(|p| p.phase);
            if o.phase.is_finished()
                && o.started_at.is_some()
                && matches!(before, None | Some(Phase::Pending))
            {
                // A job that ran between two reads: it was running, say so first.
                out.push(Observed {
                    phase: Phase::Running,
                    exit_code: None,
                    reason: None,
                    message: None,
                    finished_at: None,
                    ..o.clone()
                });
            }
            if self.seen.get(&id) != Some(&o) {
                self.seen.insert(id, o.clone());
                out.push(o);
            }
        }
        out
    }
}

impl LocalBackend {
    /// The names of the run directories (blocking).
    fn run_ids(&self) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_dir(self.runs_dir())?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.') && is_valid_name(n))
            .collect())
    }
}

impl Notify {
    /// An inotify instance watching `runs/`; `None` (with a warning) if the kernel refuses one.
    fn new(b: &LocalBackend) -> Option<Self> {
        let made = (|| -> std::io::Result<Self> {
            let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
            let runs_wd = inotify::add_watch(
                &fd,
                b.runs_dir(),
                WatchFlags::MOVED_TO
                    | WatchFlags::MOVED_FROM
                    | WatchFlags::CREATE
                    | WatchFlags::DELETE
                    | WatchFlags::ONLYDIR,
            )?;
            // `AsyncFd::new` is deprecated because a borrowed descriptor could be closed while registered; this
            // one is an `OwnedFd` the `AsyncFd` owns, closed only when it is dropped (after deregistering), and
            // the sound replacement (`register`) is `unsafe`, which this crate forbids.
            #[allow(deprecated)]
            let fd = AsyncFd::new(fd)?;
            Ok(Self {
                fd,
                runs_wd,
                wds: HashMap::new(),
                buf: vec![MaybeUninit::uninit(); 64 * 1024],
            })
        })();
        match made {
            Ok(n) => Some(n),
            Err(e) => {
                warn!(error = %e, "No inotify for the state directory; reading it every {RESCAN_WITHOUT_INOTIFY:?}");
                None
            }
        }
    }

    /// Watches the run's directory for its `status.json` being replaced (a watch the kernel refuses leaves the
    /// run to the rescans). Adding a watch twice is harmless (same descriptor). Only renames into it: every
    /// status write is one (`state::write_atomic`), and the files written in place (the log, temporary files)
    /// would only wake the watch for nothing.
    fn add_run(&mut self, b: &LocalBackend, run_id: &str) {
        match inotify::add_watch(
            self.fd.get_ref(),
            b.run_dir(run_id),
            WatchFlags::MOVED_TO | WatchFlags::ONLYDIR,
        ) {
            Ok(wd) => {
                self.wds.insert(wd, run_id.to_string());
            }
            Err(Errno::NOENT) => {}
            Err(e) => {
                warn!(run_id, error = %e, "Cannot watch the run's directory; it is read every {RESCAN:?}")
            }
        }
    }

    /// Waits until inotify has something, then drains it: the runs to read, or everything (overflow).
    async fn wait(&mut self, b: &LocalBackend) -> Wake {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return Wake::Everything;
            };
            let mut runs = HashSet::new();
            let mut overflow = false;
            let mut new_dirs = Vec::new();
            let mut reader = inotify::Reader::new(guard.get_inner(), &mut self.buf);
            loop {
                let ev = match reader.next() {
                    Ok(ev) => ev,
                    Err(Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(Errno::INTR) => continue,
                    Err(e) => {
                        warn!(error = %e, "Reading inotify failed; rescanning");
                        overflow = true;
                        break;
                    }
                };
                let flags = ev.events();
                if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                if flags.contains(ReadFlags::IGNORED) {
                    self.wds.remove(&ev.wd());
                    continue;
                }
                let name = ev
                    .file_name()
                    .and_then(|n| n.to_str().ok())
                    .unwrap_or_default();
                if ev.wd() == self.runs_wd {
                    if name.starts_with('.') || !is_valid_name(name) {
                        continue;
                    }
                    if flags.intersects(ReadFlags::MOVED_TO | ReadFlags::CREATE) {
                        new_dirs.push(name.to_string());
                    }
                    runs.insert(name.to_string());
                } else if name == STATUS
                    && let Some(id) = self.wds.get(&ev.wd())
                {
                    runs.insert(id.clone());
                }
            }
            drop(guard);
            // Watched before being read, so a status written meanwhile is seen by that read.
            for id in new_dirs {
                self.add_run(b, &id);
            }
            if overflow {
                return Wake::Everything;
            }
            if !runs.is_empty() {
                return Wake::Runs(runs);
            }
        }
    }
}
