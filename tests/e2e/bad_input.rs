//! Each kind of bad input gives one clear message and a non-zero exit, never a panic.

use std::path::Path;

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

/// typetag reports a plugin table's errors at its header; they are shown at the key instead,
/// with its line and its sub-table, where the message names the key or its value.
#[test]
fn errors_in_a_plugin_table_are_shown_at_their_key() {
    let quickstart = quickstart_with(|t| t);
    let line_of = |text: &str, needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
    // The second of two sub-tables with the same key.
    let text = quickstart_with(|t| {
        let second = t.rfind("hue = 0.5").unwrap();
        format!("{}hue = \"0.5\"{}", &t[..second], &t[second + "hue = 0.5".len()..])
    });
    let all = validate(&text);
    let line = line_of(&text, "hue = \"0.5\"");
    assert!(
        all.contains(&format!("line {line}, column 7"))
            && all.contains("invalid type: string \"0.5\", expected a number")
            && all.contains("(in table [augment.view2])"),
        "{all}"
    );
    // An unknown key, at its name; an element of an array, at the element.
    let text = quickstart_with(|t| t.replace("trust_coefficient = 0.02", "trust_coefficient = 0.02\ntrust = 1"));
    let all = validate(&text);
    assert!(
        all.contains(&format!("line {}, column 1", line_of(&text, "trust = 1"))),
        "{all}"
    );
    let text = quickstart_with(|t| t.replace("widths = [16, 32, 64]", "widths = [16, 32, \"64\"]"));
    let all = validate(&text);
    assert!(
        all.contains(&format!("line {}, column 19", line_of(&text, "widths =")))
            && all.contains("expected a whole number\nin `widths`\n(in table [backbone])"),
        "{all}"
    );
    assert!(quickstart.contains("widths = [16, 32, 64]"));
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
    // Said in the experiment's words, not the code's type names.
    for (set, expected) in [
        ("run=3", "--set run=3: invalid type: integer `3`, expected a table"),
        ("augment.view1=3", "expected a table (in table [augment])"),
        ("backbone=3", "expected a table with its plugin's `type`"),
        (
            "run.seed=1979-05-27",
            "invalid type: a table or a date, expected a whole number",
        ),
    ] {
        let out = byol_run(&dir, &["validate", "experiments/quickstart.toml", "--set", set]);
        let all = text(&out);
        assert!(
            out.status.code() == Some(1) && all.contains(expected) && !all.contains("struct") && !all.contains("dyn "),
            "{set}: {all}"
        );
    }
}

/// A run stopped by a bad image (`on_bad_image = "error"`, met while training with `cache =
/// "none"`) goes on with `"skip"`, as the error says, without `--allow-change`: it met no bad
/// image before, so it trains as a run that skipped it from the start.
/// Writes `exp.toml` in `dir`: the tiny experiment on the image folder `train` (16 px, the
/// `[dataset]` keys `extra` adds), batch 4, one epoch, and `keys` set.
fn write_folder_experiment(dir: &Path, extra: &str, keys: &[(&str, &str)]) {
    let folder = format!("type = \"image_folder\"\ntrain = \"train\"\nimage_size = 16\n{extra}");
    let experiment = byol_testkit::fixtures::with_table(super::TINY, "dataset", &folder);
    let small = [("schedule.batch_size", "4"), ("schedule.epochs", "1")];
    let experiment = byol_testkit::fixtures::with_keys(&experiment, &[&small[..], keys].concat());
    std::fs::write(dir.join("exp.toml"), experiment).unwrap();
}

#[test]
fn a_run_stopped_by_a_bad_image_goes_on_with_skip_as_the_error_says() {
    let dir = tempfile::tempdir().unwrap();
    super::random_pngs(&dir.path().join("train"), &["a", "b"], 8);
    std::fs::write(dir.path().join("train/b/bad.png"), b"not an image").unwrap();
    write_folder_experiment(dir.path(), "cache = \"none\"\n", &[("eval.before_training", "false")]);
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

    // The same files decoded into memory, where the bad image is left out before counting: the
    // same data, not other data.
    let longer = [
        "exp.toml",
        "--set",
        "schedule.epochs=2",
        "--allow-change",
        "schedule.epochs",
        "--set",
        "dataset.cache=\"memory\"",
        "--allow-change",
        "dataset.cache",
    ];
    let out = byol_run(dir.path(), &longer);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("other data") && !all.contains("different data"), "{all}");
}

/// `[eval]`'s labelled folders are read as `dataset.on_bad_image` says: an unreadable image there
/// stops a run set to stop at one (naming it), and is skipped with a warning otherwise.
#[test]
fn eval_folders_stop_at_a_bad_image_as_the_dataset_says() {
    let dir = tempfile::tempdir().unwrap();
    super::random_pngs(&dir.path().join("train"), &["a", "b"], 8);
    for split in ["labelled/train", "labelled/test"] {
        super::random_pngs(&dir.path().join(split), &["a", "b"], 4);
    }
    std::fs::write(dir.path().join("labelled/test/b/bad.png"), b"not an image").unwrap();
    let eval = [("eval.train", "\"labelled/train\""), ("eval.test", "\"labelled/test\"")];
    write_folder_experiment(dir.path(), "", &eval);
    let strict = ["exp.toml", "--quiet", "--set", "dataset.on_bad_image=\"error\""];
    let out = byol_run(dir.path(), &strict);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("labelled/test/b/bad.png") && all.contains("on_bad_image = \"skip\""),
        "{all}"
    );
    let out = byol_run(dir.path(), &["exp.toml", "--quiet"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("warning") && all.contains("bad.png"), "{all}");
}

/// An empty image file is known unreadable from the listing: a run set to stop at a bad image
/// stops at its start, reading no image (`cache = "none"` would reach it only mid-epoch), and
/// `validate` says so first.
#[test]
fn an_empty_image_stops_a_strict_run_at_its_start_and_validate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    super::random_pngs(&dir.path().join("train"), &["a", "b"], 8);
    std::fs::write(dir.path().join("train/b/empty.png"), b"").unwrap();
    write_folder_experiment(dir.path(), "cache = \"none\"\non_bad_image = \"error\"\n", &[]);
    for command in [&["validate", "exp.toml"][..], &["exp.toml", "--quiet"]] {
        let out = byol_run(dir.path(), command);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {all}");
        assert!(
            all.contains("train/b/empty.png") && all.contains("empty file") && all.contains("on_bad_image = \"skip\""),
            "{command:?}: {all}"
        );
    }
    assert!(!dir.path().join("runs/exp/checkpoints").exists());
}

/// A TorchScript module whose features are NaN only for batches larger than the probe at its
/// load passes `validate`; the NaN loss it makes then points at the module too.
#[test]
fn a_nan_loss_with_a_torchscript_backbone_points_at_its_module() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // (TorchScript reads the class's source: it lives in a file.)
    let source = r#"
import torch


class LateNan(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y = self.conv(x).mean(dim=(2, 3))
        if x.shape[0] > 2:
            y = y * float("nan")
        return y
"#;
    std::fs::write(d.join("late_nan.py"), source).unwrap();
    byol_testkit::run_python(
        &format!(
            "sys.path.insert(0, {:?})\nfrom late_nan import LateNan\ntorch.jit.script(LateNan()).save({:?})\n",
            d.to_str().unwrap(),
            d.join("late.pt").to_str().unwrap()
        ),
        &[],
    );
    let experiment = byol_testkit::fixtures::with_table(
        super::TINY,
        "backbone",
        "type = \"torchscript\"\npath = \"late.pt\"\ninput_size = 16\n",
    );
    let experiment = experiment.replace("[byol]\n", "[byol]\nembedding_layer = \"output\"\n");
    std::fs::write(d.join("late.toml"), experiment).unwrap();
    let out = byol_run(d, &["validate", "late.toml"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(d, &["late.toml", "--run-dir", "r", "--quiet"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("the loss became NaN or Inf at step")
            && all.contains("or check the module late.pt (backbone.path) with batches of this size"),
        "{all}"
    );
}

/// Networks or views larger than any machine's memory are an error naming what to make smaller,
/// never a panic, and a `--fresh` start refused so puts the run it moved aside back in place.
#[test]
fn networks_and_views_larger_than_memory_are_refused_and_fresh_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), super::TINY).unwrap();
    let quick = [
        "--quiet",
        "--set",
        "schedule.epochs=1",
        "--set",
        "dataset.train_size=64",
    ];
    let out = byol_run(dir.path(), &[&["tiny.toml", "--run-dir", "r"][..], &quick].concat());
    assert!(out.status.success(), "{}", text(&out));
    let finished = std::fs::read(dir.path().join("r/summary.json")).unwrap();
    // A 10^13-channel convolution: petabytes of weights, refused at its first allocation on
    // any machine (a smaller first layer would be allocated, and filled, first).
    let huge = "backbone={type=\"tiny_cnn\", widths=[8, 8, 10000000000000]}";
    for command in [
        &["validate", "tiny.toml", "--set", huge][..],
        &["tiny.toml", "--run-dir", "r", "--fresh", "--set", huge],
    ] {
        let out = byol_run(dir.path(), command);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{command:?}: {all}");
        assert!(
            all.contains("the networks do not fit in the machine's memory: make [backbone] or [byol] smaller")
                && !all.contains("panicked"),
            "{command:?}: {all}"
        );
    }
    assert_eq!(std::fs::read(dir.path().join("r/summary.json")).unwrap(), finished);
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        !aside.iter().any(|n| n.to_string_lossy().starts_with("r.old")),
        "{aside:?}"
    );

    // A ViT of more blocks than a list of them can hold: refused by its configuration.
    let deep = "backbone={type=\"vit_small_patch16\", depth=100000000, image_size=16, patch_size=4}";
    let out = byol_run(dir.path(), &["validate", "tiny.toml", "--set", deep]);
    assert!(
        text(&out).contains("backbone.depth = 100000000 must be at most 1024"),
        "{}",
        text(&out)
    );

    // The benchmark's views too.
    let out = byol_run(
        dir.path(),
        &["bench", "step", "tiny.toml", "--res", "10000000", "--iters", "1"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("a step of batch 32 at 10000000 px failed") && !all.contains("panicked"),
        "{all}"
    );
}
