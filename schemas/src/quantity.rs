//! Kubernetes resource quantities, parsed enough to compare them with policy bounds.

/// Parses a quantity (`500m`, `2`, `1.5`, `256Mi`, `1G`, `1e3`) into its value in base units.
///
/// Returns `None` for anything Kubernetes would not accept.
pub fn parse(q: &str) -> Option<f64> {
    let q = q.trim();
    if q.is_empty() || q.len() > 64 {
        return None;
    }
    let (num, mult) = split_suffix(q)?;
    if num.is_empty()
        || !num
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '+')
    {
        return None;
    }
    let unsigned = num.strip_prefix('+').unwrap_or(num);
    if unsigned.is_empty()
        || unsigned.matches('.').count() > 1
        || unsigned == "."
        || unsigned.contains('+')
    {
        return None;
    }
    let v: f64 = unsigned.parse().ok()?;
    let out = v * mult;
    out.is_finite().then_some(out)
}

fn split_suffix(q: &str) -> Option<(&str, f64)> {
    const BINARY: [(&str, f64); 6] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
    ];
    for (s, m) in BINARY {
        if let Some(n) = q.strip_suffix(s) {
            return Some((n, m));
        }
    }
    if let Some(idx) = q.find(['e', 'E']) {
        let (n, e) = (&q[..idx], &q[idx + 1..]);
        let exp: i32 = e.parse().ok()?;
        if !(-30..=30).contains(&exp) {
            return None;
        }
        return Some((n, 10f64.powi(exp)));
    }
    const DECIMAL: [(char, f64); 9] = [
        ('n', 1e-9),
        ('u', 1e-6),
        ('m', 1e-3),
        ('k', 1e3),
        ('M', 1e6),
        ('G', 1e9),
        ('T', 1e12),
        ('P', 1e15),
        ('E', 1e18),
    ];
    for (s, m) in DECIMAL {
        if let Some(n) = q.strip_suffix(s) {
            return Some((n, m));
        }
    }
    Some((q, 1.0))
}

/// CPU quantity in millicores, rounded up.
pub fn cpu_millis(q: &str) -> Option<u64> {
    parse(q).map(|v| (v * 1000.0).ceil() as u64)
}

/// Memory quantity in bytes, rounded up.
pub fn bytes(q: &str) -> Option<u64> {
    parse(q).map(|v| v.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("0.25"), Some(250));
        assert_eq!(bytes("256Mi"), Some(256 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("1e3"), Some(1000));
        assert_eq!(bytes("128974848"), Some(128_974_848));
        for bad in ["", "abc", "1.2.3", "Mi", "-1", "1 Gi", "1Xi", "1ee3", "."] {
            assert_eq!(parse(bad), None, "{bad:?} should not parse");
        }
    }
}
