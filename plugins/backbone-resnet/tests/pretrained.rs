//! Loading torchvision weights exported as safetensors (the README's recipe), and the one clear
//! error when they do not fit.

use std::collections::HashMap;
use std::path::Path;

use backbone_resnet::{ResNet18, ResNet50, ResNetConfig};
use byol::{Byol, ByolConfig, ByolError};
use byol_testkit::rounding::assert_bit_equal;
use byol_testkit::{max_abs_diff, run_python};
use tch::{nn::VarStore, Device, Kind, Tensor};

/// The export recipe from the README, plus torchvision's embedding (output before `fc`).
const EXPORT: &str = r#"
import torchvision
from safetensors.torch import save_file
model = torchvision.models.resnet18(weights=None)   # or weights="IMAGENET1K_V1"
with torch.no_grad():                               # non-trivial BN statistics
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1); m.running_var.uniform_(0.5, 1.5); m.bias.normal_(0, 0.1)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, PATH)
model.fc = torch.nn.Identity()
model.eval()
with torch.no_grad():
    outputs["embedding"] = model(inputs["x"])
"#;

/// torchvision's embedding of `x` (`embedding`).
fn export(path: &Path, x: &Tensor) -> HashMap<String, Tensor> {
    let script = EXPORT.replace("PATH", &format!("{:?}", path.to_str().unwrap()));
    run_python(&script, &[("x", x)])
}

/// Takes this binary's turn with libtorch's global generator, so that a seed drawn from replays.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

fn config() -> ByolConfig {
    ByolConfig {
        hidden_dim: 32,
        projection_dim: 16,
        ..Default::default()
    }
}

#[test]
fn torchvision_weights_give_torchvision_embeddings() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    let seed = byol_testkit::fresh_seed("PRETRAINED_SEED");
    let replay = format!("seed {seed} (PRETRAINED_SEED={seed} replays it)");
    let x = {
        let _turn = one_at_a_time();
        tch::manual_seed(seed);
        Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu))
    };
    let reference = export(&path, &x);
    let vs = VarStore::new(Device::Cpu);
    let spec = ResNet18(ResNetConfig {
        pretrained: Some(path),
        ..Default::default()
    });
    let byol = Byol::new(&vs, &spec, 64, "avgpool", &config()).unwrap();
    // Bit for bit: the same kernels on the same values, one thread each, and BYOL's flat buffer
    // holds each weight at the alignment of a tensor of its own (byol::flat_layout).
    let what = ("the avgpool embedding", replay.as_str());
    assert_bit_equal(&reference, "embedding", &byol.embed(&x), what);
    // The target starts as a copy of the loaded online network.
    let variables = vs.variables();
    let d = max_abs_diff(
        &variables["target.backbone.layer4.1.conv2.weight"],
        &variables["online.backbone.layer4.1.conv2.weight"],
    );
    assert_eq!(d, 0.0);
}

#[test]
fn mismatched_weights_list_missing_unexpected_and_misshaped_keys() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.safetensors");
    let _ = export(&path, &Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu)));
    let vs = VarStore::new(Device::Cpu);
    let spec = ResNet50(ResNetConfig {
        pretrained: Some(path.clone()),
        ..Default::default()
    });
    let error = Byol::new(&vs, &spec, 64, "avgpool", &config()).unwrap_err();
    assert!(matches!(error, ByolError::StateDictMismatch { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains(path.to_str().unwrap()), "{message}");
    assert!(
        message.contains("missing keys") && message.contains("layer1.0.conv3.weight"),
        "{message}"
    );
    assert!(
        message.contains("mis-shaped keys")
            && message.contains("layer1.0.conv1.weight: file [64, 64, 3, 3], model [64, 64, 1, 1]"),
        "{message}"
    );
    // ResNet-18 has no key that ResNet-50 lacks: the file gains one ResNet-18 lacks (not `fc.*`,
    // which a ResNet ignores) for the unexpected keys.
    let mut tensors = Tensor::read_safetensors(&path).unwrap();
    tensors.push((
        "layer5.0.conv1.weight".into(),
        Tensor::zeros([1], (Kind::Float, Device::Cpu)),
    ));
    tensors.push(("fc.extra".into(), Tensor::zeros([1], (Kind::Float, Device::Cpu))));
    let extended = dir.path().join("resnet18-extended.safetensors");
    Tensor::write_safetensors(&tensors, &extended).unwrap();
    let spec = ResNet18(ResNetConfig {
        pretrained: Some(extended),
        ..Default::default()
    });
    let message = Byol::new(&VarStore::new(Device::Cpu), &spec, 32, "avgpool", &config())
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("unexpected keys")
            && message.contains("layer5.0.conv1.weight")
            && !message.contains("fc.extra")
            && !message.contains("missing keys")
            && !message.contains("mis-shaped keys"),
        "{message}"
    );
}

#[test]
fn missing_weights_file_names_the_file() {
    let _turn = one_at_a_time();
    let spec = ResNet18(ResNetConfig {
        pretrained: Some("/nonexistent/w.safetensors".into()),
        ..Default::default()
    });
    let message = Byol::new(&VarStore::new(Device::Cpu), &spec, 32, "avgpool", &config())
        .unwrap_err()
        .to_string();
    assert!(message.contains("/nonexistent/w.safetensors"), "{message}");
}

#[test]
fn zero_init_residual_zeroes_the_last_bn_of_each_block() {
    let _turn = one_at_a_time();
    let vs = VarStore::new(Device::Cpu);
    let spec = ResNet50(ResNetConfig {
        zero_init_residual: true,
        width: 8,
        ..Default::default()
    });
    let _ = byol::BackboneSpec::build(&spec, &vs.root(), &byol::BuildContext::new(Device::Cpu, 64)).unwrap();
    let variables = vs.variables();
    for block in ["layer1.0", "layer2.3", "layer4.2"] {
        assert_eq!(
            variables[&format!("{block}.bn3.weight")]
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        assert!(
            variables[&format!("{block}.bn2.weight")]
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
    }
}
