use std::sync::Arc;

use tch::{nn, Kind, Tensor};

/// Sums a tensor over the data-parallel replicas as an autograd op (its backward sums the
/// gradients over the replicas too): what synchronized batch norm needs from a process group.
pub trait CrossReplicaSum: Send + Sync {
    fn sum(&self, tensor: &Tensor) -> Tensor;
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
    /// The global batch: sums over the replicas through this cross-replica sum.
    Global(Arc<dyn CrossReplicaSum>),
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
        if let (true, BatchStatistics::Global(reducer)) = (train, &self.statistics) {
            return self.forward_synchronized(xs, reducer.as_ref());
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
    /// Training-mode batch norm whose mean and variance are those of the global batch: two
    /// differentiable all-reduces (per-channel sums and counts, then squared deviations from the
    /// global mean), so gradients flow through the statistics exactly as in one process holding
    /// the whole batch. Statistics in fp32 whatever the input's (autocast) dtype.
    fn forward_synchronized(&self, xs: &Tensor, reducer: &dyn CrossReplicaSum) -> Tensor {
        let channels = xs.size()[1];
        let reduce_dims: Vec<i64> = (0..xs.dim() as i64).filter(|&d| d != 1).collect();
        let mut shape = vec![1i64; xs.dim()];
        shape[1] = channels;
        let x = xs.to_kind(Kind::Float);
        let local_count = (xs.numel() as i64 / channels) as f64;
        let count_slot = Tensor::full([1], local_count, (Kind::Float, xs.device()));
        let sums = reducer.sum(&Tensor::cat(
            &[
                x.sum_dim_intlist(reduce_dims.as_slice(), false, Kind::Float),
                count_slot,
            ],
            0,
        ));
        let count = sums.narrow(0, channels, 1);
        let mean = sums.narrow(0, 0, channels) / &count;
        let centered = &x - mean.view(shape.as_slice());
        let var = reducer.sum(
            &centered
                .square()
                .sum_dim_intlist(reduce_dims.as_slice(), false, Kind::Float),
        ) / &count;
        tch::no_grad(|| {
            let unbiased = &var * &count / (&count - 1.0).clamp_min(1.0);
            let _ = self.running_mean.shallow_clone().lerp_(&mean, MOMENTUM);
            let _ = self.running_var.shallow_clone().lerp_(&unbiased, MOMENTUM);
        });
        let scale = (var + EPS).rsqrt() * &self.weight;
        (centered * scale.view(shape.as_slice()) + self.bias.view(shape.as_slice())).to_kind(xs.kind())
    }

    /// Sets the affine weight to zero (zero-init of the last BN in a residual branch).
    pub fn zero_weight(&self) {
        tch::no_grad(|| {
            let _ = self.weight.shallow_clone().zero_();
        });
    }
}
