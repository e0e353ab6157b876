use super::{byol_run, repo_root, text};

#[test]
fn help_lists_the_subcommands() {
    let out = byol_run(&repo_root(), &["--help"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for sub in ["train", "validate", "plugins", "doctor", "sweep"] {
        assert!(all.contains(sub), "--help lists {sub}: {all}");
    }
}

#[test]
fn doctor_runs_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let out = byol_run(dir.path(), &["doctor"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("libtorch         2.11.0"), "{all}");
    assert!(
        all.contains("libtorch_cuda    loaded"),
        "the CUDA backend is linked in: {all}"
    );
    assert!(all.contains("CUDA available"), "{all}");
}

#[test]
fn every_experiment_file_validates() {
    let root = repo_root();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("experiments")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = byol_run(&root, &["validate", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", path.display(), text(&out));
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn plugins_lists_every_kind_with_examples() {
    let out = byol_run(&repo_root(), &["plugins"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for needle in [
        "[dataset]",
        "[backbone]",
        "[augment]",
        "[optimizer]",
        "synthetic",
        "image_folder",
        "resnet50",
        "tiny_cnn",
        "vit_small_patch16",
        "byol",
        "lars",
        "sgd",
    ] {
        assert!(all.contains(needle), "plugins lists {needle}: {all}");
    }
}
