//! The PyTorch reference (`tests/reference/byol_torch.py`) and `byol-run` train the same recipe on
//! the same CIFAR-10 slice, and `tests/reference/compare_curves.py` lines their kNN curves up by
//! epoch: the path the GPU checks take for 20 epochs of CIFAR-10, here with a tiny network, with
//! the reference's loader workers, bf16 autocast and channels_last.

use std::path::Path;
use std::process::Command;

use super::{byol_run, repo_root, text};

#[test]
fn the_pytorch_reference_trains_the_same_steps_and_evaluates_at_the_same_epochs() {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let Some(cifar) = byol_testkit::cifar10_jpeg(
        "the_pytorch_reference_trains_the_same_steps_and_evaluates_at_the_same_epochs",
        tmp,
    ) else {
        return;
    };
    let (train, test) = (cifar.join("train"), cifar.join("test"));
    let runs = tempfile::tempdir().unwrap();
    let run_dir = runs.path().join("ours");
    // 10 images per class: 100 images, 3 steps of 32 per epoch, kNN after every epoch.
    let set = [
        format!("dataset.train={}", toml::Value::String(train.display().to_string())),
        format!("dataset.test={}", toml::Value::String(test.display().to_string())),
        "dataset.limit_per_class=10".into(),
        "run.device=\"cpu\"".into(),
        "backbone.width=8".into(),
        "byol.hidden_dim=64".into(),
        "byol.projection_dim=32".into(),
        "schedule.batch_size=32".into(),
        "schedule.epochs=2".into(),
        "schedule.warmup_epochs=1".into(),
        "eval.knn_k=20".into(),
        "eval.every_epochs=1".into(),
    ];
    let mut args = vec!["experiments/cifar10-resnet18.toml", "--quiet", "--run-dir"];
    args.push(run_dir.to_str().unwrap());
    for s in &set {
        args.extend(["--set", s]);
    }
    let out = byol_run(&repo_root(), &args);
    assert!(out.status.success(), "{}", text(&out));

    let reference = Command::new(byol_testkit::python())
        .arg(repo_root().join("tests/reference/byol_torch.py"))
        .args(["--train", train.to_str().unwrap(), "--test", test.to_str().unwrap()])
        .args([
            "--limit-per-class",
            "10",
            "--device",
            "cpu",
            "--width",
            "8",
            "--hidden",
            "64",
        ])
        .args([
            "--proj", "32", "--batch", "32", "--epochs", "2", "--warmup", "1", "--knn-k", "20",
        ])
        .args([
            "--eval-every",
            "1",
            "--workers",
            "2",
            "--precision",
            "bf16",
            "--channels-last",
        ])
        .output()
        .expect("run byol_torch.py");
    assert!(reference.status.success(), "{}", text(&reference));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&reference.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    // Before training, after epochs 1 and 2, then the summary.
    assert_eq!(lines.len(), 4, "one line per evaluation, then the summary");
    let summary = &lines[3];
    assert_eq!(summary["steps"], 6, "{summary}");
    assert_eq!(
        (&summary["train_images"], &summary["test_images"]),
        (&100.into(), &100.into())
    );
    assert_eq!(lines[0]["steps_per_epoch"], 3, "{}", lines[0]);
    let epochs: Vec<_> = summary["curve"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].clone())
        .collect();
    assert_eq!(epochs, [0, 1, 2], "{summary}");
    assert!(summary["loss"].as_f64().unwrap().is_finite(), "{summary}");

    let reference_output = runs.path().join("reference.txt");
    std::fs::write(&reference_output, &reference.stdout).unwrap();
    let compared = Command::new(byol_testkit::python())
        .arg(repo_root().join("tests/reference/compare_curves.py"))
        .args([&run_dir, &reference_output])
        .output()
        .expect("run compare_curves.py");
    let table = text(&compared);
    assert!(compared.status.success(), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| epoch"))
        .collect();
    let steps: Vec<&str> = rows.iter().map(|row| row.split(" | ").nth(1).unwrap()).collect();
    assert_eq!(steps, ["0", "3", "6"], "epochs 0, 1 and 2 at the same steps: {table}");
    assert!(table.contains("verdict: the largest difference is "), "{table}");

    // A reference whose curve is far from ours at one epoch (the same steps, 100% kNN there):
    // beyond --max-z standard errors, the comparison fails.
    let far: Vec<String> = lines
        .iter()
        .map(|line| match line.get("epoch") {
            Some(epoch) if epoch == 2 => {
                let mut line = line.clone();
                line["knn"] = 1.0.into();
                line.to_string()
            }
            _ => line.to_string(),
        })
        .collect();
    std::fs::write(&reference_output, far.join("\n") + "\n").unwrap();
    let compare = |max_z: &str| {
        Command::new(byol_testkit::python())
            .arg(repo_root().join("tests/reference/compare_curves.py"))
            .args([run_dir.as_os_str(), reference_output.as_os_str()])
            .args(["--max-z", max_z])
            .output()
            .expect("run compare_curves.py")
    };
    let compared = compare("3");
    let table = text(&compared);
    assert_eq!(compared.status.code(), Some(2), "{table}");
    assert!(table.contains("beyond 3 standard errors at epoch(s) [2]"), "{table}");
    // The same gap under a line it does not cross passes.
    let compared = compare("1000");
    assert!(compared.status.success(), "{}", text(&compared));
}
