//! BYOL (Grill et al. 2020, arXiv 2006.07733) on libtorch.
//!
//! The library shape of the original PyTorch class `BYOL(backbone, imageSize, embeddingLayer)`:
//!
//! ```no_run
//! use byol::{Byol, ByolConfig};
//! # fn spec() -> Box<dyn byol::BackboneSpec> { unimplemented!() }
//! let vs = tch::nn::VarStore::new(tch::Device::Cpu);
//! let backbone = spec(); // e.g. a `resnet18` spec from the backbone-resnet plugin
//! let byol = Byol::new(&vs, backbone.as_ref(), 32, "avgpool", &ByolConfig::default()).unwrap();
//! let (view1, view2) = (tch::Tensor::randn([8, 3, 32, 32], tch::kind::FLOAT_CPU), tch::Tensor::randn([8, 3, 32, 32], tch::kind::FLOAT_CPU));
//! let loss = byol.loss(&view1, &view2); // contrast(images)
//! loss.backward();
//! byol.update_target(0, 1000);          // updateTargetEncoder()
//! let embeddings = byol.embed(&view1);  // calling it embeds
//! ```
//!
//! It is also the one crate a plugin depends on: the spec trait of every plugin kind
//! ([`BackboneSpec`], [`AugmentSpec`], [`DatasetSpec`], [`OptimizerSpec`]), the runtime traits
//! they build, the [`BuildContext`] every `build` receives, and [`register_plugin!`].

pub mod augment;
pub mod backbone;
mod context;
pub mod dataset;
mod error;
pub mod flat_layout;
pub mod heads;
pub mod loss;
pub mod model;
pub mod nn;
pub mod optimizer;
pub mod output;
pub mod registry;
pub mod state_dict;
pub mod target;

/// `eprintln!` that stays quiet when no one reads stderr any more (`byol-run ... 2>&1 | head`): a
/// run trains on, and a sweep writes its summary, instead of panicking at its next warning.
#[macro_export]
macro_rules! eprint_line {
    ($($arg:tt)*) => {
        $crate::output::write_line(&mut ::std::io::stderr().lock(), ::std::format_args!($($arg)*))
    };
}

pub use augment::{Augment, AugmentSpec, CropRange, LoaderCrops, Normalization};
pub use backbone::{Backbone, BackboneSpec};
pub use context::BuildContext;
pub use dataset::{Content, ContentPart, Dataset, DatasetSpec, EpochStream, Listing, SourceFile, Splits};
pub use error::{ByolError, DataError};
pub use heads::MlpHead;
pub use loss::{byol_loss, normalized_mse};
pub use model::{Byol, ByolConfig, LossParts};
pub use optimizer::{NamedParameter, Optimizer, OptimizerSpec};
pub use registry::{KeyDocs, PluginInfo, PluginKind};
pub use target::{tau_at, TargetUpdater};

/// Re-exported for the registration macro, so plugin crates need not name these versions.
#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
