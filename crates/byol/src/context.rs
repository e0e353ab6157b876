//! What every plugin's `build` receives besides its own keys.

use tch::Device;

/// The run's facts that a plugin may need to build its runtime object, handed to the `build` of
/// every spec trait ([`crate::BackboneSpec`], [`crate::AugmentSpec`], [`crate::DatasetSpec`],
/// [`crate::OptimizerSpec`]). It is `non_exhaustive`: a field added later changes no plugin's
/// signature and breaks no plugin, which builds one with [`BuildContext::new`] in its tests.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BuildContext {
    /// The device the run trains on: where the networks' variables, the views and the optimizer's
    /// state live.
    pub device: Device,
    /// Side in pixels of the square views the backbone sees (the augmentation's `image_size`).
    pub image_size: i64,
}

impl BuildContext {
    pub fn new(device: Device, image_size: i64) -> Self {
        Self { device, image_size }
    }
}
