//! Extracting a tar archive of an OCI layout (plain or gzip) into a staging directory.
//!
//! Only the layout's own files are taken: `oci-layout`, `index.json` and `blobs/sha256/<64 hex>`, as
//! regular files; everything else (Docker's `manifest.json`, links, directories…) is skipped. Names are
//! matched exactly, so nothing in the archive can choose where a file lands.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use crate::digest::Digest;

/// Extracts the layout files of `archive` into `dest` (which exists and is empty).
pub(crate) fn extract(archive: &Path, dest: &Path) -> Result<(), String> {
    let file = File::open(archive).map_err(|e| format!("cannot be opened: {e}"))?;
    let mut input = BufReader::new(file);
    let gzip = input
        .fill_buf()
        .map_err(|e| format!("cannot be read: {e}"))?
        .starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else {
        Box::new(input)
    };
    fs::create_dir_all(dest.join("blobs").join("sha256")).map_err(|e| format!("staging: {e}"))?;
    let mut tar = tar::Archive::new(reader);
    let entries = tar
        .entries()
        .map_err(|e| format!("is not a tar archive: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("is not a valid tar archive: {e}"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = layout_name(&raw) else {
            continue;
        };
        let target = dest.join(&rel);
        let mut out = File::create(&target).map_err(|e| format!("staging {rel}: {e}"))?;
        io::copy(&mut entry, &mut out).map_err(|e| format!("extracting {rel}: {e}"))?;
    }
    Ok(())
}

/// The staging path for an archive member that belongs to an OCI layout, if it does.
fn layout_name(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let s = s.trim_start_matches("./");
    match s {
        "oci-layout" | "index.json" => Some(s.to_string()),
        _ => {
            let hex = s.strip_prefix("blobs/sha256/")?;
            Digest::parse(&format!("sha256:{hex}"))?;
            Some(format!("blobs/sha256/{hex}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layout_files_with_well_formed_blob_names_are_taken() {
        let hex = "a".repeat(64);
        assert_eq!(layout_name(b"./index.json").as_deref(), Some("index.json"));
        assert_eq!(layout_name(b"oci-layout").as_deref(), Some("oci-layout"));
        assert_eq!(
            layout_name(format!("blobs/sha256/{hex}").as_bytes()),
            Some(format!("blobs/sha256/{hex}"))
        );
        assert_eq!(layout_name(b"manifest.json"), None);
        assert_eq!(layout_name(b"blobs/sha256/../../etc/passwd"), None);
        assert_eq!(layout_name(b"/index.json"), None);
    }
}
