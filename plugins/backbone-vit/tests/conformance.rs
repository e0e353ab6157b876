//! The conformance harness on ViTs: a narrow one, and ViT-S/16's real width, depth and heads.

use backbone_vit::{ViTConfig, ViTSmall16};

#[test]
fn a_narrow_vit_passes_the_conformance_harness() {
    let spec = ViTSmall16(ViTConfig {
        image_size: 32,
        patch_size: 8,
        embed_dim: 48,
        depth: 2,
        num_heads: 3,
        mlp_ratio: 4.0,
        pretrained: None,
    });
    byol_testkit::check_backbone(&spec, 32);
}

#[test]
fn vit_s16_at_32_px_passes_the_conformance_harness() {
    let mut spec = ViTSmall16::default();
    spec.0.image_size = 32;
    byol_testkit::check_backbone(&spec, 32);
}

#[test]
fn bad_shapes_are_refused_naming_the_key() {
    use byol::BackboneSpec;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let mut spec = ViTSmall16::default();
    spec.0.num_heads = 5;
    let e = spec
        .build(&vs.root(), &byol::BuildContext::new(tch::Device::Cpu, 224))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backbone.num_heads = 5 does not divide backbone.embed_dim = 384"),
        "{e}"
    );
    let mut spec = ViTSmall16::default();
    spec.0.image_size = 100;
    let e = spec
        .build(&vs.root(), &byol::BuildContext::new(tch::Device::Cpu, 100))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backbone.image_size = 100 is not a multiple of backbone.patch_size = 16"),
        "{e}"
    );
    // Views of another size than the position embeddings fit: refused when the model is built
    // (by validate too), not at the first step.
    let e = ViTSmall16::default()
        .build(&vs.root(), &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backbone.image_size = 224 but the views are 32x32") && e.contains("set backbone.image_size = 32"),
        "{e}"
    );
}

#[test]
fn keys_left_out_take_the_sizes_defaults() {
    let parse = |text: &str| -> Result<Box<dyn byol::BackboneSpec>, toml::de::Error> { toml::from_str(text) };
    let plain = parse("type = \"vit_small_patch16\"").unwrap();
    let expected = toml::Value::try_from(ViTSmall16::default().0).unwrap();
    let mut got = toml::Value::try_from(plain.as_ref()).unwrap();
    got.as_table_mut().unwrap().remove("type");
    assert_eq!(got, expected);
    let base = parse("type = \"vit_base_patch16\"\nimage_size = 32").unwrap();
    let got = toml::Value::try_from(base.as_ref()).unwrap();
    assert_eq!(got["embed_dim"].as_integer(), Some(768));
    assert_eq!(got["image_size"].as_integer(), Some(32));
    let e = parse("type = \"vit_small_patch16\"\nwidth = 3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `width`"), "{e}");
}
