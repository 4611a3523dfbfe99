//! Inspecting and signalling host processes through `/proc`.

use std::path::Path;

use tracing::warn;

/// Whether `pid` is a zombie (or gone).
pub(super) fn is_zombie(pid: u32) -> bool {
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
        warn!(pid, error = %e, "Kill failed");
    }
}
