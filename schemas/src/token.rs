//! The run token: an HMAC-SHA256 of the run id under the secret shared by dispatcher and ingester.
//!
//! A job receives its token in `AIRLOCK_RUN_TOKEN` and sends it back as the `Airlock-Run-Token` header, so a
//! job can publish a result for its own run only.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation so a token can never be confused with another HMAC under the same secret.
const DOMAIN: &[u8] = b"airlock-run-token:v1:";

fn mac(secret: &[u8], run_id: &str) -> HmacSha256 {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(DOMAIN);
    mac.update(run_id.as_bytes());
    mac
}

/// The token for `run_id`, as lowercase hex.
pub fn sign(secret: &[u8], run_id: &str) -> String {
    hex::encode(mac(secret, run_id).finalize().into_bytes())
}

/// Whether `token` is the token for `run_id`; the comparison is constant-time.
pub fn verify(secret: &[u8], run_id: &str, token: &str) -> bool {
    match hex::decode(token.trim()) {
        Ok(bytes) => mac(secret, run_id).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_for_its_own_run_only() {
        let t = sign(b"secret", "run-1");
        assert!(verify(b"secret", "run-1", &t));
        assert!(!verify(b"secret", "run-2", &t));
        assert!(!verify(b"other", "run-1", &t));
        assert!(!verify(b"secret", "run-1", "zz"));
        assert!(!verify(b"secret", "run-1", ""));
        assert!(!verify(b"secret", "run-1", &t[..62]));
    }
}
