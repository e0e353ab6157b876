//! Adam and AdamW against torch.optim.Adam / torch.optim.AdamW, computed here by the venv's
//! PyTorch on the same parameters and gradients: five steps, each with its own learning rate
//! (the one passed to `step`), over parameters of several shapes and layouts (a channels_last
//! one, 1-D ones, which
//! `exclude_bias_and_norm` keeps undecayed, as a second PyTorch parameter group with
//! `weight_decay = 0` does), gradients of different scales per parameter, and a fresh random
//! seed each run (printed with any failure; `ADAM_PARITY_SEED=<n>` replays one). The optimizers
//! are built from TOML through the plugin registry, the way an experiment file builds them.
//! The plugin has no `amsgrad` key, so PyTorch runs with its default `amsgrad=False`.
//!
//! Each case runs both updates. The fused one (`fused = true`, the default) runs PyTorch's own
//! fused kernel, so it must equal `torch.optim.Adam(fused=True)` bit for bit. The per-tensor one
//! (`fused = false`) is checked against `torch.optim.Adam(foreach=False)` within the tolerance
//! below.
//!
//! Tolerance of the per-tensor update, per element, from float32 rounding (ε = 2^-23, f32::EPSILON); both sides evaluate
//! the same formulas in a different order of operations, so each rounding of either side can
//! differ by ε/2 of the value it rounds. With weights w_s = (1-β1)β1^(t-s)/(1-β1^t) and
//! w'_s = (1-β2)β2^(t-s)/(1-β2^t), each summing to 1, the bias-corrected averages are
//! m̂ = Σ w_s g_s and v̂ = Σ w'_s g_s², so |m̂| / √v̂ <= r_t = √(t / β2^(t-1)) (Cauchy-Schwarz,
//! max w_s <= 1, min w'_s >= β2^(t-1)/t), and √v̂ >= max_s |g_s| / r_t. At step t:
//! - m: four roundings per step per side of values at most (1-β1^t)·max|g|, accumulated over t
//!   steps: |Δm̂| <= 4tε·max|g|, which over the denominator is at most 4t·r_t·ε.
//! - v: positive terms only, so its relative error is at most 4tε, √ halves that; √, the
//!   division by √(1-β2^t) and `+ eps` add 3ε: (2t + 3)ε relative, times |m̂|/√v̂ <= r_t.
//! - the quotient and its scaling by lr/(1-β1^t): 2·r_t·ε.
//! - so the update lr_t·m̂/(√v̂+eps) may differ by lr_t·(6t + 5)·r_t·ε, and writing it into the
//!   parameter (and AdamW's `p *= 1 - lr·wd`) rounds twice: 2ε·P, where
//!   P = |p_0| + Σ lr_t·r_t bounds |p| during the run.
//!
//! Summed over the steps: |Δp| <= ε·Σ_t (2P + lr_t·(6t + 5)·r_t). The states: |Δm| <= 4Tε·G
//! (G = max_t |g_t|, the L2 term included) and |Δv| <= (4T + 1)ε·|v|. Observed differences stay
//! near a tenth of these bounds. A real mistake (bias correction, decay on the wrong tensors,
//! eps placement where eps is comparable to √v̂, as in the eps = 1e-3 cases) moves the
//! parameters by a sizeable fraction of lr, about a thousand times these bounds.

use std::sync::Mutex;

use byol::{NamedParameter, OptimizerSpec};
use byol_testkit::{fresh_seed, max_abs_diff, run_python};
use optim_adam::{AdamConfig, AdamWConfig};
use tch::{Kind, Tensor};

const STEPS: usize = 5;
const LRS: [f64; STEPS] = [1e-2, 3e-2, 5e-3, 2e-2, 1e-2];
/// Name, shape, scale of its gradients.
const PARAMETERS: [(&str, &[i64], f64); 5] = [
    ("conv.weight", &[8, 4, 3, 3], 1.0),
    ("bn.weight", &[8], 1e-2),
    ("bn.bias", &[8], 0.3),
    ("fc.weight", &[10, 8], 10.0),
    ("fc.bias", &[10], 1e-3),
];

const REFERENCE: &str = r#"
names = [NAMES]
def layout(t):   # conv weights in channels_last, as the runner keeps them on a GPU
    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else t.clone()
params = {n: torch.nn.Parameter(layout(inputs["p." + n])) for n in names}
kwargs = KWARGS
if EXCLUDE:   # 1-D parameters (biases, norms) undecayed; the others take the optimizer's decay
    groups = [{"params": [params[n] for n in names if params[n].ndim > 1]},
              {"params": [params[n] for n in names if params[n].ndim <= 1], "weight_decay": 0.0}]
else:
    groups = [{"params": [params[n] for n in names]}]
opt = torch.optim.OPTIMIZER(groups, lr=0.5, **kwargs, **IMPLEMENTATION)
for step, lr in enumerate(LRS):
    for g in opt.param_groups:
        g["lr"] = lr
    for n in names:
        params[n].grad = layout(inputs[f"g{step}.{n}"])
    opt.step()
for n in names:
    state = opt.state[params[n]]
    outputs[n] = params[n].detach()
    outputs["exp_avg." + n] = state["exp_avg"]
    outputs["exp_avg_sq." + n] = state["exp_avg_sq"]
    outputs["step." + n] = state["step"].double().reshape(1)
    outputs["decay." + n] = torch.tensor([opt.param_groups[0 if params[n].ndim > 1 or not EXCLUDE else 1]["weight_decay"]], dtype=torch.double)
"#;

/// libtorch's CPU generator is global: a test seeds it and draws its tensors under this lock.
static RNG: Mutex<()> = Mutex::new(());

fn spec(toml_text: &str) -> Box<dyn OptimizerSpec> {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n--- toml ---\n{toml_text}"))
}

/// The spec's keys with every default filled in, as `byol-run config` writes them.
fn keys(spec: &dyn OptimizerSpec) -> toml::Table {
    toml::Table::try_from(spec).expect("serialize the optimizer spec")
}

/// Runs the plugin built from `toml_text` and `torch.optim.<optimizer>(**kwargs)` side by side,
/// once fused and once per tensor. `beta2` and `weight_decay` are what the plugin should be
/// using (for the tolerance).
fn check(toml_text: &str, optimizer: &str, kwargs: &str, beta2: f64, weight_decay: f64) {
    let case = Case {
        optimizer,
        kwargs,
        beta2,
        weight_decay,
    };
    check_one(&format!("{toml_text}\nfused = true\n"), &case, Implementation::Fused);
    check_one(
        &format!("{toml_text}\nfused = false\n"),
        &case,
        Implementation::PerTensor,
    );
}

struct Case<'a> {
    optimizer: &'a str,
    kwargs: &'a str,
    beta2: f64,
    weight_decay: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Implementation {
    /// PyTorch's fused kernel on both sides: equal bit for bit.
    Fused,
    /// Tensor by tensor on both sides: equal within the rounding bound.
    PerTensor,
}

fn check_one(toml_text: &str, case: &Case<'_>, implementation: Implementation) {
    let Case {
        optimizer,
        kwargs,
        beta2,
        weight_decay,
    } = *case;
    let torch_implementation = match implementation {
        Implementation::Fused => "dict(fused=True)",
        Implementation::PerTensor => "dict(foreach=False)",
    };
    let exclude = keys(&*spec(toml_text))["exclude_bias_and_norm"].as_bool().unwrap();
    let seed = fresh_seed("ADAM_PARITY_SEED");
    let (initial, grads) = {
        let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let initial: Vec<Tensor> = PARAMETERS
            .iter()
            .map(|(_, shape, _)| Tensor::randn(*shape, tch::kind::FLOAT_CPU))
            .collect();
        let grads: Vec<Vec<Tensor>> = (0..STEPS)
            .map(|_| {
                PARAMETERS
                    .iter()
                    .map(|(_, shape, scale)| Tensor::randn(*shape, tch::kind::FLOAT_CPU) * *scale)
                    .collect()
            })
            .collect();
        (initial, grads)
    };
    let context =
        format!("{optimizer} {kwargs} {torch_implementation}, seed {seed} (ADAM_PARITY_SEED={seed} replays it)");

    let mut inputs: Vec<(String, Tensor)> = Vec::new();
    for ((name, _, _), p) in PARAMETERS.iter().zip(&initial) {
        inputs.push((format!("p.{name}"), p.shallow_clone()));
    }
    for (step, step_grads) in grads.iter().enumerate() {
        for ((name, _, _), g) in PARAMETERS.iter().zip(step_grads) {
            inputs.push((format!("g{step}.{name}"), g.shallow_clone()));
        }
    }
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let names: Vec<String> = PARAMETERS.iter().map(|(n, _, _)| format!("{n:?}")).collect();
    let script = REFERENCE
        .replace("NAMES", &names.join(", "))
        .replace("KWARGS", kwargs)
        .replace("EXCLUDE", if exclude { "True" } else { "False" })
        .replace("OPTIMIZER", optimizer)
        .replace("IMPLEMENTATION", torch_implementation)
        .replace("LRS", &format!("{LRS:?}"));
    let reference = run_python(&script, &refs);

    let handles: Vec<Tensor> = initial
        .iter()
        .map(|p| match p.dim() {
            4 => torch_ext::channels_last(p).unwrap().set_requires_grad(true),
            _ => p.copy().set_requires_grad(true),
        })
        .collect();
    let parameters: Vec<NamedParameter> = PARAMETERS
        .iter()
        .zip(&handles)
        .map(|((name, _, _), p)| NamedParameter {
            name: name.to_string(),
            tensor: p.shallow_clone(),
        })
        .collect();
    let mut adam = spec(toml_text)
        .build(parameters, &byol::BuildContext::new(tch::Device::Cpu, 32))
        .unwrap();
    for (lr, step_grads) in LRS.iter().zip(&grads) {
        adam.zero_grad();
        for (p, g) in handles.iter().zip(step_grads) {
            (p * g).sum(Kind::Float).backward(); // p.grad = g exactly
        }
        adam.step(*lr);
    }
    let state = adam.state();
    let buffer = |key: &str| {
        &state
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("no '{key}' in the optimizer state"))
            .1
    };
    assert_eq!(buffer("step").double_value(&[0]), STEPS as f64, "{context}");
    if implementation == Implementation::Fused {
        for (i, (name, _, _)) in PARAMETERS.iter().enumerate() {
            assert!(
                torch_ext::is_channels_last(&handles[i]) || handles[i].dim() != 4,
                "{name} kept its layout"
            );
            for (ours, key) in [
                (handles[i].detach(), name.to_string()),
                (
                    buffer(&format!("exp_avg.{name}")).shallow_clone(),
                    format!("exp_avg.{name}"),
                ),
                (
                    buffer(&format!("exp_avg_sq.{name}")).shallow_clone(),
                    format!("exp_avg_sq.{name}"),
                ),
            ] {
                let difference = max_abs_diff(&ours, &reference[&key]);
                assert_eq!(
                    difference, 0.0,
                    "{key}: the fused kernel differs from PyTorch's; {context}"
                );
            }
        }
        return;
    }

    let eps = f64::from(f32::EPSILON);
    // r_t = √(t / β2^(t-1)) bounds |m̂| / √v̂ at step t.
    let r: Vec<f64> = (1..=STEPS)
        .map(|t| (t as f64 / beta2.powi(t as i32 - 1)).sqrt())
        .collect();
    let moved: f64 = LRS.iter().zip(&r).map(|(lr, r)| lr * r).sum();
    let update_error: f64 = LRS
        .iter()
        .zip(&r)
        .enumerate()
        .map(|(i, (lr, r))| lr * (6.0 * (i + 1) as f64 + 5.0) * r)
        .sum();
    for (i, (name, _, _)) in PARAMETERS.iter().enumerate() {
        let torch_decay = reference[&format!("decay.{name}")].double_value(&[0]);
        let decayed = !(exclude && handles[i].dim() <= 1);
        let expected_decay = if decayed { weight_decay } else { 0.0 };
        assert_eq!(torch_decay, expected_decay, "{name}: PyTorch's weight decay, {context}");
        assert_eq!(
            reference[&format!("step.{name}")].double_value(&[0]),
            STEPS as f64,
            "{context}"
        );

        let ours = handles[i].detach().to_kind(Kind::Double);
        let theirs = reference[*name].to_kind(Kind::Double);
        let p_bound = initial[i].abs().to_kind(Kind::Double) + moved;
        let tolerance = (&p_bound * (2.0 * STEPS as f64) + update_error) * eps;
        let excess = ((&ours - &theirs).abs() - &tolerance).max().double_value(&[]);
        let moved_by = (&theirs - initial[i].to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            excess <= 0.0,
            "{name}: max |ours - torch| {:.3e} exceeds the rounding bound (max {:.3e}) by {excess:.3e}; \
             the parameters moved by up to {moved_by:.3e}; {context}",
            (&ours - &theirs).abs().max().double_value(&[]),
            tolerance.max().double_value(&[]),
        );

        // G = max_t |g_t| (+ wd·P where Adam adds the L2 term to the gradient).
        let l2 = if optimizer == "Adam" { expected_decay } else { 0.0 };
        let g_max = grads
            .iter()
            .map(|step_grads| step_grads[i].abs().to_kind(Kind::Double))
            .reduce(|a, b| a.maximum(&b))
            .unwrap()
            + &p_bound * l2;
        let m = buffer(&format!("exp_avg.{name}")).to_kind(Kind::Double);
        let m_ref = reference[&format!("exp_avg.{name}")].to_kind(Kind::Double);
        let m_tolerance = g_max * (4.0 * STEPS as f64 * eps);
        let excess = ((&m - &m_ref).abs() - m_tolerance).max().double_value(&[]);
        assert!(
            excess <= 0.0,
            "exp_avg of {name}: exceeds the rounding bound by {excess:.3e}; {context}"
        );
        let v = buffer(&format!("exp_avg_sq.{name}")).to_kind(Kind::Double);
        let v_ref = reference[&format!("exp_avg_sq.{name}")].to_kind(Kind::Double);
        let v_tolerance = v_ref.abs() * ((4.0 * STEPS as f64 + 1.0) * eps);
        let excess = ((&v - &v_ref).abs() - v_tolerance).max().double_value(&[]);
        assert!(
            excess <= 0.0,
            "exp_avg_sq of {name}: exceeds the rounding bound by {excess:.3e}; {context}"
        );
    }
}

#[test]
fn adam_with_its_defaults_matches_torch_optim_adam() {
    check("type = \"adam\"", "Adam", "{}", 0.999, 0.0);
}

#[test]
fn adamw_with_its_defaults_matches_torch_optim_adamw() {
    // No weight_decay in either: both use 0.01 (on the weights; the 1-D group sets 0).
    check("type = \"adamw\"", "AdamW", "{}", 0.999, 0.01);
}

#[test]
fn adam_with_l2_decay_betas_and_a_large_eps_matches_torch() {
    // eps 1e-3 against gradients of 1e-3 and 1e-2 (fc.bias, bn.weight): its placement counts.
    check(
        "type = \"adam\"\nbetas = [0.8, 0.99]\neps = 1e-3\nweight_decay = 0.05\n",
        "Adam",
        "dict(betas=(0.8, 0.99), eps=1e-3, weight_decay=0.05)",
        0.99,
        0.05,
    );
}

#[test]
fn adam_with_l2_decay_on_every_parameter_matches_torch() {
    check(
        "type = \"adam\"\nweight_decay = 0.1\nexclude_bias_and_norm = false\n",
        "Adam",
        "dict(weight_decay=0.1)",
        0.999,
        0.1,
    );
}

#[test]
fn adamw_with_betas_and_a_large_eps_matches_torch() {
    check(
        "type = \"adamw\"\nbetas = [0.8, 0.99]\neps = 1e-3\nweight_decay = 0.5\n",
        "AdamW",
        "dict(betas=(0.8, 0.99), eps=1e-3, weight_decay=0.5)",
        0.99,
        0.5,
    );
}

#[test]
fn adamw_decaying_every_parameter_matches_torch() {
    check(
        "type = \"adamw\"\nweight_decay = 0.5\nexclude_bias_and_norm = false\n",
        "AdamW",
        "dict(weight_decay=0.5)",
        0.999,
        0.5,
    );
}

#[test]
fn adamw_without_weight_decay_takes_pytorchs_default_and_adam_its_own() {
    let adamw = keys(&*spec("type = \"adamw\"\nlr = 3e-4\n"));
    assert_eq!(adamw["weight_decay"].as_float(), Some(0.01), "{adamw:?}");
    assert_eq!(adamw["lr"].as_float(), Some(3e-4), "{adamw:?}");
    let adam = keys(&*spec("type = \"adam\"\nlr = 3e-4\n"));
    assert_eq!(adam["weight_decay"].as_float(), Some(0.0), "{adam:?}");
    // An explicit value wins over either default.
    let adamw = keys(&*spec("type = \"adamw\"\nweight_decay = 0.0\n"));
    assert_eq!(adamw["weight_decay"].as_float(), Some(0.0), "{adamw:?}");
    assert!(toml::from_str::<Box<dyn OptimizerSpec>>("type = \"adamw\"\nweight_decy = 0.1\n").is_err());
}

#[test]
fn a_bare_type_takes_the_defaults() {
    for (name, default) in [
        ("adam", Box::new(AdamConfig::default()) as Box<dyn OptimizerSpec>),
        ("adamw", Box::new(AdamWConfig::default())),
    ] {
        assert_eq!(keys(&*spec(&format!("type = \"{name}\""))), keys(&*default), "'{name}'");
    }
}
