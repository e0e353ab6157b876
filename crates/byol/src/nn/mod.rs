//! Layers with PyTorch's variable names: `torch.nn.Linear` and `BatchNorm` as PyTorch initializes them,
//! and the bias-free convolutions of torchvision's ResNets as torchvision initializes them.

mod batch_norm;
mod conv;

pub use batch_norm::{batch_norm1d, batch_norm2d, BatchNorm, BatchStatistics, CrossReplica, SyncScope};
pub use conv::{conv2d, linear, pointwise_conv2d};
