//! The fused SGD update against the per-tensor one: on a CPU both run the same kernels on the
//! same values, so they agree bit for bit.

use byol::{NamedParameter, Optimizer, OptimizerSpec};
use byol_testkit::optimizer::{fused_against_per_tensor, skipped_steps_change_nothing};
use optim_sgd::SgdConfig;

fn sgd(parameters: Vec<NamedParameter>, config: SgdConfig) -> Box<dyn Optimizer> {
    config
        .build(parameters, &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap()
}

#[test]
fn fused_sgd_equals_the_per_tensor_update() {
    for (momentum, nesterov) in [(0.9, false), (0.9, true), (0.0, false)] {
        let difference = fused_against_per_tensor(|parameters, fused| {
            let config = SgdConfig {
                momentum,
                nesterov,
                fused,
                ..Default::default()
            };
            sgd(parameters, config)
        });
        assert_eq!(difference, 0.0, "momentum {momentum}, nesterov {nesterov}");
    }
}

/// A step skipped on the device's flag (fp16's overflow) changes neither the parameters nor
/// the momentum, bit for bit.
#[test]
fn fused_sgd_skips_a_flagged_step_exactly() {
    for (momentum, nesterov) in [(0.9, false), (0.9, true), (0.0, false)] {
        let difference = skipped_steps_change_nothing(|parameters| {
            let config = SgdConfig {
                momentum,
                nesterov,
                weight_decay: 1e-4,
                ..Default::default()
            };
            sgd(parameters, config)
        });
        assert_eq!(difference, 0.0, "momentum {momentum}, nesterov {nesterov}");
    }
}
