//! Linear evaluation on frozen features (the paper's protocol, section 4.1 / appendix C.1): a
//! linear classifier trained with SGD, Nesterov momentum 0.9, no weight decay, cosine lr, a small
//! sweep of learning rates, on features computed once (centre crop, eval mode) and cached.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, nn::OptimizerConfig, Kind, Tensor};

use crate::knn::KnnAccuracy;

/// Result of the lr sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearResult {
    pub best_lr: f64,
    pub accuracy: KnnAccuracy,
    /// (lr, top-1) of every candidate.
    pub sweep: Vec<(f64, f64)>,
}

/// Top-1 / top-5 of `logits` against `labels`.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> KnnAccuracy {
    let n = labels.size()[0] as f64;
    let classes = logits.size()[1];
    let ranked = logits.argsort(1, true);
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
    KnnAccuracy { top1, top5 }
}

/// Trains one classifier per lr on (features, labels) of `train` and reports the best on `test`.
/// Features are standardized with the training set's statistics (as a BN layer without affine
/// parameters would), which makes one lr grid work across backbones.
pub fn linear_probe(
    (train, train_labels): (&Tensor, &Tensor),
    (test, test_labels): (&Tensor, &Tensor),
    classes: i64,
    epochs: usize,
    lrs: &[f64],
    seed: i64,
) -> LinearResult {
    let mean = train.mean_dim([0i64].as_slice(), true, Kind::Float);
    let std = train.std_dim([0i64].as_slice(), false, true) + 1e-6;
    let (train, test) = ((train - &mean) / &std, (test - &mean) / &std);
    let n = train.size()[0];
    let batch = 256.min(n);
    let steps_per_epoch = (n + batch - 1) / batch;
    let total = (epochs as i64 * steps_per_epoch).max(1);
    let mut sweep = Vec::new();
    let mut best: Option<(f64, KnnAccuracy)> = None;
    for &lr in lrs {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(train.device());
        let classifier = nn::linear(vs.root(), train.size()[1], classes, Default::default());
        let mut opt = nn::Sgd {
            momentum: 0.9,
            nesterov: true,
            ..Default::default()
        }
        .build(&vs, lr)
        .expect("sgd");
        let mut step = 0;
        for _ in 0..epochs {
            let order = Tensor::randperm(n, (Kind::Int64, train.device()));
            for b in 0..steps_per_epoch {
                let idx = order.narrow(0, b * batch, batch.min(n - b * batch));
                let loss = classifier
                    .forward(&train.index_select(0, &idx))
                    .cross_entropy_for_logits(&train_labels.index_select(0, &idx));
                opt.set_lr(lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos()));
                opt.backward_step(&loss);
                step += 1;
            }
        }
        let acc = tch::no_grad(|| accuracy(&classifier.forward(&test), test_labels));
        sweep.push((lr, acc.top1));
        if best.as_ref().is_none_or(|(_, b)| acc.top1 > b.top1) {
            best = Some((lr, acc));
        }
    }
    let (best_lr, accuracy) = best.expect("at least one lr");
    LinearResult {
        best_lr,
        accuracy,
        sweep,
    }
}
