//! The result table: one row per figure, beside its ceiling measured in the same run and the ratio.

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Stage and what was measured.
    pub what: String,
    /// The figure, formatted with its unit.
    pub figure: String,
    /// The raw ceiling it is judged against (what, formatted figure) and the ratio figure / ceiling.
    pub ceiling: Option<(String, f64)>,
    /// CPU per item of the process(es) that did the work.
    pub cpu: String,
}

/// A rate, rounded for reading.
pub fn rate(per_s: f64, unit: &str) -> String {
    if per_s >= 10_000.0 {
        format!("{:.1}k {unit}/s", per_s / 1000.0)
    } else if per_s < 10.0 {
        format!("{per_s:.1} {unit}/s")
    } else {
        format!("{per_s:.0} {unit}/s")
    }
}

/// Milliseconds of CPU per item.
pub fn cpu_ms(total: std::time::Duration, items: usize, whose: &str) -> String {
    let ms = total.as_secs_f64() * 1000.0 / items.max(1) as f64;
    format!("{ms:.3} ms ({whose})")
}

/// Prints the table (Markdown, so it pastes into `docs/BENCHMARKS.md`) on stdout.
pub fn print(rows: &[Row]) {
    println!("| What | Airlock | Ceiling (same run) | Ratio | CPU per item |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let (ceiling, ratio) = match &r.ceiling {
            Some((c, ratio)) => (c.clone(), format!("{:.0}%", ratio * 100.0)),
            None => (String::new(), String::new()),
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.figure, ceiling, ratio, r.cpu
        );
    }
}
