//! LARS against a PyTorch implementation of BYOL's LARS (the update of the paper's reference
//! implementation, also used by solo-learn and lightly), on the same parameters and gradients
//! (from a seed of each run's own: `LARS_PARITY_SEED` replays one), over several steps with
//! changing lr. Tolerance: within a few times PyTorch's own float32 error against its float64
//! result ([`byol_testkit::rounding`]).

use byol::{NamedParameter, OptimizerSpec};
use byol_testkit::rounding::assert_within_rounding;
use byol_testkit::{fresh_seed, run_python};
use optim_lars::LarsConfig;
use tch::{Kind, Tensor};

const REFERENCE: &str = r#"
names = sorted({k[len("p."):] for k in inputs if k.startswith("p.")})
wd, eta, mu = WD, ETA, 0.9
for dtype, suffix in ((torch.float32, ""), (torch.float64, "_f64")):
    params = {n: inputs["p." + n].to(dtype) for n in names}
    momentum = {n: torch.zeros_like(p) for n, p in params.items()}
    for step, lr in enumerate(LRS):
        for n in names:
            p, g = params[n], inputs[f"g{step}.{n}"].to(dtype)
            d = g.clone()
            if p.ndim > 1:                    # biases and norm parameters: no decay, no adaptation
                d = d + wd * p
                pn, dn = torch.norm(p), torch.norm(d)
                q = torch.where(pn > 0, torch.where(dn > 0, eta * pn / dn, torch.ones_like(pn)), torch.ones_like(pn))
                d = d * q
            momentum[n] = mu * momentum[n] + d
            params[n] = p - lr * momentum[n]
    for n in names:
        outputs[n + suffix] = params[n]
        outputs["momentum." + n + suffix] = momentum[n]
"#;

#[test]
fn lars_steps_match_the_pytorch_reference() {
    let shapes: [(&str, &[i64]); 5] = [
        ("conv.weight", &[8, 4, 3, 3]),
        ("bn.weight", &[8]),
        ("bn.bias", &[8]),
        ("fc.weight", &[10, 8]),
        ("fc.bias", &[10]),
    ];
    let lrs = [0.5, 1.0, 0.25];
    let config = LarsConfig {
        weight_decay: 1e-3,
        trust_coefficient: 0.02,
        ..Default::default()
    };
    let seed = fresh_seed("LARS_PARITY_SEED");
    let replay = format!("seed {seed} (LARS_PARITY_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let parameters: Vec<NamedParameter> = shapes
        .iter()
        .map(|(name, shape)| NamedParameter {
            name: name.to_string(),
            tensor: Tensor::randn(*shape, tch::kind::FLOAT_CPU).set_requires_grad(true),
        })
        .collect();
    let mut inputs: Vec<(String, Tensor)> = parameters
        .iter()
        .map(|p| (format!("p.{}", p.name), p.tensor.detach().copy()))
        .collect();
    let grads: Vec<Vec<Tensor>> = lrs
        .iter()
        .map(|_| parameters.iter().map(|p| Tensor::randn_like(&p.tensor) * 0.1).collect())
        .collect();
    for (step, step_grads) in grads.iter().enumerate() {
        for (p, g) in parameters.iter().zip(step_grads) {
            inputs.push((format!("g{step}.{}", p.name), g.shallow_clone()));
        }
    }
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let script = REFERENCE
        .replace("WD", &config.weight_decay.to_string())
        .replace("ETA", &config.trust_coefficient.to_string())
        .replace("LRS", &format!("{lrs:?}"));
    let reference = run_python(&script, &refs);

    let handles: Vec<Tensor> = parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
    let names: Vec<String> = parameters.iter().map(|p| p.name.clone()).collect();
    let mut optimizer = config
        .build(parameters, &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap();
    for (step, lr) in lrs.iter().enumerate() {
        optimizer.zero_grad();
        for (p, g) in handles.iter().zip(&grads[step]) {
            (p * g).sum(Kind::Float).backward(); // sets p.grad = g
        }
        optimizer.step(*lr);
    }
    let state = optimizer.state();
    for (name, p) in names.iter().zip(&handles) {
        assert_within_rounding(&reference, name, p, (name, &replay));
        let buffer = &state.iter().find(|(k, _)| *k == format!("momentum.{name}")).unwrap().1;
        let momentum = format!("momentum.{name}");
        assert_within_rounding(&reference, &momentum, buffer, (&momentum, &replay));
    }
}

#[test]
fn excluded_parameters_get_plain_momentum_sgd_and_included_ones_get_the_trust_ratio() {
    let weight = Tensor::ones([4, 4], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let bias = Tensor::ones([4], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let config = LarsConfig {
        weight_decay: 0.0,
        trust_coefficient: 0.1,
        momentum: 0.0,
        ..Default::default()
    };
    let mut optimizer = config
        .build(
            vec![
                NamedParameter {
                    name: "w".into(),
                    tensor: weight.shallow_clone(),
                },
                NamedParameter {
                    name: "b".into(),
                    tensor: bias.shallow_clone(),
                },
            ],
            &byol::BuildContext::new(tch::Device::Cpu, 32),
        )
        .unwrap();
    (weight.sum(Kind::Float) * 2.0 + bias.sum(Kind::Float) * 2.0).backward(); // grads all 2
    optimizer.step(1.0);
    // weight: ||p|| = 4, ||g|| = 8, trust = 0.1 * 4 / 8 = 0.05, update = 0.05 * 2 = 0.1
    assert!((weight.double_value(&[0, 0]) - 0.9).abs() < 1e-6);
    // bias: excluded, update = lr * g = 2
    assert!((bias.double_value(&[0]) - (-1.0)).abs() < 1e-6);
}
