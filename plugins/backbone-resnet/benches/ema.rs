//! The target EMA of a ResNet-50 BYOL (backbone + projector): the fused flat-buffer update that
//! `Byol::update_target` does, against the per-tensor loop it replaces, on the same machine in
//! the same run. `cargo xtask cargo bench -p backbone-resnet --bench ema [-- cuda]`

use std::time::Instant;

use backbone_resnet::ResNet50;
use byol::{Byol, ByolConfig};
use tch::{nn::VarStore, Device};

fn median_ms(mut f: impl FnMut(), device: Device, iterations: usize) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<f64> = (0..iterations)
        .map(|_| {
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            let start = Instant::now();
            f();
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let device = if std::env::args().any(|a| a == "cuda") {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let vs = VarStore::new(device);
    let byol = Byol::new(&vs, &ResNet50::default(), 224, "avgpool", &ByolConfig::default()).unwrap();
    let variables = vs.variables();
    let mut pairs: Vec<(tch::Tensor, tch::Tensor)> = variables
        .iter()
        .filter(|(name, t)| name.starts_with("online.") && t.requires_grad() && !name.contains("predictor"))
        .map(|(name, t)| {
            (
                variables[&name.replacen("online.", "target.", 1)].shallow_clone(),
                t.shallow_clone(),
            )
        })
        .collect();
    let parameters: i64 = pairs.iter().map(|(t, _)| t.numel() as i64).sum();
    let fused = median_ms(|| byol.update_target_with_tau(0.996), device, 20);
    let looped = median_ms(
        || {
            tch::no_grad(|| {
                for (target, online) in pairs.iter_mut() {
                    let _ = target.lerp_(online, 0.004);
                }
            })
        },
        device,
        20,
    );
    println!(
        "EMA of ResNet-50 backbone+projector ({} tensors, {:.1} M parameters) on {device:?}: \
         fused {fused:.2} ms, per-tensor loop {looped:.2} ms, ratio loop/fused {:.2}",
        pairs.len(),
        parameters as f64 / 1e6,
        looped / fused
    );
}
