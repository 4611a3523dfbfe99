//! The unpacker against hand-written (and hostile) tar streams.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::*;

/// A tar stream written entry by entry with raw names (the `tar` crate's builder refuses hostile ones).
#[derive(Default)]
struct RawTar(Vec<u8>);

impl RawTar {
    fn entry(mut self, name: &str, kind: EntryType, link: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().expect("gnu header");
            g.name[..name.len()].copy_from_slice(name.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    fn file(self, name: &str, data: &str) -> Self {
        self.entry(name, EntryType::Regular, "", 0o644, data.as_bytes())
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name, EntryType::Directory, "", 0o755, b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Symlink, target, 0o777, b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, EntryType::Link, target, 0o644, b"")
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A rootfs inside a sandbox directory that also holds a canary file and directory outside the rootfs.
struct World {
    _dir: tempfile::TempDir,
    base: PathBuf,
    rootfs: PathBuf,
    budget: UnpackBudget,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().to_path_buf();
        let rootfs = base.join("image").join("rootfs");
        std::fs::create_dir_all(&rootfs).expect("rootfs");
        std::fs::write(base.join("canary"), "untouched").expect("canary");
        std::fs::create_dir(base.join("canary-dir")).expect("canary dir");
        Self {
            _dir: dir,
            base,
            rootfs,
            budget: UnpackBudget::new(1 << 30),
        }
    }

    fn layer(&mut self, tar: Vec<u8>) -> Result<(), LayerError> {
        self.layer_as(&tar, "application/vnd.oci.image.layer.v1.tar", None)
    }

    fn layer_as(
        &mut self,
        bytes: &[u8],
        media_type: &str,
        diff_id: Option<&Digest>,
    ) -> Result<(), LayerError> {
        let blob = self.base.join("blob");
        std::fs::write(&blob, bytes).expect("blob");
        unpack_layer(&blob, media_type, &self.rootfs, diff_id, &mut self.budget)
    }

    fn at(&self, p: &str) -> PathBuf {
        self.rootfs.join(p)
    }

    fn assert_host_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.base.join("canary")).expect("canary"),
            "untouched"
        );
        let mut outside: Vec<_> = std::fs::read_dir(&self.base)
            .expect("base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        outside.sort();
        assert_eq!(outside, ["blob", "canary", "canary-dir", "image"]);
        assert_eq!(
            std::fs::read_dir(self.base.join("canary-dir"))
                .expect("canary dir")
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(self.base.join("image"))
                .expect("image")
                .count(),
            1
        );
    }
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

#[test]
fn files_directories_symlinks_and_hard_links_are_unpacked() {
    let mut w = World::new();
    let tar = RawTar::default()
        .dir("./bin/")
        .entry("bin/tool", EntryType::Regular, "", 0o755, b"#!/bin/sh\n")
        .symlink("bin/sh", "tool")
        .hardlink("bin/tool2", "bin/tool")
        .file("etc/deep/file", "implicit parents")
        .finish();
    w.layer(tar).expect("unpack");
    assert_eq!(
        std::fs::read_to_string(w.at("bin/tool")).expect("tool"),
        "#!/bin/sh\n"
    );
    let m = std::fs::metadata(w.at("bin/tool")).expect("meta");
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    assert_eq!(m.nlink(), 2);
    assert_eq!(
        std::fs::read_link(w.at("bin/sh")).expect("link"),
        Path::new("tool")
    );
    assert_eq!(
        std::fs::read_to_string(w.at("etc/deep/file")).expect("deep"),
        "implicit parents"
    );
    w.assert_host_untouched();
}

#[test]
fn device_nodes_and_fifos_are_dropped_and_setuid_bits_cleared() {
    let mut w = World::new();
    let tar = RawTar::default()
        .entry("dev/sda", EntryType::Block, "", 0o660, b"")
        .entry("dev/null", EntryType::Char, "", 0o666, b"")
        .entry("run/fifo", EntryType::Fifo, "", 0o644, b"")
        .entry("bin/su", EntryType::Regular, "", 0o6755, b"elf")
        .finish();
    w.layer(tar).expect("unpack");
    assert!(!exists(&w.at("dev/sda")));
    assert!(!exists(&w.at("dev/null")));
    assert!(!exists(&w.at("run/fifo")));
    let mode = std::fs::metadata(w.at("bin/su"))
        .expect("su")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755);
    assert_eq!(w.budget.dropped_special, 3);
    assert_eq!(w.budget.cleared_setid, 1);
}

#[test]
fn an_entry_climbing_out_with_dotdot_is_refused() {
    let mut w = World::new();
    let err = w
        .layer(RawTar::default().file("../../canary", "pwned").finish())
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        r#"entry "../../canary" escapes the rootfs"#
    );
    assert!(!err.is_retryable());
    w.assert_host_untouched();
}

#[test]
fn an_absolute_entry_is_refused() {
    let mut w = World::new();
    let abs = format!("{}/canary", w.base.display());
    let err = w
        .layer(RawTar::default().file(&abs, "pwned").finish())
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        format!("entry {abs:?} is an absolute path")
    );
    w.assert_host_untouched();
}

#[test]
fn writing_through_a_symlink_planted_in_the_same_layer_is_refused() {
    let mut w = World::new();
    let outside = w.base.join("canary-dir");
    let tar = RawTar::default()
        .symlink("evil", outside.to_str().expect("utf8"))
        .file("evil/payload", "pwned")
        .finish();
    let err = w.layer(tar).expect_err("refused");
    assert_eq!(
        err.to_string(),
        r#"entry "evil/payload" goes through the symlink "evil""#
    );
    w.assert_host_untouched();
}

#[test]
fn writing_through_a_symlink_from_a_lower_layer_is_refused() {
    let mut w = World::new();
    w.layer(
        RawTar::default()
            .symlink("usr/lib/evil", "../../../..")
            .finish(),
    )
    .expect("lower layer");
    let err = w
        .layer(
            RawTar::default()
                .file("usr/lib/evil/canary", "pwned")
                .finish(),
        )
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        r#"entry "usr/lib/evil/canary" goes through the symlink "usr/lib/evil""#
    );
    w.assert_host_untouched();
}

#[test]
fn an_entry_replaces_a_symlink_at_its_own_name_instead_of_following_it() {
    let mut w = World::new();
    let outside = w.base.join("canary");
    w.layer(
        RawTar::default()
            .symlink("etc/passwd", outside.to_str().expect("utf8"))
            .finish(),
    )
    .expect("lower");
    w.layer(RawTar::default().file("etc/passwd", "root:x:0:0").finish())
        .expect("upper");
    assert_eq!(
        std::fs::read_to_string(w.at("etc/passwd")).expect("passwd"),
        "root:x:0:0"
    );
    assert!(
        !std::fs::symlink_metadata(w.at("etc/passwd"))
            .expect("m")
            .is_symlink()
    );
    w.assert_host_untouched();
}

#[test]
fn hard_links_to_host_files_are_refused() {
    for target in ["/etc/shadow", "../../../../../../etc/shadow"] {
        let mut w = World::new();
        let err = w
            .layer(RawTar::default().hardlink("shadow", target).finish())
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(r#"hard link "shadow" points outside the rootfs (to {target:?})"#)
        );
        w.assert_host_untouched();
    }
}

#[test]
fn a_hard_link_through_a_symlinked_directory_is_refused() {
    let mut w = World::new();
    let tar = RawTar::default()
        .symlink("hostetc", "/etc")
        .hardlink("shadow", "hostetc/shadow")
        .finish();
    let err = w.layer(tar).expect_err("refused");
    assert!(
        err.to_string().contains("points outside the rootfs"),
        "{err}"
    );
    assert!(!exists(&w.at("shadow")));
}

#[test]
fn a_hard_link_to_a_missing_file_is_refused() {
    let mut w = World::new();
    let err = w
        .layer(RawTar::default().hardlink("a", "nope").finish())
        .expect_err("refused");
    assert!(err.to_string().contains("not a file in the image"), "{err}");
}

#[test]
fn whiteouts_delete_lower_content_but_not_this_layers() {
    let mut w = World::new();
    w.layer(
        RawTar::default()
            .file("keep", "k")
            .file("gone", "g")
            .file("dir/old1", "o")
            .file("dir/sub/old2", "o")
            .file("both", "lower")
            .finish(),
    )
    .expect("lower");
    w.layer(
        RawTar::default()
            .file(".wh.gone", "")
            .file("dir/sub/new", "n") // written before the opaque marker: kept
            .file("dir/.wh..wh..opq", "")
            .file("dir/new2", "n")
            .file("both", "upper")
            .file(".wh.both", "") // same-layer content survives its own whiteout
            .finish(),
    )
    .expect("upper");
    assert!(exists(&w.at("keep")));
    assert!(!exists(&w.at("gone")));
    assert!(!exists(&w.at("dir/old1")));
    assert!(!exists(&w.at("dir/sub/old2")));
    assert!(exists(&w.at("dir/sub/new")));
    assert!(exists(&w.at("dir/new2")));
    assert_eq!(
        std::fs::read_to_string(w.at("both")).expect("both"),
        "upper"
    );
    assert!(!exists(&w.at(".wh.gone")));
}

#[test]
fn a_whiteout_through_a_symlink_is_refused() {
    let mut w = World::new();
    let outside = w.base.to_str().expect("utf8").to_string();
    let err = w
        .layer(
            RawTar::default()
                .symlink("up", &outside)
                .file("up/.wh.canary", "")
                .finish(),
        )
        .expect_err("refused");
    assert!(
        err.to_string().contains("goes through the symlink"),
        "{err}"
    );
    w.assert_host_untouched();
}

#[test]
fn gzip_zstd_and_plain_layers_are_detected_by_their_magic_bytes() {
    let tar = RawTar::default().file("hello", "world").finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst =
        ruzstd::encoding::compress_to_vec(&tar[..], ruzstd::encoding::CompressionLevel::Fastest);
    for (bytes, mt) in [
        (&gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        (&zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
        (&tar, "application/vnd.oci.image.layer.v1.tar"),
        (&tar, "application/vnd.docker.image.rootfs.diff.tar.gzip"), // mislabelled, sniffed
    ] {
        let mut w = World::new();
        w.layer_as(bytes, mt, Some(&Digest::of(&tar))).expect(mt);
        assert_eq!(
            std::fs::read_to_string(w.at("hello")).expect("hello"),
            "world"
        );
    }
}

#[test]
fn a_layer_whose_content_differs_from_its_diff_id_is_refused() {
    let mut w = World::new();
    let tar = RawTar::default().file("a", "b").finish();
    let err = w
        .layer_as(
            &tar,
            "application/vnd.oci.image.layer.v1.tar",
            Some(&Digest::of(b"other")),
        )
        .expect_err("refused");
    assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");
}

#[test]
fn a_layer_over_the_size_budget_is_refused() {
    let mut w = World::new();
    w.budget = UnpackBudget::new(4096);
    let err = w
        .layer(RawTar::default().file("big", &"x".repeat(8192)).finish())
        .expect_err("refused");
    assert_eq!(err.to_string(), "the image unpacks to more than 4096 bytes");
}

#[test]
fn garbage_is_not_a_tar_stream() {
    let mut w = World::new();
    let err = w
        .layer_as(
            &[0x1f, 0x8b, 1, 2, 3],
            "application/vnd.oci.image.layer.v1.tar+gzip",
            None,
        )
        .expect_err("refused");
    assert!(
        err.to_string().starts_with("not a valid gzip tar stream"),
        "{err}"
    );
}
