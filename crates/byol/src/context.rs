//! What every plugin's `build` receives besides its own keys.

use std::sync::Arc;

use tch::Device;

use crate::nn::{BatchStatistics, CrossReplica, SyncScope};

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
    /// Statistics of the batch norms a backbone builds: [`BatchStatistics::Global`] when a
    /// data-parallel run synchronizes every batch norm (`distributed.sync_batch_norm = "all"`).
    pub backbone_batch_norm: BatchStatistics,
    /// Statistics of the projector's and predictor's batch norms: global whenever a
    /// data-parallel run synchronizes batch norm at all ("all" or "heads").
    pub head_batch_norm: BatchStatistics,
}

impl BuildContext {
    /// A single-process context: every batch norm uses its own batch.
    pub fn new(device: Device, image_size: i64) -> Self {
        Self {
            device,
            image_size,
            backbone_batch_norm: BatchStatistics::Local,
            head_batch_norm: BatchStatistics::Local,
        }
    }

    /// Synchronized batch norm over `replicas` for the batch norms `scope` names.
    pub fn with_sync_batch_norm(self, replicas: Arc<dyn CrossReplica>, scope: SyncScope) -> Self {
        let global = BatchStatistics::Global(replicas);
        Self {
            backbone_batch_norm: match scope {
                SyncScope::All => global.clone(),
                SyncScope::Heads => BatchStatistics::Local,
            },
            head_batch_norm: global,
            ..self
        }
    }
}
