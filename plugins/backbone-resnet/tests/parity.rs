//! ResNet parity with torchvision (the venv's), on the same weights and fresh random inputs.
//! Tolerance: 1e-4 max abs on outputs (fp32, CPU), 1e-3 relative on gradients.

use std::collections::HashMap;

use backbone_resnet::{ResNet101, ResNet152, ResNet18, ResNet34, ResNet50, ResNetConfig};
use byol::BackboneSpec;
use byol_testkit::{max_abs_diff, run_python};
use tch::{nn, Device, Kind, Tensor};

const TORCHVISION_FORWARD: &str = r#"
import torchvision
arch, cifar = CONFIG
model = getattr(torchvision.models, arch)(weights=None)
if cifar:
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
model.fc = torch.nn.Identity()
state = {k[len("net."):]: v for k, v in inputs.items() if k.startswith("net.")}
missing, unexpected = model.load_state_dict(state, strict=False)
assert not unexpected, unexpected
assert all(m.startswith("fc.") for m in missing), missing
x = inputs["x"].requires_grad_(True)
for train in (True, False):
    model.train(train)
    y = model(x)
    outputs[f"y_{train}"] = y
    if train:
        # A scalar function of the output; its gradients w.r.t. input and parameters.
        (y * inputs["w"]).sum().backward()
        outputs["grad_x"] = x.grad
        for name, p in model.named_parameters():
            outputs["grad." + name] = p.grad
"#;

fn check(spec: &dyn BackboneSpec, arch: &str, cifar: bool, input: [i64; 4]) {
    // One thread on both sides, so both sum in the same order as far as possible.
    tch::set_num_threads(1);
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = spec
        .build(&(vs.root() / "net"), &byol::BuildContext::new(Device::Cpu, input[2]))
        .unwrap();
    // Random, non-trivial BN state so that eval mode is really tested.
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.ends_with("running_mean") || name.ends_with("bn1.bias") {
                t.shallow_clone().copy_(&(Tensor::randn_like(&t) * 0.1));
            } else if name.ends_with("running_var") {
                t.shallow_clone().copy_(&(Tensor::rand_like(&t) + 0.5));
            }
        }
    });
    let snapshot: HashMap<String, Tensor> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    let x = Tensor::randn(input, (Kind::Float, Device::Cpu));
    let dim = net.tap_dim("avgpool").unwrap();
    let w = Tensor::randn([input[0], dim], (Kind::Float, Device::Cpu));
    let mut named: Vec<(String, Tensor)> = snapshot.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    named.push(("x".into(), x.shallow_clone()));
    named.push(("w".into(), w.shallow_clone()));
    let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let script = TORCHVISION_FORWARD.replace(
        "CONFIG",
        &format!("(\"{arch}\", {})", if cifar { "True" } else { "False" }),
    );
    let reference = run_python(&script, &refs);

    let xg = x.set_requires_grad(true);
    let y_train = net.embed(&xg, true, "avgpool");
    (&y_train * &w).sum(Kind::Float).backward();
    let y_eval = tch::no_grad(|| net.embed(&x, false, "avgpool"));
    let d_train = max_abs_diff(&y_train, &reference["y_True"]);
    let d_eval = max_abs_diff(&y_eval, &reference["y_False"]);
    assert!(d_train < 1e-4, "{arch}: train-mode output differs by {d_train}");
    assert!(d_eval < 1e-4, "{arch}: eval-mode output differs by {d_eval}");
    let relative =
        |ours: &Tensor, theirs: &Tensor| max_abs_diff(ours, theirs) / theirs.abs().max().double_value(&[]).max(1e-12);
    assert!(
        relative(&xg.grad(), &reference["grad_x"]) < 1e-3,
        "{arch}: input gradient differs"
    );
    let variables = vs.variables();
    let mut compared = 0;
    for (key, theirs) in reference.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let ours = variables[&format!("net.{}", &key["grad.".len()..])].grad();
        let r = relative(&ours, theirs);
        assert!(r < 1e-3, "{arch}: gradient of {key} differs (relative {r})");
        compared += 1;
    }
    assert!(compared > 20, "only {compared} gradients compared");
}

#[test]
fn resnet18_cifar_stem_matches_torchvision() {
    let spec = ResNet18(ResNetConfig {
        cifar_stem: true,
        ..Default::default()
    });
    check(&spec, "resnet18", true, [4, 3, 32, 32]);
}

#[test]
fn resnet18_matches_torchvision() {
    check(&ResNet18::default(), "resnet18", false, [2, 3, 64, 64]);
}

#[test]
fn resnet50_matches_torchvision() {
    check(&ResNet50::default(), "resnet50", false, [2, 3, 64, 64]);
}

/// The other depths at 32 px (a 1x1 map before the pool): the block counts and names of each
/// depth, cheaply.
#[test]
fn resnet34_101_152_match_torchvision() {
    check(&ResNet34::default(), "resnet34", false, [2, 3, 32, 32]);
    check(&ResNet101::default(), "resnet101", false, [2, 3, 32, 32]);
    check(&ResNet152::default(), "resnet152", false, [2, 3, 32, 32]);
}
