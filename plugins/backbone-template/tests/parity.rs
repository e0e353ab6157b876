//! The same network in PyTorch, on the same weights and inputs drawn from a seed of each run's own
//! (`TINY_CNN_PARITY_SEED` replays one): outputs in train and eval mode, gradients and running
//! statistics, bit for bit. A new backbone's parity test looks like this: build ours, hand its
//! variables by name to the PyTorch module, compare. Bit for bit where both make the same libtorch
//! calls in the same order, on one thread each (`assert_bit_equal`); a layer computed through
//! other ops than PyTorch's module uses (the ViT's attention against torchvision's
//! `MultiheadAttention`, in its gradients) rounds otherwise, and is compared within a few times
//! PyTorch's own float32 error against its float64 result instead (`assert_within_rounding`, as
//! the ViT backbone's test does).

use byol::BackboneSpec;
use byol_testkit::rounding::assert_bit_equal;
use byol_testkit::{fresh_seed, run_python};
use tch::{nn, Device, Kind, Tensor};

use backbone_template::TinyCnnConfig;

const TORCH: &str = r#"
class TinyCnn(torch.nn.Module):
    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        blocks, c = [], 3
        for w in widths:
            blocks.append(torch.nn.Sequential(
                torch.nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False),
                torch.nn.BatchNorm2d(w),
                torch.nn.ReLU()))
            c = w
        self.blocks = torch.nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(x).mean((2, 3))

model = TinyCnn()
model.load_state_dict({k: v for k, v in inputs.items() if k not in ("x", "w")}, strict=True)
x = inputs["x"].detach().clone().requires_grad_(True)
model.eval()
outputs["y_eval"] = model(x)
model.train()
y = model(x)
outputs["y_train"] = y
(y * inputs["w"]).sum().backward()
outputs["grad_x"] = x.grad
for name, p in model.named_parameters():
    outputs["grad." + name] = p.grad
for name, b in model.named_buffers():
    outputs["buffer." + name] = b
"#;

#[test]
fn tiny_cnn_matches_pytorch() {
    tch::set_num_threads(1);
    let seed = fresh_seed("TINY_CNN_PARITY_SEED");
    let replay = format!("seed {seed} (TINY_CNN_PARITY_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = TinyCnnConfig::default()
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 32))
        .unwrap();
    // Non-trivial running statistics, so eval mode is really compared.
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.ends_with("running_mean") {
                t.shallow_clone().copy_(&(Tensor::randn_like(&t) * 0.1));
            } else if name.ends_with("running_var") {
                t.shallow_clone().copy_(&(Tensor::rand_like(&t) + 0.5));
            }
        }
    });
    let weights: Vec<(String, Tensor)> = byol::state_dict::to_cpu_sorted(&vs.variables());
    let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
    let mut inputs: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    inputs.push(("x", &x));
    inputs.push(("w", &w));
    let reference = run_python(TORCH, &inputs);

    let y_eval = tch::no_grad(|| net.embed(&x, false, "avgpool"));
    let xg = x.set_requires_grad(true);
    let y_train = net.embed(&xg, true, "avgpool");
    (&y_train * &w).sum(Kind::Float).backward();
    let check = |what: &str, ours: &Tensor, key: &str| assert_bit_equal(&reference, key, ours, (what, &replay));
    check("the eval-mode output", &y_eval, "y_eval");
    check("the train-mode output", &y_train, "y_train");
    check("the input gradient", &xg.grad(), "grad_x");
    let variables = vs.variables();
    let mut compared = 0;
    for key in reference.keys() {
        if let Some(name) = key.strip_prefix("grad.") {
            check(&format!("the gradient of {name}"), &variables[name].grad(), key);
            compared += 1;
        } else if let Some(name) = key.strip_prefix("buffer.") {
            // Running statistics after one train-mode step, num_batches_tracked included.
            check(&format!("the buffer {name}"), &variables[name], key);
            compared += 1;
        }
    }
    assert_eq!(
        compared,
        9 + 9,
        "3 blocks of 3 parameters (conv, BN weight and bias) and 3 BN buffers"
    );
}
