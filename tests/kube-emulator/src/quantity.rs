//! Resource quantities as the API server decodes them: a port of k8s.io/apimachinery
//! `pkg/api/resource` `ParseQuantity` (v0.33) and of `Quantity.UnmarshalJSON`, kept independent of
//! Airlock's own parser (the emulator is the test world, not the product).
//!
//! The shared table `schemas/tests/data/quantities.json` is the contract both parsers are tested on.

use serde_json::Value;

/// The upstream scanner's regular expression, quoted in its format error.
pub const SPLIT_RE: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Why `ParseQuantity` refused a string (the upstream error values, same messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// `ErrFormatWrong`.
    #[error("quantities must match the regular expression '{SPLIT_RE}'")]
    Format,
    /// `ErrSuffix`.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// `ErrNumeric`.
    #[error("unable to parse numeric part of quantity")]
    Numeric,
}

impl QuantityError {
    /// The short name used by the shared table (`format`, `suffix`, `numeric`).
    pub fn table_name(self) -> &'static str {
        match self {
            QuantityError::Format => "format",
            QuantityError::Suffix => "suffix",
            QuantityError::Numeric => "numeric",
        }
    }
}

/// A parsed quantity: its approximate value, enough for sign and request/limit comparisons.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantity {
    /// The value in base units (infinite when beyond `f64`).
    pub value: f64,
}

/// The pieces `parseQuantityString` scans: sign, numerator digits (leading zeros stripped,
/// `"0"` when none), denominator digits, the numeric text as written, and the suffix.
struct Scanned<'a> {
    positive: bool,
    num: &'a str,
    denom: &'a str,
    value: &'a str,
    suffix: &'a str,
}

fn digits_end(b: &[u8], from: usize) -> usize {
    from + b[from..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// `parseQuantityString`, step for step.
fn scan(s: &str) -> Result<Scanned<'_>, QuantityError> {
    let b = s.as_bytes();
    let end = b.len();
    let mut pos = 0;
    let positive = b.first() != Some(&b'-');
    if matches!(b.first(), Some(b'-' | b'+')) {
        pos += 1;
    }
    let zeros = b[pos..].iter().take_while(|c| **c == b'0').count();
    pos += zeros;
    if pos >= end {
        return Ok(Scanned {
            positive,
            num: "0",
            denom: "",
            value: "0",
            suffix: "",
        });
    }
    let num_end = digits_end(b, pos);
    let num = if num_end == pos {
        "0"
    } else {
        &s[pos..num_end]
    };
    pos = num_end;
    let mut denom = "";
    if pos < end && b[pos] == b'.' {
        let d_end = digits_end(b, pos + 1);
        denom = &s[pos + 1..d_end];
        pos = d_end;
    }
    let value = &s[..pos];
    let suffix_start = pos;
    pos += b[pos..]
        .iter()
        .take_while(|c| b"eEinumkKMGTP".contains(c))
        .count();
    if pos < end && matches!(b[pos], b'-' | b'+') {
        pos += 1;
    }
    if digits_end(b, pos) != end {
        return Err(QuantityError::Format);
    }
    Ok(Scanned {
        positive,
        num,
        denom,
        value,
        suffix: &s[suffix_start..],
    })
}

/// `(base, exponent)` of a suffix, as `quantitySuffixer.interpret`.
fn interpret(suffix: &str) -> Option<(u32, i32)> {
    const DECIMAL: [(&str, i32); 10] = [
        ("", 0),
        ("n", -9),
        ("u", -6),
        ("m", -3),
        ("k", 3),
        ("M", 6),
        ("G", 9),
        ("T", 12),
        ("P", 15),
        ("E", 18),
    ];
    const BINARY: [(&str, i32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];
    if let Some((_, e)) = DECIMAL.iter().find(|(s, _)| *s == suffix) {
        return Some((10, *e));
    }
    if let Some((_, e)) = BINARY.iter().find(|(s, _)| *s == suffix) {
        return Some((2, *e));
    }
    if suffix.len() > 1 && matches!(suffix.as_bytes()[0], b'e' | b'E') {
        return go_parse_int64(&suffix[1..]).map(|e| (10, e as i32));
    }
    None
}

/// Go's `strconv.ParseInt(s, 10, 64)`.
fn go_parse_int64(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `ParseQuantity`: accept exactly what the API server accepts.
pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
    if s.is_empty() {
        return Err(QuantityError::Format);
    }
    let sc = scan(s)?;
    let (base, exponent) = interpret(sc.suffix).ok_or(QuantityError::Suffix)?;
    // The int64 fast path needs a non-negative precision and a scale of at least nano; otherwise
    // the numeric text goes through inf.Dec's SetString, which needs at least one digit.
    let precision = if base == 10 {
        18 - (sc.num.len() + sc.denom.len()) as i64
    } else if sc.denom.is_empty() {
        15 - sc.num.len() as i64 - (exponent as i64 * 3 / 10) - 1
    } else {
        -1
    };
    let scale = if base == 10 { exponent as i64 } else { 0 } - sc.denom.len() as i64;
    let fast = precision >= 0 && scale >= -9;
    if !fast && !sc.value.bytes().any(|c| c.is_ascii_digit()) {
        return Err(QuantityError::Numeric);
    }
    let mantissa: f64 = format!(
        "{}.{}",
        sc.num,
        if sc.denom.is_empty() { "0" } else { sc.denom }
    )
    .parse()
    .map_err(|_| QuantityError::Numeric)?;
    let magnitude = if base == 10 {
        format!("{mantissa:e}")
            .split_once('e')
            .and_then(|(m, e)| {
                let e: i64 = e.parse().ok()?;
                format!("{m}e{}", e + exponent as i64).parse::<f64>().ok()
            })
            .ok_or(QuantityError::Numeric)?
    } else {
        mantissa * 2f64.powi(exponent)
    };
    Ok(Quantity {
        value: if sc.positive { magnitude } else { -magnitude },
    })
}

/// `Quantity.UnmarshalJSON`: a JSON string (whitespace trimmed) or number; `null` is zero.
///
/// Returns the text to store (the trimmed string; a number as its decimal text) and the parsed value.
/// The API server would store the canonical form (`1.5Gi` as `1536Mi`); the emulator keeps the text.
pub fn from_json(v: &Value) -> Result<(String, Quantity), QuantityError> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "0".to_string(),
        other => other.to_string(),
    };
    let q = parse(&text)?;
    Ok((text, q))
}
