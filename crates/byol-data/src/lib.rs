//! Data for BYOL: dataset plugins, the loader that turns them into uint8 batches, and the batched,
//! per-sample-random image ops (on the training device) that the augmentation plugins compose.

pub mod cifar;
pub mod crop;
pub mod dataset;
pub mod decode;
pub mod image_folder;
pub mod loader;
pub mod ops;
pub mod preview;
pub mod rng;
mod skipped;
pub mod synthetic;
pub mod tar;
pub mod transfer;
pub mod webdataset;

// The plugin seams (dataset and augmentation specs, the crops an augmentation asks the loader
// for, their error type) live in `byol` with the other plugin traits; re-exported here for the
// datasets, the loader and the ops that implement them.
pub use byol::{AugmentSpec, CropRange, DataError, Dataset, DatasetSpec, EpochStream, LoaderCrops, Splits};
pub use dataset::ImageSet;
pub use loader::{Batch, BatchLoader, Prefetch};
