use std::sync::Arc;

use tch::{nn, Kind, Tensor};

/// What synchronized batch norm needs from the data-parallel job: per layer, one all-gather
/// forward and one all-reduce backward, as PyTorch's SyncBatchNorm.
pub trait CrossReplica: Send + Sync {
    /// `[replicas, len]`: every replica's `row` (1-D, the same length everywhere) in rank order.
    /// This replica's slot is `row` itself, through which gradients flow; the others' are
    /// constants.
    fn gather(&self, row: &Tensor) -> Tensor;

    /// `tensor` unchanged; in backward, the gradient summed over the replicas. What every
    /// replica computes alike from the gathered rows passes through it, so that this replica's
    /// row receives the gradient of every replica's loss.
    fn sum_gradients(&self, tensor: &Tensor) -> Tensor;
}

/// Which batch norms compute training statistics over the global batch (all replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncScope {
    /// Every batch norm, backbone included (the paper: statistics over the whole batch).
    All,
    /// The projector's and predictor's only; the backbone's stay per replica.
    Heads,
}

/// Where a batch norm's training statistics come from, fixed when the layer is built.
#[derive(Clone, Default)]
pub enum BatchStatistics {
    /// This replica's batch (also the only choice in a single process).
    #[default]
    Local,
    /// The global batch: every replica's statistics, gathered through this job.
    Global(Arc<dyn CrossReplica>),
}

impl std::fmt::Debug for BatchStatistics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local => "Local",
            Self::Global(_) => "Global",
        })
    }
}

impl PartialEq for BatchStatistics {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Local, Self::Local) => true,
            (Self::Global(a), Self::Global(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// `torch.nn.BatchNorm{1,2}d` with PyTorch's defaults (weight 1, bias 0, eps 1e-5, momentum 0.1)
/// and all five state_dict entries, `num_batches_tracked` included. (tch's own BatchNorm
/// initializes the weight U(0,1) and has no `num_batches_tracked`.)
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Tensor,
    statistics: BatchStatistics,
}

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

fn batch_norm(path: &nn::Path, channels: i64, statistics: &BatchStatistics) -> BatchNorm {
    let num_batches_tracked = Tensor::zeros([], (Kind::Int64, path.device()));
    BatchNorm {
        weight: path.ones("weight", &[channels]),
        bias: path.zeros("bias", &[channels]),
        running_mean: path.zeros_no_train("running_mean", &[channels]),
        running_var: path.ones_no_train("running_var", &[channels]),
        num_batches_tracked: path.add("num_batches_tracked", num_batches_tracked, false),
        statistics: statistics.clone(),
    }
}

/// `BatchNorm1d(features)`; `statistics` says whose batch its training statistics are over.
pub fn batch_norm1d(path: &nn::Path, features: i64, statistics: &BatchStatistics) -> BatchNorm {
    batch_norm(path, features, statistics)
}

/// `BatchNorm2d(channels)`; `statistics` says whose batch its training statistics are over.
pub fn batch_norm2d(path: &nn::Path, channels: i64, statistics: &BatchStatistics) -> BatchNorm {
    batch_norm(path, channels, statistics)
}

impl nn::ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        if let (true, BatchStatistics::Global(replicas)) = (train, &self.statistics) {
            return self.forward_synchronized(xs, replicas.as_ref());
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            MOMENTUM,
            EPS,
            true,
        )
    }
}

impl BatchNorm {
    /// Training-mode batch norm whose mean and variance are those of the global batch. Each
    /// replica reduces its own batch to per-channel mean, squared deviations and count in one
    /// pass; one gather shares them and every replica combines them alike (Chan et al.'s
    /// pairwise update, as PyTorch's SyncBatchNorm). In backward, the combined statistics'
    /// gradient is summed over the replicas, so gradients flow through the statistics exactly as
    /// in one process holding the whole batch. Statistics in fp32 whatever the input's
    /// (autocast) dtype.
    fn forward_synchronized(&self, xs: &Tensor, replicas: &dyn CrossReplica) -> Tensor {
        let channels = xs.size()[1];
        let mut shape = vec![1i64; xs.dim()];
        shape[1] = channels;
        let x = xs.to_kind(Kind::Float);
        let rows = replicas.gather(&local_statistics(&x));
        let (mean, var, count) = combine_statistics(&rows, channels);
        let statistics = replicas.sum_gradients(&Tensor::cat(&[mean, var], 0));
        let (mean, var) = (
            statistics.narrow(0, 0, channels),
            statistics.narrow(0, channels, channels),
        );
        tch::no_grad(|| {
            let unbiased = &var * &count / (&count - 1.0).clamp_min(1.0);
            let _ = self.running_mean.shallow_clone().lerp_(&mean, MOMENTUM);
            let _ = self.running_var.shallow_clone().lerp_(&unbiased, MOMENTUM);
        });
        // y = x * scale + shift: one elementwise kernel over the activations.
        let scale = (var + EPS).rsqrt() * &self.weight;
        let shift = &self.bias - mean * &scale;
        shift
            .view(shape.as_slice())
            .addcmul(&x, &scale.view(shape.as_slice()))
            .to_kind(xs.kind())
    }

    /// Sets the affine weight to zero (zero-init of the last BN in a residual branch).
    pub fn zero_weight(&self) {
        tch::no_grad(|| {
            let _ = self.weight.shallow_clone().zero_();
        });
    }
}

/// This replica's row for [`combine_statistics`]: per-channel mean, squared deviations from it
/// (one Welford pass) and the count, of `x` (`[batch, channels, ...]`, fp32).
fn local_statistics(x: &Tensor) -> Tensor {
    let channels = x.size()[1];
    let count = x.numel() as i64 / channels;
    let reduce_dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    if count == 0 {
        // An empty batch adds nothing (its var_mean would be NaN and spread to every replica),
        // but its zeros still come from `x`: this replica must join the backward all-reduce
        // that its peers' statistics wait for.
        let zeros = x.sum_dim_intlist(reduce_dims.as_slice(), false, None);
        return Tensor::cat(&[&zeros, &zeros, &zeros.narrow(0, 0, 1)], 0);
    }
    let (var, mean) = x.var_mean_correction(reduce_dims.as_slice(), 0, false);
    let count = count as f64;
    Tensor::cat(
        &[mean, var * count, Tensor::full([1], count, (x.kind(), x.device()))],
        0,
    )
}

/// The global batch's per-channel mean, biased variance and count (a 1-element tensor) from the
/// replicas' rows `[mean (channels), squared deviations from that mean (channels), count]`:
/// the counts weigh the means, and the spread of the replicas' means around the global one adds
/// to their squared deviations. No large sums are subtracted, so a channel whose mean is far from
/// zero keeps its variance's precision.
fn combine_statistics(rows: &Tensor, channels: i64) -> (Tensor, Tensor, Tensor) {
    let means = rows.narrow(1, 0, channels);
    let squared_deviations = rows.narrow(1, channels, channels);
    let counts = rows.narrow(1, 2 * channels, 1);
    let count = counts.sum_dim_intlist(0, false, None);
    let mean = (&means * &counts).sum_dim_intlist(0, false, None) / &count;
    let spread = ((means - &mean).square() * counts).sum_dim_intlist(0, false, None);
    let var = (squared_deviations.sum_dim_intlist(0, false, None) + spread) / &count;
    (mean, var, count)
}
