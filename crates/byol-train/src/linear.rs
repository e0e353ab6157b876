//! Linear evaluation on frozen features, after the paper's protocol (section 4.1 / appendix C.1):
//! a linear classifier trained with SGD, Nesterov momentum 0.9, no weight decay, cosine lr, a
//! small sweep of learning rates. Unlike the paper's, which trains 80 epochs at batch 1024 on
//! random crops and flips, it trains on features computed once (centre crop, eval mode) and
//! cached, in batches of 256: cheap enough to run after every experiment, and a lower bound of
//! what the augmented protocol reports.
//!
//! The lr is chosen on a validation split held out of the training features (as the paper and
//! solo-learn do), never on the test split: choosing on test reports the best of several test
//! figures, which overstates the accuracy. The test split is used once, by a fresh classifier
//! trained with the chosen lr on all training features.

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, nn::OptimizerConfig, Device, Kind, Tensor};

/// Share of each class's training features held out to choose the lr (at least one sample per
/// class that has two or more; a class with one sample keeps it for training).
pub const VALIDATION_FRACTION: f64 = 0.1;

/// Top-1 and top-5 accuracy of a linear classifier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinearAccuracy {
    pub top1: f64,
    /// None with 5 classes or fewer (see [`crate::knn::has_top5`]).
    pub top5: Option<f64>,
}

/// The split [`linear_probe`] chooses the lr on, as reported in [`LinearResult::lr_chosen_on`].
pub const LR_CHOSEN_ON: &str = "validation";

/// Result of the lr sweep and the final classifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearResult {
    /// The split whose top-1 chose the lr: [`LR_CHOSEN_ON`], held out of the training features.
    pub lr_chosen_on: String,
    /// The candidate with the best validation top-1 (the first of equals).
    pub chosen_lr: f64,
    /// (lr, validation top-1) of every candidate whose classifier stayed finite, in the order
    /// given.
    pub sweep: Vec<(f64, f64)>,
    /// The candidates whose classifier's weights became Inf or NaN (an lr far too large): never
    /// chosen, their accuracy meaningless (every logit NaN ranks class 0 first).
    #[serde(default)]
    pub diverged: Vec<f64>,
    /// Training features held out for validation, and those the sweep's classifiers trained on.
    pub validation_size: usize,
    pub sweep_train_size: usize,
    /// Test accuracy of a fresh classifier trained with `chosen_lr` on all training features.
    pub accuracy: LinearAccuracy,
}

/// Whether every weight and bias of `classifier` is finite (an lr far too large overflows them).
fn is_finite(classifier: &nn::Linear) -> bool {
    let finite = |t: &Tensor| t.isfinite().all().int64_value(&[]) != 0;
    finite(&classifier.ws) && classifier.bs.as_ref().is_none_or(finite)
}

/// Top-1 / top-5 of `logits` against `labels`.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> LinearAccuracy {
    let n = labels.size()[0] as f64;
    let classes = logits.size()[1];
    // Stable, as knn_accuracy: ties rank by class index on every device.
    let ranked = logits.argsort_stable(true, 1, true);
    let labels = labels.unsqueeze(1);
    let top1 = ranked
        .narrow(1, 0, 1)
        .eq_tensor(&labels)
        .sum(Kind::Int64)
        .int64_value(&[]) as f64
        / n;
    let top5 = ranked
        .narrow(1, 0, 5.min(classes))
        .eq_tensor(&labels)
        .sum(Kind::Int64)
        .int64_value(&[]) as f64
        / n;
    LinearAccuracy {
        top1,
        top5: crate::knn::has_top5(classes).then_some(top5),
    }
}

/// Indices of (validation, rest) of `labels`: per class, [`VALIDATION_FRACTION`] of its samples
/// (rounded, at least one, never all) drawn at random from `seed`. Deterministic for a seed, and
/// the same whatever the test split holds.
pub fn validation_split(labels: &Tensor, classes: i64, seed: i64) -> anyhow::Result<(Tensor, Tensor)> {
    let labels = Vec::<i64>::try_from(labels.to_device(Device::Cpu).to_kind(Kind::Int64).flatten(0, -1))?;
    let mut per_class = vec![0usize; classes.max(0) as usize];
    for &label in &labels {
        ensure!(
            (0..classes).contains(&label),
            "training label {label} is outside the {classes} classes 0..{classes}"
        );
        per_class[label as usize] += 1;
    }
    let quota: Vec<usize> = per_class
        .iter()
        .map(|&n| match n {
            0 | 1 => 0,
            n => ((n as f64 * VALIDATION_FRACTION).round() as usize).clamp(1, n - 1),
        })
        .collect();
    if quota.iter().all(|&q| q == 0) {
        bail!(
            "too few training samples to choose the lr on a validation split: {} samples in {classes} \
             classes, and no class has the two samples needed to hold one out; give more training \
             images per class (--limit-per-class 0 uses all)",
            labels.len()
        );
    }
    // One random order over all samples; each class's first `quota` samples in it validate.
    tch::manual_seed(seed);
    let order = Vec::<i64>::try_from(Tensor::randperm(labels.len() as i64, (Kind::Int64, Device::Cpu)))?;
    let mut taken = vec![0usize; quota.len()];
    let (mut validation, mut rest) = (Vec::new(), Vec::new());
    for i in order {
        let class = labels[i as usize] as usize;
        if taken[class] < quota[class] {
            taken[class] += 1;
            validation.push(i);
        } else {
            rest.push(i);
        }
    }
    Ok((Tensor::from_slice(&validation), Tensor::from_slice(&rest)))
}

/// What training a classifier draws from its seed: the initial weights (as PyTorch's
/// `nn.Linear` draws them: uniform within `1 / sqrt(inputs)`) and each epoch's order of the
/// samples.
pub struct ClassifierDraws {
    /// `[classes, inputs]` and `[classes]`.
    pub weight: Tensor,
    pub bias: Tensor,
    /// One permutation of the sample indices per epoch.
    pub orders: Vec<Tensor>,
}

impl ClassifierDraws {
    /// Draws for `samples` rows of `inputs` features in `classes` classes over `epochs` epochs,
    /// from libtorch's global generator seeded with `seed`.
    pub fn new(samples: i64, inputs: i64, classes: i64, epochs: usize, seed: i64, device: Device) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let initial = byol::nn::linear(&vs.root(), inputs, classes);
        let orders = (0..epochs)
            .map(|_| Tensor::randperm(samples, (Kind::Int64, device)))
            .collect();
        Self {
            weight: initial.ws.detach(),
            bias: initial.bs.expect("byol::nn::linear has a bias").detach(),
            orders,
        }
    }
}

/// Samples per step of [`train_classifier`] (fewer when there are fewer samples).
pub const CLASSIFIER_BATCH: i64 = 256;

/// A linear classifier trained on (features, labels) from `draws` with SGD, Nesterov momentum
/// 0.9, no weight decay and a cosine lr from `lr` to 0 over all steps, in batches of
/// [`CLASSIFIER_BATCH`] in each epoch's order (the last batch of an epoch may be smaller). The
/// draws must be for these features' rows ([`ClassifierDraws::new`] with their count).
pub fn train_classifier(features: &Tensor, labels: &Tensor, draws: &ClassifierDraws, lr: f64) -> nn::Linear {
    let vs = nn::VarStore::new(features.device());
    let (classes, inputs) = (draws.weight.size()[0], draws.weight.size()[1]);
    // Zeros, overwritten by the drawn weights (no draws from the generator here).
    let zeros = nn::LinearConfig {
        ws_init: nn::Init::Const(0.0),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    let mut classifier = nn::linear(vs.root(), inputs, classes, zeros);
    tch::no_grad(|| {
        classifier.ws.copy_(&draws.weight);
        if let Some(bias) = classifier.bs.as_mut() {
            bias.copy_(&draws.bias);
        }
    });
    let mut opt = nn::Sgd {
        momentum: 0.9,
        nesterov: true,
        ..Default::default()
    }
    .build(&vs, lr)
    .expect("sgd");
    let n = features.size()[0];
    let batch = CLASSIFIER_BATCH.min(n);
    let steps_per_epoch = (n + batch - 1) / batch;
    let total = (draws.orders.len() as i64 * steps_per_epoch).max(1);
    let mut step = 0;
    for order in &draws.orders {
        for b in 0..steps_per_epoch {
            let idx = order.narrow(0, b * batch, batch.min(n - b * batch));
            let loss = classifier
                .forward(&features.index_select(0, &idx))
                .cross_entropy_for_logits(&labels.index_select(0, &idx));
            opt.set_lr(lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos()));
            opt.backward_step(&loss);
            step += 1;
        }
    }
    classifier
}

/// Features centred and scaled by the training features' mean and standard deviation, per
/// dimension. A dimension (nearly) constant over the training images, a unit that never fires,
/// is centred but not scaled, as scikit-learn's `StandardScaler` leaves it: dividing by its
/// zero deviation would blow a test image's nonzero value up a millionfold.
fn standardize(train: &Tensor, test: &Tensor) -> (Tensor, Tensor) {
    let mean = train.mean_dim([0i64].as_slice(), true, Kind::Float);
    let std = train.std_dim([0i64].as_slice(), false, true);
    // Float32 rounding leaves a constant column a deviation of a few ulps of its value.
    let constant = std.le_tensor(&(mean.abs() + 1.0).multiply_scalar(1e-6));
    let scale = std.where_self(&constant.logical_not(), &std.ones_like());
    ((train - &mean) / &scale, (test - &mean) / &scale)
}

/// Chooses the lr among `lrs` by validation top-1 (one classifier per lr, trained on the
/// training features less the [`validation_split`]), then trains a fresh classifier with it on
/// all training features and reports its accuracy on `test`. Features are standardized with the
/// training set's statistics (as a BN layer without affine parameters would), which makes one lr
/// grid work across backbones; the statistics carry no labels, so the validation features may
/// share them.
pub fn linear_probe(
    (train, train_labels): (&Tensor, &Tensor),
    (test, test_labels): (&Tensor, &Tensor),
    classes: i64,
    epochs: usize,
    lrs: &[f64],
    seed: i64,
) -> anyhow::Result<LinearResult> {
    ensure!(
        !lrs.is_empty(),
        "the linear probe needs at least one learning rate to try"
    );
    if let Some(bad) = lrs.iter().find(|lr| !(lr.is_finite() && **lr > 0.0)) {
        bail!("the linear probe's learning rates must be above 0, and {bad} is not");
    }
    ensure!(epochs >= 1, "the linear probe needs at least one epoch");
    let (train, test) = standardize(train, test);

    let (validation, rest) = validation_split(train_labels, classes, seed)?;
    let (validation, rest) = (validation.to_device(train.device()), rest.to_device(train.device()));
    let (sweep_features, sweep_labels) = (train.index_select(0, &rest), train_labels.index_select(0, &rest));
    let (validation_features, validation_labels) = (
        train.index_select(0, &validation),
        train_labels.index_select(0, &validation),
    );
    let (inputs, device) = (train.size()[1], train.device());
    let sweep_draws = ClassifierDraws::new(rest.size()[0], inputs, classes, epochs, seed, device);
    let (mut sweep, mut diverged) = (Vec::new(), Vec::new());
    for &lr in lrs {
        let classifier = train_classifier(&sweep_features, &sweep_labels, &sweep_draws, lr);
        if !is_finite(&classifier) {
            diverged.push(lr);
            continue;
        }
        let acc = tch::no_grad(|| accuracy(&classifier.forward(&validation_features), &validation_labels));
        sweep.push((lr, acc.top1));
    }
    let Some((chosen_lr, _)) = sweep
        .iter()
        .copied()
        .reduce(|best, candidate| if candidate.1 > best.1 { candidate } else { best })
    else {
        bail!(
            "the linear probe's classifier diverged (its weights became Inf or NaN) at every learning rate \
             tried ({}): try smaller ones",
            lrs.iter().map(f64::to_string).collect::<Vec<_>>().join(", ")
        );
    };

    let draws = ClassifierDraws::new(train.size()[0], inputs, classes, epochs, seed, device);
    let classifier = train_classifier(&train, train_labels, &draws, chosen_lr);
    ensure!(
        is_finite(&classifier),
        "the linear probe's classifier diverged (its weights became Inf or NaN) at lr {chosen_lr} on all \
         training images, where it stayed finite on the images of the lr sweep: try smaller learning rates"
    );
    let test_accuracy = tch::no_grad(|| accuracy(&classifier.forward(&test), test_labels));
    Ok(LinearResult {
        lr_chosen_on: LR_CHOSEN_ON.to_string(),
        chosen_lr,
        sweep,
        diverged,
        validation_size: validation.size()[0] as usize,
        sweep_train_size: rest.size()[0] as usize,
        accuracy: test_accuracy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feature_constant_over_the_training_images_is_centred_not_scaled() {
        // Column 0 varies; column 1 is a unit that never fires on the training images; column 2
        // is constant at 3 (its float32 deviation a rounding, not zero, in general).
        let train = Tensor::from_slice(&[1f32, 0.0, 3.0, 3.0, 0.0, 3.0, 5.0, 0.0, 3.0]).view([3, 3]);
        let test = Tensor::from_slice(&[3f32, 0.5, 2.0]).view([1, 3]);
        let (train, test) = standardize(&train, &test);
        let row = Vec::<f32>::try_from(test.view([-1])).unwrap();
        let spread = (8.0f32 / 3.0).sqrt();
        assert_eq!(row, [0.0, 0.5, -1.0]);
        let first = Vec::<f32>::try_from(train.select(1, 0)).unwrap();
        assert!((first[0] + 2.0 / spread).abs() < 1e-6, "{first:?}");
    }
}
