//! `quantity::parse` against the quantity table shared with the Kubernetes emulator
//! (`tests/data/quantities.json`, from k8s.io/apimachinery `ParseQuantity`).

use airlock_schemas::quantity;
use serde_json::Value;

fn table() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/quantities.json");
    let text = std::fs::read_to_string(path).expect("the quantity table reads");
    serde_json::from_str(&text).expect("the quantity table is JSON")
}

fn rows<'a>(t: &'a Value, section: &str) -> &'a [Value] {
    t[section].as_array().expect("a section of rows")
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

#[test]
fn every_valid_quantity_in_the_shared_table_parses_to_its_value() {
    let t = table();
    let mut failures = Vec::new();
    for row in rows(&t, "valid") {
        let q = row["q"].as_str().expect("q");
        match (quantity::parse(q), row["value"].as_f64()) {
            (None, _) => failures.push(format!("{q:?} refused")),
            (Some(got), Some(want)) if !close(got, want) => {
                failures.push(format!("{q:?} = {got}, want {want}"))
            }
            (Some(got), None) if got.is_finite() => {
                failures.push(format!("{q:?} = {got}, want a non-finite value"))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_invalid_quantity_in_the_shared_table_is_refused() {
    let t = table();
    let accepted: Vec<(&str, f64)> = rows(&t, "invalid")
        .iter()
        .filter_map(|row| {
            let q = row["q"].as_str().expect("q");
            quantity::parse(q).map(|v| (q, v))
        })
        .collect();
    assert!(accepted.is_empty(), "accepted: {accepted:?}");
}

#[test]
fn the_exa_suffix_alone_is_a_valid_quantity() {
    assert_eq!(quantity::parse("1E"), Some(1e18));
    assert_eq!(quantity::parse("2E"), Some(2e18));
}

#[test]
fn quantities_with_surrounding_whitespace_are_refused_as_parse_quantity_does() {
    for row in rows(&table(), "json_trimmed") {
        let q = row["q"].as_str().expect("q");
        assert_eq!(quantity::parse(q), None, "{q:?}");
    }
}
