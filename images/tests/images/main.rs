//! Integration tests of the image store against a real registry (`docker-registry` on 127.0.0.1).
//!
//! # Layout
//! - `common`: layers, images, pushes, the TLS registry, stores.
//! - `pull`: tags, digests, formats, indexes, policies, single flight.
//! - `tls_auth`: TLS with a generated CA, htpasswd auth, untrusted certificates.
//! - `hostile`: malicious layers refused, the host untouched.
//! - `cache`: LRU eviction and leases, list, remove.
//! - `import`: OCI layouts and archives.

mod cache;
mod common;
mod hostile;
mod import;
mod pull;
mod tls_auth;
