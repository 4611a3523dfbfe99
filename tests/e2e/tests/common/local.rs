//! The local runtime's side of the e2e tests: a [`System`] whose state directory's image store holds test
//! images imported before it starts (like `kind load`: no registry needed), and gates a job waits at until
//! the test opens them through the job's result file, the only host file a sandbox sees.

use std::path::{Path, PathBuf};

use airlock_test_support::oci::{ImageSpec, build, busybox_layer, write_layout};
use airlock_test_support::wait_until;
use anyhow::{Result, bail};

use super::{IMAGE, Runtime, System, T, traversable_tempdir};

/// Imports `spec` as `name` into the image store at `store` with `airlock image import`; `scratch` holds
/// its OCI layout.
pub async fn import_image(
    store: &Path,
    scratch: &Path,
    name: &str,
    spec: &ImageSpec,
) -> Result<()> {
    let built = build(spec)?;
    let layout = scratch.join(format!(
        "layout-{}",
        built.digest.trim_start_matches("sha256:")
    ));
    write_layout(&layout, &built, name)?;
    let out = tokio::process::Command::new(airlock_test_support::our_binary("airlock")?)
        .args(["image", "--store-dir"])
        .arg(store)
        .arg("import")
        .arg(&layout)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "airlock image import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Imports a busybox-static image built by the test support as [`IMAGE`] into the image store at `store`.
pub async fn import_test_busybox(store: &Path, scratch: &Path) -> Result<()> {
    let spec = ImageSpec::new(vec![busybox_layer("e2e")?]);
    import_image(store, scratch, IMAGE, &spec).await
}

/// A system with the local runtime on a fresh state directory (`<tempdir>/state`) whose store holds the
/// test busybox as [`IMAGE`] and each of `images` under its name.
pub async fn local_system(
    prefix: &str,
    images: &[(&str, ImageSpec)],
) -> Result<(System, tempfile::TempDir)> {
    let dir = traversable_tempdir(prefix)?;
    let state = dir.path().join("state");
    let store = state.join("images");
    import_test_busybox(&store, dir.path()).await?;
    for (name, spec) in images {
        import_image(&store, dir.path(), name, spec).await?;
    }
    let sys = System::start(Runtime::Local { dir: state }).await?;
    Ok((sys, dir))
}

/// The run directories of a [`local_system`]'s state directory.
pub fn runs_dir(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state/runs")
}

/// A shell script that runs `before`, waits until its result file is no longer empty (see [`open_gate`]),
/// then runs `after`.
pub fn gated(before: &str, after: &str) -> String {
    format!(r#"{before}; while [ ! -s "$AIRLOCK_RESULT_FILE" ]; do sleep 0.02; done; {after}"#)
}

/// Lets the [`gated`] job of run `id` go on once its attempt `attempt` runs: writes into its result file.
pub async fn open_gate(dir: &tempfile::TempDir, id: &str, attempt: u64) -> Result<()> {
    let run = runs_dir(dir).join(id);
    wait_until(T, "the job's attempt to run", || async {
        let status: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("status.json")).ok()?).ok()?;
        (status["attempt"] == attempt && status["phase"] == "Running").then_some(())
    })
    .await?;
    std::fs::write(run.join("sandbox/result.json"), "open")?;
    Ok(())
}
