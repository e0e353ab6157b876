//! Median pruning (`[sweep] prune = "median"`): at each kNN evaluation during training, a trial
//! whose metric is worse than the median of the other trials at that same evaluation (the same
//! epoch) stops there, once at least `prune_after` other trials have passed it.
//!
//! Trials may run in parallel processes, so the decision reads only files: each trial's
//! `knn-curve.json`, which its own run replaces whole by rename (see [`crate::train::curve`]). A
//! decision counts the trials that had passed the point when the trial reached it: with trials run
//! one after another, every earlier trial, whatever the timing.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use super::{Goal, Metric};
use crate::train::curve::{read_curve, CurvePoint};

/// Written into the sweep folder for trials run as child processes (`byol-run train --pruner`).
pub const PRUNER_FILE: &str = "pruner.json";

/// How many other trials must have passed a point before its median counts, by default.
pub const DEFAULT_PRUNE_AFTER: usize = 3;

/// `[sweep] prune`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Prune {
    /// Every trial trains to the end.
    #[default]
    None,
    /// Stop a trial whose metric at a kNN evaluation is worse than the other trials' median there.
    Median,
}

/// What a trial's run needs to decide at each evaluation whether to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruner {
    pub metric: Metric,
    pub goal: Goal,
    /// A point's median counts once this many other trials have passed it.
    pub prune_after: usize,
    /// Every trial folder of the sweep (the judged trial's own among them, left out).
    pub trial_dirs: Vec<PathBuf>,
}

/// Why a trial was stopped early; kept in its `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pruned {
    /// Epochs trained when it stopped (its checkpoint's).
    pub epoch: u64,
    pub step: u64,
    pub metric: String,
    /// The trial's metric at that evaluation.
    pub value: f64,
    /// The median of the other trials' metric at the same evaluation.
    pub median: f64,
    /// How many other trials the median is of.
    pub trials: usize,
}

impl Pruned {
    /// `knn_top1 0.1250 worse than the median 0.5000 of 2 other trials at epoch 1`.
    pub fn describe(&self) -> String {
        let trials = match self.trials {
            1 => "1 other trial".to_string(),
            n => format!("{n} other trials"),
        };
        format!(
            "{} {:.4} worse than the median {:.4} of {trials} at epoch {}",
            self.metric, self.value, self.median, self.epoch
        )
    }
}

impl Metric {
    /// The metric at one evaluation during training, `curve` being the trial's points so far
    /// (knn_gain subtracts its point before training). None when not measured there.
    pub fn at_point(self, point: &CurvePoint, curve: &[CurvePoint]) -> Option<f64> {
        match self {
            Metric::KnnTop1 => Some(point.knn_top1),
            Metric::KnnTop5 => point.knn_top5,
            Metric::KnnGain => {
                let before = curve.iter().find(|p| p.epoch == 0)?;
                point
                    .comparable_with(before)
                    .then_some(point.knn_top1 - before.knn_top1)
            }
            Metric::ProbeTop1 => point.probe_top1,
            Metric::FinalLoss => point.loss,
            Metric::ImagesPerSecond | Metric::TrainSeconds => None,
        }
        .filter(|v| v.is_finite())
    }

    /// Whether [`Metric::at_point`] can measure it during training.
    pub fn measured_during_training(self) -> bool {
        !matches!(self, Metric::ImagesPerSecond | Metric::TrainSeconds)
    }
}

impl Pruner {
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::run_dir::replace_file(path, &serde_json::to_vec_pretty(self)?)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = fs::read(path).with_context(|| format!("cannot read the pruning rule {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("cannot parse the pruning rule {}", path.display()))
    }

    /// Whether the trial in `own_dir`, whose curve ends with the evaluation just made, stops here.
    pub fn judge(&self, own_dir: &Path, own_curve: &[CurvePoint]) -> anyhow::Result<Option<Pruned>> {
        let Some(point) = own_curve.last().filter(|p| p.epoch > 0) else {
            return Ok(None);
        };
        let Some(value) = self.metric.at_point(point, own_curve) else {
            return Ok(None);
        };
        let own = fs::canonicalize(own_dir).ok();
        let mut others = Vec::new();
        for dir in &self.trial_dirs {
            if !dir.is_dir() || fs::canonicalize(dir).ok() == own {
                continue;
            }
            // Another trial's unreadable curve is its problem: judge by the others.
            let curve = read_curve(dir).unwrap_or_else(|e| {
                byol::eprint_line!("warning: median pruning leaves out {}: {e:#}", dir.display());
                Vec::new()
            });
            // A trial continued with another batch size or data (`byol-run train --allow-change`
            // on its folder) numbers its epochs anew: the points of an epoch's number are not
            // all after that many epochs, and which one is cannot be told.
            if let Some(repeated) = curve.windows(2).find(|w| w[1].epoch <= w[0].epoch) {
                byol::eprint_line!(
                    "warning: median pruning leaves out {}: its kNN curve has epoch {} after epoch {} (it was \
                     continued with other steps per epoch)",
                    dir.display(),
                    repeated[1].epoch,
                    repeated[0].epoch
                );
                continue;
            }
            let at_point = curve.iter().rev().find(|p| p.epoch == point.epoch);
            others.extend(at_point.and_then(|p| self.metric.at_point(p, &curve)));
        }
        if others.len() < self.prune_after.max(1) {
            return Ok(None);
        }
        let median = median(&mut others);
        let worse = match self.goal {
            Goal::Max => value < median,
            Goal::Min => value > median,
        };
        Ok(worse.then(|| Pruned {
            epoch: point.epoch,
            step: point.step,
            metric: self.metric.name().to_string(),
            value,
            median,
            trials: others.len(),
        }))
    }
}

/// Checks the `[sweep]` keys of pruning against the metric, whatever the trials.
pub(super) fn check_settings(prune: Prune, prune_after: Option<usize>, metric: Metric) -> anyhow::Result<()> {
    match prune {
        Prune::None if prune_after.is_some() => {
            bail!(
                "sweep.prune_after is set but pruning is off: add prune = \"median\" to [sweep], or remove prune_after"
            )
        }
        Prune::None => Ok(()),
        Prune::Median => {
            if prune_after == Some(0) {
                bail!("sweep.prune_after = 0: a median needs at least one other trial (default {DEFAULT_PRUNE_AFTER})");
            }
            if !metric.measured_during_training() {
                bail!(
                    "sweep.prune = \"median\" compares trials at the kNN evaluations during training, where \
                     sweep.metric = \"{}\" is not measured; rank by knn_top1, knn_top5, knn_gain, probe_top1 or final_loss",
                    metric.name()
                );
            }
            Ok(())
        }
    }
}

/// Checks pruning against a trial (after [`check_settings`]): `evaluations_during` is the number
/// of its kNN evaluations before its last epoch, and `epochs` its length.
pub(super) fn check(prune: Prune, evaluations_during: usize, epochs: u64) -> anyhow::Result<()> {
    match prune {
        Prune::None => Ok(()),
        Prune::Median => {
            if evaluations_during == 0 {
                bail!(
                    "sweep.prune = \"median\" needs kNN evaluations during training, and the trials have none \
                     before their last epoch ({epochs} {}): set eval.every_epochs, or eval.curve_points above 1",
                    if epochs == 1 { "epoch" } else { "epochs" }
                );
            }
            Ok(())
        }
    }
}

/// The median (the mean of the two middle values for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::curve::record_point;

    fn point(epoch: u64, top1: f64) -> CurvePoint {
        CurvePoint {
            epoch,
            step: epoch * 10,
            knn_top1: top1,
            knn_top5: Some(1.0),
            probe_top1: None,
            loss: Some(1.0 - top1),
            knn_data: None,
            seconds: None,
        }
    }

    /// Trial folders with the given kNN top-1 at epochs 0, 1, 2, ...
    fn sweep_with(curves: &[&[f64]]) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let mut dirs = Vec::new();
        for (n, curve) in curves.iter().enumerate() {
            let trial = dir.path().join(format!("trial-{:03}", n + 1));
            fs::create_dir_all(&trial).unwrap();
            for (epoch, top1) in curve.iter().enumerate() {
                record_point(&trial, point(epoch as u64, *top1)).unwrap();
            }
            dirs.push(trial);
        }
        (dir, dirs)
    }

    fn pruner(metric: Metric, goal: Goal, prune_after: usize, trial_dirs: &[PathBuf]) -> Pruner {
        Pruner {
            metric,
            goal,
            prune_after,
            trial_dirs: trial_dirs.to_vec(),
        }
    }

    #[test]
    fn a_trial_worse_than_the_median_at_the_same_epoch_is_pruned_once_enough_trials_passed_it() {
        // Trials 1 to 3 have passed epoch 1 (0.4, 0.6, 0.8) and trial 3 epoch 2 as well.
        let (_dir, dirs) = sweep_with(&[&[0.1, 0.4], &[0.1, 0.6], &[0.1, 0.8, 0.9], &[0.1]]);
        let judged = &dirs[3];
        let at = |epoch: u64, top1: f64| vec![point(0, 0.1), point(epoch, top1)];
        let median_of_3 = pruner(Metric::KnnTop1, Goal::Max, 3, &dirs);
        let pruned = median_of_3.judge(judged, &at(1, 0.5)).unwrap().expect("0.5 < 0.6");
        assert_eq!(
            (pruned.epoch, pruned.value, pruned.median, pruned.trials),
            (1, 0.5, 0.6, 3)
        );
        assert!(pruned.describe().contains("at epoch 1"), "{}", pruned.describe());
        assert_eq!(
            median_of_3.judge(judged, &at(1, 0.6)).unwrap(),
            None,
            "equal to the median"
        );
        // One trial has passed epoch 2: fewer than prune_after.
        assert_eq!(median_of_3.judge(judged, &at(2, 0.0)).unwrap(), None);
        let median_of_1 = pruner(Metric::KnnTop1, Goal::Max, 1, &dirs);
        assert!(median_of_1.judge(judged, &at(2, 0.85)).unwrap().is_some());
        // Before training is never a pruning point.
        assert_eq!(median_of_1.judge(judged, &[point(0, 0.0)]).unwrap(), None);
        // The judged trial's own folder does not count, whatever it holds.
        assert_eq!(median_of_3.judge(&dirs[2], &at(2, 0.0)).unwrap(), None);
    }

    #[test]
    fn a_trial_whose_curve_numbers_an_epoch_twice_is_left_out() {
        let (_dir, dirs) = sweep_with(&[&[0.1, 0.4], &[0.1, 0.6], &[0.1, 0.8], &[0.1, 0.2]]);
        // Trial 4 continued with half the batch size: twice the steps per epoch, so its step 20
        // is called epoch 1 again.
        let renumbered = CurvePoint {
            step: 20,
            ..point(1, 0.99)
        };
        record_point(&dirs[3], renumbered).unwrap();
        assert_eq!(read_curve(&dirs[3]).unwrap().len(), 3);
        let judged = tempfile::tempdir().unwrap();
        let pruned = pruner(Metric::KnnTop1, Goal::Max, 3, &dirs)
            .judge(judged.path(), &[point(0, 0.1), point(1, 0.5)])
            .unwrap()
            .expect("0.5 < 0.6");
        assert_eq!((pruned.median, pruned.trials), (0.6, 3));
    }

    #[test]
    fn the_goal_and_the_metric_decide_what_worse_means() {
        let (_dir, dirs) = sweep_with(&[&[0.1, 0.4], &[0.3, 0.6]]);
        let judged = dirs[0].with_file_name("trial-003");
        let curve = [point(0, 0.0), point(1, 0.45)];
        // Even count: the median of 0.4 and 0.6 is 0.5.
        let max = pruner(Metric::KnnTop1, Goal::Max, 2, &dirs)
            .judge(&judged, &curve)
            .unwrap();
        assert_eq!(max.map(|p| p.median), Some(0.5));
        // final_loss (1 - top1 here), lower is better: 0.55 against a median of 0.5.
        let loss = pruner(Metric::FinalLoss, Goal::Min, 2, &dirs)
            .judge(&judged, &curve)
            .unwrap();
        assert!(loss.is_some_and(|p| (p.value - 0.55).abs() < 1e-12));
        // knn_gain: 0.45 - 0.0 against the gains 0.3 and 0.3.
        let gain = pruner(Metric::KnnGain, Goal::Max, 2, &dirs)
            .judge(&judged, &curve)
            .unwrap();
        assert_eq!(gain, None);
    }

    #[test]
    fn pruning_keys_are_checked() {
        let error = |prune, after, metric| format!("{:#}", check_settings(prune, after, metric).unwrap_err());
        assert!(error(Prune::None, Some(2), Metric::KnnTop1).contains("prune = \"median\""));
        assert!(error(Prune::Median, Some(0), Metric::KnnTop1).contains("prune_after = 0"));
        assert!(error(Prune::Median, None, Metric::TrainSeconds).contains("train_seconds"));
        check_settings(Prune::Median, None, Metric::KnnTop1).unwrap();
        let none = format!("{:#}", check(Prune::Median, 0, 4).unwrap_err());
        assert!(
            none.contains("eval.every_epochs") && none.contains("eval.curve_points"),
            "{none}"
        );
        check(Prune::Median, 1, 4).unwrap();
        check_settings(Prune::None, None, Metric::TrainSeconds).unwrap();
        check(Prune::None, 0, 4).unwrap();
    }
}
