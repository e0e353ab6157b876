//! BYOL's image augmentations (Grill et al. 2020, Table 6): two views from differently
//! parameterized pipelines (view 1 always blurred and never solarized, view 2 rarely blurred and
//! sometimes solarized), every random decision drawn per sample.

mod config;
mod view;

pub use config::{ByolAugmentConfig, Preset, ViewOverrides};
pub use view::{ByolAugment, ViewParams};
