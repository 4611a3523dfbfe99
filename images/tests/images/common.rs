//! Test fixtures of the store: the shared image builder (`airlock_test_support::oci`), registry settings,
//! stores on throwaway directories.

use std::path::{Path, PathBuf};

use airlock_images::{ImageStore, RegistryConfig, StoreConfig};
pub use airlock_test_support::oci::*;
use airlock_test_support::registry::Registry;
use anyhow::Result;

/// Registry settings for a plain-HTTP test registry (no system roots, no auth file).
pub fn plain_config(r: &Registry) -> RegistryConfig {
    RegistryConfig {
        insecure_registries: vec![r.host()],
        system_roots: false,
        ..RegistryConfig::default()
    }
}

/// A store under `dir/store`.
pub fn store(dir: &Path, registry: RegistryConfig) -> Result<ImageStore> {
    Ok(ImageStore::open(StoreConfig {
        registry,
        ..StoreConfig::new(dir.join("store"))
    })?)
}

/// A throwaway directory with a canary file next to the store, for "the host stays untouched".
pub fn world() -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "untouched")?;
    Ok((dir, canary))
}
