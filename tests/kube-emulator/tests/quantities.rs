//! The emulator's quantity parser against the table shared with `airlock_schemas::quantity`
//! (`schemas/tests/data/quantities.json`, from k8s.io/apimachinery `ParseQuantity`).
#![allow(clippy::unwrap_used)]

use airlock_kube_emulator::quantity;
use serde_json::{Value, json};

fn table() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../schemas/tests/data/quantities.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rows<'a>(t: &'a Value, section: &str) -> &'a [Value] {
    t[section].as_array().unwrap()
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

#[test]
fn every_valid_quantity_in_the_shared_table_parses_to_its_value() {
    let t = table();
    let mut failures = Vec::new();
    for row in rows(&t, "valid") {
        let q = row["q"].as_str().unwrap();
        match (quantity::parse(q), row["value"].as_f64()) {
            (Err(e), _) => failures.push(format!("{q:?} refused: {e}")),
            (Ok(got), Some(want)) if !close(got.value, want) => {
                failures.push(format!("{q:?} = {}, want {want}", got.value))
            }
            (Ok(got), None) if got.value.is_finite() => {
                failures.push(format!("{q:?} = {}, want non-finite", got.value))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn every_invalid_quantity_in_the_shared_table_is_refused_with_its_upstream_error() {
    let t = table();
    let mut failures = Vec::new();
    for row in rows(&t, "invalid") {
        let q = row["q"].as_str().unwrap();
        let want = row["error"].as_str().unwrap();
        match quantity::parse(q) {
            Ok(v) => failures.push(format!("{q:?} accepted as {}", v.value)),
            Err(e) if e.table_name() != want => {
                failures.push(format!("{q:?}: {} error, want {want}", e.table_name()))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn json_decoding_trims_whitespace_and_reads_numbers_as_the_api_server_does() {
    for row in rows(&table(), "json_trimmed") {
        let (text, q) = quantity::from_json(&row["q"]).unwrap();
        assert_eq!(text, row["q"].as_str().unwrap().trim());
        assert!(close(q.value, row["value"].as_f64().unwrap()), "{row}");
    }
    assert_eq!(quantity::from_json(&json!(0.5)).unwrap().0, "0.5");
    assert_eq!(quantity::from_json(&json!(2)).unwrap().1.value, 2.0);
    assert_eq!(
        quantity::from_json(&json!(true)).unwrap_err(),
        quantity::QuantityError::Format
    );
}

#[test]
fn the_format_error_quotes_the_upstream_regular_expression() {
    assert_eq!(
        quantity::parse("256 Mi").unwrap_err().to_string(),
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    );
}
