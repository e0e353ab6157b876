//! Each kind of bad input gives one clear message and a non-zero exit, never a panic.

use super::{byol_run, repo_root, text};

/// Writes `toml` into a temp dir and validates it.
fn validate(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.toml"), toml).unwrap();
    let out = byol_run(dir.path(), &["validate", "exp.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    assert!(all.contains("exp.toml"), "the message names the file: {all}");
    all
}

fn quickstart_with(edit: impl Fn(String) -> String) -> String {
    edit(std::fs::read_to_string(repo_root().join("experiments/quickstart.toml")).unwrap())
}

#[test]
fn missing_experiment_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = byol_run(dir.path(), &["nope.toml"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("experiment file nope.toml does not exist"), "{all}");
    assert!(!all.contains("panicked"), "{all}");
}

#[test]
fn toml_syntax_error_gives_line_and_column() {
    let all = validate(&quickstart_with(|t| t.replace("seed = 0", "seed = = 0")));
    assert!(all.contains("line 7, column"), "{all}");
}

#[test]
fn unknown_key_is_named_with_its_table() {
    let all = validate(&quickstart_with(|t| t.replace("warmup_epochs = 1", "warmup_epoch = 1")));
    assert!(all.contains("unknown field `warmup_epoch`"), "{all}");
    assert!(all.contains("(in table [schedule])"), "{all}");
}

#[test]
fn unknown_key_in_a_plugin_table_is_named_with_its_table() {
    let all = validate(&quickstart_with(|t| {
        t.replace("trust_coefficient = 0.02", "trust = 0.02")
    }));
    assert!(all.contains("unknown field `trust`"), "{all}");
    assert!(all.contains("(in table [optimizer])"), "{all}");
}

#[test]
fn unknown_plugin_type_lists_registered_ones() {
    let all = validate(&quickstart_with(|t| {
        t.replace("type = \"tiny_cnn\"", "type = \"resnet19\"")
    }));
    assert!(all.contains("unknown variant `resnet19`"), "{all}");
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"] {
        assert!(all.contains(name), "lists {name}: {all}");
    }
    assert!(all.contains("(in table [backbone])"), "{all}");
}

#[test]
fn bad_override_is_type_checked() {
    let dir = repo_root();
    let out = byol_run(
        &dir,
        &[
            "validate",
            "experiments/quickstart.toml",
            "--set",
            "schedule.epochs=many",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("schedule.epochs=many") && all.contains("invalid type"),
        "{all}"
    );
}

/// A run stopped by a bad image (`on_bad_image = "error"`, met while training with `cache =
/// "none"`) goes on with `"skip"`, as the error says, without `--allow-change`: it met no bad
/// image before, so it trains as a run that skipped it from the start.
#[test]
fn a_run_stopped_by_a_bad_image_goes_on_with_skip_as_the_error_says() {
    let dir = tempfile::tempdir().unwrap();
    super::random_pngs(&dir.path().join("train"), &["a", "b"], 8);
    std::fs::write(dir.path().join("train/b/bad.png"), b"not an image").unwrap();
    let folder = "type = \"image_folder\"\ntrain = \"train\"\nimage_size = 16\ncache = \"none\"\n";
    let experiment = byol_testkit::fixtures::with_table(super::TINY, "dataset", folder);
    let experiment = byol_testkit::fixtures::with_keys(
        &experiment,
        &[
            ("schedule.batch_size", "4"),
            ("schedule.epochs", "1"),
            ("eval.before_training", "false"),
        ],
    );
    std::fs::write(dir.path().join("exp.toml"), experiment).unwrap();
    let strict = ["exp.toml", "--quiet", "--set", "dataset.on_bad_image=\"error\""];
    let out = byol_run(dir.path(), &strict);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("bad.png") && all.contains("on_bad_image = \"skip\""),
        "{all}"
    );
    let out = byol_run(dir.path(), &["exp.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("--allow-change"), "{all}");
}
