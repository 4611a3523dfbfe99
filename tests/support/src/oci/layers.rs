//! Layers of real programs: Debian's busybox-static, a host binary with the shared libraries it links, and
//! the job image built from them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::json;

use super::{Compression, ImageSpec, Tar};

/// Debian's busybox-static as `/bin/busybox` with a symlink in `/bin` for each of its applets (`echo` a
/// hard link), `/sbin` a link to `bin`, and `/etc/airlock-marker` holding `marker` (the only file in
/// `/etc`).
pub fn busybox_layer(marker: &str) -> Result<Tar> {
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (Debian busybox-static)")?;
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("busybox --list")?;
    let mut tar = Tar::default()
        .dir("bin/")
        .executable("bin/busybox", &busybox);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        tar = match applet {
            "" | "busybox" => tar,
            // A hard link's header carries a mode that containerd applies to the shared inode: keep busybox
            // executable.
            "echo" => tar.entry(
                "bin/echo",
                super::EntryType::Link,
                "bin/busybox",
                0o755,
                b"",
            ),
            a => tar.symlink(&format!("bin/{a}"), "busybox"),
        };
    }
    Ok(tar
        .symlink("sbin", "bin")
        .dir("etc/")
        .file("etc/airlock-marker", marker.as_bytes()))
}

/// `/etc/passwd` with `root` and `nobody`, for images whose `User` is a name.
pub fn users_layer() -> Tar {
    Tar::default().dir("etc/").file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
}

/// The absolute paths `ldd` lists for `binary` (its shared libraries and the dynamic loader; none for a
/// static binary).
pub fn ldd(binary: &Path) -> Result<Vec<String>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut paths = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, r)) => r.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            paths.push(p.to_string());
        }
    }
    Ok(paths)
}

/// `binary` at `dest` (absolute) plus the shared libraries `ldd` lists for it, each at the path `ldd`
/// names (their contents read through the host's symlinks), with the directories they need.
pub fn binary_layer(binary: &Path, dest: &str) -> Result<Tar> {
    let mut files: Vec<(String, PathBuf)> = vec![(dest.to_string(), binary.to_path_buf())];
    for p in ldd(binary)? {
        files.push((p.clone(), PathBuf::from(p)));
    }
    let mut dirs: Vec<String> = Vec::new();
    let mut t = Tar::default();
    for (at, _) in &files {
        let parts: Vec<&str> = at.trim_start_matches('/').split('/').collect();
        for i in 1..parts.len() {
            let d = format!("{}/", parts[..i].join("/"));
            if !dirs.contains(&d) {
                t = t.dir(&d);
                dirs.push(d);
            }
        }
    }
    for (at, from) in &files {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        t = t.executable(at.trim_start_matches('/'), &data);
    }
    Ok(t)
}

/// The job image: busybox (marker `marker`), [`users_layer`], and our `airlock` and `airlock-emit` binaries as `/bin/airlock`
/// and `/bin/airlock-emit`, `PATH=/bin`. Its layers travel uncompressed: the binaries are large and
/// compressing them for every test costs more than it proves.
pub fn job_image(marker: &str) -> Result<ImageSpec> {
    let airlock = crate::our_binary("airlock")?;
    let emit = crate::our_binary("airlock-emit")?;
    let mut spec = ImageSpec::new(vec![
        busybox_layer(marker)?,
        users_layer(),
        binary_layer(&airlock, "/bin/airlock")?,
        binary_layer(&emit, "/bin/airlock-emit")?,
    ])
    .with_run(json!({"Env": ["PATH=/bin"]}));
    for (_, c) in &mut spec.layers {
        *c = Compression::None;
    }
    Ok(spec)
}
