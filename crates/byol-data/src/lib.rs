//! Data for BYOL: dataset plugins, the loader that turns them into uint8 batches, and the batched,
//! per-sample-random image ops (on the training device) that the augmentation plugins compose.

pub mod augment;
pub mod cifar;
pub mod crop;
pub mod dataset;
pub mod decode;
mod error;
pub mod image_folder;
pub mod loader;
pub mod ops;
pub mod preview;
pub mod rng;
pub mod synthetic;
pub mod tar;
pub mod webdataset;

pub use augment::AugmentSpec;
pub use crop::{CropRange, LoaderCrops};
pub use dataset::{Dataset, DatasetSpec, EpochStream, ImageSet, Splits};
pub use error::DataError;
pub use loader::{Batch, BatchLoader, Prefetch};
