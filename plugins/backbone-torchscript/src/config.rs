//! The TOML side: `[backbone] type = "torchscript"` plus the keys of [`TorchScriptConfig`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::nn;

use byol::{Backbone, BackboneSpec, BuildContext, ByolError};

use crate::TorchScriptBackbone;

/// `[backbone] type = "torchscript"`: a TorchScript module saved by PyTorch
/// (`torch.jit.script(model).save("backbone.pt")`), trained as the backbone. Its parameters and
/// buffers become variables under their state_dict names; its forward output is the one tap,
/// `output` (set `byol.embedding_layer = "output"`), whose width is found by a dummy forward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields)]
pub struct TorchScriptConfig {
    /// The TorchScript file (`.pt`). A relative path starts from the working directory, like every
    /// other path of an experiment (`pretrained`, `dataset.train`). A run copies it into its
    /// folder when it starts and uses that copy from then on (resume, embed, eval, export).
    pub path: PathBuf,
    /// Side of the square `[2, 3, input_size, input_size]` batch of the dummy forward that finds
    /// the output width at build time (eval mode, no gradients, the module's buffers restored
    /// afterwards). Any size the module accepts; use the training image size for models that
    /// accept only one (ViTs).
    #[serde(default = "default_input_size")]
    pub input_size: i64,
}

fn default_input_size() -> i64 {
    224
}

/// The example `byol-run plugins` prints. Serde still requires `path` in a `[backbone]` table:
/// there is no module to train by default.
impl Default for TorchScriptConfig {
    fn default() -> Self {
        Self::new("backbone.pt")
    }
}

impl TorchScriptConfig {
    /// The config for the module at `path`, with the default `input_size`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            input_size: default_input_size(),
        }
    }
}

byol::register_plugin! {
    name: "torchscript",
    description: "any TorchScript module (torch.jit.script / torch.jit.trace of a torchvision or timm model), trained in place; tap `output`",
    optional: "# path: torch.jit.script(model).save(\"backbone.pt\"); input_size: the dummy forward's image side\n\
               # and in [byol]: embedding_layer = \"output\"",
    impl BackboneSpec for TorchScriptConfig {
        fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
            // (The views' own sides stop at 4096 too.)
            if !(1..=4096).contains(&self.input_size) {
                return Err(ByolError::Config(format!(
                    "backbone.input_size = {} is not an image side in [1, 4096]",
                    self.input_size
                )));
            }
            let mut backbone = TorchScriptBackbone::load(&self.path, path, self.input_size, context.image_size)?;
            if matches!(context.backbone_batch_norm, byol::nn::BatchStatistics::Global(_)) {
                backbone.note_batch_norms_stay_per_process();
            }
            Ok(Box::new(backbone))
        }

        fn source_files(&self) -> Vec<(&'static str, PathBuf)> {
            vec![("path", self.path.clone())]
        }
    }
}
