//! Kubernetes resource quantities, parsed exactly as the API server's `ParseQuantity` accepts them.
//!
//! The accepted language is that of k8s.io/apimachinery `pkg/api/resource` (v0.33), quirks included:
//! `+64Mi`, `1.`, `.5` and `1E` (exa) are quantities, `1e` and `1K` are not, and so is nothing with
//! whitespace in it (the API server's JSON decoding trims surrounding whitespace first; Airlock does not).
//! The table `schemas/tests/data/quantities.json`, shared with the Kubernetes emulator's own parser,
//! holds the cases both must agree on.

use std::sync::LazyLock;

use regex::Regex;

/// The scanner's shape: sign, digits, optional fraction, then suffix letters, sign and digits.
///
/// Every string this does not match is refused with ErrFormatWrong; what matches may still have a bad
/// suffix or, with no digits at all, a bad numeric part.
static SHAPE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[+-]?[0-9]*)$")
        .expect("valid regex")
});

/// A suffix's meaning: a power of ten or a power of two.
#[derive(Debug, Clone, Copy)]
enum Scale {
    Ten(i32),
    Two(u32),
}

fn suffix_scale(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "" => Scale::Ten(0),
        "n" => Scale::Ten(-9),
        "u" => Scale::Ten(-6),
        "m" => Scale::Ten(-3),
        "k" => Scale::Ten(3),
        "M" => Scale::Ten(6),
        "G" => Scale::Ten(9),
        "T" => Scale::Ten(12),
        "P" => Scale::Ten(15),
        "E" => Scale::Ten(18),
        "Ki" => Scale::Two(10),
        "Mi" => Scale::Two(20),
        "Gi" => Scale::Two(30),
        "Ti" => Scale::Two(40),
        "Pi" => Scale::Two(50),
        "Ei" => Scale::Two(60),
        _ => {
            let rest = suffix.strip_prefix(['e', 'E'])?;
            // Go's strconv.ParseInt(rest, 10, 64), then a truncating int32 conversion.
            let digits = rest.strip_prefix(['+', '-']).unwrap_or(rest);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i64 = rest.parse().ok()?;
            Scale::Ten(exp as i32)
        }
    };
    Some(scale)
}

/// Whether a quantity whose number has no digit at all (`Mi`, `.`, `-`) parses: upstream reads it as 0
/// on its fast path, but its slow path (big binary suffixes, scales below nano) needs a digit.
fn digitless_parses(scale: Scale) -> bool {
    match scale {
        Scale::Ten(exp) => exp >= -9,
        // precision = 15 - 1 - exp*3/10 - 1 must not be negative.
        Scale::Two(exp) => 13 >= exp * 3 / 10,
    }
}

/// Parses a quantity (`500m`, `2`, `1.5`, `256Mi`, `1G`, `1e3`, `-1`) into its value in base units.
///
/// Returns `None` for anything Kubernetes' `ParseQuantity` refuses. A valid quantity too large for an
/// `f64` is infinite.
pub fn parse(q: &str) -> Option<f64> {
    if q.is_empty() {
        return None;
    }
    let caps = SHAPE.captures(q)?;
    let group = |i: usize| caps.get(i).map_or("", |m| m.as_str());
    let (sign, int, frac, suffix) = (group(1), group(2), group(3), group(4));
    let scale = suffix_scale(suffix)?;
    if int.is_empty() && frac.is_empty() {
        return digitless_parses(scale).then_some(0.0);
    }
    let int = if int.is_empty() { "0" } else { int };
    let frac = if frac.is_empty() { "0" } else { frac };
    let magnitude = match scale {
        Scale::Ten(exp) => format!("{int}.{frac}e{exp}").parse::<f64>().ok()?,
        Scale::Two(exp) => format!("{int}.{frac}").parse::<f64>().ok()? * 2f64.powi(exp as i32),
    };
    Some(if sign == "-" { -magnitude } else { magnitude })
}

/// CPU quantity in millicores, rounded up; `None` if invalid or negative.
pub fn cpu_millis(q: &str) -> Option<u64> {
    parse(q)
        .filter(|v| *v >= 0.0)
        .map(|v| (v * 1000.0).ceil() as u64)
}

/// Memory quantity in bytes, rounded up; `None` if invalid or negative.
pub fn bytes(q: &str) -> Option<u64> {
    parse(q).filter(|v| *v >= 0.0).map(|v| v.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_amounts_round_up_and_refuse_negatives() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("0.25"), Some(250));
        assert_eq!(cpu_millis("1n"), Some(1));
        assert_eq!(bytes("256Mi"), Some(256 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("128974848"), Some(128_974_848));
        assert_eq!(bytes("1e400"), Some(u64::MAX));
        assert_eq!(cpu_millis("-1"), None);
        assert_eq!(bytes("-1Mi"), None);
        assert_eq!(bytes("1 Gi"), None);
    }
}
