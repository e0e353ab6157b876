//! timm's `VisionTransformer` (class token, no register tokens, pre-norm blocks, qkv with bias,
//! no LayerScale) without its head.

use tch::nn::{self, Init};
use tch::Tensor;

use byol::backbone::tap_positions;
use byol::Backbone;

const EPS: f64 = 1e-6;

/// timm initializes linear weights with a truncated normal of std 0.02 (cut at +-2, 100 std:
/// a normal) and zero biases.
fn linear(path: &nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: Init::Randn { mean: 0.0, stdev: 0.02 },
        bs_init: Some(Init::Const(0.0)),
        bias: true,
    };
    nn::linear(path, c_in, c_out, config)
}

fn layer_norm(path: &nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(
        path,
        vec![dim],
        nn::LayerNormConfig {
            eps: EPS,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    num_heads: i64,
}

impl Block {
    fn new(path: &nn::Path, dim: i64, num_heads: i64, mlp_dim: i64) -> Self {
        let attn = path / "attn";
        let mlp = path / "mlp";
        Self {
            norm1: layer_norm(&(path / "norm1"), dim),
            qkv: linear(&(&attn / "qkv"), dim, 3 * dim),
            proj: linear(&(&attn / "proj"), dim, dim),
            norm2: layer_norm(&(path / "norm2"), dim),
            fc1: linear(&(&mlp / "fc1"), dim, mlp_dim),
            fc2: linear(&(&mlp / "fc2"), mlp_dim, dim),
            num_heads,
        }
    }

    /// `x + attn(norm1(x))`, then `x + mlp(norm2(x))`, on `[B, N, C]` tokens.
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, c) = x.size3().expect("tokens are [B, N, C]");
        let qkv = x
            .apply(&self.norm1)
            .apply(&self.qkv)
            .reshape([b, n, 3, self.num_heads, c / self.num_heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let attended = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None, false)
            .transpose(1, 2)
            .reshape([b, n, c]);
        let x = x + attended.apply(&self.proj);
        let hidden = x.apply(&self.norm2).apply(&self.fc1).gelu("none");
        &x + hidden.apply(&self.fc2)
    }
}

const TAPS: [&str; 3] = ["patch_embed", "tokens", "cls"];

/// Taps: `patch_embed` (the patch projection, `[N, C, H/P, W/P]`), `tokens` (the patch tokens
/// after the final norm, as a `[N, C, H/P, W/P]` map) and `cls` (the class token after the final
/// norm, `[N, C]`: timm's `forward_head(pre_logits=True)`, the usual embedding).
#[derive(Debug)]
pub struct ViT {
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    image_size: i64,
    embed_dim: i64,
}

impl ViT {
    pub fn new(
        path: &nn::Path,
        image_size: i64,
        patch_size: i64,
        embed_dim: i64,
        depth: i64,
        num_heads: i64,
        mlp_dim: i64,
    ) -> Self {
        let patches = (image_size / patch_size).pow(2);
        // timm leaves the patch projection as PyTorch's `Conv2d` draws itself: weights and bias
        // uniform within 1/sqrt(fan-in) (Kaiming's uniform with a = sqrt(5)).
        let bound = 1.0 / ((3 * patch_size * patch_size) as f64).sqrt();
        let uniform = Init::Uniform { lo: -bound, up: bound };
        let patch_embed = nn::conv2d(
            path / "patch_embed" / "proj",
            3,
            embed_dim,
            patch_size,
            nn::ConvConfig {
                stride: patch_size,
                ws_init: uniform,
                bs_init: uniform,
                ..Default::default()
            },
        );
        Self {
            patch_embed,
            cls_token: path.var("cls_token", &[1, 1, embed_dim], Init::Randn { mean: 0.0, stdev: 1e-6 }),
            pos_embed: path.var(
                "pos_embed",
                &[1, patches + 1, embed_dim],
                Init::Randn { mean: 0.0, stdev: 0.02 },
            ),
            blocks: (0..depth)
                .map(|i| Block::new(&(path / "blocks" / i), embed_dim, num_heads, mlp_dim))
                .collect(),
            norm: layer_norm(&(path / "norm"), embed_dim),
            image_size,
            embed_dim,
        }
    }
}

impl Backbone for ViT {
    fn taps(&self) -> Vec<&'static str> {
        TAPS.to_vec()
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        TAPS.contains(&tap).then_some(self.embed_dim)
    }

    /// No batch norm and no dropout: `train` changes nothing.
    fn forward_taps(&self, images: &Tensor, _train: bool, taps: &[&str]) -> Vec<Tensor> {
        let size = images.size();
        assert!(
            size.len() == 4 && size[2] == self.image_size && size[3] == self.image_size,
            "the ViT backbone was built for {0}x{0} images (backbone.image_size) but got {size:?}",
            self.image_size
        );
        let wanted = tap_positions("ViT", &TAPS, taps);
        let map = images.apply(&self.patch_embed);
        let (n, c, h, w) = map.size4().expect("[N, C, H, W]");
        let mut at: Vec<Option<Tensor>> = vec![Some(map.shallow_clone()), None, None];
        if wanted.iter().any(|&i| i > 0) {
            let tokens = map.flatten(2, 3).transpose(1, 2);
            let cls = self.cls_token.expand([n, 1, c], false);
            let mut x = Tensor::cat(&[cls, tokens], 1) + &self.pos_embed;
            for block in &self.blocks {
                x = block.forward(&x);
            }
            let x = x.apply(&self.norm);
            at[1] = Some(x.narrow(1, 1, h * w).transpose(1, 2).reshape([n, c, h, w]));
            at[2] = Some(x.select(1, 0));
        }
        wanted
            .iter()
            .map(|&i| at[i].as_ref().expect("computed").shallow_clone())
            .collect()
    }
}
