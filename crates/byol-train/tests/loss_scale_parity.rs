//! The loss scale against `torch.amp.GradScaler` (the venv's, on the CPU, its defaults): the same
//! gradients, step after step, Infs and NaNs among them at places drawn from a seed of each
//! run's own (`LOSS_SCALE_SEED` replays one), give the same scale after every update and the
//! same unscaled gradients, bit for bit (both divide by a power of two). The scale halves at
//! every overflow, and the run is long enough for it to double after 2000 finite steps in a row.

use byol_testkit::{fresh_seed, run_python};
use byol_train::loss_scale::LossScaler;
use byol_train::NamedParameter;
use tch::{Device, Kind, Tensor};

/// Past the last overflow (before step 4100) by more than 2000 steps: the scale grows after it
/// whatever the draw.
const STEPS: i64 = 6200;
/// Two parameters, of 3 and 2 values: each step's gradients are one row of 5.
const SIZES: [i64; 2] = [3, 2];

const GRAD_SCALER: &str = r#"
params = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
optimizer = torch.optim.SGD(params, lr=0.0)
scaler = torch.amp.GradScaler("cpu")
scales, unscaled = [], []
for row in inputs["grads"]:
    scaler.scale(torch.zeros(()))  # as a loss would be scaled; the scale starts here
    params[0].grad, params[1].grad = row[:3].clone(), row[3:].clone()
    scaler.unscale_(optimizer)
    unscaled.append(torch.cat([params[0].grad, params[1].grad]))
    scaler.step(optimizer)
    scaler.update()
    scales.append(scaler.get_scale())
outputs["scales"] = torch.tensor(scales, dtype=torch.float64)
outputs["unscaled"] = torch.stack(unscaled)
"#;

#[test]
fn the_loss_scale_follows_torch_amp_grad_scaler_step_by_step() {
    let seed = fresh_seed("LOSS_SCALE_SEED");
    let replay = format!("seed {seed} (LOSS_SCALE_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let grads = Tensor::randn([STEPS, SIZES.iter().sum()], (Kind::Float, Device::Cpu)) * 1000.0;
    // Overflows: a few in the first 1500 steps, and one at a random step after 2100 (where the
    // scale may have grown); each an Inf or a NaN in a random entry.
    let mut overflows: Vec<i64> = (0..4).map(|_| i64::from(rand_below(1500))).collect();
    overflows.push(2100 + i64::from(rand_below(2000)));
    for &step in &overflows {
        let entry = i64::from(rand_below(5));
        let value = if rand_below(2) == 0 { f64::INFINITY } else { f64::NAN };
        let _ = grads.get(step).get(entry).fill_(value);
    }
    let reference = run_python(GRAD_SCALER, &[("grads", &grads)]);

    let parameters: Vec<NamedParameter> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let tensor = Tensor::zeros([n], (Kind::Float, Device::Cpu)).set_requires_grad(true);
            tensor.sum(Kind::Float).backward(); // a gradient to overwrite
            NamedParameter {
                name: format!("p{i}"),
                tensor,
            }
        })
        .collect();
    let mut scales = Vec::new();
    let mut unscaled = Vec::new();
    let scaler = LossScaler::new(Device::Cpu);
    for step in 0..STEPS {
        let row = grads.get(step);
        tch::no_grad(|| {
            parameters[0].tensor.grad().copy_(&row.narrow(0, 0, SIZES[0]));
            parameters[1].tensor.grad().copy_(&row.narrow(0, SIZES[0], SIZES[1]));
        });
        let _ = scaler.unscale(&parameters);
        unscaled.push(Tensor::cat(
            &[parameters[0].tensor.grad(), parameters[1].tensor.grad()],
            0,
        ));
        scaler.update();
        scales.push(scaler.scale());
    }
    let theirs: Vec<f64> = Vec::try_from(&reference["scales"]).unwrap();
    let first_difference = scales.iter().zip(&theirs).position(|(a, b)| a != b);
    assert!(
        first_difference.is_none() && scales.len() == theirs.len(),
        "{replay}: the scale after step {first_difference:?} is ours {:?}, GradScaler's {:?} (overflows at {overflows:?})",
        first_difference.map(|i| scales[i]),
        first_difference.map(|i| theirs[i]),
    );
    assert!(
        scales.windows(2).any(|pair| pair[1] > pair[0]),
        "{replay}: the scale never grew (overflows at {overflows:?})"
    );
    // Bit for bit, NaN where GradScaler left one: compared as bits.
    let ours = Tensor::stack(&unscaled, 0);
    let same = ours
        .view_dtype(Kind::Int)
        .eq_tensor(&reference["unscaled"].view_dtype(Kind::Int));
    assert!(
        bool::try_from(same.all()).unwrap(),
        "{replay}: the unscaled gradients differ from GradScaler's at {} entries",
        same.logical_not().sum(Kind::Int64).int64_value(&[])
    );
}

/// A draw in `0..n` from libtorch's generator (seeded by the test).
fn rand_below(n: i32) -> i32 {
    Tensor::randint(i64::from(n), [1], (Kind::Int, Device::Cpu)).int64_value(&[0]) as i32
}
