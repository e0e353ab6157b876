//! Helpers shared by the byol-data integration tests: running the venv's Python (PIL, torchvision)
//! to write reference files, building dataset plugins from TOML, and the shared CIFAR-10 JPEGs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use byol_data::{DataError, DatasetSpec, Splits};

/// Runs `script` with the venv's python, `args` as `sys.argv[1:]`; panics with its stderr.
pub fn python(script: &str, args: &[&Path]) {
    let out = Command::new(byol_testkit::python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (run the tests with `cargo xtask test`)",
                byol_testkit::python().display()
            )
        });
    assert!(
        out.status.success(),
        "python failed:\n{}\n--- script ---\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dataset spec from the body of a `[dataset]` table, through typetag like an experiment file.
pub fn spec(toml_text: &str) -> Box<dyn DatasetSpec> {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}\n--- toml ---\n{toml_text}"))
}

pub fn build(toml_text: &str) -> Result<Splits, DataError> {
    spec(toml_text).build(&byol::BuildContext::new(tch::Device::Cpu, 32))
}

/// TOML string literal of a path.
pub fn quoted(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The shared CIFAR-10 JPEGs, unpacked into this binary's temporary folder.
pub fn cifar10_jpeg(test: &str) -> Option<PathBuf> {
    byol_testkit::cifar10_jpeg(test, Path::new(env!("CARGO_TARGET_TMPDIR")))
}
