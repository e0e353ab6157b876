//! "The projection q_theta, [is] a multi-layer perceptron (MLP) ... consisting in a linear layer with
//! output size 4096 followed by batch normalization, rectified linear units (ReLU), and a final
//! linear layer with output dimension 256" (BYOL, section 3.3). The predictor uses the same
//! architecture.

use tch::{nn, nn::ModuleT, Tensor};

use crate::nn::{batch_norm1d, linear, BatchNorm, BatchStatistics};

/// Linear -> BatchNorm1d -> ReLU -> Linear, with the state_dict names of the PyTorch
/// `nn.Sequential` it mirrors: `0.weight`, `0.bias`, `1.{weight,bias,running_*}`, `3.weight`, `3.bias`.
#[derive(Debug)]
pub struct MlpHead {
    hidden: nn::Linear,
    norm: BatchNorm,
    output: nn::Linear,
}

impl MlpHead {
    pub fn new(
        path: &nn::Path,
        input_dim: i64,
        hidden_dim: i64,
        output_dim: i64,
        statistics: &BatchStatistics,
    ) -> Self {
        Self {
            hidden: linear(&(path / "0"), input_dim, hidden_dim),
            norm: batch_norm1d(&(path / "1"), hidden_dim, statistics),
            output: linear(&(path / "3"), hidden_dim, output_dim),
        }
    }
}

impl ModuleT for MlpHead {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let hidden = self.norm.forward_t(&xs.apply(&self.hidden), train).relu();
        hidden.apply(&self.output)
    }
}
