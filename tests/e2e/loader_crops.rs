//! `augment.crop_on = "loader"`: training from an image folder of full-size JPEGs with both
//! views' crops cut on the loader's threads; a resumed run cuts the same crops (bit for bit on
//! the CPU), and a dataset without files says what to change.

use std::path::Path;

use byol_testkit::fixtures::{tiny_experiment, with_table};

use super::{byol_run, text};

fn config(folder: &Path, cache: &str) -> String {
    let dataset = format!(
        "type = \"image_folder\"\ntrain = {folder:?}\ntest = {folder:?}\nimage_size = 16\ncache = \"{cache}\"\nworkers = 2\n"
    );
    let experiment = tiny_experiment(&[
        ("run.seed", "2"),
        ("augment.crop_on", "\"loader\""),
        ("schedule.epochs", "2"),
        ("schedule.batch_size", "8"),
        ("eval.knn_k", "3"),
        ("checkpoint.every_steps", "2"),
        ("checkpoint.keep_last", "10"),
    ]);
    with_table(&experiment, "dataset", &dataset)
}

fn photos(root: &Path) {
    let script = "import sys, os, torch\nfrom PIL import Image\nroot = sys.argv[1]\n\
                  for c in range(2):\n    os.makedirs(f'{root}/c{c}', exist_ok=True)\n    for i in range(12):\n\
                  \x20       px = (torch.rand(48 + 3 * i, 64 + 5 * c, 3) * 255).byte().numpy()\n\
                  \x20       Image.fromarray(px).save(f'{root}/c{c}/{i:02}.jpg', quality=90)\n";
    let out = std::process::Command::new(byol_testkit::python())
        .args(["-c", script])
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn final_model(run_dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(run_dir.join("checkpoints/step-000000006/model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn loader_crops_train_and_resume_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    photos(&dir.path().join("photos"));
    std::fs::write(dir.path().join("crops.toml"), config(Path::new("photos"), "none")).unwrap();

    let whole = byol_run(dir.path(), &["crops.toml", "--run-dir", "whole"]);
    assert!(whole.status.success(), "{}", text(&whole));
    let resumed = byol_run(dir.path(), &["crops.toml", "--run-dir", "resumed"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    // Forget everything after step 2, then run again: it resumes there and must end identically.
    for step in [4, 6] {
        std::fs::remove_dir_all(dir.path().join(format!("resumed/checkpoints/step-{step:09}"))).unwrap();
    }
    let again = byol_run(dir.path(), &["crops.toml", "--run-dir", "resumed"]);
    assert!(text(&again).contains("from step 2"), "{}", text(&again));
    let (a, b) = (
        final_model(&dir.path().join("whole")),
        final_model(&dir.path().join("resumed")),
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{name} differs after resuming");
    }
}

#[test]
fn loader_crops_need_the_image_files() {
    let dir = tempfile::tempdir().unwrap();
    photos(&dir.path().join("photos"));
    std::fs::write(dir.path().join("memory.toml"), config(Path::new("photos"), "memory")).unwrap();
    let out = byol_run(dir.path(), &["memory.toml"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("augment.crop_on = \"loader\"") && all.contains("cache = \"none\""),
        "{all}"
    );
}
