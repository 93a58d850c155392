//! The results table: figures, rows, and the Markdown table they print as.

/// How a figure is printed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unit {
    /// Tasks per second.
    Rate,
    /// A plain fraction or factor.
    Plain,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Bytes.
    Bytes,
    /// Bytes, printed in MiB.
    MiB,
    /// A count.
    Count,
}

/// Formats `v` in `unit`.
pub(crate) fn fmt_val(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Rate if v >= 1e6 => format!("{:.2} M/s", v / 1e6),
        Unit::Rate if v >= 1e3 => format!("{:.1} k/s", v / 1e3),
        Unit::Rate => format!("{v:.0} /s"),
        Unit::Plain => format!("{v:.3}"),
        Unit::Ms => format!("{v:.2} ms"),
        Unit::Us => format!("{v:.1} µs"),
        Unit::Bytes => format!("{v:.1} B"),
        Unit::MiB => format!("{:.1} MiB", v / 1_048_576.0),
        Unit::Count => format!("{v:.0}"),
    }
}

/// One line of the results table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) workload: &'static str,
    pub(crate) config: String,
    pub(crate) metric: &'static str,
    pub(crate) unit: Unit,
    pub(crate) ours: f64,
    pub(crate) base: Option<f64>,
    pub(crate) target: &'static str,
    /// Whether the target was met; `None` when the row has no target.
    pub(crate) met: Option<bool>,
}

impl Row {
    /// ours ÷ baseline, when there is a non-zero baseline.
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.base.filter(|b| *b > 0.0).map(|b| self.ours / b)
    }
}

/// Prints the rows as a Markdown table (pasteable into docs/benchmarks.md).
pub(crate) fn print_table(rows: &[Row]) {
    println!("| workload | config | metric | ours | baseline | ours ÷ baseline | target | met |");
    println!("|---|---|---|---:|---:|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.workload,
            r.config,
            r.metric,
            fmt_val(r.ours, r.unit),
            r.base.map_or("—".into(), |b| fmt_val(b, r.unit)),
            r.ratio().map_or("—".into(), |x| format!("{x:.3}")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            }
        );
    }
}

/// What a workload produced: table rows, detail lines, and tables of its own (Markdown,
/// printed after the details).
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) details: Vec<String>,
    pub(crate) blocks: Vec<String>,
}
