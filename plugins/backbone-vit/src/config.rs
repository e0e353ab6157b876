use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;

use byol::{Backbone, BackboneSpec, BuildContext, ByolError};

use crate::ViT;

/// The most blocks `backbone.depth` takes.
const MAX_DEPTH: i64 = 1024;

/// The keys of every ViT size; a key left out takes its size's default (ViT-S/16: 384 wide, 12
/// blocks of 6 heads, 16 px patches of 224 px images). Smaller values make tiny test and CPU models
/// with the same names.
#[derive(Debug, Clone, Serialize, PartialEq, byol::KeyDocs)]
pub struct ViTConfig {
    /// Side of the (square) input images; the position embedding has one entry per patch.
    pub image_size: i64,
    /// Side of the square patches (the stride of `patch_embed.proj`).
    pub patch_size: i64,
    /// Token width.
    pub embed_dim: i64,
    /// Transformer blocks.
    pub depth: i64,
    /// Attention heads per block (must divide embed_dim).
    pub num_heads: i64,
    /// Hidden width of each block's MLP, as a multiple of embed_dim.
    pub mlp_ratio: f64,
    /// A safetensors file with a timm ViT state_dict to start from (`head.*` is ignored).
    pub pretrained: Option<PathBuf>,
}

/// A `[backbone]` table as written: every key optional, unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Written {
    image_size: Option<i64>,
    patch_size: Option<i64>,
    embed_dim: Option<i64>,
    depth: Option<i64>,
    num_heads: Option<i64>,
    mlp_ratio: Option<f64>,
    pretrained: Option<PathBuf>,
}

impl ViTConfig {
    /// `defaults` overridden by the keys of `written`.
    fn from_written(written: Written, defaults: Self) -> Self {
        Self {
            image_size: written.image_size.unwrap_or(defaults.image_size),
            patch_size: written.patch_size.unwrap_or(defaults.patch_size),
            embed_dim: written.embed_dim.unwrap_or(defaults.embed_dim),
            depth: written.depth.unwrap_or(defaults.depth),
            num_heads: written.num_heads.unwrap_or(defaults.num_heads),
            mlp_ratio: written.mlp_ratio.unwrap_or(defaults.mlp_ratio),
            pretrained: written.pretrained.or(defaults.pretrained),
        }
    }

    fn sized(embed_dim: i64, depth: i64, num_heads: i64) -> Self {
        Self {
            image_size: 224,
            patch_size: 16,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: 4.0,
            pretrained: None,
        }
    }

    fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
        // The position embeddings fit one image size: views of another would fail at the first
        // step, after the data was read.
        if context.image_size != self.image_size {
            return Err(ByolError::Config(format!(
                "backbone.image_size = {} but the views are {}x{} (augment.image_size): set backbone.image_size = {}, \
                 or make the views {}x{}",
                self.image_size,
                context.image_size,
                context.image_size,
                context.image_size,
                self.image_size,
                self.image_size
            )));
        }
        let positive = [
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
            ("embed_dim", self.embed_dim),
            ("depth", self.depth),
            ("num_heads", self.num_heads),
        ];
        if let Some((key, value)) = positive.iter().find(|(_, v)| *v <= 0) {
            return Err(ByolError::Config(format!("backbone.{key} = {value} must be positive")));
        }
        // Beyond any ViT trained (ViT-G has 48 blocks); the list of that many blocks alone would
        // be an allocation whose failure aborts, where a too-large tensor is an error.
        if self.depth > MAX_DEPTH {
            return Err(ByolError::Config(format!(
                "backbone.depth = {} must be at most {MAX_DEPTH}",
                self.depth
            )));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(ByolError::Config(format!(
                "backbone.image_size = {} is not a multiple of backbone.patch_size = {}",
                self.image_size, self.patch_size
            )));
        }
        if self.embed_dim % self.num_heads != 0 {
            return Err(ByolError::Config(format!(
                "backbone.num_heads = {} does not divide backbone.embed_dim = {}",
                self.num_heads, self.embed_dim
            )));
        }
        let mlp_dim = (self.embed_dim as f64 * self.mlp_ratio).round() as i64;
        if mlp_dim <= 0 {
            return Err(ByolError::Config(format!(
                "backbone.mlp_ratio = {} must be positive",
                self.mlp_ratio
            )));
        }
        Ok(Box::new(ViT::new(
            path,
            self.image_size,
            self.patch_size,
            self.embed_dim,
            self.depth,
            self.num_heads,
            mlp_dim,
        )))
    }
}

macro_rules! vit_size {
    ($ty:ident, $name:literal, $dim:expr, $depth:expr, $heads:expr, $description:literal) => {
        #[doc = $description]
        #[derive(Debug, Clone, Serialize, PartialEq, byol::KeyDocs)]
        #[serde(transparent)]
        pub struct $ty(pub ViTConfig);

        impl Default for $ty {
            fn default() -> Self {
                Self(ViTConfig::sized($dim, $depth, $heads))
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let written = Written::deserialize(deserializer)?;
                Ok(Self(ViTConfig::from_written(written, Self::default().0)))
            }
        }

        byol::register_plugin! {
            name: $name,
            description: $description,
            optional: concat!(
                "pretrained = \"", $name, ".safetensors\"   # a timm state_dict as safetensors\n",
                "# and in [byol]: embedding_layer = \"cls\""
            ),
            impl BackboneSpec for $ty {
                fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
                    self.0.build(path, context)
                }
                fn pretrained(&self) -> Option<&Path> {
                    self.0.pretrained.as_deref()
                }
                fn pretrained_ignores(&self, key: &str) -> bool {
                    key.starts_with("head.")
                }
            }
        }
    };
}

vit_size!(
    ViTSmall16,
    "vit_small_patch16",
    384,
    12,
    6,
    "ViT-S/16 (timm names; taps patch_embed, tokens, cls: 384-d class token)"
);
vit_size!(
    ViTBase16,
    "vit_base_patch16",
    768,
    12,
    12,
    "ViT-B/16 (timm names; taps patch_embed, tokens, cls: 768-d class token)"
);
