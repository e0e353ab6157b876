//! ResNet backbones with torchvision's architecture (v1.5: stride on the 3x3 conv) and
//! state_dict names, so that weights move between torchvision and byol-rs by name.

mod config;
mod resnet;

pub use config::{ResNet101, ResNet152, ResNet18, ResNet34, ResNet50, ResNetConfig};
pub use resnet::{BlockKind, ResNet};
