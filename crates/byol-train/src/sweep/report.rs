//! What a sweep folder says about its trials: each trial's status, read from its run folder, and
//! the ranked tables (`summary.csv`, `summary.md`).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::{show, Goal, Sweep, Trial, ERROR_FILE};
use crate::train::RunSummary;

/// What a trial folder says about its trial.
#[derive(Debug, Clone)]
pub enum TrialStatus {
    /// Not started.
    Pending,
    /// Started and stopped (killed, interrupted): resumes from its newest checkpoint.
    Unfinished,
    Done(Box<RunSummary>),
    /// The error of its last attempt; a re-run retries it.
    Failed(String),
}

impl TrialStatus {
    /// Reads a trial folder.
    pub fn read(dir: &Path) -> Self {
        let summary = fs::read(dir.join("summary.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RunSummary>(&bytes).ok());
        if let Some(s) = summary.filter(|s| !s.interrupted && s.steps == s.total_steps) {
            return TrialStatus::Done(Box::new(s));
        }
        if let Ok(error) = fs::read_to_string(dir.join(ERROR_FILE)) {
            return TrialStatus::Failed(error.trim().to_string());
        }
        if dir.join(crate::run_dir::CHECKPOINTS_DIR).is_dir() || dir.join("summary.json").is_file() {
            TrialStatus::Unfinished
        } else {
            TrialStatus::Pending
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            TrialStatus::Pending => "pending",
            TrialStatus::Unfinished => "unfinished",
            TrialStatus::Done(_) => "done",
            TrialStatus::Failed(_) => "failed",
        }
    }
}

/// One line of the ranked summary.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1 = best; None for trials without the metric (failed, unfinished, no test split).
    pub rank: Option<usize>,
    pub trial: Trial,
    pub metric: Option<f64>,
    pub status: TrialStatus,
    pub run_dir: PathBuf,
}

/// One line about a finished trial: its metric, steps and time.
pub fn result_line(sweep: &Sweep, summary: &RunSummary) -> String {
    let metric = sweep.config.metric;
    format!(
        "{} = {} ({} steps, {:.1} s)",
        metric.name(),
        metric.of(summary).map_or("n/a".into(), |v| format!("{v:.4}")),
        summary.steps,
        summary.train_seconds
    )
}

/// Every trial with its status from disk, best first; trials without the metric last, in order.
pub fn rank(sweep: &Sweep) -> Vec<Row> {
    let metric = sweep.config.metric;
    let mut rows: Vec<Row> = sweep
        .trials
        .iter()
        .map(|trial| {
            let run_dir = sweep.trial_dir(trial);
            let status = TrialStatus::read(&run_dir);
            let value = match &status {
                TrialStatus::Done(summary) => metric.of(summary).filter(|v| v.is_finite()),
                _ => None,
            };
            Row {
                rank: None,
                trial: trial.clone(),
                metric: value,
                status,
                run_dir,
            }
        })
        .collect();
    let goal = sweep.goal;
    rows.sort_by(|a, b| match (a.metric, b.metric) {
        (Some(x), Some(y)) => {
            let order = x.total_cmp(&y);
            let order = if goal == Goal::Max { order.reverse() } else { order };
            order.then(a.trial.number.cmp(&b.trial.number))
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.trial.number.cmp(&b.trial.number),
    });
    for (i, row) in rows.iter_mut().enumerate() {
        if row.metric.is_some() {
            row.rank = Some(i + 1);
        }
    }
    rows
}

/// "higher is better" / "lower is better".
pub fn goal_name(goal: Goal) -> &'static str {
    match goal {
        Goal::Max => "higher is better",
        Goal::Min => "lower is better",
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// `rank,trial,<parameters...>,<metric>,status,run_dir`, best first.
pub fn to_csv(sweep: &Sweep, rows: &[Row]) -> String {
    let mut header = vec!["rank".to_string(), "trial".into()];
    header.extend(sweep.parameters.iter().map(|p| p.key.clone()));
    header.extend([
        sweep.config.metric.name().to_string(),
        "status".into(),
        "run_dir".into(),
    ]);
    // The ranked metric has its column already.
    let results: Vec<&Column> = RESULT_COLUMNS
        .iter()
        .filter(|(name, _)| *name != sweep.config.metric.name())
        .collect();
    header.extend(results.iter().map(|(name, _)| name.to_string()));
    let mut out = header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(",");
    out.push('\n');
    for row in rows {
        let mut fields = vec![row.rank.map_or(String::new(), |r| r.to_string()), row.trial.id()];
        fields.extend(row.trial.values.iter().map(|(_, v)| show(v)));
        fields.push(row.metric.map_or(String::new(), |m| m.to_string()));
        fields.push(row.status.label().to_string());
        fields.push(row.run_dir.display().to_string());
        for (_, of) in &results {
            fields.push(row.summary().and_then(of).map_or(String::new(), |v| v.to_string()));
        }
        out.push_str(&fields.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// What every table shows of a finished trial besides the ranked metric.
type Column = (&'static str, fn(&RunSummary) -> Option<f64>);
const RESULT_COLUMNS: [Column; 6] = [
    ("knn_before", |s| s.knn_before.map(|a| a.top1)),
    ("knn_after", |s| s.knn_after.map(|a| a.top1)),
    ("knn_gain", |s| Some(s.knn_after?.top1 - s.knn_before?.top1)),
    ("probe_top1", |s| s.probe_top1_after),
    ("final_loss", |s| s.final_loss),
    ("train_seconds", |s| Some(s.train_seconds)),
];

impl Row {
    fn summary(&self) -> Option<&RunSummary> {
        match &self.status {
            TrialStatus::Done(summary) => Some(summary),
            _ => None,
        }
    }
}

/// A markdown table of the ranked trials, with a title line; a note under it names the trials
/// that ended below their untrained network's kNN accuracy.
pub fn to_markdown(sweep: &Sweep, rows: &[Row]) -> String {
    let metric = sweep.config.metric.name();
    let done = rows.iter().filter(|r| matches!(r.status, TrialStatus::Done(_))).count();
    let mut out = format!(
        "# Sweep {}: {done} of {} trials done, ranked by {metric} ({})\n\n",
        sweep.name,
        rows.len(),
        goal_name(sweep.goal)
    );
    let cell = |s: &str| s.replace('|', "\\|");
    let mut header = vec!["rank".to_string(), "trial".into()];
    header.extend(sweep.parameters.iter().map(|p| format!("`{}`", p.key)));
    header.push(format!("**{metric}**"));
    header.extend(
        [
            "kNN before",
            "kNN after",
            "gain",
            "probe",
            "final loss",
            "time (s)",
            "status",
            "run folder",
        ]
        .map(String::from),
    );
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let mut rule = vec!["---:", "---"];
    rule.extend(sweep.parameters.iter().map(|_| "---"));
    rule.extend(["---:"; 7]);
    rule.extend(["---", "---"]);
    let _ = writeln!(out, "|{}|", rule.join("|"));
    let mut below = Vec::new();
    for row in rows {
        let mut cells = vec![row.rank.map_or("-".into(), |r| r.to_string()), row.trial.id()];
        cells.extend(row.trial.values.iter().map(|(_, v)| cell(&show(v))));
        cells.push(row.metric.map_or("n/a".into(), |m| format!("{m:.4}")));
        let summary = row.summary();
        let figure = |of: fn(&RunSummary) -> Option<f64>, format: fn(f64) -> String| {
            summary.and_then(of).map_or("-".into(), format)
        };
        let percent = |v: f64| format!("{:.1}%", v * 100.0);
        cells.push(figure(RESULT_COLUMNS[0].1, percent));
        cells.push(figure(RESULT_COLUMNS[1].1, percent));
        cells.push(figure(RESULT_COLUMNS[2].1, |v| format!("{:+.1}", v * 100.0)));
        cells.push(figure(RESULT_COLUMNS[3].1, percent));
        cells.push(figure(RESULT_COLUMNS[4].1, |v| format!("{v:.4}")));
        cells.push(figure(RESULT_COLUMNS[5].1, |v| format!("{v:.0}")));
        cells.push(row.status.label().to_string());
        cells.push(cell(&row.run_dir.display().to_string()));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if summary.and_then(RESULT_COLUMNS[2].1).is_some_and(|gain| gain < 0.0) {
            below.push(row.trial.id());
        }
    }
    if !below.is_empty() {
        let _ = writeln!(
            out,
            "\nBelow their untrained network's kNN accuracy (collapsed, or a recipe that does not suit the data): {}",
            below.join(", ")
        );
    }
    out
}
