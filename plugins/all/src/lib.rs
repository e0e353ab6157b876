//! Every plugin, linked. A crate that registers plugins through `inventory` but is never named
//! in code is dropped by the linker together with its registrations; every binary and test that
//! reads experiment files calls [`link`] (or names this crate) so that none go missing.

use augment_byol as _;
use backbone_resnet as _;
use backbone_template as _;
use backbone_torchscript as _;
use backbone_vit as _;
use byol_data as _;
use optim_adam as _;
use optim_lars as _;
use optim_sgd as _;

/// Call once before parsing experiments; it does nothing but keep the plugins linked.
#[inline(never)]
pub fn link() {}

/// The README's code blocks compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}
