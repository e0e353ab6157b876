//! What a sweep folder says about its trials: each trial's status, read from its run folder, and
//! the ranked tables (`summary.csv`, `summary.md`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use super::{show, Goal, Metric, Sweep, Trial, ERROR_FILE};
use crate::train::RunSummary;

/// What a trial folder says about its trial.
#[derive(Debug, Clone)]
pub enum TrialStatus {
    /// Not started.
    Pending,
    /// Started and stopped (killed, interrupted): resumes from its newest checkpoint.
    Unfinished,
    /// Not finished, and a byol-run holds its folder now (who, as its lock file names it).
    /// Only [`TrialStatus::read_live`] tells it.
    Running(String),
    Done(Box<RunSummary>),
    /// Stopped early by median pruning (its summary says where and why); the sweep does not
    /// resume it.
    Pruned(Box<RunSummary>),
    /// The error of its last attempt; a re-run retries it.
    Failed(String),
    /// Finished, but with a result that is not this sweep's trial's (why): another run's, or one
    /// on other data. Only the sweep that found it says so; its folder reads as finished.
    NotRanked(String),
}

impl TrialStatus {
    /// Reads a trial folder.
    pub fn read(dir: &Path) -> Self {
        let summary = fs::read(dir.join(crate::train::SUMMARY_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<RunSummary>(&bytes).ok());
        if let Some(s) = summary.filter(|s| !s.interrupted && (s.steps == s.total_steps || s.pruned.is_some())) {
            return match s.pruned {
                Some(_) => TrialStatus::Pruned(Box::new(s)),
                None => TrialStatus::Done(Box::new(s)),
            };
        }
        if let Ok(error) = fs::read_to_string(dir.join(ERROR_FILE)) {
            return TrialStatus::Failed(error.trim().to_string());
        }
        // Started: its run recorded its data (and its experiment) at its start.
        let started = [
            crate::run_dir::CHECKPOINTS_DIR,
            crate::train::SUMMARY_FILE,
            crate::train::state::FINGERPRINT_FILE,
        ];
        if started.iter().any(|entry| dir.join(entry).exists()) {
            TrialStatus::Unfinished
        } else {
            TrialStatus::Pending
        }
    }

    /// [`TrialStatus::read`], and whether a byol-run trains in the folder now: a folder that
    /// is not finished and whose lock is held is `Running`, not unfinished or failed.
    pub fn read_live(dir: &Path) -> Self {
        match Self::read(dir) {
            status @ (TrialStatus::Pending | TrialStatus::Unfinished | TrialStatus::Failed(_)) => {
                crate::run_dir::in_use_by(dir).map_or(status, TrialStatus::Running)
            }
            status => status,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            TrialStatus::Pending => "pending",
            TrialStatus::Unfinished => "unfinished",
            TrialStatus::Running(_) => "running",
            TrialStatus::Done(_) => "done",
            TrialStatus::Pruned(_) => "pruned",
            TrialStatus::Failed(_) => "failed",
            TrialStatus::NotRanked(_) => "not ranked",
        }
    }

    /// The epoch median pruning stopped the trial at.
    pub fn pruned_epoch(&self) -> Option<u64> {
        match self {
            TrialStatus::Pruned(summary) => summary.pruned.as_ref().map(|p| p.epoch),
            _ => None,
        }
    }

    /// `done`, `pruned at epoch 2`, `running (process 123)`...
    pub fn describe(&self) -> String {
        match (self, self.pruned_epoch()) {
            (_, Some(epoch)) => format!("pruned at epoch {epoch}"),
            (TrialStatus::Running(holder), _) => format!("running ({holder})"),
            _ => self.label().to_string(),
        }
    }
}

/// `text` as Markdown inline code: fenced by more backticks than any run of them inside (a
/// `--set` value may hold one), with a space inside the fences where it starts or ends with one.
fn code_span(text: &str) -> String {
    let longest_run = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest_run + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{text}{pad}{fence}")
}

/// One line of the ranked summary.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1 = best, the same for trials whose metrics tie (1, 1, 3); None for trials without the
    /// metric (failed, unfinished, no test split).
    pub rank: Option<usize>,
    pub trial: Trial,
    pub metric: Option<f64>,
    pub status: TrialStatus,
    pub run_dir: PathBuf,
}

/// One line about a finished (or pruned) trial: its metric, steps and time.
pub fn result_line(sweep: &Sweep, summary: &RunSummary) -> String {
    let metric = sweep.config.metric;
    if let Some(pruned) = &summary.pruned {
        return format!(
            "pruned after {} of {} steps: {}",
            summary.steps,
            summary.total_steps,
            pruned.describe()
        );
    }
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
    rank_with(sweep, |_, dir| TrialStatus::read(dir))
}

/// As [`rank`], with each trial's status given by `status_of(trial, its folder)`.
pub fn rank_with(sweep: &Sweep, status_of: impl Fn(&Trial, &Path) -> TrialStatus) -> Vec<Row> {
    let metric = sweep.config.metric;
    let mut rows: Vec<Row> = sweep
        .trials
        .iter()
        .map(|trial| {
            let run_dir = sweep.trial_dir(trial);
            let status = status_of(trial, &run_dir);
            // In float32, as the tables write it: two trials that gained the same number of
            // images tie, whatever the last bit of a float64 difference says.
            let value = match &status {
                TrialStatus::Done(summary) => metric.of(summary).filter(|v| v.is_finite()).map(|v| v as f32 as f64),
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
    // Ties share the rank of the first of them: trial order among them says nothing.
    for i in 0..rows.len() {
        let Some(value) = rows[i].metric else {
            continue;
        };
        let first = rows.iter().position(|r| r.metric == Some(value)).unwrap_or(i);
        rows[i].rank = Some(first + 1);
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

/// `rank,trial,<parameters...>,<metric>,status,run_dir,<results...>,pruned_epoch`, best first.
pub fn to_csv(sweep: &Sweep, rows: &[Row]) -> anyhow::Result<String> {
    let mut header = vec!["rank".to_string(), "trial".into()];
    header.extend(sweep.parameters.iter().map(|p| p.key.clone()));
    header.extend([
        sweep.config.metric.name().to_string(),
        "status".into(),
        "run_dir".into(),
    ]);
    // The ranked metric has its column already (knn_top1 is the column knn_after).
    let ranked = match sweep.config.metric {
        Metric::KnnTop1 => "knn_after",
        other => other.name(),
    };
    let results: Vec<&Column> = RESULT_COLUMNS.iter().filter(|(name, _)| *name != ranked).collect();
    header.extend(results.iter().map(|(name, _)| name.to_string()));
    header.push("pruned_epoch".into());
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(&header)?;
    // In float32's shortest form: 0.2 for a gain of 0.19999999999999998, 0.1 for a probe
    // accuracy of 0.10000000149011612 (a float32 widened); digits beyond are noise.
    let number = |value: Option<f64>| value.map_or(String::new(), |v| (v as f32).to_string());
    for row in rows {
        let mut fields = vec![row.rank.map_or(String::new(), |r| r.to_string()), row.trial.id()];
        fields.extend(row.trial.values.iter().map(|(_, v)| show(v)));
        fields.push(number(row.metric));
        fields.push(row.status.label().to_string());
        fields.push(row.run_dir.display().to_string());
        fields.extend(results.iter().map(|(_, of)| number(row.summary().and_then(of))));
        fields.push(row.status.pruned_epoch().map_or(String::new(), |e| e.to_string()));
        out.write_record(&fields)?;
    }
    Ok(String::from_utf8(out.into_inner()?)?)
}

/// What every table shows of a finished trial besides the ranked metric.
type Column = (&'static str, fn(&RunSummary) -> Option<f64>);
const RESULT_COLUMNS: [Column; 8] = [
    ("knn_before", |s| s.knn_before.map(|a| a.top1)),
    ("knn_after", |s| s.knn_after.map(|a| a.top1)),
    ("knn_top5", |s| s.knn_after?.top5),
    ("knn_gain", knn_gain),
    ("probe_top1", |s| s.probe_top1_after),
    ("final_loss", |s| s.final_loss),
    ("train_seconds", |s| Some(s.train_seconds)),
    ("images_per_second", |s| Some(s.images_per_second)),
];

/// How far kNN top-1 rose in training (a fraction; below 0: it fell).
fn knn_gain(summary: &RunSummary) -> Option<f64> {
    Some(summary.knn_after?.top1 - summary.knn_before?.top1)
}

/// How many result columns every table shows.
pub const RESULTS: usize = RESULT_COLUMNS.len();

/// The result columns' headers in a markdown table, in [`result_cells`]'s order.
pub const RESULT_HEADERS: [&str; RESULTS] = [
    "kNN before",
    "kNN after",
    "kNN top-5",
    "gain",
    "probe",
    "final loss",
    "time (s)",
    "img/s",
];

/// A run's results by column name (kNN figures and the probe as fractions); None where the
/// run has no summary or did not measure it.
pub fn result_values(summary: Option<&RunSummary>) -> [(&'static str, Option<f64>); RESULTS] {
    RESULT_COLUMNS.map(|(name, of)| (name, summary.and_then(of)))
}

/// A run's results as markdown cells under [`RESULT_HEADERS`] ("-" where there is none).
pub fn result_cells(summary: Option<&RunSummary>) -> [String; RESULTS] {
    let percent = |v: f64| format!("{:.1}%", v * 100.0);
    let formats: [fn(f64) -> String; RESULTS] = [
        percent,
        percent,
        percent,
        |v| format!("{:+.1}", v * 100.0),
        percent,
        |v| format!("{v:.4}"),
        // Seconds: a tenth where whole seconds would show a short run as 0.
        |v| if v < 10.0 { format!("{v:.1}") } else { format!("{v:.0}") },
        |v| format!("{v:.0}"),
    ];
    let values = result_values(summary);
    std::array::from_fn(|i| values[i].1.map_or("-".into(), formats[i]))
}

impl Row {
    fn summary(&self) -> Option<&RunSummary> {
        match &self.status {
            TrialStatus::Done(summary) | TrialStatus::Pruned(summary) => Some(summary),
            _ => None,
        }
    }
}

/// A markdown table of the ranked trials, with a title line and the `--set` flags the sweep ran
/// with; `trained_otherwise` names the trials that finished before with other values of keys a
/// resume may change (`run.threads: 1 -> 2` -> trials), reported as they trained. A note under
/// the table names the trials that ended below their untrained network's kNN accuracy.
pub fn to_markdown(sweep: &Sweep, rows: &[Row], trained_otherwise: &BTreeMap<String, Vec<String>>) -> String {
    let metric = sweep.config.metric.name();
    let done = rows.iter().filter(|r| matches!(r.status, TrialStatus::Done(_))).count();
    let pruned = match rows
        .iter()
        .filter(|r| matches!(r.status, TrialStatus::Pruned(_)))
        .count()
    {
        0 => String::new(),
        n => format!(", {n} pruned"),
    };
    let mut out = format!(
        "# Sweep {}: {done} of {} trials done{pruned}, ranked by {metric} ({})\n\n",
        sweep.name,
        rows.len(),
        goal_name(sweep.goal)
    );
    // Settings that no column shows and the sweep file does not hold.
    if !sweep.overrides().is_empty() {
        let flags: Vec<String> = sweep
            .overrides()
            .iter()
            .map(|o| code_span(&format!("--set {o}")))
            .collect();
        let _ = writeln!(out, "Run with {}.\n", flags.join(", "));
    }
    for (changes, trials) in trained_otherwise {
        let _ = writeln!(
            out,
            "{} finished before with other settings ({}), which a resume may change: their results are as they \
             trained.\n",
            trials.join(", "),
            code_span(changes)
        );
    }
    let cell = |s: &str| s.replace('|', "\\|");
    let mut header = vec!["rank".to_string(), "trial".into()];
    header.extend(sweep.parameters.iter().map(|p| code_span(&p.key)));
    header.push(format!("**{metric}**"));
    header.extend(RESULT_HEADERS.map(String::from));
    header.extend(["status".into(), "run folder".into()]);
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let mut rule = vec!["---:", "---"];
    rule.extend(sweep.parameters.iter().map(|_| "---"));
    rule.extend(["---:"; 1 + RESULTS]); // the metric, then the results
    rule.extend(["---", "---"]);
    let _ = writeln!(out, "|{}|", rule.join("|"));
    let mut below = Vec::new();
    for row in rows {
        let mut cells = vec![row.rank.map_or("-".into(), |r| r.to_string()), row.trial.id()];
        cells.extend(row.trial.values.iter().map(|(_, v)| cell(&show(v))));
        cells.push(row.metric.map_or("n/a".into(), |m| format!("{m:.4}")));
        let summary = row.summary();
        cells.extend(result_cells(summary));
        cells.push(row.status.describe());
        cells.push(cell(&row.run_dir.display().to_string()));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        // A pruned trial's figures are from when it stopped, partway: not its end.
        let done = matches!(row.status, TrialStatus::Done(_));
        if done && summary.and_then(knn_gain).is_some_and(|gain| gain < 0.0) {
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

#[cfg(test)]
mod tests {
    use super::code_span;

    #[test]
    fn inline_code_is_fenced_by_more_backticks_than_it_holds() {
        assert_eq!(code_span("--set a=1"), "`--set a=1`");
        assert_eq!(
            code_span("--set run.note=\"a `b` c\""),
            "``--set run.note=\"a `b` c\"``"
        );
        assert_eq!(code_span("x=``y"), "```x=``y```");
        assert_eq!(code_span("`x`"), "`` `x` ``");
    }
}
