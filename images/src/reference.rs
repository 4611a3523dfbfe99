//! [`ImageRef`]: an image reference parsed once and handed on in its parts, so that another process (a
//! run's supervisor) can use it without parsing it again (parsing compiles a large regex, milliseconds).

use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;

/// A parsed, normalized image reference (`docker.io/library/busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalizes `reference` (`busybox` → `docker.io/library/busybox:latest`).
    pub fn parse(reference: &str) -> Result<Self, ImageError> {
        let r = Reference::try_from(reference).map_err(|source| ImageError::InvalidReference {
            reference: reference.into(),
            source,
        })?;
        Ok(Self {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    /// The normalized reference as text: the store's key for it.
    pub fn whole(&self) -> String {
        self.to_oci().whole()
    }

    /// `oci-client`'s form, built from the parts (no parsing).
    pub(crate) fn to_oci(&self) -> Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.clone(), d.clone())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.clone()),
            (Some(t), None) => Reference::with_tag(registry, repository, t.clone()),
            (None, None) => Reference::with_tag(registry, repository, "latest".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_rebuilt_from_its_parts_is_the_parsed_one()
    -> Result<(), Box<dyn std::error::Error>> {
        for text in [
            "busybox",
            "busybox:1.36",
            "127.0.0.1:5000/tools/job:1",
            "quay.io/a/b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "quay.io/a/b:2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            let parsed = Reference::try_from(text)?;
            let r = ImageRef::parse(text)?;
            assert_eq!(r.to_oci(), parsed, "{text}");
            assert_eq!(r.whole(), parsed.whole(), "{text}");
            let through_json: ImageRef = serde_json::from_str(&serde_json::to_string(&r)?)?;
            assert_eq!(through_json, r);
        }
        Ok(())
    }

    #[test]
    fn a_malformed_reference_is_refused_with_its_text() {
        let e = ImageRef::parse("UPPER/Case:tag").expect_err("upper case is not a reference");
        assert!(
            matches!(e, ImageError::InvalidReference { ref reference, .. } if reference == "UPPER/Case:tag")
        );
    }
}
