//! Vision Transformers (Dosovitskiy et al. 2021) as BYOL backbones, with timm's
//! `VisionTransformer` architecture (pre-norm blocks, class token, learned position embedding,
//! LayerNorm eps 1e-6, exact GELU) and its state_dict names (`patch_embed.proj.weight`,
//! `blocks.0.attn.qkv.weight`, ...), so timm checkpoints load by name (`head.*` is ignored).

mod config;
mod vit;

pub use config::{ViTBase16, ViTConfig, ViTSmall16};
pub use vit::ViT;
