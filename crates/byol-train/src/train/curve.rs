//! The kNN curve of a run as a file of its run folder, `knn-curve.json`: one point per
//! evaluation (before training, during it and at the end). Other processes read it while the
//! run trains (a sweep's median pruning compares trials at the same point), so it is replaced
//! whole, by rename, never written in place.

use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::monitor::Evaluation;
#[cfg(doc)]
use super::state::DatasetFingerprint;

/// The curve's file in a run folder.
pub const CURVE_FILE: &str = "knn-curve.json";

/// One evaluation during a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Epochs trained when it was measured (0: before training).
    pub epoch: u64,
    pub step: u64,
    pub knn_top1: f64,
    /// None with 5 classes or fewer (see [`crate::knn::has_top5`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_top5: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_top1: Option<f64>,
    /// The last logged training loss (none before training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// What it was measured on and with ([`DatasetFingerprint::knn_data`]): two points compare
    /// only where they agree ([`CurvePoint::comparable_with`]). None in curves written before
    /// it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn_data: Option<u64>,
    /// Seconds the evaluation took during training (embedding both splits, kNN, probe): a start
    /// that resumes after it counts them in its run's curve cost. None at the final evaluation
    /// and in curves written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

impl CurvePoint {
    pub fn new(
        evaluation: &Evaluation,
        (epoch, step): (u64, u64),
        loss: Option<f64>,
        knn_data: Option<u64>,
        seconds: Option<f64>,
    ) -> Self {
        Self {
            epoch,
            step,
            knn_top1: evaluation.knn.top1,
            knn_top5: evaluation.knn.top5,
            // Before training the probe has seen nothing (TensorBoard shows no point there either).
            probe_top1: evaluation.probe_top1.filter(|_| step > 0),
            loss,
            knn_data,
            seconds,
        }
    }
}

impl CurvePoint {
    /// Whether its figures compare with `other`'s: measured on the same images with the same
    /// settings, or either written before that was recorded.
    pub fn comparable_with(&self, other: &CurvePoint) -> bool {
        match (self.knn_data, other.knn_data) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    /// The evaluation the point records.
    pub fn evaluation(&self) -> Evaluation {
        Evaluation {
            knn: crate::knn::KnnAccuracy {
                top1: self.knn_top1,
                top5: self.knn_top5,
            },
            probe_top1: self.probe_top1,
        }
    }
}

/// The points in a run folder; none when it has no curve yet.
pub fn read_curve(run_dir: &Path) -> anyhow::Result<Vec<CurvePoint>> {
    let path = run_dir.join(CURVE_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// A resumed run's curve: the points measured after `step` (the checkpoint it resumes from) were
/// measured by the run that went past it before it stopped; until this run measures them again,
/// other trials' pruning and `compare` would read them as this run's. Returns what is kept.
pub fn resume_at(run_dir: &Path, step: u64) -> anyhow::Result<Vec<CurvePoint>> {
    let mut points = read_curve(run_dir)
        .context("the run folder's kNN curve is damaged; move it aside to resume with a new curve from here")?;
    let before = points.len();
    points.retain(|p| p.step <= step);
    if points.len() < before {
        crate::run_dir::replace_file(&run_dir.join(CURVE_FILE), &serde_json::to_vec_pretty(&points)?)?;
    }
    Ok(points)
}

/// Adds `point` to the run folder's curve. Points at or after its step are dropped first: they
/// were measured before the run was stopped and resumed from an earlier checkpoint.
pub fn record_point(run_dir: &Path, point: CurvePoint) -> anyhow::Result<Vec<CurvePoint>> {
    let mut points = read_curve(run_dir)?;
    points.retain(|p| p.step < point.step);
    points.push(point);
    crate::run_dir::replace_file(&run_dir.join(CURVE_FILE), &serde_json::to_vec_pretty(&points)?)?;
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(epoch: u64, step: u64, top1: f64) -> CurvePoint {
        CurvePoint {
            epoch,
            step,
            knn_top1: top1,
            knn_top5: Some(1.0),
            probe_top1: None,
            loss: None,
            knn_data: None,
            seconds: None,
        }
    }

    #[test]
    fn a_resumed_run_replaces_the_points_it_measures_again() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_curve(dir.path()).unwrap().is_empty());
        record_point(dir.path(), point(0, 0, 0.1)).unwrap();
        record_point(dir.path(), point(1, 10, 0.2)).unwrap();
        record_point(dir.path(), point(2, 20, 0.3)).unwrap();
        // Resumed from the checkpoint of step 10: epoch 2 is measured again.
        let points = record_point(dir.path(), point(2, 20, 0.4)).unwrap();
        assert_eq!(points, [point(0, 0, 0.1), point(1, 10, 0.2), point(2, 20, 0.4)]);
        assert_eq!(read_curve(dir.path()).unwrap(), points);
        assert!(!dir.path().join("knn-curve.json.partial").exists());
        // Resumed from step 10 again: the points after it are gone at once.
        assert_eq!(
            resume_at(dir.path(), 10).unwrap(),
            [point(0, 0, 0.1), point(1, 10, 0.2)]
        );
        assert_eq!(read_curve(dir.path()).unwrap().len(), 2);
        fs::write(dir.path().join(CURVE_FILE), "[{").unwrap();
        let e = format!("{:#}", resume_at(dir.path(), 10).unwrap_err());
        assert!(
            e.contains("damaged; move it aside") && e.contains("knn-curve.json"),
            "{e}"
        );
    }
}
