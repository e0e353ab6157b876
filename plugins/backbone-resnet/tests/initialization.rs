//! BYOL's networks start from the weights PyTorch would draw: the ResNet as torchvision
//! initializes it (convolutions from a normal of Kaiming's fan-out std, batch norms at 1 and 0)
//! and the projector and predictor as `nn.Linear` and `nn.BatchNorm1d` initialize themselves.
//! Every tensor of ours is compared with the same tensor of a freshly built PyTorch model by a
//! two-sample Kolmogorov-Smirnov test: both are draws of one distribution when the rules are
//! the same, and a wrong fan mode, gain, bound or constant moves the statistic far past the
//! critical value. Each side draws from a seed of the run's own (`INIT_SEED` replays ours).

use backbone_resnet::{ResNet18, ResNetConfig};
use byol::{Byol, ByolConfig};
use byol_testkit::{fresh_seed, run_python};
use tch::{nn::VarStore, Device, Tensor};

/// A tensor's test fails by chance with probability at most 1e-6 (the asymptotic critical value
/// `sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m))`); over this file's few dozen tensors, a
/// false failure is rarer than one run in ten thousand.
const ALPHA: f64 = 1e-6;

const PYTORCH: &str = r#"
import math
import numpy as np
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
ours = {k: v for k, v in inputs.items()}
assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
def ks(a, b):
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    fa = np.searchsorted(a, both, side="right") / len(a)
    fb = np.searchsorted(b, both, side="right") / len(b)
    return float(np.abs(fa - fb).max())
c = math.sqrt(-math.log(alpha / 2) / 2)
failures = []
for k in sorted(ours):
    a = ours[k].double().flatten().numpy()
    b = theirs[k].double().flatten().numpy()
    assert a.shape == b.shape, (k, a.shape, b.shape)
    n = len(a)
    d, critical = ks(a, b), c * math.sqrt(2 / n)
    if d > critical:
        failures.append(f"{k}: KS statistic {d:.4f} > {critical:.4f} (ours std {a.std():.4g}, PyTorch's {b.std():.4g}; "
                        f"ours max |x| {np.abs(a).max():.4g}, PyTorch's {np.abs(b).max():.4g})")
outputs["failures"] = torch.tensor(list("\n".join(failures).encode()) or [0], dtype=torch.uint8)
outputs["compared"] = torch.tensor(len(ours))
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
    let reference = run_python(&script, &inputs);
    let failures = String::from_utf8(Vec::<u8>::try_from(&reference["failures"]).unwrap()).unwrap();
    assert!(
        failures.trim_matches('\0').is_empty(),
        "seed {seed} (INIT_SEED={seed} replays ours): initial weights drawn otherwise than PyTorch's:\n{failures}"
    );
    assert!(reference["compared"].int64_value(&[]) > 100, "too few tensors compared");
}
