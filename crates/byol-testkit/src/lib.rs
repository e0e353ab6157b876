//! Test support. PyTorch as the oracle: tests hand tensors to a Python snippet run by the venv's
//! torch and get tensors back, through safetensors files in a temporary folder. And
//! [`conformance`]: the checks every backbone plugin runs (`check_backbone(&spec, 32)`). And
//! [`keys`]: which keys a configuration parser accepts, to hold examples to them. And the
//! tiny experiment the training tests start from ([`fixtures`]). And the bounds tests hold
//! results to: float32 rounding against PyTorch's float64 ([`rounding`]), two-sample and
//! frequency tests of random draws ([`stats`]). And the
//! shared CIFAR-10 JPEGs ([`cifar10_jpeg`]; a test that needs them is skipped where they are
//! absent, and fails instead when `CI=true`).

pub mod conformance;
pub mod fixtures;
pub mod keys;
pub mod optimizer;
pub mod rounding;
pub mod stats;

pub use conformance::check_backbone;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// BYOL's networks in plain PyTorch, to prepend to a [`run_python`] script: `Online(emb, hidden,
/// proj)` (a CIFAR-stem ResNet-18, projector, predictor), `target_of(online)`, `load(module,
/// prefix, trainable)` (weights from `inputs`, which set every width) and `regression(p, z)`.
pub const TORCH_BYOL: &str = include_str!("../fixtures/torch_byol.py");

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

/// Python that compares two state_dicts of freshly drawn weights, `ours` and `theirs` (dicts of
/// tensors with the same keys), tensor by tensor with the two-sample Kolmogorov-Smirnov test at
/// false-failure chance `alpha` each (the asymptotic critical value
/// `sqrt(-ln(alpha / 2) / 2) * sqrt(2 / n)`): `compare_draws(ours, theirs, alpha, "PyTorch's")`
/// sets `outputs["failures"]` (one line per tensor drawn otherwise, as UTF-8 bytes; read with
/// [`draw_failures`]) and `outputs["compared"]`.
pub const COMPARE_DRAWS: &str = r#"
import math
import numpy as np
def compare_draws(ours, theirs, alpha, whose):
    assert sorted(ours) == sorted(theirs), set(ours) ^ set(theirs)
    def ks(a, b):
        a, b = np.sort(a), np.sort(b)
        both = np.concatenate([a, b])
        fa = np.searchsorted(a, both, side="right") / len(a)
        fb = np.searchsorted(b, both, side="right") / len(b)
        return float(np.abs(fa - fb).max())
    c = math.sqrt(-math.log(alpha / 2) / 2)
    failures = []
    for k in sorted(ours):
        a = ours[k].double().flatten().numpy()
        b = theirs[k].double().flatten().numpy()
        assert a.shape == b.shape, (k, a.shape, b.shape)
        d, critical = ks(a, b), c * math.sqrt(2 / len(a))
        if d > critical:
            failures.append(f"{k}: KS statistic {d:.4f} > {critical:.4f} (ours std {a.std():.4g}, {whose} {b.std():.4g}; "
                            f"ours max |x| {np.abs(a).max():.4g}, {whose} {np.abs(b).max():.4g})")
    outputs["failures"] = torch.tensor(list("\n".join(failures).encode()) or [0], dtype=torch.uint8)
    outputs["compared"] = torch.tensor(len(ours))
"#;

/// The lines of [`COMPARE_DRAWS`]'s `outputs["failures"]`: empty when every tensor passed.
pub fn draw_failures(outputs: &HashMap<String, Tensor>) -> String {
    let bytes = Vec::<u8>::try_from(&outputs["failures"]).expect("failures as bytes");
    String::from_utf8_lossy(&bytes).trim_matches('\0').to_string()
}

/// The message of a caught panic (`std::panic::catch_unwind`'s error): its `String` or `&str`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Where two tensors of the same shape and kind differ bit for bit: how many entries do, and the
/// first of them (its flat index and both values). `None` when every bit is equal: -0 and +0
/// differ, and a NaN equals a NaN of the same bits, as a bit-for-bit claim means.
pub fn bit_difference(a: &Tensor, b: &Tensor) -> Option<(i64, i64, f64, f64)> {
    assert_eq!(a.size(), b.size(), "shapes differ");
    assert_eq!(a.kind(), b.kind(), "kinds differ");
    let as_integers = |t: &Tensor| {
        let same_width = match t.kind() {
            tch::Kind::Float => tch::Kind::Int,
            tch::Kind::Double => tch::Kind::Int64,
            tch::Kind::Half | tch::Kind::BFloat16 => tch::Kind::Int16,
            other => other,
        };
        t.contiguous().view_dtype(same_width).flatten(0, -1)
    };
    let differs = as_integers(a).ne_tensor(&as_integers(b));
    let count = differs.sum(tch::Kind::Int64).int64_value(&[]);
    if count == 0 {
        return None;
    }
    let first = differs.to_kind(tch::Kind::Uint8).argmax(None, false).int64_value(&[]);
    let value = |t: &Tensor| t.flatten(0, -1).double_value(&[first]);
    Some((count, first, value(a), value(b)))
}

/// Largest absolute difference between two tensors (as f64).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// A seed of its own for each run of a test, so that a check holds for inputs nobody chose; or
/// the one in the environment variable `variable`, to replay a failure (the test prints it).
pub fn fresh_seed(variable: &str) -> i64 {
    use std::hash::BuildHasher;
    match std::env::var(variable) {
        Ok(seed) => seed
            .parse()
            .unwrap_or_else(|_| panic!("{variable} = {seed:?} is not an integer")),
        Err(_) => (std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now()) >> 1) as i64,
    }
}

/// The shared datasets folder (`shared/datasets`, holding `unpack.sh`): `BYOL_RS_SHARED_DATASETS`
/// when set, else the first `shared/datasets` beside the repository or beside one of the
/// folders above it (a clone may sit one level deeper than the working copy).
pub fn shared_datasets() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("BYOL_RS_SHARED_DATASETS") {
        return Some(PathBuf::from(dir));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .ok()?;
    repo.ancestors()
        .skip(1)
        .map(|dir| dir.join("shared/datasets"))
        .find(|dir| dir.join("unpack.sh").is_file())
}

/// The full CIFAR-10 as JPEGs (`<dir>/{train,test}/<class>/*.jpg`), unpacked once into `dest`
/// from the shared datasets (pass `env!("CARGO_TARGET_TMPDIR")`). Where the shared datasets are
/// absent: `None` with a `SKIPPED <test>` line on stderr, so that the caller returns early; but
/// when the environment variable `CI` is `true` a skipped test would pass unnoticed, so this
/// panics instead, naming `test` and what to provide.
pub fn cifar10_jpeg(test: &str, dest: &Path) -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let unpack = shared_datasets()?.join("unpack.sh");
        let dest = dest.join("datasets");
        std::fs::create_dir_all(&dest).expect("create the dataset folder");
        let out = Command::new("sh")
            .arg(&unpack)
            .arg("cifar10-jpeg")
            .arg(&dest)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", unpack.display()));
        assert!(
            out.status.success(),
            "{} failed: {}",
            unpack.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dest.join("cifar10-jpeg"))
    });
    if dir.is_none() {
        missing_dataset(
            test,
            "the CIFAR-10 JPEGs: no shared/datasets/unpack.sh beside the repository or above it \
             (set BYOL_RS_SHARED_DATASETS to the folder holding unpack.sh and cifar10-jpeg.tar.gz)",
            in_ci(),
        );
    }
    dir.clone()
}

/// Whether the tests run under continuous integration: the environment variable `CI` is `true`
/// (as GitHub Actions, GitLab CI and most others set it; any letter case).
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A test cannot find data it needs (`what`): under CI (`ci`) that is a failure, a panic naming
/// the test; elsewhere a `SKIPPED` line on stderr, and the caller returns early.
fn missing_dataset(test: &str, what: &str, ci: bool) {
    assert!(
        !ci,
        "{test} needs {what}; CI=true, so a missing dataset fails the test instead of skipping it"
    );
    eprintln!("SKIPPED {test}: it needs {what}");
}

/// A localhost TCP port that was free a moment ago, for a c10d rendezvous in a test: one below
/// the kernel's ephemeral range (above it where there is no room below), each once per process. A port the kernel handed out itself
/// (bound to port 0, then released) could be handed again, to a connection or a Gloo listener of
/// another test running beside, before the store binds it (EADDRINUSE, or a rank joining another
/// test's job); the kernel picks no port below that range on its own.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    let range: Vec<u32> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .map(|range| range.split_whitespace().filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default();
    let (ephemeral_low, ephemeral_high) = match range.as_slice() {
        [low, high] => (*low, *high),
        _ => (32768, 60999),
    };
    // Below the range where it leaves room (the usual 32768-60999), else above it.
    let (first, span) = match (
        ephemeral_low.saturating_sub(1024),
        65535u32.saturating_sub(ephemeral_high),
    ) {
        (below, _) if below >= 1000 => (ephemeral_low - below.min(8000), below.min(8000)),
        (_, above) if above >= 1000 => (ephemeral_high + 1, above.min(8000)),
        // The whole range is ephemeral: a port the kernel hands out, with the race above.
        _ => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind a localhost port");
            return listener.local_addr().expect("its address").port();
        }
    };
    // Where this process starts, so that test processes run one after another rarely start alike.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % span, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let port = (first + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free localhost port in {first}..{}", first + span);
}

/// Rank `rank` of a `world`-rank job on localhost at `port`, every rank on this machine (ranks
/// as threads of one test process, each with its own TCPStore client).
pub fn local_rendezvous(rank: usize, world: usize, port: u16) -> torch_ext::distributed::Rendezvous {
    torch_ext::distributed::Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size: world,
        local_rank: rank,
        local_world_size: world,
        agent_store: false,
        restart_count: 0,
        timeout: std::time::Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::{bit_difference, missing_dataset};
    use tch::Tensor;

    #[test]
    fn bit_equality_tells_signed_zeros_apart_and_equal_nans_alike() {
        let values = Tensor::from_slice(&[1.5f32, f32::NAN, 0.0, -3.0]);
        assert_eq!(bit_difference(&values, &values.copy()), None);
        let signed_zero = Tensor::from_slice(&[1.5f32, f32::NAN, -0.0, -3.0]);
        assert_eq!(bit_difference(&values, &signed_zero), Some((1, 2, 0.0, 0.0)));
        let one_ulp = Tensor::from_slice(&[1.5f32, f32::NAN, 0.0, f32::from_bits((-3.0f32).to_bits() + 1)]);
        let (count, first, _, _) = bit_difference(&values, &one_ulp).expect("one ulp is a difference");
        assert_eq!((count, first), (1, 3));
        let strided = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0])
            .view([2, 2])
            .transpose(0, 1);
        assert_eq!(
            bit_difference(&strided, &Tensor::from_slice(&[1.0f64, 3.0, 2.0, 4.0]).view([2, 2])),
            None
        );
    }

    #[test]
    fn a_missing_dataset_skips_outside_ci() {
        missing_dataset("some_test", "a dataset", false);
    }

    #[test]
    #[should_panic(expected = "some_test needs a dataset; CI=true")]
    fn a_missing_dataset_fails_under_ci() {
        missing_dataset("some_test", "a dataset", true);
    }
}
