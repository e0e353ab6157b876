//! The fused LARS update against the per-tensor one: on a CPU both run the same kernels on the
//! same values (the flat buffers only change how many launches there are), so they agree bit
//! for bit.

use byol::{NamedParameter, Optimizer, OptimizerSpec};
use byol_testkit::optimizer::{fused_against_per_tensor, skipped_steps_change_nothing, tensor_lr_against_number_lr};
use optim_lars::LarsConfig;

/// LARS with a weight decay and trust coefficient large enough to matter in four steps.
fn lars(parameters: Vec<NamedParameter>, momentum: f64, fused: bool) -> Box<dyn Optimizer> {
    let config = LarsConfig {
        weight_decay: 1e-3,
        trust_coefficient: 0.02,
        momentum,
        fused,
        ..Default::default()
    };
    config
        .build(parameters, &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap()
}

#[test]
fn fused_lars_equals_the_per_tensor_update() {
    for momentum in [0.9, 0.0] {
        let difference = fused_against_per_tensor(|parameters, fused| lars(parameters, momentum, fused));
        assert_eq!(difference, 0.0, "momentum {momentum}");
    }
}

/// The lr read from a tensor (a CUDA graph's replay) against the lr as a number: they differ
/// by the rounding of lr * update, a few float32 ulps of the largest parameter after four steps.
#[test]
fn fused_lars_takes_its_lr_from_a_tensor() {
    let relative = tensor_lr_against_number_lr(|parameters| lars(parameters, 0.9, true));
    assert!(relative < 1e-6, "relative difference {relative}");
}

/// A step skipped on the device's flag (fp16's overflow) changes neither the parameters nor
/// the momentum, bit for bit, with and without momentum.
#[test]
fn fused_lars_skips_a_flagged_step_exactly() {
    for momentum in [0.9, 0.0] {
        let difference = skipped_steps_change_nothing(|parameters| lars(parameters, momentum, true));
        assert_eq!(difference, 0.0, "momentum {momentum}");
    }
}

#[test]
fn the_per_tensor_update_says_it_cannot_take_a_tensor_lr() {
    let config = LarsConfig {
        fused: false,
        ..Default::default()
    };
    let mut optimizer = config
        .build(Vec::new(), &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap();
    let error = optimizer.step_at(&tch::Tensor::from(0.1f32), None).unwrap_err();
    assert!(error.contains("fused = true"), "{error}");
}
