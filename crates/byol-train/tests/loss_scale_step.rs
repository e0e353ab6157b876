//! fp16's loss scale around the optimizer step, run on a CPU in float32 (the scale's arithmetic
//! does not depend on the device or the dtype of the forward pass): a step whose gradients
//! overflow changes nothing and halves the scale, whether the optimizer skips it on the
//! device's flag (fused) or the flag is read on the host (per tensor); a finite step is the
//! step of the unscaled gradients.

use byol::OptimizerSpec;
use byol_testkit::max_abs_diff;
use byol_train::loss_scale::LossScaler;
use byol_train::train::StepNumerics;
use byol_train::NamedParameter;
use optim_lars::LarsConfig;
use tch::{Device, Kind, Tensor};

const LR: f64 = 0.5;

struct Run {
    parameters: Vec<Tensor>,
    flags: Vec<f64>,
    scales: Vec<f64>,
}

/// Three steps from `start` on `grads`, the second of which holds an Inf; with the loss scale
/// when `scaled`, else plainly and without the second step.
fn run(start: &[Tensor], grads: &[Vec<Tensor>], fused: bool, scaled: bool) -> Run {
    let parameters: Vec<NamedParameter> = start
        .iter()
        .enumerate()
        .map(|(i, t)| NamedParameter {
            name: format!("layer{i}.weight"),
            tensor: t.copy().set_requires_grad(true),
        })
        .collect();
    let config = LarsConfig {
        weight_decay: 1e-3,
        trust_coefficient: 0.02,
        fused,
        ..Default::default()
    };
    let mut optimizer = config
        .build(parameters.clone(), &byol::BuildContext::new(Device::Cpu, 32))
        .unwrap();
    let numerics = StepNumerics {
        autocast: None,
        scaler: scaled.then(|| LossScaler::new(Device::Cpu)),
        channels_last: false,
    };
    let (mut flags, mut scales) = (Vec::new(), Vec::new());
    for (step, step_grads) in grads.iter().enumerate() {
        if !scaled && step == 1 {
            continue;
        }
        optimizer.zero_grad();
        let loss = parameters
            .iter()
            .zip(step_grads)
            .map(|(p, g)| (&p.tensor * g).sum(Kind::Float))
            .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
        match &numerics.scaler {
            Some(scaler) => scaler.scale_loss(&loss).backward(),
            None => loss.backward(),
        }
        if let Some(flag) = numerics.optimizer_step(&parameters, optimizer.as_mut(), LR) {
            flags.push(flag.double_value(&[]));
        }
        if let Some(scaler) = &numerics.scaler {
            scales.push(scaler.scale());
        }
    }
    Run {
        parameters: parameters.iter().map(|p| p.tensor.detach()).collect(),
        flags,
        scales,
    }
}

fn worst(a: &Run, b: &Run) -> f64 {
    a.parameters
        .iter()
        .zip(&b.parameters)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0.0, f64::max)
}

#[test]
fn an_overflowing_step_is_skipped_and_a_finite_one_is_the_unscaled_step() {
    let start = [
        Tensor::randn([16, 8], tch::kind::FLOAT_CPU),
        Tensor::randn([300, 64], tch::kind::FLOAT_CPU),
    ];
    let grads: Vec<Vec<Tensor>> = (0..3)
        .map(|_| start.iter().map(|t| Tensor::randn_like(t) * 0.1).collect())
        .collect();
    let _ = grads[1][1].narrow(0, 7, 1).fill_(f64::INFINITY);

    let plain = run(&start, &grads, false, false);
    let per_tensor = run(&start, &grads, false, true);
    let fused = run(&start, &grads, true, true);
    for scaled in [&per_tensor, &fused] {
        assert_eq!(scaled.flags, [0.0, 1.0, 0.0]);
        assert_eq!(scaled.scales, [65536.0, 32768.0, 32768.0]);
    }
    // The scale is a power of two, so scaling and unscaling are exact: the per-tensor update
    // (flag read on the host) is bit for bit the plain run without the overflowing step.
    assert_eq!(worst(&plain, &per_tensor), 0.0);
    // The fused update skips on the device and takes its lr from a tensor, rounding lr * update
    // once more than `p - lr * update`: a few float32 ulps of the largest parameter.
    let largest = plain
        .parameters
        .iter()
        .map(|p| p.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let relative = worst(&plain, &fused) / largest;
    assert!(relative < 1e-6, "fused against plain: relative difference {relative}");
}
