//! The fused Adam update (PyTorch's kernel) as a step that never waits for the device needs it:
//! the learning rate read from a tensor, and a step skipped on the device's flag (fp16's
//! overflow) that changes nothing. Its values against PyTorch are in parity.rs.

use byol::{NamedParameter, Optimizer, OptimizerSpec};
use byol_testkit::optimizer::{skipped_steps_change_nothing, tensor_lr_against_number_lr};
use optim_adam::{AdamConfig, AdamWConfig};

/// Adam with L2 decay, or AdamW, with a weight decay large enough to matter in four steps.
fn adam(parameters: Vec<NamedParameter>, decoupled: bool, fused: bool) -> Box<dyn Optimizer> {
    let context = byol::BuildContext::new(tch::Device::Cpu, 32);
    let spec: Box<dyn OptimizerSpec> = if decoupled {
        Box::new(AdamWConfig {
            weight_decay: 0.1,
            fused,
            ..Default::default()
        })
    } else {
        Box::new(AdamConfig {
            weight_decay: 1e-2,
            fused,
            ..Default::default()
        })
    };
    spec.build(parameters, &context).unwrap()
}

/// On a CPU the kernel reads the lr tensor's value as the number it would have been given (the
/// test's lrs are exact in float32), so the two runs agree bit for bit.
#[test]
fn fused_adam_takes_its_lr_from_a_tensor() {
    for decoupled in [false, true] {
        let relative = tensor_lr_against_number_lr(|parameters| adam(parameters, decoupled, true));
        assert_eq!(relative, 0.0, "decoupled: {decoupled}");
    }
}

/// Neither the parameters, the averages nor the step count move on a flagged step, so the bias
/// corrections of the steps after it are those of a run that never saw it.
#[test]
fn fused_adam_skips_a_flagged_step_exactly() {
    for decoupled in [false, true] {
        let difference = skipped_steps_change_nothing(|parameters| adam(parameters, decoupled, true));
        assert_eq!(difference, 0.0, "decoupled: {decoupled}");
    }
}

#[test]
fn the_per_tensor_update_says_it_cannot_take_a_tensor_lr() {
    let mut optimizer = adam(Vec::new(), false, false);
    let error = optimizer.step_at(&tch::Tensor::from(0.1f32), None).unwrap_err();
    assert!(error.contains("fused = true"), "{error}");
}

/// A checkpoint's step count is a float64 on the CPU from the per-tensor update and a float32 on
/// the parameters' device from the fused one: each resumes from the other's.
#[test]
fn either_update_resumes_from_the_others_step_count() {
    let parameter = || {
        vec![NamedParameter {
            name: "w".into(),
            tensor: tch::Tensor::ones([3], tch::kind::FLOAT_CPU).set_requires_grad(true),
        }]
    };
    for (from, to) in [(true, false), (false, true)] {
        let parameters = parameter();
        let handle = parameters[0].tensor.shallow_clone();
        let mut saved = adam(parameters, false, from);
        for _ in 0..3 {
            saved.zero_grad();
            (&handle * 2.0).sum(tch::Kind::Float).backward();
            saved.step(0.1);
        }
        let mut resumed = adam(parameter(), false, to);
        resumed.load_state(&saved.state()).unwrap();
        let state = resumed.state();
        let (_, step) = state.iter().find(|(k, _)| k == "step").unwrap();
        assert_eq!(step.double_value(&[0]), 3.0, "fused {from} -> fused {to}");
    }
}

/// zero_grad sets each gradient to None, as torch.optim does by default: no kernel per tensor,
/// and the next backward writes the gradient afresh.
#[test]
fn zero_grad_sets_the_gradients_to_none() {
    for fused in [true, false] {
        let weight = tch::Tensor::ones([3], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let parameters = vec![NamedParameter {
            name: "w".into(),
            tensor: weight.shallow_clone(),
        }];
        let mut optimizer = adam(parameters, false, fused);
        (&weight * 2.0).sum(tch::Kind::Float).backward();
        optimizer.step(0.1);
        assert!(weight.grad().defined());
        optimizer.zero_grad();
        assert!(!weight.grad().defined(), "fused: {fused}");
        (&weight * 3.0).sum(tch::Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(weight.grad()).unwrap(), [3.0; 3], "fused: {fused}");
    }
}
