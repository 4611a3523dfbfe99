//! `airlock image`: the local image store for air-gapped machines (import, list, remove).
//!
//! Works on the store directory the local runtime uses; registries are not contacted.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use airlock_images::{ImageStore, StoreConfig};
use anyhow::Result;
use clap::{Args, Subcommand};

/// `airlock image …`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The image store directory (`airlock dev` keeps it under its data dir).
    #[arg(long, env = "AIRLOCK_IMAGE_DIR", default_value = ".airlock/images")]
    pub store_dir: PathBuf,
    #[command(subcommand)]
    pub command: ImageCommand,
}

/// The image subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import the images of an OCI layout directory or a tar archive of one (`docker save`,
    /// `skopeo copy … oci-archive:`, `ctr images export`).
    Import {
        /// Directory or archive (.tar, .tar.gz).
        path: PathBuf,
        /// Reference to store the image under (when the layout holds one image without a full name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store.
    Ls,
    /// Remove a reference (or, given sha256:<hex>, an image with all its references).
    Rm {
        /// Reference or manifest digest.
        reference: String,
    },
}

/// Runs an image subcommand against the store at `state_dir`.
pub async fn run(cmd: ImageCommand, state_dir: &Path) -> Result<()> {
    let store = ImageStore::open(StoreConfig::from_env(state_dir))?;
    match cmd {
        ImageCommand::Import { path, name } => {
            for img in store.import(&path, name.as_deref()).await? {
                println!("imported {} {}", img.reference, img.digest);
            }
        }
        ImageCommand::Ls => {
            println!(
                "{:<60} {:<19} {:>10} {:>6} {:>9}",
                "REFERENCE", "DIGEST", "SIZE", "LEASES", "LAST USED"
            );
            for img in store.list().await? {
                let names = if img.references.is_empty() {
                    vec!["<none>".to_string()]
                } else {
                    img.references.clone()
                };
                for name in names {
                    println!(
                        "{:<60} {:<19} {:>10} {:>6} {:>9}",
                        name,
                        img.digest.short(),
                        human_size(img.size_bytes),
                        img.leases,
                        ago(img.last_used)
                    );
                }
            }
        }
        ImageCommand::Rm { reference } => {
            store.remove(&reference).await?;
            println!("removed {reference}");
        }
    }
    Ok(())
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(t: SystemTime) -> String {
    let s = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
