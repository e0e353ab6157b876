//! `byol-run compare RUN...`: the settings that differ between run folders and their final
//! metrics in one table (or JSON), read from each folder's newest checkpoint (or `config.toml`),
//! `dataset.json` and `summary.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;

use byol_train::checkpoint::ChangesAllowed;
use byol_train::run_dir::CONFIG_FILE;
use byol_train::sweep::{self, show, TrialStatus};
use byol_train::train::state::DatasetFingerprint;
use byol_train::RunSummary;

#[derive(Args)]
pub struct CompareArgs {
    /// Run folders, as `byol-run train` writes them (a sweep's trials are its trial-NNN folders).
    #[arg(required = true, value_name = "RUN")]
    runs: Vec<PathBuf>,
    /// Print JSON for scripts: the differing keys, and per run its values of them and metrics.
    #[arg(long)]
    json: bool,
}

/// What one run folder says.
struct Run {
    dir: PathBuf,
    /// Every key of its resolved experiment, dotted, with its value.
    config: BTreeMap<String, toml::Value>,
    /// Its `[augment]` keys as the plugin spells them out (a preset's values included), dotted.
    augment_spelled_out: BTreeMap<String, toml::Value>,
    /// What its `dataset.json` records of the data it was trained on.
    data: Option<DatasetFingerprint>,
    summary: Option<RunSummary>,
    /// The changes its resumes allowed, as its newest checkpoint records them: the settings
    /// shown are those of its last steps.
    changes_allowed: Vec<ChangesAllowed>,
    status: TrialStatus,
}

impl Run {
    fn read(dir: &Path) -> anyhow::Result<Self> {
        if !dir.is_dir() {
            bail!("{} is not a folder: give run folders (runs/<name>)", dir.display());
        }
        // The experiment its newest checkpoint was trained with (an edited config.toml says
        // nothing of what the run trained, and a lost one does not stop a resume); keys added
        // since an older run was saved show at their defaults, as a resume reads them.
        if let Some(why) = byol_train::run_dir::checkpoints_read_from_another_run(dir) {
            byol::eprint_line!("warning: {why}");
        }
        let newest = byol_train::checkpoint::newest_manifest(dir);
        let changes_allowed = newest
            .as_ref()
            .map_or(Vec::new(), |(_, m)| m.record.changes_allowed.clone());
        let (source, text) = match newest {
            Some((checkpoint, manifest)) => (checkpoint.join(byol_train::checkpoint::MANIFEST_FILE), manifest.config),
            None => {
                let config_path = dir.join(CONFIG_FILE);
                let text = fs::read_to_string(&config_path).map_err(|_| {
                    // A checkpoint's folder (export, embed and eval take one): its run is above it.
                    let manifest = dir.join(byol_train::checkpoint::MANIFEST_FILE);
                    let run = dir
                        .parent()
                        .and_then(Path::parent)
                        .filter(|_| manifest.is_file())
                        .map(|run| {
                            if run.as_os_str().is_empty() {
                                Path::new(".")
                            } else {
                                run
                            }
                        });
                    match run {
                        Some(run) => anyhow::anyhow!(
                            "{} is a checkpoint, not a run folder: compare its run, {}",
                            dir.display(),
                            run.display()
                        ),
                        None => anyhow::anyhow!(
                            "{} is not a run folder: it has no {CONFIG_FILE} and no checkpoint (byol-run train \
                             writes one into every run folder it trains; a sweep's runs are its trial-NNN folders)",
                            dir.display()
                        ),
                    }
                })?;
                if !byol_train::run_dir::is_run_folder(dir) {
                    bail!(
                        "{} is not a run folder: its {CONFIG_FILE} is not beside any record a run writes \
                         (dataset.json, checkpoints, summary.json)",
                        dir.display()
                    );
                }
                (config_path, text)
            }
        };
        let text = byol_train::run_dir::with_current_defaults(&text);
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("cannot parse the experiment in {}", source.display()))?;
        let config = byol_train::run_dir::dotted_keys(&table);
        let augment_spelled_out = table
            .get("augment")
            .and_then(toml::Value::as_table)
            .and_then(byol_train::run_dir::spelled_out_augment)
            .map(|augment| {
                byol_train::run_dir::dotted_keys(&toml::Table::from_iter([("augment".into(), augment.into())]))
            })
            .unwrap_or_default();
        let data = DatasetFingerprint::recorded(dir).unwrap_or_else(|e| {
            byol::eprint_line!("warning: {e:#}; the data of {} is not compared", dir.display());
            None
        });
        let summary_path = dir.join(byol_train::train::SUMMARY_FILE);
        // An unreadable summary leaves the run's settings to compare, without results.
        let summary: Option<RunSummary> = fs::read(&summary_path).ok().and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .inspect_err(|e| {
                    byol::eprint_line!(
                        "warning: cannot parse {} ({e}): the results of {} are not shown; training the run \
                         folder again writes it anew",
                        summary_path.display(),
                        dir.display()
                    )
                })
                .ok()
        });
        // A run stopped by a signal has a loss and a time so far, not results.
        let summary = summary.filter(|s| !s.interrupted);
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            augment_spelled_out,
            data,
            summary,
            changes_allowed,
            status: TrialStatus::read_live(dir),
        })
    }

    /// The final figures, by column name (kNN figures and the probe as fractions).
    fn metrics(&self) -> [(&'static str, Option<f64>); sweep::RESULTS] {
        sweep::result_values(self.summary.as_ref())
    }
}

/// Adds the data each run was trained on to its settings, as `data.<split>` keys, so that runs of
/// the same settings on other data (images added to a folder, another copy) do not show as the
/// same. Only when every run has a record; files are compared by digest only where every run's
/// record of the split has one (older records have none).
fn add_data_keys(runs: &mut [Run]) {
    let missing: Vec<String> = runs
        .iter()
        .filter(|r| r.data.is_none())
        .map(|r| r.dir.display().to_string())
        .collect();
    if !missing.is_empty() {
        if missing.len() < runs.len() {
            byol::eprint_line!(
                "note: {} record no data (no readable {}), so the runs' data is not compared",
                missing.join(", "),
                byol_train::train::state::FINGERPRINT_FILE
            );
        }
        return;
    }
    let records: Vec<DatasetFingerprint> = runs.iter().filter_map(|r| r.data.clone()).collect();
    for (run, record) in runs.iter_mut().zip(&records) {
        for (split, fingerprint) in &record.0 {
            let mut shown = fingerprint.clone();
            let all_digested = records
                .iter()
                .all(|r| r.0.get(split).is_none_or(|f| f.files_digest.is_some()));
            if !all_digested {
                shown.files_digest = None;
            }
            run.config
                .insert(format!("data.{split}"), toml::Value::String(shown.describe()));
        }
    }
}

/// Adds how many processes trained each run (its summary's `processes`) as the key `processes`,
/// when every run's final summary records it: a data-parallel run and a single process of the
/// same settings draw differently.
fn add_process_counts(runs: &mut [Run]) {
    let counts: Option<Vec<usize>> = runs.iter().map(|r| r.summary.as_ref()?.processes).collect();
    for (run, processes) in runs.iter_mut().zip(counts.unwrap_or_default()) {
        run.config
            .insert("processes".into(), toml::Value::Integer(processes as i64));
    }
}

/// Fills in an `[augment]` key that some run sets and another leaves to its preset with the
/// preset's value, so that the column shows the values the views were drawn with (`32` where the
/// cifar preset gives it, not `-`), and a value written out as the preset has it is no difference.
fn add_preset_values(runs: &mut [Run]) {
    let set: BTreeSet<String> = runs
        .iter()
        .flat_map(|r| r.config.keys())
        .filter(|k| k.starts_with("augment."))
        .cloned()
        .collect();
    for run in runs.iter_mut() {
        for key in &set {
            if let (None, Some(value)) = (run.config.get(key), run.augment_spelled_out.get(key)) {
                run.config.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The keys whose value is not the same in every run (missing in some counts as different).
fn differing_keys(runs: &[Run]) -> Vec<String> {
    let all: BTreeSet<&String> = runs.iter().flat_map(|r| r.config.keys()).collect();
    all.into_iter()
        .filter(|key| {
            let first = runs[0].config.get(*key);
            runs.iter().any(|r| r.config.get(*key) != first)
        })
        .cloned()
        .collect()
}

pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    // A folder named twice (`runs/a runs/a/`, or by a link) is one run: its row once.
    let mut seen = BTreeSet::new();
    let mut folders = Vec::new();
    for dir in &args.runs {
        let named_before = std::fs::canonicalize(dir).is_ok_and(|real| !seen.insert(real));
        match named_before {
            true => byol::eprint_line!("note: {} is a folder named before: shown once", dir.display()),
            false => folders.push(dir),
        }
    }
    // A sweep's trials that have not started yet (`trial-*` of a stopped sweep), or failed before
    // their run started, have nothing to compare; any other folder without a run is an error.
    let mut pending = Vec::new();
    let mut started = Vec::new();
    for dir in folders {
        let status = (dir.join(sweep::TRIAL_FILE).is_file() && !dir.join(CONFIG_FILE).exists())
            .then(|| TrialStatus::read_live(dir))
            .filter(|s| {
                matches!(
                    s,
                    TrialStatus::Pending | TrialStatus::Failed(_) | TrialStatus::Running(_)
                )
            });
        match status {
            Some(status) => pending.push((dir, status)),
            None => started.push(dir),
        }
    }
    for (dir, status) in &pending {
        match status {
            TrialStatus::Running(holder) => byol::eprint_line!(
                "note: {} is starting ({holder} holds it) and has nothing to compare yet: left out",
                dir.display()
            ),
            _ if dir.join(sweep::ERROR_FILE).is_file() => byol::eprint_line!(
                "note: {} failed before its run started (its {} says why): left out",
                dir.display(),
                sweep::ERROR_FILE
            ),
            _ => byol::eprint_line!(
                "note: {} not started yet (a sweep's pending trial): left out",
                dir.display()
            ),
        }
    }
    if started.is_empty() {
        bail!("none of the folders holds a run yet");
    }
    let mut runs = started
        .into_iter()
        .map(|dir| Run::read(dir))
        .collect::<anyhow::Result<Vec<_>>>()?;
    add_data_keys(&mut runs);
    add_process_counts(&mut runs);
    add_preset_values(&mut runs);
    let keys = differing_keys(&runs);
    if args.json {
        say!("{}", serde_json::to_string_pretty(&to_json(&runs, &keys))?);
    } else {
        say!("{}", to_table(&runs, &keys).trim_end_matches('\n'));
    }
    Ok(())
}

fn to_json(runs: &[Run], keys: &[String]) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| {
            let config: serde_json::Map<String, serde_json::Value> = keys
                .iter()
                .map(|k| {
                    (
                        k.clone(),
                        run.config.get(k).map_or(serde_json::Value::Null, |v| json!(v)),
                    )
                })
                .collect();
            let mut object = json!({
                "run": run.dir.display().to_string(),
                "status": run.status.label(),
                "pruned_epoch": run.status.pruned_epoch(),
                "config": config,
                "changes_allowed": run.changes_allowed,
            });
            for (name, value) in run.metrics() {
                object[name] = json!(value);
            }
            object
        })
        .collect();
    json!({ "differing_keys": keys, "runs": runs })
}

/// A markdown table, one row per run.
fn to_table(runs: &[Run], keys: &[String]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut header = vec!["run".to_string()];
    header.extend(keys.iter().map(|k| format!("`{k}`")));
    header.extend(sweep::RESULT_HEADERS.map(String::from));
    header.push("status".into());
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let mut rule = vec!["---"; keys.len() + 1];
    rule.extend(["---:"; sweep::RESULTS]);
    rule.push("---");
    let _ = writeln!(out, "|{}|", rule.join("|"));
    for run in runs {
        let changed = if run.changes_allowed.is_empty() { "" } else { " *" };
        let mut cells = vec![cell(&format!("{}{changed}", run.dir.display()))];
        cells.extend(
            keys.iter()
                .map(|k| run.config.get(k).map_or("-".into(), |v| cell(&show(v)))),
        );
        cells.extend(sweep::result_cells(run.summary.as_ref()));
        cells.push(run.status.describe());
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    if keys.is_empty() && runs.len() > 1 {
        out.push_str("\nThe runs have the same settings.\n");
    }
    // Its row shows the settings of its last steps, not of every step.
    for run in runs.iter().filter(|r| !r.changes_allowed.is_empty()) {
        let changes: Vec<String> = run.changes_allowed.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "\n* {} was continued with changes (--allow-change) {}; the steps before each trained with the \
             values before it",
            run.dir.display(),
            changes.join("; ")
        );
    }
    out
}
