//! What every bench prints: an aligned table for people, or with `--json` one JSON object (the
//! same rows, keyed by column) for scripts.

use serde_json::{json, Map, Value};

/// A bench's result: what was measured on what (`about`), one row per measurement, and notes
/// (ratios, what they mean).
pub struct Report {
    bench: &'static str,
    about: Vec<(&'static str, Value)>,
    rows: Vec<Vec<(&'static str, Value)>>,
    notes: Vec<String>,
}

impl Report {
    pub fn new(bench: &'static str) -> Self {
        Self {
            bench,
            about: Vec::new(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn about(&mut self, key: &'static str, value: impl Into<Value>) {
        self.about.push((key, value.into()));
    }

    /// One measurement; every row has the same columns, in the same order.
    pub fn row(&mut self, cells: Vec<(&'static str, Value)>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    pub fn print(&self, json: bool) {
        if json {
            say!("{}", self.to_json());
        } else {
            say!("{}", self.to_table().trim_end_matches('\n'));
        }
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("bench".into(), json!(self.bench));
        for (key, value) in &self.about {
            object.insert((*key).into(), value.clone());
        }
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| Value::Object(row.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect()))
            .collect();
        object.insert("rows".into(), Value::Array(rows));
        object.insert("notes".into(), json!(self.notes));
        Value::Object(object)
    }

    fn to_table(&self) -> String {
        let about: Vec<String> = self.about.iter().map(|(k, v)| format!("{k} {}", cell(v))).collect();
        let mut out = format!("bench {}: {}\n", self.bench, about.join(" | "));
        let Some(first) = self.rows.first() else {
            return out;
        };
        let header: Vec<&str> = first.iter().map(|(k, _)| *k).collect();
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| row.iter().map(|(_, v)| cell(v)).collect())
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                cells
                    .iter()
                    .map(|row| row[c].len())
                    .chain([header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |texts: Vec<&str>| {
            let padded: Vec<String> = texts
                .iter()
                .zip(&widths)
                .enumerate()
                // Text left, figures right, as a reader compares them.
                .map(|(c, (t, w))| match is_text_column(&self.rows, c) {
                    true => format!("{t:<w$}"),
                    false => format!("{t:>w$}"),
                })
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        out += &line(header);
        for row in &cells {
            out += &line(row.iter().map(String::as_str).collect());
        }
        for note in &self.notes {
            out += &format!("{note}\n");
        }
        out
    }
}

fn is_text_column(rows: &[Vec<(&'static str, Value)>], column: usize) -> bool {
    rows.iter()
        .any(|row| row[column].1.is_string() || row[column].1.is_boolean())
}

/// A value as a table cell: figures to a precision that reads (0 decimals from 100, 2 from 1,
/// else 4), `-` for a missing one.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            match x.abs() {
                a if a >= 100.0 => format!("{x:.0}"),
                a if a >= 1.0 => format!("{x:.2}"),
                _ => format!("{x:.4}"),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_the_json_carry_the_same_rows() {
        let mut report = Report::new("step");
        report.about("machine", "some CPU");
        report.row(vec![
            ("who", json!("byol-rs")),
            ("img/s", json!(1234.4)),
            ("peak GiB", Value::Null),
        ]);
        report.row(vec![
            ("who", json!("eager PyTorch")),
            ("img/s", json!(0.5)),
            ("peak GiB", json!(2.0)),
        ]);
        report.note("ratio 2469.00".into());
        let table = report.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "bench step: machine some CPU");
        assert_eq!(lines[1], "who             img/s  peak GiB");
        assert_eq!(lines[2], "byol-rs          1234         -");
        assert_eq!(lines[3], "eager PyTorch  0.5000      2.00");
        assert_eq!(lines[4], "ratio 2469.00");
        let json = report.to_json();
        assert_eq!(json["rows"][1]["who"], "eager PyTorch");
        assert_eq!(json["rows"][0]["img/s"], 1234.4);
        assert_eq!(json["machine"], "some CPU");
    }
}
