use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn;

use crate::resnet::{BlockKind, ResNet};
use byol::{Backbone, BackboneSpec, BuildContext, ByolError};

/// Options shared by every ResNet depth (`[backbone] type = "resnet50"` plus these keys).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
#[serde(deny_unknown_fields, default)]
pub struct ResNetConfig {
    /// CIFAR stem: a 3x3 stride-1 first convolution and no max-pool, for 32 px images.
    pub cifar_stem: bool,
    /// Zero-initialize the last BN gamma of every residual branch (Goyal et al. 2017).
    pub zero_init_residual: bool,
    /// Channels of the stem (torchvision: 64). Smaller widths make tiny test and CPU models;
    /// state_dict names stay the same, only shapes change.
    pub width: i64,
    /// A safetensors file with a torchvision ResNet state_dict to start from (`fc.*` is ignored).
    pub pretrained: Option<PathBuf>,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self {
            cifar_stem: false,
            zero_init_residual: false,
            width: 64,
            pretrained: None,
        }
    }
}

impl ResNetConfig {
    fn build(
        &self,
        path: &nn::Path,
        context: &BuildContext,
        block: BlockKind,
        layers: [i64; 4],
    ) -> Result<Box<dyn Backbone>, ByolError> {
        if self.width <= 0 {
            return Err(ByolError::Config(format!(
                "backbone.width = {} must be positive",
                self.width
            )));
        }
        Ok(Box::new(ResNet::new(
            path,
            block,
            layers,
            self.width,
            self.cifar_stem,
            self.zero_init_residual,
            &context.backbone_batch_norm,
        )))
    }
}

impl ResNetConfig {
    /// [`BackboneSpec::export_note`] for torchvision's `name` constructor.
    fn export_note(&self, name: &str) -> Option<String> {
        if self.width != 64 {
            return Some(format!(
                "backbone.width = {0}: torchvision.models.{name}() cannot load this export, its stem is 64 \
                 channels wide (and every layer's width follows); the names are torchvision's, the shapes \
                 those of a {name} whose stem is {0} wide",
                self.width
            ));
        }
        self.cifar_stem.then(|| {
            format!(
                "backbone.cifar_stem = true: before torchvision.models.{name}() loads this export, set \
                 model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False) and model.maxpool = torch.nn.Identity()"
            )
        })
    }
}

/// One typetag name per depth, as torchvision names its constructors.
macro_rules! resnet_depth {
    ($ty:ident, $name:literal, $block:ident, $layers:expr, $description:literal) => {
        #[doc = $description]
        #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, byol::KeyDocs)]
        #[serde(transparent)]
        pub struct $ty(pub ResNetConfig);

        byol::register_plugin! {
            name: $name,
            description: $description,
            optional: concat!("pretrained = \"", $name, ".safetensors\"   # a torchvision state_dict as safetensors"),
            impl BackboneSpec for $ty {
                fn build(&self, path: &nn::Path, context: &BuildContext) -> Result<Box<dyn Backbone>, ByolError> {
                    self.0.build(path, context, BlockKind::$block, $layers)
                }
                fn pretrained(&self) -> Option<&Path> {
                    self.0.pretrained.as_deref()
                }
                fn pretrained_ignores(&self, key: &str) -> bool {
                    key.starts_with("fc.")
                }
                fn export_note(&self) -> Option<String> {
                    self.0.export_note($name)
                }
            }
        }
    };
}

resnet_depth!(
    ResNet18,
    "resnet18",
    Basic,
    [2, 2, 2, 2],
    "ResNet-18 (torchvision names; 512-d avgpool)"
);
resnet_depth!(
    ResNet34,
    "resnet34",
    Basic,
    [3, 4, 6, 3],
    "ResNet-34 (torchvision names; 512-d avgpool)"
);
resnet_depth!(
    ResNet50,
    "resnet50",
    Bottleneck,
    [3, 4, 6, 3],
    "ResNet-50 (torchvision names; 2048-d avgpool)"
);
resnet_depth!(
    ResNet101,
    "resnet101",
    Bottleneck,
    [3, 4, 23, 3],
    "ResNet-101 (torchvision names; 2048-d avgpool)"
);
resnet_depth!(
    ResNet152,
    "resnet152",
    Bottleneck,
    [3, 8, 36, 3],
    "ResNet-152 (torchvision names; 2048-d avgpool)"
);
