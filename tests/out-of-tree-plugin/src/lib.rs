//! `toy_convnet`: one conv-BN-ReLU, a global average pool and a linear layer. Its last tap, `fc`,
//! is already `[N, C]`, unlike the ResNets' and the template's spatial taps.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

use byol::nn::{batch_norm2d, conv2d, linear, BatchNorm};
use byol::{Backbone, BackboneSpec, BuildContext, ByolError};

/// `[backbone] type = "toy_convnet"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct ToyConvNetConfig {
    /// Channels of the convolution.
    pub channels: i64,
    /// Output features of the linear layer (the `fc` tap).
    pub features: i64,
    /// Weights to start from (`conv.weight`, `bn.*`, `fc.weight`, `fc.bias`).
    pub pretrained: Option<PathBuf>,
}

impl Default for ToyConvNetConfig {
    fn default() -> Self {
        Self {
            channels: 8,
            features: 16,
            pretrained: None,
        }
    }
}

byol::register_plugin! {
    name: "toy_convnet",
    description: "out-of-tree test plugin: conv-BN-ReLU, average pool, linear",
    optional: "pretrained = \"toy_convnet.safetensors\"",
    impl BackboneSpec for ToyConvNetConfig {
        fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
            if self.channels <= 0 || self.features <= 0 {
                return Err(ByolError::Config("backbone.channels and backbone.features must be positive".into()));
            }
            Ok(Box::new(ToyConvNet {
                conv: conv2d(&(path / "conv"), 3, self.channels, 3, 2, 1),
                bn: batch_norm2d(&(path / "bn"), self.channels, &context.backbone_batch_norm),
                fc: linear(&(path / "fc"), self.channels, self.features),
                channels: self.channels,
                features: self.features,
            }))
        }

        fn pretrained(&self) -> Option<&Path> {
            self.pretrained.as_deref()
        }
    }
}

#[derive(Debug)]
pub struct ToyConvNet {
    conv: nn::Conv2D,
    bn: BatchNorm,
    fc: nn::Linear,
    channels: i64,
    features: i64,
}

const TAPS: [&str; 3] = ["conv", "pool", "fc"];

impl Backbone for ToyConvNet {
    fn taps(&self) -> Vec<&'static str> {
        TAPS.to_vec()
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        match tap {
            "conv" | "pool" => Some(self.channels),
            "fc" => Some(self.features),
            _ => None,
        }
    }

    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor> {
        let conv = self.bn.forward_t(&images.apply(&self.conv), train).relu();
        let pool = conv.mean_dim([2i64, 3].as_slice(), false, None);
        let fc = pool.apply(&self.fc);
        taps.iter()
            .map(|tap| match *tap {
                "conv" => conv.shallow_clone(),
                "pool" => pool.shallow_clone(),
                "fc" => fc.shallow_clone(),
                other => panic!("toy_convnet has no tap '{other}'"),
            })
            .collect()
    }
}
