//! The synchronization counter on a machine without a CUDA device: host work never counts,
//! and a counter restores libtorch's warning handler when dropped, so another can start.

use tch::{Kind, Tensor};
use torch_ext::cuda_sync::SyncCounter;

#[test]
fn cpu_work_counts_no_synchronization_and_counters_nest_in_turn() {
    for _ in 0..2 {
        let counter = SyncCounter::start().expect("built with the CUDA headers by `cargo xtask setup`");
        let x = Tensor::randn([64, 64], (Kind::Float, tch::Device::Cpu));
        let total = x.matmul(&x).sum(Kind::Float).double_value(&[]);
        assert!(total.is_finite());
        assert_eq!(counter.count(), 0);
    }
}
