//! SGD against torch.optim.SGD with the same parameter groups (weight decay off for 1-D
//! parameters), several steps with changing lr, with and without Nesterov, from a seed of each
//! run's own (`SGD_PARITY_SEED` replays one). Bit for bit: every op of the update is elementwise
//! and the same as torch.optim.SGD's on a CPU (`grad.add(param, alpha=wd)`, `buf.mul_(m).add_(grad)`,
//! `param.add_(update, alpha=-lr)`, each `add` with an alpha rounded once), so each entry rounds
//! alike whatever the buffers or threads.

use byol::{NamedParameter, OptimizerSpec};
use byol_testkit::rounding::assert_bit_equal;
use byol_testkit::{fresh_seed, run_python};
use optim_sgd::SgdConfig;
use tch::{Kind, Tensor};

const REFERENCE: &str = r#"
names = sorted({k[len("p."):] for k in inputs if k.startswith("p.")})
for dtype, suffix in ((torch.float32, ""),):
    params = {n: torch.nn.Parameter(inputs["p." + n].to(dtype)) for n in names}
    groups = [{"params": [params[n] for n in names if params[n].ndim > 1], "weight_decay": WD},
              {"params": [params[n] for n in names if params[n].ndim <= 1], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9, nesterov=NESTEROV)
    for step, lr in enumerate(LRS):
        for g in opt.param_groups:
            g["lr"] = lr
        for n in names:
            params[n].grad = inputs[f"g{step}.{n}"].to(dtype)
        opt.step()
    for n in names:
        outputs[n + suffix] = params[n].detach()
"#;

/// The tests of this file draw from libtorch's one generator: one at a time, so that a seed
/// replays its inputs.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(nesterov: bool) {
    let lrs = [0.1, 0.05, 0.2];
    let config = SgdConfig {
        weight_decay: 1e-2,
        nesterov,
        ..Default::default()
    };
    let generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let seed = fresh_seed("SGD_PARITY_SEED");
    let replay = format!("nesterov {nesterov}, seed {seed} (SGD_PARITY_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let parameters: Vec<NamedParameter> = [("w", vec![6i64, 5]), ("b", vec![6])]
        .into_iter()
        .map(|(n, s)| NamedParameter {
            name: n.into(),
            tensor: Tensor::randn(s.as_slice(), tch::kind::FLOAT_CPU).set_requires_grad(true),
        })
        .collect();
    let mut inputs: Vec<(String, Tensor)> = parameters
        .iter()
        .map(|p| (format!("p.{}", p.name), p.tensor.detach().copy()))
        .collect();
    let grads: Vec<Vec<Tensor>> = lrs
        .iter()
        .map(|_| parameters.iter().map(|p| Tensor::randn_like(&p.tensor)).collect())
        .collect();
    for (step, gs) in grads.iter().enumerate() {
        for (p, g) in parameters.iter().zip(gs) {
            inputs.push((format!("g{step}.{}", p.name), g.shallow_clone()));
        }
    }
    drop(generator);
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let script = REFERENCE
        .replace("WD", &config.weight_decay.to_string())
        .replace("NESTEROV", if nesterov { "True" } else { "False" })
        .replace("LRS", &format!("{lrs:?}"));
    let reference = run_python(&script, &refs);
    let handles: Vec<(String, Tensor)> = parameters
        .iter()
        .map(|p| (p.name.clone(), p.tensor.shallow_clone()))
        .collect();
    let mut optimizer = config
        .build(parameters, &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap();
    for (step, lr) in lrs.iter().enumerate() {
        optimizer.zero_grad();
        for ((_, p), g) in handles.iter().zip(&grads[step]) {
            (p * g).sum(Kind::Float).backward();
        }
        optimizer.step(*lr);
    }
    for (name, p) in &handles {
        assert_bit_equal(&reference, name, p, (name, &replay));
    }
}

#[test]
fn sgd_matches_torch_optim_sgd() {
    check(false);
}

#[test]
fn nesterov_sgd_matches_torch_optim_sgd() {
    check(true);
}
