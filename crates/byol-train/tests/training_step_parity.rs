//! The runner's whole training step against a PyTorch training step written from the paper. The
//! real `Trainer` (experiment file, learning-rate plan with warmup and cosine, gradient
//! accumulation, LARS with its exclusions, the target's tau schedule) runs every step of a short
//! run; PyTorch takes each of those steps from the state ours started it from (weights,
//! batch-norm statistics, target, momentum), on the same views, with the plan recomputed from
//! the experiment's numbers alone. A wrong lr or tau at one step, a gradient kept across steps,
//! micro-batches weighted wrongly or a parameter decayed that the paper excludes each show in
//! that step's state. In fp32, and in bf16 against `torch.autocast`; with the fused LARS update
//! (over flat buffers) and, in fp32, the per-tensor one.
//!
//! Why each step starts from our state: a trajectory is chaotic at this scale (batch norm over 8
//! images), and float32 rounding grows by orders of magnitude in eight steps, so a tolerance on
//! the trajectory would have to be loose enough to hide a real error. One step from identical
//! state differs only by rounding: both sides run the same libtorch kernels on one thread, and
//! what differs is the order of a few sums (the micro-batches' losses, LARS's norms over flat
//! buffers). See `STEP_TOLERANCE` for the bound, and why it is relative to the step's change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use byol::{Augment, BuildContext};
use byol_testkit::fixtures::tiny_experiment;
use byol_testkit::{fresh_seed, max_abs_diff, run_python};
use byol_train::train::Trainer;
use byol_train::Experiment;
use tch::{Device, Tensor};

const STEPS_PER_EPOCH: u64 = 4;
const EPOCHS: u64 = 2;
const ACCUMULATE: usize = 2;
/// The backbone's base width: every channel count a multiple of 16, so no convolution takes the
/// CPU's narrow-channel path (`byol::nn::pointwise_conv2d`), whose weight is a view that bf16
/// autocast does not cache as PyTorch caches a model's weights.
const WIDTH: i64 = 16;

/// How far a tensor after one step may differ from PyTorch's: `ROUNDING` of its largest entry
/// plus `STEP_TOLERANCE` of the most it changed in the step. Two terms, because an error in the
/// update is proportional to the update, which is small beside the tensor (a weight moves by
/// about 0.5% of its norm, the target by 1 - tau of its distance to the online network), and a
/// bound on the tensor alone would let a wrong tau or lr through late in the run.
///
/// Rounding: each entry after the step is a few float32 operations on values no larger than the
/// tensor's, each rounding to half an ulp (6e-8 relative); the bound is 16 ulps. The update: both
/// sides run the same kernels and differ in the order of sums, and libtorch sums n float32 terms
/// exact to about log2(n) * 6e-8 of their magnitude, 1e-6 for the largest tensor here (147,456
/// entries); LARS's direction, `eta * |w| / |d|` times `d`, carries a norm's error whole. bf16
/// adds nothing: both sides cast the same float32 values with the same autocast policy. Measured
/// over 10 runs of both tests (fresh seeds), beyond the update's term: at most 1.2e-7 of the
/// largest entry. What the bound exists to catch is far above it: the lr of a neighbouring step (25% apart
/// in the warmup), a momentum off by 1e-4 of its direction, a target EMA with 1 - tau off by 1%.
const STEP_TOLERANCE: f64 = 1e-5;
const ROUNDING: f64 = 1e-6;

const REFERENCE: &str = r#"
import contextlib, math

online = Online(EMB, HIDDEN, PROJ)
target = target_of(online)
online.train(); target.train()

def byol_loss(v1, v2):
    # bf16: the forward under autocast (what it casts, and to what, is libtorch's policy).
    with torch.autocast("cpu", dtype=torch.bfloat16) if BF16 else contextlib.nullcontext():
        p1 = online.predictor(online.projector(online.backbone(v1)))
        p2 = online.predictor(online.projector(online.backbone(v2)))
        with torch.no_grad():
            t1 = target.projector(target.backbone(v1)); t2 = target.projector(target.backbone(v2))
        return (regression(p1, t2).mean() + regression(p2, t1).mean()).float()

# The plan, from the experiment's numbers: lr = base lr x batch / 256, linear warmup reaching it
# at the end of warmup, cosine to the final fraction; tau from tau_base to 1 by a cosine.
total = EPOCHS * STEPS_PER_EPOCH
warmup = WARMUP_EPOCHS * STEPS_PER_EPOCH
peak = BASE_LR * BATCH / 256
def lr_at(k):
    if k < warmup:
        return peak * (k + 1) / warmup
    floor = peak * FINAL_FRACTION
    return floor + (peak - floor) * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2
def tau_at(k):
    return 1 - (1 - TAU_BASE) * (math.cos(math.pi * k / total) + 1) / 2

# LARS as in BYOL's reference implementation: biases and batch-norm parameters get neither
# weight decay nor the trust ratio.
def lars_step(params, momentum, lr):
    with torch.no_grad():
        for n, p in params.items():
            d = p.grad.clone()
            if p.ndim > 1:
                d = d + WEIGHT_DECAY * p
                pn, dn = torch.norm(p), torch.norm(d)
                d = d * torch.where((pn > 0) & (dn > 0), TRUST * pn / dn, torch.ones_like(pn))
            momentum[n] = 0.9 * momentum[n] + d
            p.sub_(lr * momentum[n])

for k in range(total):
    load(online, f"{k}.online.")
    load(target, f"{k}.target.", trainable=False)
    params = {"online." + n: p for n, p in online.named_parameters()}
    momentum = {n: inputs[f"{k}.momentum.{n}"].clone() for n in params}
    loss = torch.zeros(())
    for m in range(ACCUMULATE):
        micro = byol_loss(inputs[f"{k}.{m}.view1"], inputs[f"{k}.{m}.view2"]) / ACCUMULATE
        micro.backward()
        loss += micro.detach()
    lars_step(params, momentum, lr_at(k))
    tau = tau_at(k)
    with torch.no_grad():
        for n, t in target.named_parameters():
            t.mul_(tau).add_(params["online." + n], alpha=1 - tau)
    outputs[f"{k}.loss"] = loss.reshape(1)
    outputs[f"{k}.lr"] = torch.tensor([lr_at(k)], dtype=torch.float64)
    outputs[f"{k}.tau"] = torch.tensor([tau], dtype=torch.float64)
    for side, module in (("online", online), ("target", target)):
        for n, t in module.state_dict().items():
            outputs[f"{k}.after.{side}.{n}"] = t
    for n, t in momentum.items():
        outputs[f"{k}.after.momentum.{n}"] = t
"#;

/// The run's augmentation, keeping a copy of every pair of views it makes.
#[derive(Debug)]
struct RecordingAugment {
    inner: Box<dyn Augment>,
    views: Arc<Mutex<Vec<(Tensor, Tensor)>>>,
}

impl Augment for RecordingAugment {
    fn two_views(&self, images: &Tensor) -> (Tensor, Tensor) {
        let (v1, v2) = self.inner.two_views(images);
        self.views.lock().unwrap().push((v1.copy(), v2.copy()));
        (v1, v2)
    }

    fn eval_view(&self, images: &Tensor) -> Tensor {
        self.inner.eval_view(images)
    }
}

/// Everything a step starts from, by the names the reference reads: the variables
/// (`online.*`, `target.*`) and the optimizer's momentum (`momentum.online.*`).
fn state(trainer: &Trainer) -> Vec<(String, Tensor)> {
    let variables = trainer.model.vs.variables().into_iter();
    variables
        .chain(trainer.optimizer.state())
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

#[test]
fn each_fp32_step_of_the_trainer_matches_a_pytorch_training_step() {
    check_steps_against_pytorch("fp32", true);
}

#[test]
fn each_bf16_step_of_the_trainer_matches_a_pytorch_autocast_training_step() {
    check_steps_against_pytorch("bf16", true);
}

/// The per-tensor LARS (`optimizer.fused = false`), the runner's other update path.
#[test]
fn each_fp32_step_with_per_tensor_lars_matches_a_pytorch_training_step() {
    check_steps_against_pytorch("fp32", false);
}

/// libtorch's CPU generator is global: one test at a time draws from it, so a seed replays.
static GENERATOR: Mutex<()> = Mutex::new(());

fn check_steps_against_pytorch(precision: &str, fused: bool) {
    let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    plugins_all::link();
    tch::set_num_threads(1);
    let (base_lr, weight_decay, trust, tau_base, final_fraction) = (4.0, 1e-3, 0.02, 0.9, 0.1);
    let batch = 16usize;
    // Weights, data and views from a seed of this run's own.
    let seed = fresh_seed("STEP_PARITY_SEED");
    let replay = format!("{precision}, fused {fused}, seed {seed} (STEP_PARITY_SEED={seed} replays it)");
    let text = tiny_experiment(&[
        ("dataset.train_size", &(STEPS_PER_EPOCH as usize * batch).to_string()),
        ("schedule.epochs", &EPOCHS.to_string()),
        ("schedule.batch_size", &batch.to_string()),
        ("schedule.accumulate", &ACCUMULATE.to_string()),
        ("schedule.warmup_epochs", "1"),
        ("schedule.final_lr_fraction", &final_fraction.to_string()),
        ("optimizer.lr", &format!("{base_lr:?}")),
        ("optimizer.weight_decay", &weight_decay.to_string()),
        ("optimizer.trust_coefficient", &trust.to_string()),
        ("byol.tau_base", &tau_base.to_string()),
        ("eval.online_probe", "false"),
        ("backbone.width", &WIDTH.to_string()),
        ("run.seed", &seed.to_string()),
        ("run.precision", &format!("{precision:?}")),
        ("optimizer.fused", &fused.to_string()),
    ]);
    let experiment = Experiment::parse(&text, &[]).unwrap();
    let run_dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(&experiment, run_dir.path(), &[]).unwrap();
    assert_eq!(trainer.plan.total_steps, EPOCHS * STEPS_PER_EPOCH);
    // A second instance of the run's augmentation (building one draws nothing), recording.
    let views = Arc::new(Mutex::new(Vec::new()));
    let context = BuildContext::new(Device::Cpu, experiment.augment.image_size());
    trainer.augment = Box::new(RecordingAugment {
        inner: experiment.augment.build(&context).unwrap(),
        views: views.clone(),
    });

    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    let mut ours = Vec::new();
    for step in 0..trainer.plan.total_steps {
        let before: HashMap<String, Tensor> = state(&trainer).into_iter().collect();
        inputs.extend(
            before
                .iter()
                .map(|(name, t)| (format!("{step}.{name}"), t.shallow_clone())),
        );
        let skip = (step % STEPS_PER_EPOCH) as usize * ACCUMULATE;
        let group: Vec<_> = trainer
            .loader
            .prefetch(trainer.plan.epoch_of(step), skip, Device::Cpu)
            .take(ACCUMULATE)
            .collect::<Result<_, _>>()
            .unwrap();
        let report = trainer.step(step, &group, false).unwrap();
        ours.push((
            report.loss.double_value(&[]),
            report.lr,
            report.tau,
            before,
            state(&trainer),
        ));
    }
    let views = std::mem::take(&mut *views.lock().unwrap());
    assert_eq!(views.len(), ours.len() * ACCUMULATE, "views made");
    for (i, (view1, view2)) in views.into_iter().enumerate() {
        let (step, micro) = (i / ACCUMULATE, i % ACCUMULATE);
        inputs.push((format!("{step}.{micro}.view1"), view1));
        inputs.push((format!("{step}.{micro}.view2"), view2));
    }
    let constants = [
        ("EMB", (8 * WIDTH).to_string()),
        ("HIDDEN", experiment.byol.hidden_dim.to_string()),
        ("PROJ", experiment.byol.projection_dim.to_string()),
        ("EPOCHS", EPOCHS.to_string()),
        ("STEPS_PER_EPOCH", STEPS_PER_EPOCH.to_string()),
        ("WARMUP_EPOCHS", "1".into()),
        ("BASE_LR", format!("{base_lr:?}")),
        ("BATCH", batch.to_string()),
        ("FINAL_FRACTION", final_fraction.to_string()),
        ("TAU_BASE", tau_base.to_string()),
        ("WEIGHT_DECAY", weight_decay.to_string()),
        ("TRUST", trust.to_string()),
        ("ACCUMULATE", ACCUMULATE.to_string()),
        ("BF16", if precision == "bf16" { "True" } else { "False" }.into()),
    ];
    let script: String = constants
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect::<String>()
        + byol_testkit::TORCH_BYOL
        + REFERENCE;
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let reference = run_python(&script, &refs);

    let scalar = |key: String| reference[&key].double_value(&[0]);
    for (step, (loss, lr, tau, before, after)) in ours.iter().enumerate() {
        let (their_lr, their_tau) = (scalar(format!("{step}.lr")), scalar(format!("{step}.tau")));
        assert!(
            (lr - their_lr).abs() < 1e-12,
            "step {step}: lr {lr} where PyTorch's plan has {their_lr}; {replay}"
        );
        assert!(
            (tau - their_tau).abs() < 1e-12,
            "step {step}: tau {tau} where PyTorch has {their_tau}; {replay}"
        );
        let their_loss = scalar(format!("{step}.loss"));
        let d = (loss - their_loss).abs();
        // Both sides add the two micro-batches' halves, so they agree to about one float32 ulp of
        // the loss (at most its size times f32::EPSILON; the symmetric loss lies in [0, 8]). The
        // bound is four, and never below 2e-6 (four ulps of 4).
        let bound = (4.0 * f64::from(f32::EPSILON) * their_loss.abs()).max(2e-6);
        assert!(
            d < bound,
            "step {step}: loss {loss} where PyTorch has {their_loss} (by {d:e}); {replay}"
        );
        let mut compared = 0;
        for (name, t) in after {
            let key = format!("{step}.after.{name}");
            let theirs = reference
                .get(&key)
                .unwrap_or_else(|| panic!("step {step}: PyTorch has no {name}"));
            let largest = theirs.abs().max().double_value(&[]);
            let change = (theirs - &before[name]).abs().max().double_value(&[]);
            let difference = max_abs_diff(t, theirs);
            assert!(
                difference <= ROUNDING * largest + STEP_TOLERANCE * change,
                "step {step}: {name} differs from PyTorch's by {:e} of its largest entry, {:e} of \
                 its change in the step; {replay}",
                difference / largest.max(f64::MIN_POSITIVE),
                difference / change.max(f64::MIN_POSITIVE)
            );
            compared += 1;
        }
        assert!(compared > 300, "step {step}: only {compared} tensors compared");
        let theirs = reference
            .keys()
            .filter(|k| k.starts_with(&format!("{step}.after.")))
            .count();
        assert_eq!(compared, theirs, "step {step}: PyTorch's state has tensors ours lacks");
    }
}
