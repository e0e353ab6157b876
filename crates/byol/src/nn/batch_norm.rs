use tch::{nn, Kind, Tensor};

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
}

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

fn batch_norm(path: &nn::Path, channels: i64) -> BatchNorm {
    let num_batches_tracked = Tensor::zeros([], (Kind::Int64, path.device()));
    BatchNorm {
        weight: path.ones("weight", &[channels]),
        bias: path.zeros("bias", &[channels]),
        running_mean: path.zeros_no_train("running_mean", &[channels]),
        running_var: path.ones_no_train("running_var", &[channels]),
        num_batches_tracked: path.add("num_batches_tracked", num_batches_tracked, false),
    }
}

pub fn batch_norm1d(path: &nn::Path, features: i64) -> BatchNorm {
    batch_norm(path, features)
}

pub fn batch_norm2d(path: &nn::Path, channels: i64) -> BatchNorm {
    batch_norm(path, channels)
}

impl nn::ModuleT for BatchNorm {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
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
    /// Sets the affine weight to zero (zero-init of the last BN in a residual branch).
    pub fn zero_weight(&self) {
        tch::no_grad(|| {
            let _ = self.weight.shallow_clone().zero_();
        });
    }
}
