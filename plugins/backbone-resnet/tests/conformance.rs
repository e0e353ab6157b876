//! The conformance harness on ResNets: both block kinds, both stems, zero-init of residual BNs
//! left off (it zeroes the gradient of the conv before each zeroed BN, which the harness reports).

use backbone_resnet::{ResNet18, ResNet50, ResNetConfig};

#[test]
fn resnet18_cifar_stem_passes_the_conformance_harness() {
    let spec = ResNet18(ResNetConfig {
        cifar_stem: true,
        width: 8,
        ..Default::default()
    });
    byol_testkit::check_backbone(&spec, 16);
}

#[test]
fn resnet50_passes_the_conformance_harness() {
    let spec = ResNet50(ResNetConfig {
        width: 8,
        ..Default::default()
    });
    byol_testkit::check_backbone(&spec, 64);
}
