//! Mixed precision and memory format on the CPU: channels_last must compute what the contiguous
//! layout computes (only the summation order differs), and bf16 autocast must really run in bf16
//! (close to fp32, not equal) while the master weights and checkpoints stay fp32.

use std::path::Path;

use super::TINY;
use super::{byol_run, byol_run_with_env, text};

/// Trains the tiny experiment for 2 steps with `extra` settings; returns the step-2 model.
fn two_steps(dir: &Path, name: &str, extra: &[&str]) -> Vec<(String, tch::Tensor)> {
    two_steps_with_env(dir, name, extra, &[])
}

fn two_steps_with_env(dir: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Vec<(String, tch::Tensor)> {
    let mut args = vec![
        "tiny.toml",
        "--run-dir",
        name,
        "--set",
        "schedule.epochs=1",
        "--set",
        "checkpoint.every_steps=2",
        "--set",
        "checkpoint.keep_last=20",
    ];
    for setting in extra {
        args.extend(["--set", setting]);
    }
    let out = byol_run_with_env(dir, &args, env);
    assert!(out.status.success(), "{name} {env:?}: {}", text(&out));
    let mut tensors =
        tch::Tensor::read_safetensors(dir.join(name).join("checkpoints/step-000000002/model.safetensors")).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors
}

fn max_difference(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            assert_eq!(ta.kind(), tb.kind(), "{na}");
            byol_testkit::max_abs_diff(ta, tb)
        })
        .fold(0.0, f64::max)
}

/// How far two steps in channels_last may end from two contiguous ones (see the first test).
const LAYOUT_BOUND: f64 = 2e-4;

#[test]
fn channels_last_trains_like_contiguous_and_bf16_like_fp32() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let contiguous = two_steps(dir.path(), "contiguous", &["run.memory_format=contiguous"]);
    let channels_last = two_steps(dir.path(), "channels-last", &["run.memory_format=channels_last"]);
    let bf16 = two_steps(dir.path(), "bf16", &["run.precision=bf16"]);

    // The same arithmetic in another summation order: measured 2.4e-6 after two steps here. A
    // pre-activation within a rounding of zero can take the other side of a ReLU in one layout,
    // and this network at lr 0.5 about doubles such a difference every step (tests/e2e/
    // distributed.rs: 1e-6 growing to 1e-3 over some eight steps), so which machine's kernels
    // meet a kink decides the figure, not the layout. LAYOUT_BOUND leaves room for one; a mis-laid
    // weight (channels mixed up) differs by O(1e-1).
    let layout = max_difference(&contiguous, &channels_last);
    assert!(
        layout <= LAYOUT_BOUND,
        "channels_last differs from contiguous by {layout}"
    );

    // Measured 7.6e-3: bf16 activations (8-bit mantissa) perturb the update, fp32 master weights
    // keep it close; exactly 0 would mean autocast never engaged.
    let precision = max_difference(&contiguous, &bf16);
    assert!(
        precision > 1e-5 && precision <= 5e-2,
        "bf16 differs from fp32 by {precision}"
    );
    for (name, t) in &bf16 {
        assert!(
            matches!(t.kind(), tch::Kind::Float | tch::Kind::Int64),
            "{name} is saved as {:?}",
            t.kind()
        );
    }
}

/// oneDNN picks its CPU kernels by instruction set, so a machine with AVX-512 and one with only
/// AVX2 run different code. `ONEDNN_MAX_CPU_ISA` caps the choice, so every x86-64 machine runs
/// each level here. At AVX2, the strided 1x1 convolution of the tiny ResNet's first downsample
/// (4 input channels, fewer than the kernel's block of 8) once corrupted the heap in channels_last
/// (the process died at the first backward) or computed wrong weight gradients.
#[test]
fn channels_last_trains_like_contiguous_at_every_cpu_instruction_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    for isa in ["AVX2", "AVX512_CORE"] {
        let env = [("ONEDNN_MAX_CPU_ISA", isa)];
        for threads in ["1", "2"] {
            let threads_key = format!("run.threads={threads}");
            let run = |layout: &str| {
                let name = format!("{isa}-{threads}-{layout}");
                let format_key = format!("run.memory_format={layout}");
                two_steps_with_env(dir.path(), &name, &[&format_key, &threads_key], &env)
            };
            let (contiguous, channels_last) = (run("contiguous"), run("channels_last"));
            // As in the test above: a summation-order difference, not a layout error.
            let layout = max_difference(&contiguous, &channels_last);
            assert!(
                layout <= LAYOUT_BOUND,
                "{isa}, {threads} threads: channels_last differs from contiguous by {layout}"
            );
        }
    }
}

#[test]
fn fp16_on_the_cpu_is_refused_with_the_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let out = byol_run(dir.path(), &["tiny.toml", "--set", "run.precision=fp16"]);
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("run.precision = \"fp16\" needs a CUDA device") && all.contains("\"bf16\""),
        "{all}"
    );
}
