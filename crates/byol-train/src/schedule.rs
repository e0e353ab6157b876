//! Learning-rate schedule: linear warmup, then a cosine decay to a floor (BYOL, section 3.3).

use serde::{Deserialize, Serialize};

/// The `[schedule]` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Passes over the training split.
    pub epochs: u64,
    /// Images per optimizer step (across all devices).
    pub batch_size: usize,
    /// Epochs of linear learning-rate warmup from 0 (paper: 10).
    pub warmup_epochs: f64,
    /// The cosine ends at `final_lr_fraction * lr` (paper: 0).
    pub final_lr_fraction: f64,
    /// Multiply the optimizer's lr by batch_size / 256 (the paper's "lr = 0.2 x B/256").
    pub scale_lr_by_batch: bool,
    /// Split each batch into this many micro-batches whose gradients add up before one optimizer
    /// step and one target update (for batches that do not fit on the device).
    pub accumulate: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 256,
            warmup_epochs: 10.0,
            final_lr_fraction: 0.0,
            scale_lr_by_batch: true,
            accumulate: 1,
        }
    }
}

/// lr at `step` (0-based) of `total_steps`: linear warmup over `warmup_steps` (reaching `peak`
/// at the end of warmup), then cosine from `peak` to `floor`.
pub fn lr_at(step: u64, total_steps: u64, warmup_steps: u64, peak: f64, floor: f64) -> f64 {
    if step < warmup_steps {
        return peak * (step + 1) as f64 / warmup_steps as f64;
    }
    let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
    let progress = ((step - warmup_steps) as f64 / decay_steps as f64).min(1.0);
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_reaches_peak_then_cosine_reaches_floor() {
        assert!((lr_at(0, 100, 10, 1.0, 0.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
    }
}
