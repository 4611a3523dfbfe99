//! Stopping a cluster: its pods first (so the kubelet tears their sandboxes and networks down), then every
//! process `up` started, by the pid it recorded, then what the node left on the host.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};

use super::{BRIDGE, Layout, TestCluster, host};

/// Stops the cluster of `dir` (idempotent: a stopped cluster stays stopped).
pub async fn down(dir: &Path) -> Result<()> {
    let l = Layout::new(dir)?;
    if let Ok(cluster) = TestCluster::open(&l.dir)
        && running(&l)?
    {
        delete_pods(&cluster).await;
    }
    let pids = recorded(&l);
    // The reverse of the start order: the kubelet before containerd, the API server before etcd.
    for (name, pid) in pids.iter().rev() {
        stop(name, *pid).await;
    }
    // Containers that outlived their kubelet (a pod not deleted in time): their shims and processes.
    for pid in leftover_pids(&l) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    unmount_under(&[&l.dir, &l.run]);
    let _ = host("ip", &["link", "del", BRIDGE]);
    let rule = super::forward_guard("-D");
    let _ = host(
        "iptables",
        &rule.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let _ = std::fs::write(l.dir.join("pids"), "");
    if std::fs::read_to_string(super::OWNER).is_ok_and(|o| Path::new(o.trim()) == l.dir) {
        let _ = std::fs::remove_file(super::OWNER);
    }
    eprintln!("test-cluster: down ({})", l.dir.display());
    Ok(())
}

/// Whether any process recorded in `DIR/pids` is still alive.
pub(super) fn running(l: &Layout) -> Result<bool> {
    Ok(recorded(l).iter().any(|(_, pid)| alive(*pid)))
}

fn recorded(l: &Layout) -> Vec<(String, rustix::process::Pid)> {
    std::fs::read_to_string(l.dir.join("pids"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (name, pid) = line.split_once(' ')?;
            Some((
                name.to_string(),
                rustix::process::Pid::from_raw(pid.trim().parse().ok()?)?,
            ))
        })
        .collect()
}

/// Alive and not a zombie (an exited process whose new parent does not reap it).
fn alive(pid: rustix::process::Pid) -> bool {
    rustix::process::test_kill_process(pid).is_ok() && !is_zombie(pid)
}

/// Deletes every pod and waits (bounded) until the kubelet has removed them.
async fn delete_pods(cluster: &TestCluster) {
    let Ok(client) = cluster.client().await else {
        return;
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let Ok(list) = pods.list(&ListParams::default()).await else {
        return;
    };
    for p in &list.items {
        let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref())
        else {
            continue;
        };
        let _ = Api::<Pod>::namespaced(client.clone(), ns)
            .delete(
                name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match pods.list(&ListParams::default()).await {
            Ok(l) if l.items.is_empty() => return,
            Err(_) => return,
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// SIGTERM, then SIGKILL after 10 s.
async fn stop(name: &str, pid: rustix::process::Pid) {
    use rustix::process::{Signal, kill_process};
    if !alive(pid) {
        return;
    }
    let _ = kill_process(pid, Signal::TERM);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if tokio::time::Instant::now() > deadline {
            eprintln!(
                "test-cluster: {name} ({}) did not stop on SIGTERM: killing it",
                pid.as_raw_nonzero()
            );
            let _ = kill_process(pid, Signal::KILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_zombie(pid: rustix::process::Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Processes of this cluster's containers: containerd shims started for its socket, and whatever runs in
/// the kubelet's pod cgroups.
fn leftover_pids(l: &Layout) -> Vec<rustix::process::Pid> {
    let sock = l.containerd_socket().display().to_string();
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let shim = cmdline.contains("containerd-shim") && cmdline.contains(&sock);
        let in_pod = cgroup.lines().any(|c| c.contains(":/kubepods"));
        if (shim || in_pod)
            && let Some(p) = rustix::process::Pid::from_raw(pid)
        {
            pids.push(p);
        }
    }
    pids
}

/// Lazily unmounts every mount under `roots`, deepest first.
fn unmount_under(roots: &[&Path]) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| roots.iter().any(|r| Path::new(m).starts_with(r)))
        .collect();
    points.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in points {
        let _ = std::process::Command::new("umount")
            .args(["-l", m])
            .status();
    }
}
