//! Validated `sha256:<hex>` digests, and hashing readers and writers that check content against them.
//!
//! Every digest that names a file or directory in the store comes from untrusted input (a manifest, an
//! index, an OCI layout), so it is parsed here before it is used: exactly `sha256:` and 64 lowercase hex
//! digits, nothing a path could be made of.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A sha256 content digest, `sha256:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else (other algorithms included) is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits (safe as a file name).
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// A short form for messages: `sha256:` and the first 12 hex digits.
    pub fn short(&self) -> &str {
        &self.0[.."sha256:".len() + 12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Incremental sha256 with a byte count.
#[derive(Debug, Default, Clone)]
pub(crate) struct Hasher {
    sha: Sha256,
    len: u64,
}

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn finish(self) -> Digest {
        Digest(format!("sha256:{}", hex::encode(self.sha.finalize())))
    }
}

/// A reader that hashes what passes through it and fails once more than `limit` bytes came through.
#[derive(Debug)]
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Hasher::default(),
            limit,
        }
    }

    pub(crate) fn into_parts(self) -> (R, Hasher) {
        (self.inner, self.hasher)
    }
}

/// The error kind a [`HashingReader`] reports when its limit is passed (told apart by the payload type).
#[derive(Debug, thiserror::Error)]
#[error("more than {0} bytes")]
pub(crate) struct LimitExceeded(pub(crate) u64);

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        if self.hasher.len() > self.limit {
            return Err(io::Error::other(LimitExceeded(self.limit)));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_sha256_with_64_hex_digits_parses() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(Digest::parse(&ok).is_some());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse(&format!("sha512:{}", "a".repeat(128))).is_none());
        assert!(Digest::parse(&format!("sha256:{}/..", "a".repeat(61))).is_none());
        assert!(Digest::parse("sha256:").is_none());
    }

    #[test]
    fn digest_of_bytes_matches_the_incremental_hasher() {
        let data = b"hello world";
        let mut h = Hasher::default();
        h.update(&data[..5]);
        h.update(&data[5..]);
        assert_eq!(h.len(), 11);
        let d = h.finish();
        assert_eq!(d, Digest::of(data));
        assert_eq!(
            d.as_str(),
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[test]
    fn hashing_reader_fails_past_its_limit() {
        let mut r = HashingReader::new(&[0u8; 10][..], 5);
        let err = io::copy(&mut r, &mut io::sink()).expect_err("limit");
        assert!(err.get_ref().is_some_and(|e| e.is::<LimitExceeded>()));
    }
}
