//! `cargo xtask gpu-stage [DATA]`: everything `tests/gpu/checks.sh` needs on a GPU machine that
//! has python3 and torch but no Rust toolchain, in `.gpu-stage/` (git-ignored): `byol-run` built
//! here without its debug line tables, and the CIFAR-10 JPEGs as one archive.
//!
//! The release binary carries line tables for readable backtraces (137 MB); without them it is
//! about 18 MB and keeps its symbols, so a crash on the GPU still names the functions. The
//! staged folder must stay small enough to copy to the GPU machine with the working tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The most the staged folder may hold: what a GPU machine takes with the working tree (64 MiB),
/// less room for the repository's own files.
pub const STAGE_LIMIT_BYTES: u64 = 60 << 20;
pub const STAGE_DIR: &str = ".gpu-stage";
pub const DATA_ARCHIVE: &str = "cifar10-jpeg.tar.gz";

/// Copies `binary` into `stage` without debug sections and, when given, the CIFAR-10 JPEGs
/// (`data`: a `.tar.gz` with `train/` and `test/` at its top, or a folder holding both) as
/// `cifar10-jpeg.tar.gz`; then checks the folder's size. Returns a report for the user.
pub fn stage(binary: &Path, data: Option<&Path>, stage: &Path) -> Result<String, String> {
    fs::create_dir_all(stage).map_err(|e| format!("cannot create {}: {e}", stage.display()))?;
    let staged_binary = stage.join("byol-run");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&staged_binary)
        .arg(binary))
    .map_err(|e| format!("{e}\n`strip` comes with binutils (Debian/Ubuntu: `apt install binutils`)"))?;

    let archive = stage.join(DATA_ARCHIVE);
    match data {
        Some(data) if data.is_dir() => {
            for split in ["train", "test"] {
                if !data.join(split).is_dir() {
                    return Err(format!(
                        "{} has no {split}/ folder: give the folder holding train/<class>/*.jpg and test/<class>/*.jpg",
                        data.display()
                    ));
                }
            }
            run(Command::new("tar")
                .arg("-czf")
                .arg(&archive)
                .arg("-C")
                .arg(data)
                .args(["train", "test"]))?;
        }
        Some(data) => {
            let listing = output(Command::new("tar").arg("-tzf").arg(data))
                .map_err(|e| format!("{} is neither a folder nor a readable .tar.gz: {e}", data.display()))?;
            if let Some(split) = missing_split(&listing) {
                return Err(format!(
                    "{} has no {split}/ at its top level: checks.sh unpacks it into data/cifar10-jpeg and \
                     reads data/cifar10-jpeg/train and data/cifar10-jpeg/test",
                    data.display()
                ));
            }
            fs::copy(data, &archive)
                .map_err(|e| format!("cannot copy {} to {}: {e}", data.display(), archive.display()))?;
        }
        None => {}
    }

    let mut report = String::new();
    let mut total = 0;
    for entry in walk(stage)? {
        let size = fs::metadata(&entry)
            .map_err(|e| format!("{}: {e}", entry.display()))?
            .len();
        total += size;
        report.push_str(&format!("  {:>8.1} MiB  {}\n", mib(size), entry.display()));
    }
    if total > STAGE_LIMIT_BYTES {
        return Err(format!(
            "{} holds {:.1} MiB, more than the {:.0} MiB a GPU machine takes: remove what checks.sh does not need\n{report}",
            stage.display(),
            mib(total),
            mib(STAGE_LIMIT_BYTES)
        ));
    }
    if !archive.exists() {
        report.push_str(&format!(
            "  no {DATA_ARCHIVE}: the e2e, train and reference parts need it (cargo xtask gpu-stage DATA)\n"
        ));
    }
    Ok(format!(
        "staged {:.1} MiB in {}:\n{report}on the GPU machine, with {} taken along (it is git-ignored), from the \
         repository root: bash tests/gpu/checks.sh first (then step, e2e, train, reference; smoke for \
         every CUDA path)",
        mib(total),
        stage.display(),
        stage.display()
    ))
}

/// The split (`train` or `test`) that a `tar -t` listing lacks at its top level.
fn missing_split(listing: &str) -> Option<&'static str> {
    let top: Vec<&str> = listing
        .lines()
        .map(|line| line.trim_start_matches("./"))
        .filter_map(|line| line.split('/').next())
        .collect();
    ["train", "test"].into_iter().find(|split| !top.contains(split))
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn run(command: &mut Command) -> Result<(), String> {
    output(command).map(|_| ())
}

/// stdout of `command`, or an error with the command and its stderr.
fn output(command: &mut Command) -> Result<String, String> {
    let shown = format!("{command:?}");
    let out = command.output().map_err(|e| format!("cannot run {shown}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ELF binary with its debug sections, as the release build makes them.
    fn binary(dir: &Path) -> PathBuf {
        let source = dir.join("main.rs");
        fs::write(&source, "fn main() { println!(\"staged\"); }").unwrap();
        let binary = dir.join("byol-run");
        run(Command::new("rustc")
            .args(["-C", "debuginfo=2", "-o"])
            .arg(&binary)
            .arg(&source))
        .unwrap();
        binary
    }

    fn images(dir: &Path, splits: &[&str]) -> PathBuf {
        let data = dir.join("cifar");
        for split in splits {
            fs::create_dir_all(data.join(split).join("cat")).unwrap();
            fs::write(data.join(split).join("cat/0.jpg"), b"jpeg bytes").unwrap();
        }
        data
    }

    #[test]
    fn stages_a_runnable_binary_without_debug_sections_and_the_images_as_one_archive() {
        let dir = tempfile::tempdir().unwrap();
        let binary = binary(dir.path());
        let stage_dir = dir.path().join(STAGE_DIR);
        let report = stage(&binary, Some(&images(dir.path(), &["train", "test"])), &stage_dir).unwrap();

        let staged = stage_dir.join("byol-run");
        assert!(fs::metadata(&staged).unwrap().len() < fs::metadata(&binary).unwrap().len());
        let sections = output(Command::new("readelf").arg("-S").arg(&staged)).unwrap();
        assert!(!sections.contains(".debug_line"), "{sections}");
        assert_eq!(output(&mut Command::new(&staged)).unwrap(), "staged\n");

        let listing = output(Command::new("tar").arg("-tzf").arg(stage_dir.join(DATA_ARCHIVE))).unwrap();
        assert!(
            listing.contains("train/cat/0.jpg") && listing.contains("test/cat/0.jpg"),
            "{listing}"
        );
        assert_eq!(missing_split(&listing), None);
        assert!(report.contains("checks.sh first"), "{report}");

        // The archive itself is taken as given when it has both splits.
        let again = dir.path().join("again");
        stage(&binary, Some(&stage_dir.join(DATA_ARCHIVE)), &again).unwrap();
        assert!(again.join(DATA_ARCHIVE).is_file());
    }

    #[test]
    fn data_without_a_split_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let binary = binary(dir.path());
        let data = images(dir.path(), &["train"]);
        let err = stage(&binary, Some(&data), &dir.path().join("s1")).unwrap_err();
        assert!(err.contains("has no test/ folder"), "{err}");

        let archive = dir.path().join("train-only.tar.gz");
        run(Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&data)
            .arg("train"))
        .unwrap();
        let err = stage(&binary, Some(&archive), &dir.path().join("s2")).unwrap_err();
        assert!(err.contains("train-only.tar.gz has no test/ at its top level"), "{err}");
    }

    #[test]
    fn a_folder_over_the_limit_is_refused_with_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let binary = binary(dir.path());
        let stage_dir = dir.path().join("s");
        fs::create_dir_all(&stage_dir).unwrap();
        fs::File::create(stage_dir.join("leftover.bin"))
            .unwrap()
            .set_len(STAGE_LIMIT_BYTES + 1)
            .unwrap();
        let err = stage(&binary, None, &stage_dir).unwrap_err();
        assert!(
            err.contains("more than the 60 MiB") && err.contains("leftover.bin"),
            "{err}"
        );
    }
}
