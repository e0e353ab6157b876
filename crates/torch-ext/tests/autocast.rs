//! bf16 autocast on the CPU against `torch.autocast("cpu", dtype=torch.bfloat16)` in the venv,
//! and channels_last against `contiguous(memory_format=torch.channels_last)`.

use byol_testkit::{max_abs_diff, run_python};
use tch::{Device, Kind, Tensor};
use torch_ext::autocast::{autocast, state};

#[test]
fn bf16_autocast_matches_pytorch_and_restores_the_previous_state() {
    // One thread, as the Python side: the kernels split their sums alike.
    tch::set_num_threads(1);
    let x = Tensor::randn([4, 3, 9, 9], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([5, 3, 3, 3], (Kind::Float, Device::Cpu));
    let l = Tensor::randn([7, 5], (Kind::Float, Device::Cpu));
    assert!(!state(Device::Cpu).0);
    let (conv, linear, sum) = autocast(Device::Cpu, Kind::BFloat16, true, || {
        assert_eq!(state(Device::Cpu), (true, Kind::BFloat16));
        let conv = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).relu();
        let pooled = conv.mean_dim([2i64, 3].as_slice(), false, None);
        let linear = pooled.linear(&l, None::<Tensor>);
        // Reductions such as sum run in fp32 under autocast.
        let sum = linear.sum(Kind::Float);
        (conv, linear, sum)
    });
    assert!(!state(Device::Cpu).0, "autocast is off again afterwards");
    assert_eq!(conv.kind(), Kind::BFloat16);
    assert_eq!(linear.kind(), Kind::BFloat16);

    let reference = run_python(
        "with torch.autocast('cpu', dtype=torch.bfloat16):\n\
         \x20   conv = torch.nn.functional.conv2d(inputs['x'], inputs['w'], padding=1).relu()\n\
         \x20   linear = torch.nn.functional.linear(conv.mean((2, 3)), inputs['l'])\n\
         outputs = {'conv': conv.float(), 'linear': linear.float(), 'dtype': torch.tensor(conv.dtype == torch.bfloat16)}\n",
        &[("x", &x), ("w", &w), ("l", &l)],
    );
    assert_eq!(reference["dtype"].int64_value(&[]), 1);
    // Same libtorch, same kernels: each value at most one bf16 rounding from PyTorch's, elementwise
    // (8 significant bits: one unit in the last place is at most 2^-7 of the value), plus 2^-15 of
    // the largest value for values near zero, where terms cancel and another order of the sum
    // would no longer be small against the value.
    for (name, ours) in [("conv", &conv), ("linear", &linear)] {
        let theirs = &reference[name];
        let floor = theirs.abs().max().double_value(&[]) * 2f64.powi(-15);
        let excess = (ours.to_kind(Kind::Float) - theirs).abs() - theirs.abs() * 2f64.powi(-7) - floor;
        let worst = excess.max().double_value(&[]);
        assert!(
            worst <= 0.0,
            "{name} is more than one bf16 rounding from PyTorch's (by {worst:e})"
        );
    }
    assert!(sum.double_value(&[]).is_finite());
}

#[test]
fn autocast_nests_and_disabled_runs_in_fp32() {
    let a = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
    let out = autocast(Device::Cpu, Kind::BFloat16, false, || a.matmul(&a));
    assert_eq!(out.kind(), Kind::Float);
    let (inner, outer) = autocast(Device::Cpu, Kind::BFloat16, true, || {
        let inner = autocast(Device::Cpu, Kind::BFloat16, true, || a.matmul(&a));
        assert_eq!(
            state(Device::Cpu),
            (true, Kind::BFloat16),
            "the outer region is still on"
        );
        (inner, a.matmul(&a))
    });
    assert_eq!((inner.kind(), outer.kind()), (Kind::BFloat16, Kind::BFloat16));
    assert!(!state(Device::Cpu).0);
}

#[test]
fn channels_last_matches_pytorch_strides_and_values() {
    let x = Tensor::randn([2, 3, 4, 5], (Kind::Float, Device::Cpu));
    let y = torch_ext::channels_last(&x).unwrap();
    assert!(torch_ext::is_channels_last(&y));
    assert!(!torch_ext::is_channels_last(&x));
    assert_eq!(
        y.stride(),
        vec![60, 1, 15, 3],
        "NHWC strides as torch.channels_last gives"
    );
    assert_eq!(max_abs_diff(&x, &y), 0.0);
}

#[test]
fn cuda_memory_statistics_fail_cleanly_without_cuda() {
    if tch::Cuda::is_available() {
        let stats = torch_ext::memory::cuda_memory(0).unwrap();
        assert!(stats.peak_allocated >= stats.allocated);
    } else {
        assert!(torch_ext::memory::cuda_memory(0).is_err());
    }
}
