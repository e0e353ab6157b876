//! Helpers shared by the byol-data integration tests: running the venv's Python (PIL, torchvision)
//! to write reference files, building dataset plugins from TOML, and the shared CIFAR-10 JPEGs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
    spec(toml_text).build()
}

/// TOML string literal of a path.
pub fn quoted(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The full CIFAR-10 as JPEGs (`<dir>/{train,test}/<class>/*.jpg`), unpacked once per test binary
/// from `<repo>/../shared/datasets` into the cargo target folder. `None` (and a loud line on
/// stderr) where the shared datasets are absent.
pub fn cifar10_jpeg(test: &str) -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let unpack = repo.join("../shared/datasets/unpack.sh");
        if !unpack.is_file() {
            return None;
        }
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("datasets");
        std::fs::create_dir_all(&dest).expect("create the dataset folder");
        let out = Command::new("sh")
            .arg(&unpack)
            .arg("cifar10-jpeg")
            .arg(&dest)
            .output()
            .expect("run unpack.sh");
        assert!(
            out.status.success(),
            "unpack.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(dest.join("cifar10-jpeg"))
    });
    if dir.is_none() {
        eprintln!("SKIPPED {test}: ../shared/datasets/unpack.sh is absent (the shared CIFAR-10 JPEGs are needed)");
    }
    dir.clone()
}
