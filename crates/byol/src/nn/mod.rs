//! Layers whose variables, defaults and initialization match PyTorch's, names included.

mod batch_norm;
mod conv;

pub use batch_norm::{batch_norm1d, batch_norm2d, BatchNorm, BatchStatistics, CrossReplica, SyncScope};
pub use conv::{conv2d, linear, pointwise_conv2d};
