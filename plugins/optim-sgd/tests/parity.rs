//! SGD against torch.optim.SGD with the same parameter groups (weight decay off for 1-D
//! parameters), several steps with changing lr, with and without Nesterov. Tolerance: 1e-6 relative.

use byol::{NamedParameter, OptimizerSpec};
use byol_testkit::{max_abs_diff, run_python};
use optim_sgd::SgdConfig;
use tch::{Kind, Tensor};

const REFERENCE: &str = r#"
names = sorted({k[len("p."):] for k in inputs if k.startswith("p.")})
params = {n: torch.nn.Parameter(inputs["p." + n].clone()) for n in names}
groups = [{"params": [params[n] for n in names if params[n].ndim > 1], "weight_decay": WD},
          {"params": [params[n] for n in names if params[n].ndim <= 1], "weight_decay": 0.0}]
opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9, nesterov=NESTEROV)
for step, lr in enumerate(LRS):
    for g in opt.param_groups:
        g["lr"] = lr
    for n in names:
        params[n].grad = inputs[f"g{step}.{n}"].clone()
    opt.step()
for n in names:
    outputs[n] = params[n].detach()
"#;

fn check(nesterov: bool) {
    let lrs = [0.1, 0.05, 0.2];
    let config = SgdConfig {
        weight_decay: 1e-2,
        nesterov,
        ..Default::default()
    };
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
        let theirs = &reference[name];
        let d = max_abs_diff(p, theirs) / theirs.abs().max().double_value(&[]);
        assert!(d < 1e-6, "{name} (nesterov {nesterov}): relative difference {d}");
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
