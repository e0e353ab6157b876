//! End-to-end tests: the real `byol-run` binary on real TOML files, in a temporary folder,
//! checking exit code and output together.

mod bad_input;
mod cli;
mod distributed;
mod learning;
mod loader_crops;
mod precision;
mod quickstart;
mod resume;
mod sweep;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (experiments/ lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Runs `byol-run args...` in `cwd` with a clean environment (no LD_LIBRARY_PATH: the binary
/// must find libtorch through its RUNPATH).
pub fn byol_run(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_byol-run"))
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .output()
        .expect("run byol-run")
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
