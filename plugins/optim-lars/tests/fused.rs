//! The fused LARS update against the per-tensor one: on a CPU both run the same kernels on the
//! same values (the flat buffers only change how many launches there are), so they agree bit
//! for bit.

use byol::OptimizerSpec;
use byol_testkit::optimizer::fused_against_per_tensor;
use optim_lars::LarsConfig;

#[test]
fn fused_lars_equals_the_per_tensor_update() {
    for momentum in [0.9, 0.0] {
        let difference = fused_against_per_tensor(|parameters, fused| {
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
        });
        assert_eq!(difference, 0.0, "momentum {momentum}");
    }
}
