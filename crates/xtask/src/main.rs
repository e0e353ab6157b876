//! `cargo xtask`: the project's entry point on a fresh machine.
//!
//! libtorch comes from the PyPI `torch` wheel (tch 0.24 pins 2.11.0). This tool keeps it, with the
//! Python packages the tests use as numerical oracles, in one virtual environment per torch version
//! under a per-user cache folder, so several clones share one 4.6 GB install. It creates the venv
//! only when missing (or when the pinned requirements change), then runs cargo with the environment
//! torch-sys needs (`LIBTORCH_USE_PYTORCH=1`, the venv's python first on PATH).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};

mod gpu_stage;

/// torch-sys 0.24 checks for exactly this libtorch version.
const TORCH_VERSION: &str = "2.11.0";
/// Everything the venv holds. Changing this list re-runs pip on the next call.
const REQUIREMENTS: &[&str] = &[
    "torch==2.11.0",
    "torchvision==0.26.0",
    "tensorboard==2.21.0",
    "safetensors==0.8.0",
    // The ViT backbone's oracle: it carries timm's names and initialization.
    "timm==1.0.31",
    "numpy>=2,<3",
    // Headers only: the CUDA runtime's `crt/` and CCCL's `nv/`, which c10d's ProcessGroupNCCL.hpp
    // includes and the torch wheel lacks; crates/torch-ext builds its NCCL backend against them.
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
];
/// Written last, so a venv whose install was interrupted is never taken as ready.
const READY_MARKER: &str = "byol-rs-ready.txt";

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup              create the libtorch venv if missing (idempotent)
  quickstart         setup, build byol-run (release) and train experiments/quickstart.toml
  test               setup, then run the whole test suite (cargo test --release --workspace)
  install            setup, then `cargo install --path crates/byol-cli` (byol-run on PATH)
  run <args...>      setup, then `cargo run --release -p byol-cli -- <args...>`
  cargo <args...>    setup, then any cargo command with the libtorch environment
  env                print shell `export` lines for using plain cargo in this shell
  gpu-stage [DATA]   setup, build byol-run (release) and stage it in .gpu-stage/ for
                     tests/gpu/checks.sh, with the CIFAR-10 JPEGs from DATA (a folder holding
                     train/ and test/, or a .tar.gz of both)

environment:
  BYOL_RS_VENV       use this venv instead of the per-user cache one
  BYOL_RS_PYTHON     the python3 used to create the venv (default: python3)";

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    if let Err(message) = run(&args) {
        eprintln!("error: {message}");
        exit(1);
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let Some(command) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match command.as_str() {
        "setup" => {
            let venv = ensure_venv()?;
            println!("libtorch venv ready: {}", venv.display());
            Ok(())
        }
        "quickstart" => cargo(
            &ensure_venv()?,
            &[
                "run",
                "--release",
                "-p",
                "byol-cli",
                "--",
                "experiments/quickstart.toml",
            ],
            rest,
        ),
        "test" => cargo(&ensure_venv()?, &["test", "--release", "--workspace"], rest),
        "install" => cargo(
            &ensure_venv()?,
            &["install", "--locked", "--path", "crates/byol-cli"],
            rest,
        ),
        "run" => cargo(&ensure_venv()?, &["run", "--release", "-p", "byol-cli", "--"], rest),
        "cargo" => cargo(&ensure_venv()?, &[], rest),
        "env" => {
            let venv = ensure_venv()?;
            for (key, value) in torch_env(&venv) {
                println!("export {}={}", key, shell_quote(&value.to_string_lossy()));
            }
            Ok(())
        }
        "gpu-stage" => {
            let venv = ensure_venv()?;
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .canonicalize()
                .map_err(|e| format!("cannot find the repository root: {e}"))?;
            let status = cargo_command(&venv, &["build", "--release", "-p", "byol-cli"], &[])
                .current_dir(&root)
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err(format!("building byol-run failed ({status})"));
            }
            let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
            let data = match rest {
                [] => None,
                [data] => Some(Path::new(data)),
                _ => return Err(format!("gpu-stage takes at most one DATA argument\n\n{USAGE}")),
            };
            let report = gpu_stage::stage(&target.join("release/byol-run"), data, &root.join(gpu_stage::STAGE_DIR))?;
            println!("{report}");
            Ok(())
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown xtask command '{other}'\n\n{USAGE}")),
    }
}

/// The venv folder: `$BYOL_RS_VENV`, else `$XDG_CACHE_HOME/byol-rs/torch-<v>`, else `~/.cache/...`.
fn venv_dir() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("BYOL_RS_VENV") {
        return Ok(PathBuf::from(dir));
    }
    let cache = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = env::var_os("HOME")
                .ok_or("neither XDG_CACHE_HOME nor HOME is set: set BYOL_RS_VENV to a folder for the libtorch venv")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("byol-rs").join(format!("torch-{TORCH_VERSION}")))
}

fn ensure_venv() -> Result<PathBuf, String> {
    let venv = venv_dir()?;
    let marker = venv.join(READY_MARKER);
    let wanted = REQUIREMENTS.join("\n");
    if fs::read_to_string(&marker).is_ok_and(|have| have.trim() == wanted.trim()) {
        return Ok(venv);
    }
    let python = venv.join("bin").join("python");
    if !python.exists() {
        create_venv(&venv)?;
    }
    eprintln!(
        "xtask: installing {} into {} (first time only; about 4.6 GB)",
        REQUIREMENTS.join(" "),
        venv.display()
    );
    // `python -m pip`, never `bin/pip`: pip's launcher scripts carry absolute paths.
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--no-input", "--disable-pip-version-check"])
        .args(REQUIREMENTS)
        // pip's progress goes to stderr: `eval "$(cargo xtask env)"` reads stdout as shell code.
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!(
            "pip could not install the libtorch requirements into {} ({status}).\n\
             Check network access to PyPI and free disk space (about 5 GB), then run `cargo xtask setup` again.",
            venv.display()
        ));
    }
    check_torch_imports(&python)?;
    fs::write(&marker, &wanted).map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(venv)
}

fn create_venv(venv: &Path) -> Result<(), String> {
    let python = env::var_os("BYOL_RS_PYTHON").unwrap_or_else(|| OsString::from("python3"));
    let shown = python.to_string_lossy().into_owned();
    let version = Command::new(&python).arg("--version").output().map_err(|e| {
        format!(
            "cannot run '{shown}' ({e}). byol-rs needs python3 (3.10 or newer) to install libtorch from PyPI: \
             install it (Debian/Ubuntu: `apt install python3 python3-venv`) or point BYOL_RS_PYTHON at one."
        )
    })?;
    if !version.status.success() {
        return Err(format!(
            "'{shown} --version' failed: {}",
            String::from_utf8_lossy(&version.stderr).trim()
        ));
    }
    if let Some(parent) = venv.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    eprintln!("xtask: creating the libtorch venv at {}", venv.display());
    let out = Command::new(&python)
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .map_err(|e| format!("cannot run '{shown} -m venv': {e}"))?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(venv);
        return Err(format!(
            "'{shown} -m venv {}' failed: {}\n\
             python3 lacks venv/ensurepip support: install it (Debian/Ubuntu: `apt install python3-venv`) and run again.",
            venv.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn check_torch_imports(python: &Path) -> Result<(), String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import torch, torchvision, timm, tensorboard, safetensors; print(torch.__version__)",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.starts_with(TORCH_VERSION) {
        return Err(format!(
            "the venv's torch does not import as {TORCH_VERSION} (got '{}'): {}",
            version.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// What torch-sys (build) and our tests (run) need to find libtorch and the Python oracle.
fn torch_env(venv: &Path) -> Vec<(&'static str, OsString)> {
    let bin = venv.join("bin");
    let mut path = vec![bin.clone()];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    vec![
        ("VIRTUAL_ENV", venv.as_os_str().to_owned()),
        ("LIBTORCH_USE_PYTORCH", OsString::from("1")),
        ("BYOL_RS_PYTHON_ORACLE", bin.join("python").into_os_string()),
        (
            "PATH",
            env::join_paths(path).expect("PATH entries contain no separator"),
        ),
    ]
}

fn cargo_command(venv: &Path, fixed: &[&str], rest: &[String]) -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    command.args(fixed).args(rest).envs(torch_env(venv));
    command
}

fn cargo(venv: &Path, fixed: &[&str], rest: &[String]) -> Result<(), String> {
    let status = cargo_command(venv, fixed, rest)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    exit(status.code().unwrap_or(1));
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
