//! The TOML side: `[backbone] type = "tiny_cnn"` plus the keys of [`TinyCnnConfig`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;

use byol::{Backbone, BackboneSpec, BuildContext, ByolError};

use crate::TinyCnn;

/// `[backbone] type = "tiny_cnn"`: three 3x3 stride-2 conv-BN-ReLU blocks, then a global average
/// pool. Doc comments on fields are the user documentation; `deny_unknown_fields` turns a typo
/// into an error naming the key, and `default` lets a table leave out any key. `Default` is the
/// example `byol-run plugins` prints, so it must be a valid, sensible configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct TinyCnnConfig {
    /// Output channels of `block1`, `block2` and `block3`.
    pub widths: [i64; 3],
    /// A safetensors file with this network's state_dict (`blocks.0.0.weight`, ...) to start from.
    pub pretrained: Option<PathBuf>,
}

impl Default for TinyCnnConfig {
    fn default() -> Self {
        Self {
            widths: [16, 32, 64],
            pretrained: None,
        }
    }
}

// One invocation = the typetag impl (TOML `type` -> this struct) + the inventory entry that
// `byol-run plugins` prints: the kind comes from the trait, the example from `Default`, and
// `optional` shows the keys that the default leaves unset. A test parses every example.
byol::register_plugin! {
    name: "tiny_cnn",
    description: "three conv-BN-ReLU blocks and a global average pool (the plugin template; 64-d avgpool)",
    optional: "pretrained = \"tiny_cnn.safetensors\"",
    impl BackboneSpec for TinyCnnConfig {
        // `context` carries what the run knows beyond these keys (device, image size, batch-norm
        // synchronization); tiny_cnn works at any size on any device, and hands its batch norms
        // the run's choice for a backbone's.
        fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
            // Check the configuration here, naming the key: the runner reports this error with
            // the experiment file's name.
            if let Some(w) = self.widths.iter().find(|w| **w <= 0) {
                return Err(ByolError::Config(format!("backbone.widths: {w} is not a positive channel count")));
            }
            Ok(Box::new(TinyCnn::new(path, self.widths, &context.backbone_batch_norm)))
        }

        fn pretrained(&self) -> Option<&Path> {
            self.pretrained.as_deref()
        }
    }
}
