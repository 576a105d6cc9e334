//! What a scenario measured, and the two ways of showing it: a table for
//! people and one JSON object for machines. Every number a scenario
//! produces is a [`Metric`], so repeated runs can be summarised (median and
//! range) without each scenario knowing about repetition.

use serde_json::{Map, Value, json};

use crate::stats;

/// One named number of one run.
#[derive(Clone, Debug)]
pub struct Metric {
    /// Stable JSON key.
    pub key: &'static str,
    /// Row label in the human table.
    pub label: &'static str,
    /// Unit shown after the value ("" for plain counts).
    pub unit: &'static str,
    pub value: f64,
}

/// The numbers of one run, in the order they are shown.
#[derive(Clone, Debug, Default)]
pub struct Metrics(Vec<Metric>);

impl Metrics {
    pub fn push(&mut self, key: &'static str, label: &'static str, unit: &'static str, value: f64) {
        self.0.push(Metric {
            key,
            label,
            unit,
            value,
        });
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.iter().find(|m| m.key == key).map(|m| m.value)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Metric> {
        self.0.iter()
    }
}

/// One run of a scenario against one target.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub metrics: Metrics,
    /// Remarks a reader needs to interpret the numbers (choices, anomalies).
    pub notes: Vec<String>,
    /// (percentile, ms) for the latency plot.
    pub latency_curve: Vec<(f64, f64)>,
    /// Completed work per second of the run (delivered or admitted msg/s).
    pub per_second: Vec<f64>,
    /// Anything else worth keeping in the JSON (timelines, raw counts).
    pub extra: Map<String, Value>,
}

/// All runs against one target.
#[derive(Clone, Debug)]
pub struct TargetReport {
    /// "parley" or "nats".
    pub target: String,
    /// Where it was reached.
    pub endpoint: String,
    pub runs: Vec<RunReport>,
}

impl TargetReport {
    /// Median, min and max of `key` over the runs; None if no run has it.
    pub fn spread(&self, key: &str) -> Option<stats::Spread> {
        let values: Vec<f64> = self.runs.iter().filter_map(|r| r.metrics.get(key)).collect();
        (!values.is_empty()).then(|| stats::spread(&values))
    }

    fn keys(&self) -> Vec<&Metric> {
        let mut keys: Vec<&Metric> = Vec::new();
        for run in &self.runs {
            for metric in run.metrics.iter() {
                if !keys.iter().any(|k| k.key == metric.key) {
                    keys.push(metric);
                }
            }
        }
        keys
    }

    fn to_json(&self) -> Value {
        let runs: Vec<Value> = self.runs.iter().map(run_json).collect();
        let mut median = Map::new();
        let mut min = Map::new();
        let mut max = Map::new();
        for metric in self.keys() {
            if let Some(s) = self.spread(metric.key) {
                median.insert(metric.key.to_owned(), number(s.median));
                min.insert(metric.key.to_owned(), number(s.min));
                max.insert(metric.key.to_owned(), number(s.max));
            }
        }
        json!({
            "target": self.target,
            "endpoint": self.endpoint,
            "runs": runs,
            "median": median,
            "min": min,
            "max": max,
        })
    }
}

/// Everything one invocation measured.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub scenario: &'static str,
    /// The settings the scenario ran with.
    pub params: Value,
    pub targets: Vec<TargetReport>,
    /// Ratios between targets (only when comparing).
    pub comparison: Metrics,
    pub notes: Vec<String>,
}

fn number(v: f64) -> Value {
    // JSON has no NaN or infinity; such a value means "not measurable".
    if !v.is_finite() {
        return Value::Null;
    }
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        json!(v as i64)
    } else {
        json!((v * 1e6).round() / 1e6)
    }
}

fn run_json(run: &RunReport) -> Value {
    let mut object = Map::new();
    for metric in run.metrics.iter() {
        object.insert(metric.key.to_owned(), number(metric.value));
    }
    object.insert("notes".into(), json!(run.notes));
    let curve: Vec<Value> = run
        .latency_curve
        .iter()
        .map(|&(p, ms)| json!([number(p), number(ms)]))
        .collect();
    object.insert("latency_percentiles_ms".into(), Value::Array(curve));
    object.insert(
        "per_second".into(),
        Value::Array(run.per_second.iter().map(|&v| number(v)).collect()),
    );
    for (key, value) in &run.extra {
        object.insert(key.clone(), value.clone());
    }
    Value::Object(object)
}

impl ScenarioReport {
    pub fn to_json(&self) -> Value {
        let mut comparison = Map::new();
        for metric in self.comparison.iter() {
            comparison.insert(metric.key.to_owned(), number(metric.value));
        }
        json!({
            "scenario": self.scenario,
            "params": self.params,
            "results": self.targets.iter().map(TargetReport::to_json).collect::<Vec<_>>(),
            "comparison": comparison,
            "notes": self.notes,
        })
    }

    /// The human table: one row per number, one column per target; with
    /// several runs each cell is "median [min … max]".
    pub fn to_text(&self) -> String {
        let runs = self.targets.iter().map(|t| t.runs.len()).max().unwrap_or(0);
        let mut out = format!("parley-bench {}", self.scenario);
        if runs > 1 {
            out.push_str(&format!(" — {runs} runs, median [min … max]"));
        }
        out.push('\n');
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let mut keys: Vec<&Metric> = Vec::new();
        for target in &self.targets {
            for metric in target.keys() {
                if !keys.iter().any(|k| k.key == metric.key) {
                    keys.push(metric);
                }
            }
        }
        for metric in keys {
            let label = if metric.unit.is_empty() {
                metric.label.to_owned()
            } else {
                format!("{} ({})", metric.label, metric.unit)
            };
            let cells = self
                .targets
                .iter()
                .map(|t| match t.spread(metric.key) {
                    Some(s) if t.runs.len() > 1 => {
                        format!("{} [{} … {}]", fmt_num(s.median), fmt_num(s.min), fmt_num(s.max))
                    }
                    Some(s) => fmt_num(s.median),
                    None => "-".to_owned(),
                })
                .collect();
            rows.push((label, cells));
        }
        let headers: Vec<String> = self
            .targets
            .iter()
            .map(|t| format!("{} ({})", t.target, t.endpoint))
            .collect();
        let label_width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max(6);
        let widths: Vec<usize> = headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                rows.iter()
                    .map(|r| r.1[i].chars().count())
                    .chain([h.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        out.push_str(&format!("  {:label_width$}", ""));
        for (h, w) in headers.iter().zip(&widths) {
            out.push_str(&format!("  {h:>w$}"));
        }
        out.push('\n');
        for (label, cells) in &rows {
            out.push_str(&format!("  {label:label_width$}"));
            for (c, w) in cells.iter().zip(&widths) {
                out.push_str(&format!("  {c:>w$}"));
            }
            out.push('\n');
        }
        for metric in self.comparison.iter() {
            out.push_str(&format!(
                "  {}: {}{}\n",
                metric.label,
                fmt_num(metric.value),
                metric.unit
            ));
        }
        let mut notes: Vec<String> = self.notes.clone();
        for target in &self.targets {
            for run in &target.runs {
                for note in &run.notes {
                    let note = format!("{}: {note}", target.target);
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                }
            }
        }
        if !notes.is_empty() {
            out.push_str("notes:\n");
            for note in notes {
                out.push_str(&format!("  - {note}\n"));
            }
        }
        out
    }
}

/// A number for people: thousands separated, a few significant digits.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if (v.fract() == 0.0 && a < 1e15) || a >= 1000.0 {
        return group(v.round() as i64);
    }
    if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.3}")
    } else {
        // Rounded to three decimals a small ratio would read as nothing
        // (the server's bytes for a direct transfer against a relayed one).
        format!("{v:.2e}")
    }
}

fn group(v: i64) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_people() {
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(-1234.4), "-1,234");
        assert_eq!(fmt_num(12.345), "12.35");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(0.00001362), "1.36e-5");
        assert_eq!(fmt_num(0.001), "0.001");
    }

    #[test]
    fn json_has_runs_and_medians() {
        let mut run = RunReport::default();
        run.metrics.push("delivered", "delivered", "", 10.0);
        let mut second = RunReport::default();
        second.metrics.push("delivered", "delivered", "", 30.0);
        let report = ScenarioReport {
            scenario: "relay",
            params: json!({}),
            targets: vec![TargetReport {
                target: "parley".into(),
                endpoint: "x".into(),
                runs: vec![run, second],
            }],
            comparison: Metrics::default(),
            notes: vec![],
        };
        let v = report.to_json();
        assert_eq!(v["results"][0]["runs"][1]["delivered"], 30);
        assert_eq!(v["results"][0]["median"]["delivered"], 20);
        assert!(report.to_text().contains("20 [10 … 30]"));
    }
}
