//! Following a local run's log file: what is there from an offset, then what is appended, until the job
//! has finished and everything it wrote was read. The file stays open once found, so a reap that removes the
//! run directory right after the job ended does not cut off its last lines.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use airlock_schemas::is_valid_name;
use futures::stream::{self, BoxStream, StreamExt};

use super::LocalBackend;
use super::rundir::LOG;
use crate::BackendError;

/// How often a quiet log file is looked at again.
const POLL: Duration = Duration::from_millis(200);

/// Largest piece read at once.
const CHUNK: usize = 32 * 1024;

struct Tail {
    backend: LocalBackend,
    run_id: String,
    path: PathBuf,
    file: Option<std::fs::File>,
    offset: u64,
    done: bool,
}

impl Tail {
    /// The next bytes after `offset`, waiting while the job runs; `None` once it finished and all was read
    /// (or nothing of the run exists).
    async fn next(&mut self) -> Option<Result<Vec<u8>, BackendError>> {
        loop {
            if self.done {
                return None;
            }
            // Whether the job had finished *before* this read: then an empty read is the end.
            let finished = match self.backend.observe(&self.run_id).await {
                Ok(Some(o)) => o.phase.is_finished(),
                Ok(None) => true,
                Err(e) => return Some(Err(e)),
            };
            match read_from(&self.path, &mut self.file, self.offset) {
                Ok(bytes) if !bytes.is_empty() => {
                    self.offset += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                Ok(_) if finished => self.done = true,
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(e) => {
                    self.done = true;
                    return Some(Err(BackendError::io("reading", &self.path)(e)));
                }
            }
        }
    }
}

/// Up to [`CHUNK`] bytes of `path` from `offset` (none while the file does not exist), through `file`,
/// which keeps it open once found.
fn read_from(
    path: &PathBuf,
    file: &mut Option<std::fs::File>,
    offset: u64,
) -> std::io::Result<Vec<u8>> {
    if file.is_none() {
        match std::fs::File::open(path) {
            Ok(f) => *file = Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
    }
    let Some(f) = file.as_mut() else {
        return Ok(Vec::new());
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

impl LocalBackend {
    /// The run's output from byte `skip` on, as it is written, until the job finished and all of it was
    /// read; empty when nothing of the run exists.
    pub fn logs_follow(
        &self,
        run_id: &str,
        skip: u64,
    ) -> BoxStream<'static, Result<Vec<u8>, BackendError>> {
        if !is_valid_name(run_id) {
            return stream::empty().boxed();
        }
        let tail = Tail {
            backend: self.clone(),
            run_id: run_id.to_string(),
            path: self.run_dir(run_id).join(LOG),
            file: None,
            offset: skip,
            done: false,
        };
        stream::unfold(tail, |mut t| async move { t.next().await.map(|r| (r, t)) }).boxed()
    }
}
