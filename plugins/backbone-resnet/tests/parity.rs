//! ResNet parity with torchvision (the venv's), on the same weights and inputs drawn from a seed
//! of each run's own (`RESNET_PARITY_SEED` replays one).
//!
//! Tolerance: none. Ours and torchvision's make the same libtorch calls in the same order, on one
//! thread each, so every output and gradient is torchvision's float32 result bit for bit
//! ([`byol_testkit::rounding::assert_bit_equal`]).

use std::collections::HashMap;
use std::sync::Mutex;

use backbone_resnet::{ResNet101, ResNet152, ResNet18, ResNet34, ResNet50, ResNetConfig};
use byol::BackboneSpec;
use byol_testkit::rounding::assert_bit_equal;
use byol_testkit::{fresh_seed, run_python};
use tch::{nn, Device, Kind, Tensor};

/// The tests of this file draw from libtorch's one generator: one at a time, so that a seed
/// replays its inputs.
static GENERATOR: Mutex<()> = Mutex::new(());

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
x = inputs["x"].detach().clone().requires_grad_(True)
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
    let generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let seed = fresh_seed("RESNET_PARITY_SEED");
    let replay = format!("{arch}, seed {seed} (RESNET_PARITY_SEED={seed} replays it)");
    tch::manual_seed(seed);
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
    drop(generator);
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
    let check = |what: &str, ours: &Tensor, key: &str| assert_bit_equal(&reference, key, ours, (what, &replay));
    check("the train-mode output", &y_train, "y_True");
    check("the eval-mode output", &y_eval, "y_False");
    check("the input gradient", &xg.grad(), "grad_x");
    let variables = vs.variables();
    let mut compared = 0;
    for key in reference.keys().filter(|k| k.starts_with("grad.")) {
        let ours = variables[&format!("net.{}", &key["grad.".len()..])].grad();
        check(&format!("the gradient of {key}"), &ours, key);
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
