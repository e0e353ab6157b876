//! Rules about the workspace's own layout that nothing else checks.

use std::path::{Path, PathBuf};

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir` whose name ends in `.rs`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

/// `test = false` under `[lib]` in a manifest (written as the workspace's manifests write it).
fn lib_test_is_off(manifest: &str) -> bool {
    let mut in_lib = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_lib = line == "[lib]";
        } else if in_lib && line.replace(' ', "") == "test=false" {
            return true;
        }
    }
    false
}

/// Some crates skip building their unit-test binary, having no unit tests; a unit test added
/// to one would then never run, and CI would pass without it.
#[test]
fn a_crate_that_skips_its_unit_test_binary_has_no_unit_tests() {
    let root = repository_root();
    let mut skipping = 0;
    for group in ["crates", "plugins"] {
        for entry in std::fs::read_dir(root.join(group)).unwrap() {
            let crate_dir = entry.unwrap().path();
            let Ok(manifest) = std::fs::read_to_string(crate_dir.join("Cargo.toml")) else {
                continue;
            };
            if !lib_test_is_off(&manifest) {
                continue;
            }
            skipping += 1;
            for file in rust_files(&crate_dir.join("src")) {
                let text = std::fs::read_to_string(&file).unwrap();
                assert!(
                    !text.contains("#[test]") && !text.contains("#[cfg(test)]"),
                    "{} has a unit test, but its crate's Cargo.toml sets test = false under [lib], so it \
                     would never run: remove that setting",
                    file.display()
                );
            }
        }
    }
    // The plugins whose tests are all in tests/ set it; with none, this test would check nothing.
    assert!(skipping >= 1, "no crate sets test = false under [lib]");
}

#[test]
fn the_manifest_reader_finds_the_setting_only_under_lib() {
    assert!(lib_test_is_off("[package]\nname = \"x\"\n\n[lib]\ntest = false\n"));
    assert!(!lib_test_is_off("[lib]\nproc-macro = true\n"));
    assert!(!lib_test_is_off("[[bench]]\nname = \"b\"\ntest = false\n[lib]\n"));
}
