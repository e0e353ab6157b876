//! BYOL's networks start from the weights PyTorch would draw: the ResNet as torchvision
//! initializes it (convolutions from a normal of Kaiming's fan-out std, batch norms at 1 and 0)
//! and the projector and predictor as `nn.Linear` and `nn.BatchNorm1d` initialize themselves.
//! Every tensor of ours is compared with the same tensor of a freshly built PyTorch model by a
//! two-sample Kolmogorov-Smirnov test: both are draws of one distribution when the rules are
//! the same, and a wrong fan mode, gain, bound or constant moves the statistic far past the
//! critical value. Each side draws from a seed of the run's own (`INIT_SEED` replays ours).

use backbone_resnet::{ResNet18, ResNetConfig};
use byol::{Byol, ByolConfig};
use byol_testkit::{draw_failures, fresh_seed, run_python, COMPARE_DRAWS};
use tch::{nn::VarStore, Device, Tensor};

/// A tensor's test fails by chance with probability at most 1e-6 (the asymptotic critical value
/// `sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m))`); over this file's few dozen tensors, a
/// false failure is rarer than one run in ten thousand.
const ALPHA: f64 = 1e-6;

const PYTORCH: &str = r#"
import torchvision
width, hidden, projection, alpha, seed = CONFIG
torch.manual_seed(seed)
backbone = torchvision.models.resnet18(weights=None)
backbone.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem, as torchvision's layers draw it
torch.nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
backbone.maxpool = torch.nn.Identity()
backbone.fc = torch.nn.Identity()
def head(inputs):
    return torch.nn.Sequential(torch.nn.Linear(inputs, hidden), torch.nn.BatchNorm1d(hidden),
                               torch.nn.ReLU(), torch.nn.Linear(hidden, projection))
theirs = {}
for prefix, module in (("online.backbone.", backbone), ("online.projector.", head(512)),
                       ("online.predictor.", head(projection))):
    theirs.update({prefix + k: v for k, v in module.state_dict().items()})
compare_draws(dict(inputs), theirs, alpha, "PyTorch's")
"#;

#[test]
fn byols_networks_start_from_the_weights_pytorch_draws() {
    let seed = fresh_seed("INIT_SEED");
    tch::manual_seed(seed);
    let (hidden, projection) = (256i64, 64i64);
    let vs = VarStore::new(Device::Cpu);
    let spec = ResNet18(ResNetConfig {
        cifar_stem: true,
        ..Default::default()
    });
    let config = ByolConfig {
        embedding_layer: "avgpool".into(),
        hidden_dim: hidden,
        projection_dim: projection,
        ..Default::default()
    };
    let _byol = Byol::new(&vs, &spec, 32, "avgpool", &config).unwrap();
    let online: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("online."))
        .collect();
    let inputs: Vec<(&str, &Tensor)> = online.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let script = PYTORCH.replace(
        "CONFIG",
        &format!("(64, {hidden}, {projection}, {ALPHA:e}, {})", seed.wrapping_add(1)),
    );
    let reference = run_python(&format!("{COMPARE_DRAWS}{script}"), &inputs);
    let failures = draw_failures(&reference);
    assert!(
        failures.is_empty(),
        "seed {seed} (INIT_SEED={seed} replays ours): initial weights drawn otherwise than PyTorch's:\n{failures}"
    );
    assert!(reference["compared"].int64_value(&[]) > 100, "too few tensors compared");
}
