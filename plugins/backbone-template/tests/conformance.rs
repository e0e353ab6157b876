//! The conformance harness every backbone plugin runs: shapes and dims of every tap, train/eval
//! behaviour, state_dict names, safetensors round trip, gradients, a BYOL step.

use backbone_template::TinyCnnConfig;

#[test]
fn tiny_cnn_passes_the_conformance_harness() {
    byol_testkit::check_backbone(&TinyCnnConfig::default(), 32);
}

#[test]
fn narrow_tiny_cnn_at_16_px_passes_the_conformance_harness() {
    let spec = TinyCnnConfig {
        widths: [4, 8, 8],
        ..Default::default()
    };
    byol_testkit::check_backbone(&spec, 16);
}

#[test]
fn a_bad_width_is_refused_naming_the_key() {
    use byol::BackboneSpec;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = TinyCnnConfig {
        widths: [16, 0, 64],
        ..Default::default()
    };
    let error = spec
        .build(&vs.root(), &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap_err()
        .to_string();
    assert!(error.contains("backbone.widths"), "{error}");
}
