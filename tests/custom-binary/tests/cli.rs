//! `byol-run-toy` is `byol-run` with one more plugin: it lists `toy_convnet` beside the
//! workspace's plugins, validates and trains an experiment that names it, and exports the result.

use std::path::Path;
use std::process::{Command, Output};

use byol_testkit::fixtures::{tiny_experiment, with_table};

fn byol_run_toy(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_byol-run-toy"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("byol-run-toy runs")
}

fn text(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_binary_of_ones_own_trains_with_its_own_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let listed = byol_run_toy(dir.path(), &["plugins"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let plugins = String::from_utf8_lossy(&listed.stdout);
    for name in ["toy_convnet", "resnet18", "image_folder", "lars"] {
        assert!(plugins.contains(name), "`plugins` does not list {name}:\n{plugins}");
    }

    // 128 synthetic images, batch 32: one epoch of 4 steps on the toy backbone.
    let experiment = tiny_experiment(&[
        ("dataset.train_size", "128"),
        ("dataset.test_size", "32"),
        ("dataset.classes", "4"),
        ("byol.embedding_layer", "\"fc\""),
        ("schedule.epochs", "1"),
        ("schedule.warmup_epochs", "0"),
    ]);
    let experiment = with_table(
        &experiment,
        "backbone",
        "type = \"toy_convnet\"\nchannels = 8\nfeatures = 16\n",
    );
    std::fs::write(dir.path().join("toy.toml"), experiment).unwrap();
    for args in [&["validate", "toy.toml"][..], &["toy.toml"]] {
        let out = byol_run_toy(dir.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let summary = std::fs::read_to_string(dir.path().join("runs/toy/summary.json")).unwrap();
    assert!(summary.contains("\"steps\": 4"), "{summary}");

    let out = byol_run_toy(dir.path(), &["export", "runs/toy", "--out", "toy.safetensors"]);
    assert!(out.status.success(), "{}", text(&out));
    let exported = tch::Tensor::read_safetensors(dir.path().join("toy.safetensors")).unwrap();
    let mut names: Vec<String> = exported.into_iter().map(|(name, _)| name).collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "conv.weight") && names.iter().any(|n| n == "fc.weight"),
        "{names:?}"
    );
}
