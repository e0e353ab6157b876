//! Everything around the model that a training run needs: the experiment file, schedules, the
//! training loop, checkpoints, TensorBoard scalars, the kNN monitor and hyperparameter sweeps.

pub mod checkpoint;
pub mod distributed;
pub mod experiment;
pub mod knn;
pub mod linear;
pub mod loss_scale;
pub mod optimizer;
pub mod probe;
pub mod run_dir;
pub mod schedule;
pub mod shared_images;
pub mod stop;
pub mod sweep;
pub mod tensorboard;
pub mod train;
mod validation;

pub use experiment::Experiment;
pub use optimizer::{NamedParameter, Optimizer, OptimizerSpec};
pub use train::{train, RunOptions, RunSummary};
