//! BYOL against a PyTorch reference written from the paper, on identical weights and views (from
//! a seed of each run's own: `BYOL_PARITY_SEED` replays one): loss value, gradients w.r.t. every
//! online parameter, and the online/target parameters after an SGD + EMA step. The loss, the
//! gradients and the online parameters are PyTorch's bit for bit: the same kernels on the same
//! values, one thread each, BYOL's flat buffers holding each variable at a tensor's own alignment
//! (`byol::flat_layout`). The target's EMA is one `lerp_` over a flat buffer where the reference
//! writes the paper's `tau * t + (1 - tau) * o`, which rounds otherwise: it is held within a few
//! times PyTorch's own float32 error against its float64 result ([`byol_testkit::rounding`]).
//!
//! One step: a second one would start from weights a rounding apart, where a ReLU input within
//! rounding of zero may fall on the other side in one and not the other, and change a gradient
//! entry by its whole size (seen in about one run in fifteen over three steps). The runner's
//! steps after the first are compared one at a time, each from the same state, in
//! `byol-train`'s `training_step_parity.rs`.

use backbone_resnet::{ResNet18, ResNetConfig};
use byol::{Byol, ByolConfig};
use byol_testkit::rounding::{assert_bit_equal, assert_within_rounding};
use byol_testkit::{fresh_seed, run_python};
use tch::{nn::VarStore, Device, Tensor};

const REFERENCE: &str = r#"
import math

def run(dtype, suffix):
    online = Online(EMB, HIDDEN, PROJ)
    load(online, "online.")
    online = online.to(dtype)
    target = target_of(online)

    def byol_loss(v1, v2):
        if CONCAT:  # both views as one batch: batch norm over 2N
            n = v1.shape[0]
            z = online.projector(online.backbone(torch.cat([v1, v2])))
            p = online.predictor(z)
            with torch.no_grad():
                t = target.projector(target.backbone(torch.cat([v1, v2])))
            return regression(p[:n], t[n:]).mean() + regression(p[n:], t[:n]).mean()
        z1 = online.projector(online.backbone(v1)); z2 = online.projector(online.backbone(v2))
        p1 = online.predictor(z1); p2 = online.predictor(z2)
        with torch.no_grad():
            t1 = target.projector(target.backbone(v1)); t2 = target.projector(target.backbone(v2))
        return regression(p1, t2).mean() + regression(p2, t1).mean()

    online.train(); target.train()
    opt = torch.optim.SGD(online.parameters(), lr=LR, momentum=0.9)
    steps = int(inputs["steps"].item())
    for step in range(steps):
        v1, v2 = inputs[f"v1_{step}"].to(dtype), inputs[f"v2_{step}"].to(dtype)
        loss = byol_loss(v1, v2)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            outputs["loss0" + suffix] = loss.detach().reshape(1)
            for n, p in online.named_parameters():
                outputs["grad.online." + n + suffix] = p.grad.clone()
        opt.step()
        tau = 1 - (1 - TAU_BASE) * (math.cos(math.pi * step / steps) + 1) / 2
        with torch.no_grad():
            for (n, pt), po in zip(target.named_parameters(), [dict(online.named_parameters())[n] for n, _ in target.named_parameters()]):
                pt.mul_(tau).add_(po, alpha=1 - tau)
    for n, p in online.named_parameters():
        outputs["final.online." + n + suffix] = p.detach()
    for n, p in target.named_parameters():
        outputs["final.target." + n + suffix] = p.detach()

run(torch.float32, "")
run(torch.float64, "_f64")
"#;

/// Both forward variants in one test: each seeds libtorch's global generator for its inputs,
/// which two tests running on parallel threads would interleave.
#[test]
fn byol_loss_gradients_and_ema_match_pytorch_with_separate_and_concatenated_views() {
    check_against_pytorch(false);
    check_against_pytorch(true);
}

fn check_against_pytorch(concat_views: bool) {
    tch::set_num_threads(1);
    let seed = fresh_seed("BYOL_PARITY_SEED");
    let replay = format!("concat_views {concat_views}, seed {seed} (BYOL_PARITY_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let (width, hidden, proj, steps, lr, tau_base) = (8i64, 64i64, 32i64, 1u64, 0.05, 0.9);
    let vs = VarStore::new(Device::Cpu);
    let spec = ResNet18(ResNetConfig {
        cifar_stem: true,
        width,
        ..Default::default()
    });
    let config = ByolConfig {
        embedding_layer: "avgpool".into(),
        hidden_dim: hidden,
        projection_dim: proj,
        tau_base,
        concat_views,
    };
    let byol = Byol::new(&vs, &spec, 16, "avgpool", &config).unwrap();
    let views: Vec<(Tensor, Tensor)> = (0..steps)
        .map(|_| {
            (
                Tensor::randn([6, 3, 16, 16], tch::kind::FLOAT_CPU),
                Tensor::randn([6, 3, 16, 16], tch::kind::FLOAT_CPU),
            )
        })
        .collect();

    let mut inputs: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("online."))
        .map(|(k, v)| (k, v.detach().copy()))
        .collect();
    for (i, (a, b)) in views.iter().enumerate() {
        inputs.push((format!("v1_{i}"), a.shallow_clone()));
        inputs.push((format!("v2_{i}"), b.shallow_clone()));
    }
    inputs.push(("steps".into(), Tensor::from_slice(&[steps as i64])));
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let script = REFERENCE
        .replace("EMB", &(width * 8).to_string())
        .replace("HIDDEN", &hidden.to_string())
        .replace("PROJ", &proj.to_string())
        .replace("LR", &lr.to_string())
        .replace("TAU_BASE", &tau_base.to_string())
        .replace("CONCAT", if concat_views { "True" } else { "False" });
    let script = format!("{}{script}", byol_testkit::TORCH_BYOL);
    let reference = run_python(&script, &refs);

    let params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(k, t)| k.starts_with("online.") && t.requires_grad())
        .collect();
    let mut opt = SimpleSgd::new(&params, lr, 0.9);
    let check = |what: &str, ours: &Tensor, key: &str| assert_bit_equal(&reference, key, ours, (what, &replay));
    for (step, (v1, v2)) in views.iter().enumerate() {
        let loss = byol.loss(v1, v2);
        opt.zero_grad();
        loss.backward();
        if step == 0 {
            check("the loss", &loss.reshape([1]), "loss0");
            for (name, p) in &params {
                check(&format!("the gradient of {name}"), &p.grad(), &format!("grad.{name}"));
            }
        }
        opt.step();
        byol.update_target(step as u64, steps);
    }
    let variables = vs.variables();
    let mut compared = 0;
    for key in reference
        .keys()
        .filter(|k| k.starts_with("final.") && !k.ends_with("_f64"))
    {
        let name = &key["final.".len()..];
        let what = format!("{name} after the step");
        if name.starts_with("target.") {
            assert_within_rounding(&reference, key, &variables[name], (&what, &replay));
        } else {
            check(&what, &variables[name], key);
        }
        compared += 1;
    }
    assert!(compared > 100, "only {compared} parameters compared");
}

/// Momentum SGD over an explicit parameter list, as torch.optim.SGD computes it on a CPU (the
/// update `p.add_(buf, alpha=-lr)` rounded once); tch's optimizers take a whole VarStore, and
/// here the target must stay out.
struct SimpleSgd {
    params: Vec<Tensor>,
    buffers: Vec<Tensor>,
    lr: f64,
    momentum: f64,
}

impl SimpleSgd {
    fn new(params: &[(String, Tensor)], lr: f64, momentum: f64) -> Self {
        let params: Vec<Tensor> = params.iter().map(|(_, t)| t.shallow_clone()).collect();
        let buffers = params.iter().map(|p| p.zeros_like()).collect();
        Self {
            params,
            buffers,
            lr,
            momentum,
        }
    }

    fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn step(&mut self) {
        tch::no_grad(|| {
            for (p, b) in self.params.iter().zip(self.buffers.iter_mut()) {
                let _ = b.g_mul_scalar_(self.momentum).g_add_(&p.grad());
                torch_ext::foreach::add_scaled_(&[p.shallow_clone()], &[b.shallow_clone()], -self.lr).unwrap();
            }
        });
    }
}
