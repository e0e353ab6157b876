//! The fused optimizer update against the per-tensor one, on the same parameters and gradients.

use byol::{NamedParameter, Optimizer};
use tch::{Kind, Tensor};

/// Parameters that cover what the fused update must handle: a channels_last conv weight,
/// biases and norm weights (1-D: no decay, no adaptation), a matrix, a weight of zeros whose
/// first gradient is zero too (LARS's norms 0), a matrix larger than a CPU bucket of the fused
/// update, and one that never gets a gradient (left alone).
fn parameters() -> Vec<NamedParameter> {
    let conv = torch_ext::channels_last(&Tensor::randn([8, 4, 3, 3], tch::kind::FLOAT_CPU)).unwrap();
    let tensors = [
        ("conv.weight", conv),
        ("bn.weight", Tensor::randn([8], tch::kind::FLOAT_CPU)),
        ("bn.bias", Tensor::randn([8], tch::kind::FLOAT_CPU)),
        ("fc.weight", Tensor::randn([10, 8], tch::kind::FLOAT_CPU)),
        ("fc.bias", Tensor::randn([10], tch::kind::FLOAT_CPU)),
        ("zero.weight", Tensor::zeros([6, 5], tch::kind::FLOAT_CPU)),
        // Larger than a CPU bucket of the fused update: the parameters span several.
        ("big.weight", Tensor::randn([300, 256], tch::kind::FLOAT_CPU)),
        ("frozen_input.weight", Tensor::randn([3, 3], tch::kind::FLOAT_CPU)),
    ];
    tensors
        .into_iter()
        .map(|(name, t)| NamedParameter {
            name: name.into(),
            tensor: t.set_requires_grad(true),
        })
        .collect()
}

/// Fresh trainable copies of `originals`: same names and values, their own storage.
fn trainable_copies(originals: &[NamedParameter]) -> Vec<NamedParameter> {
    originals
        .iter()
        .map(|p| NamedParameter {
            name: p.name.clone(),
            tensor: p.tensor.detach().copy().set_requires_grad(true),
        })
        .collect()
}

/// Small random gradients for `originals`, one set per step.
fn gradients(originals: &[NamedParameter], steps: usize) -> Vec<Vec<Tensor>> {
    (0..steps)
        .map(|_| originals.iter().map(|p| Tensor::randn_like(&p.tensor) * 0.1).collect())
        .collect()
}

/// Gives `handles` the gradients `grads` through autograd (`p.grad += g`). The last parameter
/// takes no part in the loss: its gradient stays zero.
fn backward(handles: &[Tensor], grads: &[Tensor]) {
    for (p, g) in handles[..handles.len() - 1].iter().zip(grads) {
        (p * g).sum(Kind::Float).backward();
    }
}

/// A run's parameters and its optimizer's state.
type Run = (Vec<Tensor>, Vec<(String, Tensor)>);

/// The largest absolute difference between two runs' parameters and optimizer state.
fn largest_difference(a: &Run, b: &Run) -> f64 {
    let parameters = a.0.iter().zip(&b.0);
    let state = a.1.iter().zip(&b.1).map(|((_, a), (_, b))| (a, b));
    parameters
        .chain(state)
        .map(|(a, b)| crate::max_abs_diff(a, b))
        .fold(0.0, f64::max)
}

/// Runs four steps (changing lr) with `build(parameters, fused)` for fused = false and true on
/// identical copies of the same parameters and gradients, and returns the largest absolute
/// difference between the two runs' parameters and momentum state. Before the third step the
/// fused run's first gradient is replaced by a fresh tensor, as code that assigns `.grad` would:
/// the fused update must notice and take it.
pub fn fused_against_per_tensor(build: impl Fn(Vec<NamedParameter>, bool) -> Box<dyn Optimizer>) -> f64 {
    let originals = parameters();
    let lrs = [0.5, 1.0, 0.25, 2.0];
    let mut grads = gradients(&originals, lrs.len());
    let _ = grads[0][5].zero_();
    let mut runs = Vec::new();
    for fused in [false, true] {
        let parameters = trainable_copies(&originals);
        let handles: Vec<Tensor> = parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
        let mut optimizer = build(parameters, fused);
        for (step, lr) in lrs.iter().enumerate() {
            optimizer.zero_grad();
            if fused && step == 2 {
                torch_ext::foreach::set_grad(&handles[0], &handles[0].zeros_like()).unwrap();
            }
            backward(&handles, &grads[step]);
            optimizer.step(*lr);
            if fused {
                assert_slots_aligned(&handles);
            }
        }
        if fused {
            let untouched = &handles[handles.len() - 1];
            assert_eq!(
                crate::max_abs_diff(untouched, &originals[originals.len() - 1].tensor),
                0.0
            );
        }
        runs.push((handles, optimizer.state()));
    }
    let (per_tensor, fused) = (&runs[0], &runs[1]);
    assert_eq!(per_tensor.1.len(), fused.1.len(), "the same state entries");
    for ((name_a, _), (name_b, _)) in per_tensor.1.iter().zip(&fused.1) {
        assert_eq!(name_a, name_b, "state entries in the same order, by the same names");
    }
    largest_difference(per_tensor, fused)
}

/// Panics unless every gradient of `handles` (those that have one) starts where libtorch would
/// place a tensor of its own ([`byol::flat_layout`]): the fused update's flat buffer must not
/// change how kernels see them.
fn assert_slots_aligned(handles: &[Tensor]) {
    for (i, p) in handles.iter().enumerate() {
        let grad = p.grad();
        if !grad.defined() {
            continue;
        }
        let address = grad.data_ptr() as usize;
        assert_eq!(
            address % byol::flat_layout::SLOT_ALIGNMENT,
            0,
            "the gradient of parameter {i} starts at {address:#x}"
        );
    }
}

/// Runs four steps (changing lr) with `build(parameters)` twice on identical parameters and
/// gradients, once with the lr as a number (`step`) and once read from a 0-d tensor (`step_at`,
/// what a CUDA graph replays), and returns the largest difference between the two runs'
/// parameters relative to the largest parameter. The two differ only in rounding: `p - lr*u`
/// rounded once against `lr*u` rounded first.
pub fn tensor_lr_against_number_lr(build: impl Fn(Vec<NamedParameter>) -> Box<dyn Optimizer>) -> f64 {
    let originals = parameters();
    let lrs = [0.5, 1.0, 0.25, 2.0];
    let grads = gradients(&originals, lrs.len());
    let mut runs = Vec::new();
    for from_tensor in [false, true] {
        let parameters = trainable_copies(&originals);
        let handles: Vec<Tensor> = parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
        let mut optimizer = build(parameters);
        for (step, lr) in lrs.iter().enumerate() {
            optimizer.zero_grad();
            backward(&handles, &grads[step]);
            if from_tensor {
                optimizer.step_at(&Tensor::from(*lr as f32), None).unwrap();
            } else {
                optimizer.step(*lr);
            }
        }
        runs.push(handles);
    }
    let scale = runs[0]
        .iter()
        .map(|p| p.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    let worst = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(a, b)| crate::max_abs_diff(a, b))
        .fold(0.0, f64::max);
    worst / scale
}

/// Runs four steps (changing lr, the lr read from a tensor) with `build(parameters)` twice on
/// identical parameters and gradients: once plainly, once with the skip flag at every step (0)
/// and with two extra steps whose gradients hold an Inf and a NaN and whose flag is 1, as fp16's
/// loss scale raises it. Returns the largest difference between the two runs' parameters and
/// optimizer state: a skipped step must change nothing, so 0.
pub fn skipped_steps_change_nothing(build: impl Fn(Vec<NamedParameter>) -> Box<dyn Optimizer>) -> f64 {
    let originals = parameters();
    let lrs = [0.5, 1.0, 0.25, 2.0];
    let grads = gradients(&originals, lrs.len());
    let mut runs = Vec::new();
    for with_skips in [false, true] {
        let parameters = trainable_copies(&originals);
        let handles: Vec<Tensor> = parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
        let mut optimizer = build(parameters);
        let step_with = |optimizer: &mut Box<dyn Optimizer>, grads: &[Tensor], lr: f64, skip: Option<f32>| {
            optimizer.zero_grad();
            backward(&handles, grads);
            let skip = skip.map(Tensor::from);
            optimizer.step_at(&Tensor::from(lr as f32), skip.as_ref()).unwrap();
        };
        for (step, lr) in lrs.iter().enumerate() {
            if with_skips && (step == 1 || step == 3) {
                let poison = if step == 1 { f64::INFINITY } else { f64::NAN };
                let overflowed: Vec<Tensor> = grads[step].iter().map(Tensor::copy).collect();
                let _ = overflowed[3].narrow(0, 0, 1).fill_(poison);
                step_with(&mut optimizer, &overflowed, 4.0, Some(1.0));
            }
            step_with(&mut optimizer, &grads[step], *lr, with_skips.then_some(0.0));
        }
        runs.push((handles, optimizer.state()));
    }
    largest_difference(&runs[0], &runs[1])
}
