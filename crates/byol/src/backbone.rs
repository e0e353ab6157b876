//! The seam between BYOL and the network it trains: a backbone exposes named feature taps
//! (`"layer3"`, `"avgpool"`, ...) and BYOL picks its embedding layer among them by name.

use tch::{nn, Tensor};

use crate::{BuildContext, ByolError};

/// A feature extractor, built under an `nn::Path` so that its variables carry PyTorch
/// state_dict names (`conv1.weight`, `layer1.0.bn1.running_mean`, ...).
pub trait Backbone: std::fmt::Debug + Send {
    /// The feature taps in forward order, e.g. `["stem", "layer1", ..., "layer4", "avgpool"]`.
    fn taps(&self) -> Vec<&'static str>;

    /// Channels (or features) at a tap.
    fn tap_dim(&self, tap: &str) -> Option<i64>;

    /// Runs the network up to the last requested tap and returns the raw tensor at each
    /// requested tap, in the order asked. `train` selects batch-norm/dropout training behaviour.
    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor>;

    /// The embedding at `tap`: spatial maps are global-average-pooled and flattened to `[N, C]`.
    fn embed(&self, images: &Tensor, train: bool, tap: &str) -> Tensor {
        let features = self.forward_taps(images, train, &[tap]).remove(0);
        pool_flatten(&features)
    }

    /// What building found that is valid but most likely not meant (a TorchScript module traced
    /// in eval mode), each a sentence with what to do: printed where a run starts, by
    /// `byol-run validate` and by `embed`/`eval`. None by default.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Checks a tap name, listing the available ones when it is unknown.
    fn check_tap(&self, tap: &str) -> Result<i64, ByolError> {
        self.tap_dim(tap).ok_or_else(|| ByolError::UnknownTap {
            name: tap.to_string(),
            available: self.taps().join(", "),
        })
    }
}

/// The positions in `all` (a backbone's taps in forward order) of the requested `taps`, in the
/// order asked, for [`Backbone::forward_taps`] implementations: the deepest position says how far
/// to run. An unknown tap panics naming `backbone` and its taps; the runner checks
/// `byol.embedding_layer` with [`Backbone::check_tap`] first, so only a caller's bug gets here.
pub fn tap_positions(backbone: &str, all: &[&str], taps: &[&str]) -> Vec<usize> {
    taps.iter()
        .map(|tap| {
            all.iter()
                .position(|t| t == tap)
                .unwrap_or_else(|| panic!("{backbone} has no tap '{tap}' (taps: {})", all.join(", ")))
        })
        .collect()
}

/// Global average pooling of `[N, C, H, W]` to `[N, C]`; `[N, C]` passes through.
pub fn pool_flatten(features: &Tensor) -> Tensor {
    match features.dim() {
        4 => features.mean_dim([2i64, 3].as_slice(), false, None),
        2 => features.shallow_clone(),
        _ => features.flatten(1, -1),
    }
}

/// The TOML-facing configuration of a backbone plugin (`[backbone] type = "resnet50"`).
#[typetag::serde(tag = "type")]
pub trait BackboneSpec: std::fmt::Debug + Send + Sync {
    /// Builds the network's variables under `path` (on `path`'s device), with their PyTorch
    /// state_dict names relative to it.
    fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError>;

    /// A safetensors file of pretrained weights (PyTorch state_dict names) to load into the
    /// online backbone after it is built.
    fn pretrained(&self) -> Option<&std::path::Path> {
        None
    }

    /// Files the network's structure is read from, by their key in `[backbone]` (a TorchScript
    /// module's `path`; not `pretrained`, whose weights a checkpoint supersedes). A run copies
    /// them into its folder and its checkpoints, and rebuilds the model from those copies.
    fn source_files(&self) -> Vec<(&'static str, std::path::PathBuf)> {
        Vec::new()
    }

    /// Keys of the pretrained file that the backbone deliberately lacks (a classifier head such as
    /// torchvision's `fc.*`); they are skipped, every other key must match.
    fn pretrained_ignores(&self, key: &str) -> bool {
        let _ = key;
        false
    }

    /// What an exported state_dict needs before its PyTorch counterpart loads it, where
    /// `load_state_dict` alone does not do (a stem replaced first, a width no stock model has);
    /// `byol-run export` says it. None (the default): nothing to say.
    fn export_note(&self) -> Option<String> {
        None
    }
}
