//! Test support. PyTorch as the oracle: tests hand tensors to a Python snippet run by the venv's
//! torch and get tensors back, through safetensors files in a temporary folder. And
//! [`conformance`]: the checks every backbone plugin runs (`check_backbone(&spec, 32)`).

pub mod conformance;

pub use conformance::check_backbone;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use tch::Tensor;

/// The venv python with torch/torchvision/tensorboard: `$BYOL_RS_PYTHON_ORACLE` (set by
/// `cargo xtask`), else the venv that `cargo xtask setup` creates by default.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("BYOL_RS_PYTHON_ORACLE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    let venv = std::env::var_os("BYOL_RS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache.join("byol-rs/torch-2.11.0"));
    venv.join("bin/python")
}

const PRELUDE: &str = "\
import sys, torch
from safetensors.torch import load_file, save_file
torch.set_num_threads(1)
inputs = load_file(sys.argv[1])
outputs = {}
";
const EPILOGUE: &str = "
save_file({k: v.detach().contiguous() for k, v in outputs.items()}, sys.argv[2])
";

/// Runs `script` with `inputs` (a dict of CPU tensors) in scope; returns its `outputs` dict.
/// Panics with Python's stderr when the script fails.
pub fn run_python(script: &str, inputs: &[(&str, &Tensor)]) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().expect("temp dir");
    let input_path = dir.path().join("inputs.safetensors");
    let output_path = dir.path().join("outputs.safetensors");
    let named: Vec<(&str, Tensor)> = inputs
        .iter()
        .map(|(k, t)| (*k, t.detach().to_device(tch::Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&named, &input_path).expect("write inputs");
    let code = format!("{PRELUDE}{script}{EPILOGUE}");
    let out = Command::new(python())
        .arg("-c")
        .arg(&code)
        .arg(&input_path)
        .arg(&output_path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (run the tests with `cargo xtask test`)",
                python().display()
            )
        });
    assert!(
        out.status.success(),
        "python oracle failed:\n{}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    Tensor::read_safetensors(&output_path)
        .expect("read outputs")
        .into_iter()
        .collect()
}

/// Largest absolute difference between two tensors (as f64).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}
