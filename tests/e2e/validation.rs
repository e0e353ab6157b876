//! `Experiment::validate` through the real binary: every numeric key has a range, `validate`
//! checks what training checks before its first step, and a key set by `--set` is reported
//! against the flag, not against a line of a reformatted copy.

use super::TINY;
use super::{byol_run, text};

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    dir
}

/// `byol-run <args>` must fail with rc 1, no panic; returns stderr.
fn refused(dir: &std::path::Path, args: &[&str]) -> String {
    let out = byol_run(dir, args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(!all.contains("panicked"), "{all}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn out_of_range_values_are_refused_naming_key_value_range_and_flag() {
    let dir = setup();
    let sets = [
        (
            "schedule.epochs=0",
            "schedule.epochs = 0 is out of range: it must be in [1, 1000000]",
        ),
        (
            "schedule.warmup_epochs=-3",
            "schedule.warmup_epochs = -3 is out of range: it must be >= 0",
        ),
        ("optimizer.lr=-1", "optimizer.lr = -1 is out of range: it must be >= 0"),
        ("eval.probe_lr=1e39", "eval.probe_lr = 1e39 is beyond float32's range"),
        ("eval.knn_k=0", "eval.knn_k = 0 is out of range: it must be >= 1"),
        (
            "logging.every_steps=0",
            "logging.every_steps = 0 is out of range: it must be >= 1",
        ),
        (
            "checkpoint.keep_last=0",
            "checkpoint.keep_last = 0 is out of range: it must be >= 1",
        ),
        (
            "schedule.accumulate=0",
            "schedule.accumulate = 0 is out of range: it must be >= 1",
        ),
        (
            "byol.tau_base=nan",
            "byol.tau_base = NaN is not a finite number: it must be in [0, 1]",
        ),
    ];
    let mut args = vec!["validate", "tiny.toml"];
    for (set, _) in &sets {
        args.extend(["--set", set]);
    }
    let error = refused(dir.path(), &args);
    for (set, message) in sets {
        assert!(error.contains(&format!("--set {set}: {message}")), "{set}: {error}");
    }
    // An element of a pair is named by its place.
    let adam = "optimizer={type=\"adam\", betas=[0.9, 1.0]}";
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", adam]);
    assert!(
        error.contains(&format!(
            "--set {adam}: optimizer.betas[1] = 1 is out of range: it must be in [0, 1)"
        )),
        "{error}"
    );
    // Training refuses the same before touching a run folder; a value from the file is
    // reported without a flag.
    std::fs::write(dir.path().join("zero.toml"), TINY.replace("epochs = 3", "epochs = 0")).unwrap();
    let error = refused(dir.path(), &["zero.toml", "--run-dir", "r"]);
    assert!(
        error.contains("in experiment file zero.toml: schedule.epochs = 0 is out of range"),
        "{error}"
    );
    assert!(!dir.path().join("r").exists());

    // Errors of type and size speak of numbers, not of Rust's types.
    let error = refused(
        dir.path(),
        &["validate", "tiny.toml", "--set", "schedule.batch_size=-3"],
    );
    assert!(
        error.contains(
            "--set schedule.batch_size=-3: invalid value: integer `-3`, expected a whole number, not a negative one"
        ),
        "{error}"
    );
    // A value of another type: its type, not a range that the key's own check states later.
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", "schedule.epochs=\"2\""]);
    assert!(
        error.contains("invalid type: string \"2\", expected a whole number") && !error.contains(">= 0"),
        "{error}"
    );
    assert!(
        !error.contains("is no TOML value"),
        "a quoted value is text as written: {error}"
    );
    // A bare word TOML does not read as a number is read as text, and the error says why.
    for (value, text) in [
        ("optimizer.lr=.5", ".5"),
        ("run.seed=05", "05"),
        ("optimizer.lr=1,5", "1,5"),
    ] {
        let error = refused(dir.path(), &["validate", "tiny.toml", "--set", value]);
        assert!(
            error.contains(&format!("invalid type: string \"{text}\""))
                && error.contains(&format!("`{text}` is no TOML value, so it was read as text")),
            "{error}"
        );
    }
    // A key set twice: the last counts, said.
    let out = byol_run(
        dir.path(),
        &[
            "validate",
            "tiny.toml",
            "--set",
            "optimizer.lr=0.1",
            "--set",
            "optimizer.lr=0.9",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: --set optimizer.lr is given 2 times (0.1, 0.9): the last one counts"),
        "{}",
        text(&out)
    );
    // However spelled, and inside a table set whole.
    let quoted_and_whole = [
        "validate",
        "tiny.toml",
        "--set",
        "\"optimizer\".lr=0.1",
        "--set",
        "optimizer.lr=0.9",
        "--set",
        "optimizer={type = \"lars\", lr = 0.3}",
    ];
    let out = byol_run(dir.path(), &quoted_and_whole);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: --set \"optimizer\".lr is given 2 times (0.1, 0.9): the last one counts")
            && all.contains(
                "warning: --set optimizer sets the whole table that --set \"optimizer\".lr sets a key of: the one \
                 given last decides \"optimizer\".lr"
            ),
        "{all}"
    );
    let huge = "schedule.batch_size=100000000000000000000";
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", huge]);
    assert!(
        error.contains(&format!(
            "--set {huge}: the number is larger than any whole number an experiment holds"
        )),
        "{error}"
    );
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", "optimizer.lr=1e309"]);
    assert!(
        error.contains("--set optimizer.lr=1e309: the number is beyond float64's range"),
        "{error}"
    );
    // Values past any run, which would overflow a step count, a thread count or an allocation
    // (validate builds the networks, which a head this wide would not fit in memory).
    let past = [
        ("schedule.epochs=9223372036854775807", "schedule.epochs = "),
        (
            "run.threads=4294967297",
            "run.threads = 4294967297 is out of range: it must be in [0, 4096]",
        ),
        (
            "dataset.image_size=100000",
            "dataset.image_size = 100000 is out of range: it must be <= 4096",
        ),
        (
            "augment.image_size=100000",
            "augment.image_size = 100000 is out of range: it must be <= 4096",
        ),
        (
            "byol.hidden_dim=400000000",
            "byol.hidden_dim = 400000000 is out of range: it must be in [1, 16384]",
        ),
    ];
    for (set, message) in past {
        let error = refused(dir.path(), &["validate", "tiny.toml", "--set", set]);
        assert!(error.contains(&format!("--set {set}: {message}")), "{error}");
    }
    // A run name that is not a folder inside run.output_dir (the output folder itself, one
    // outside it) is refused; a nested one is a folder inside it.
    for name in ["\"\"", "\"..\"", "\"../elsewhere\"", "\"/tmp/x\""] {
        let set = format!("run.name={name}");
        let error = refused(dir.path(), &["validate", "tiny.toml", "--set", &set]);
        assert!(
            error.contains("does not name a folder inside run.output_dir"),
            "{error}"
        );
    }
    // A TOML escape may put a control character in it (a line break, a tab).
    for name in ["\"a\\nb\"", "\"lr\\t0.1\""] {
        let set = format!("run.name={name}");
        let error = refused(dir.path(), &["validate", "tiny.toml", "--set", &set]);
        assert!(error.contains("holds a control character"), "{error}");
    }
    for name in ["\"ablation/lr-0.1\"", "\"./exp/\""] {
        let set = format!("run.name={name}");
        let out = byol_run(dir.path(), &["validate", "tiny.toml", "--set", &set]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // A value that holds a second assignment (a line break in a script's --set) is refused,
    // not cut at the line break.
    let error = refused(
        dir.path(),
        &["validate", "tiny.toml", "--set", "optimizer.lr=0.5\nmomentum=0.1"],
    );
    assert!(error.contains("holds more than one assignment"), "{error}");
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", "run.name=foo\nx=1"]);
    assert!(error.contains("holds more than one assignment"), "{error}");

    // Digits TOML does not read as a number stay a string.
    let out = byol_run(dir.path(), &["validate", "tiny.toml", "--set", "run.name=0042"]);
    assert!(
        out.status.success() && text(&out).contains("experiment '0042'"),
        "{}",
        text(&out)
    );

    // Another plugin type by --set keeps the old type's keys: the error says to set the table.
    let lars = byol_testkit::fixtures::tiny_experiment(&[("optimizer.trust_coefficient", "0.001")]);
    std::fs::write(dir.path().join("lars.toml"), lars).unwrap();
    let error = refused(dir.path(), &["validate", "lars.toml", "--set", "optimizer.type=adam"]);
    assert!(
        error.contains("unknown field `trust_coefficient`")
            && error.contains("set the whole table, as in --set 'optimizer={ type = \"...\", ... }'"),
        "{error}"
    );
    let out = byol_run(
        dir.path(),
        &[
            "validate",
            "lars.toml",
            "--set",
            "optimizer={ type = \"adam\", lr = 1e-3 }",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn validate_checks_what_training_checks_before_its_first_step() {
    let dir = setup();
    // Views cut from images decoded smaller are warned of before the start, as at it.
    let out = byol_run(dir.path(), &["validate", "tiny.toml", "--set", "dataset.image_size=8"]);
    assert!(
        out.status.success() && text(&out).contains("px views are cut from images decoded at 8 px"),
        "{}",
        text(&out)
    );
    let error = refused(
        dir.path(),
        &["validate", "tiny.toml", "--set", "augment.crop_on=loader"],
    );
    assert!(
        error.contains("--set augment.crop_on=loader: augment.crop_on = \"loader\" cuts crops"),
        "{error}"
    );
    // More neighbours than the kNN bank holds: said, as the start says it.
    let out = byol_run(dir.path(), &["validate", "tiny.toml", "--set", "eval.knn_k=1000"]);
    assert!(
        out.status.success()
            && text(&out).contains(
                "note: eval.knn_k = 1000 is more than the 512 images of the kNN bank: every bank image votes (k = 512)"
            ),
        "{}",
        text(&out)
    );
    let folder = TINY.replace(
        "type = \"synthetic\"\ntrain_size = 512\ntest_size = 64\nimage_size = 16",
        "type = \"image_folder\"\ntrain = \"data/train\"\nimage_size = 16",
    );
    std::fs::write(dir.path().join("folder.toml"), folder).unwrap();
    let error = refused(dir.path(), &["validate", "folder.toml"]);
    assert!(
        error.contains("dataset.train = \"data/train\": this folder does not exist"),
        "{error}"
    );
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/train"), "not a folder").unwrap();
    let error = refused(dir.path(), &["validate", "folder.toml"]);
    assert!(
        error.contains("dataset.train = \"data/train\": this is a file, not a folder of images"),
        "{error}"
    );
    if !tch::Cuda::is_available() {
        let error = refused(dir.path(), &["validate", "tiny.toml", "--set", "run.device=cuda"]);
        assert!(
            error.contains("--set run.device=cuda: run.device = \"cuda\" but CUDA is not available"),
            "{error}"
        );
        // What the step refuses on the CPU, and a recorded step with accumulation anywhere.
        let error = refused(
            dir.path(),
            &[
                "validate",
                "tiny.toml",
                "--set",
                "run.precision=fp16",
                "--set",
                "run.cuda_graphs=true",
            ],
        );
        assert!(
            error.contains("--set run.precision=fp16: run.precision = \"fp16\" needs a CUDA device")
                && error.contains("--set run.cuda_graphs=true: run.cuda_graphs = true needs a CUDA device"),
            "{error}"
        );
    }
    let error = refused(
        dir.path(),
        &[
            "validate",
            "tiny.toml",
            "--set",
            "run.cuda_graphs=true",
            "--set",
            "schedule.accumulate=2",
        ],
    );
    assert!(
        error.contains("with schedule.accumulate = 2, set run.cuda_graphs = false"),
        "{error}"
    );
}

#[test]
fn with_overrides_a_typo_in_the_file_keeps_its_own_line_number() {
    let dir = setup();
    let line = TINY.lines().position(|l| l == "hidden_dim = 32").unwrap() + 1;
    std::fs::write(
        dir.path().join("typo.toml"),
        TINY.replace("hidden_dim = 32", "hiden_dim = 32"),
    )
    .unwrap();
    let plain = refused(dir.path(), &["validate", "typo.toml"]);
    let with_set = refused(dir.path(), &["validate", "typo.toml", "--set", "optimizer.lr=0.1"]);
    assert!(with_set.contains(&format!("line {line}")), "{with_set}");
    assert_eq!(plain, with_set, "the same message, the file's own lines");
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", "schedule.epoch=3"]);
    assert!(
        error.contains("--set schedule.epoch=3: unknown field `epoch`"),
        "{error}"
    );
    assert!(!error.contains("line "), "no line of a reformatted copy: {error}");
}

#[test]
fn a_run_whose_knn_accuracy_fell_says_so() {
    let dir = setup();
    // A learning rate of 1e-12 trains nothing but batch-norm statistics: kNN falls (37.5% -> 9.4%).
    let out = byol_run(
        dir.path(),
        &[
            "tiny.toml",
            "--run-dir",
            "r",
            "--set",
            "optimizer.lr=1e-12",
            "--set",
            "eval.before_training=true",
            "--set",
            "eval.knn_k=1",
            "--set",
            "schedule.epochs=1",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: kNN accuracy did not improve (")
            && all.contains("the representation may have collapsed or the recipe does not suit this data"),
        "{all}"
    );
}

/// `ts.toml` in `dir`: the tiny experiment with the TorchScript module `backbone.pt` as its
/// backbone.
fn write_torchscript_experiment(dir: &std::path::Path) {
    let ts = TINY
        .replace(
            "type = \"resnet18\"\ncifar_stem = true\nwidth = 4",
            "type = \"torchscript\"\npath = \"backbone.pt\"\ninput_size = 16",
        )
        .replace("[byol]\n", "[byol]\nembedding_layer = \"output\"\n");
    std::fs::write(dir.join("ts.toml"), ts).unwrap();
}

/// Validate loads the module (and so refuses a file that is none) and says that it is code, and
/// what its probe forwards found; a module that lets no gradient through trains with a warning.
/// A run goes on with its copy of the module, which validate builds too.
#[test]
fn validate_says_a_torchscript_backbone_is_code_that_runs() {
    let dir = setup();
    let module = dir.path().join("backbone.pt");
    let script = format!(
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(), \
         torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\ntorch.jit.script(net).save({:?})\n",
        module.to_str().unwrap()
    );
    byol_testkit::run_python(&script, &[]);
    write_torchscript_experiment(dir.path());
    let out = byol_run(dir.path(), &["validate", "ts.toml"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("the module backbone.pt is code, and byol-run runs it during training and embed"),
        "{all}"
    );

    // Training it: gradients reach the module, and nothing says otherwise.
    let train = |run: &str| byol_run(dir.path(), &["ts.toml", "--run-dir", run, "--set", "schedule.epochs=1"]);
    let out = train("trained");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("reached no parameter of the backbone"),
        "{}",
        text(&out)
    );
    // A resume builds the module from the run's copy, and validate builds what the start would:
    // with the file moved away, both go on and say so.
    let elsewhere = dir.path().join("elsewhere.pt");
    std::fs::rename(&module, &elsewhere).unwrap();
    for command in [&["validate"][..], &[]] {
        let args = [
            command,
            &["ts.toml", "--run-dir", "trained", "--set", "schedule.epochs=1"],
        ]
        .concat();
        let out = byol_run(dir.path(), &args);
        let all = text(&out);
        assert!(out.status.success(), "{args:?}: {all}");
        assert!(
            all.contains("note: backbone.path = backbone.pt is no longer there; the run goes on with the copy"),
            "{args:?}: {all}"
        );
    }
    std::fs::rename(&elsewhere, &module).unwrap();

    // Traced in eval mode (batch norm frozen), and detaching its output: validate and the start say so.
    let script = format!(
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), \
         torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())\n\
         class Detached(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.net = net\n\
         \n    def forward(self, x):\n        return self.net(x).detach()\n\
         torch.jit.trace(Detached().eval(), torch.randn(2, 3, 16, 16)).save({:?})\n",
        module.to_str().unwrap()
    );
    byol_testkit::run_python(&script, &[]);
    let out = byol_run(dir.path(), &["validate", "ts.toml"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: backbone.path = backbone.pt: its batch norms count no batch in train mode"),
        "{all}"
    );
    let out = train("detached");
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("its batch norms count no batch in train mode"), "{all}");
    assert!(
        all.contains("warning: the first step's gradients reached no parameter of the backbone"),
        "{all}"
    );

    std::fs::write(&module, "").unwrap();
    let out = byol_run(dir.path(), &["validate", "ts.toml"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("backbone.path = backbone.pt: not a TorchScript module saved by torch.jit.save"),
        "{all}"
    );
}

/// A module whose forward raises on some batches (here odd-sized ones, as the last batch of an
/// evaluation is) ends the run with its error, not a panic, and so does `embed`.
#[test]
fn a_torchscript_forward_that_fails_ends_with_its_error_not_a_panic() {
    let dir = setup();
    let module = dir.path().join("backbone.pt");
    // (Scripting a class needs its source in a file.)
    let class = "import torch\n\nclass Odd(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        \
                 self.conv = torch.nn.Conv2d(3, 8, 3)\n\n    def forward(self, x):\n        if x.shape[0] % 2 == 1:\n            \
                 raise RuntimeError('odd batch not supported')\n        return self.conv(x).mean((2, 3))\n";
    std::fs::write(dir.path().join("odd_net.py"), class).unwrap();
    let script = format!(
        "sys.path.insert(0, {:?})\nfrom odd_net import Odd\ntorch.jit.script(Odd()).save({:?})\n",
        dir.path().to_str().unwrap(),
        module.to_str().unwrap()
    );
    byol_testkit::run_python(&script, &[]);
    write_torchscript_experiment(dir.path());
    // 512 training images in batches of 32 train; the 63 test images end on an odd batch.
    let out = byol_run(
        dir.path(),
        &[
            "ts.toml",
            "--run-dir",
            "r",
            "--set",
            "schedule.epochs=1",
            "--set",
            "dataset.test_size=63",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("error: embedding a batch of") && all.contains("odd batch not supported"),
        "{all}"
    );
    assert!(!all.contains("panicked"), "{all}");
}

/// What only building finds (a feature tap that the backbone lacks, a pretrained file that is
/// not there) is found by validate, not at the run's start.
#[test]
fn validate_builds_the_networks() {
    let dir = setup();
    for (set, expected) in [
        ("byol.embedding_layer=\"foo\"", "backbone has no feature tap 'foo'"),
        // A builder's error that names its key is pointed at the --set that gave it.
        ("backbone.width=0", "--set backbone.width=0: building the BYOL networks"),
        // A key in a table set whole is that --set's.
        (
            "backbone={type=\"resnet18\", width=0}",
            "--set backbone={type=\"resnet18\", width=0}: building the BYOL networks",
        ),
        (
            "optimizer={type=\"lars\", lr=-1}",
            "--set optimizer={type=\"lars\", lr=-1}: optimizer.lr = -1 is out of range",
        ),
        (
            "backbone.pretrained=\"gone.safetensors\"",
            "cannot read weights from gone.safetensors: no such file",
        ),
    ] {
        let out = byol_run(dir.path(), &["validate", "tiny.toml", "--set", set]);
        let all = text(&out);
        assert!(!out.status.success() && all.contains(expected), "{set}: {all}");
    }
}

/// Settings that are valid but most likely not meant are said: a warmup as long as the run (by
/// validate, and at the start), views or evaluation images cut from much smaller decoded images
/// (at the start, where the data is read; the evaluation's only when there is a kNN monitor).
#[test]
fn a_warmup_as_long_as_the_run_and_upscaled_images_are_warned_about() {
    let dir = setup();
    let out = byol_run(
        dir.path(),
        &[
            "validate",
            "tiny.toml",
            "--set",
            "schedule.epochs=3",
            "--set",
            "schedule.warmup_epochs=3",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning: schedule.warmup_epochs = 3 is not shorter than schedule.epochs = 3"),
        "{all}"
    );
    let upscaled = [
        "tiny.toml",
        "--quiet",
        "--set",
        "schedule.epochs=1",
        "--set",
        "augment.image_size=32",
    ];
    let out = byol_run(dir.path(), &upscaled);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(
        all.matches("warning: the 32 px views are cut from images decoded at 16 px (2.0x upscaled)")
            .count(),
        1,
        "{all}"
    );
    // The views fit the squares, but the evaluation's centre crop wants twice their side.
    let out = byol_run(
        dir.path(),
        &[
            "tiny.toml",
            "--quiet",
            "--set",
            "schedule.epochs=1",
            "--set",
            "augment.eval_crop_fraction=0.5",
            "--fresh",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(
            "warning: the kNN monitor's images are decoded at 16 px and resized to 32 px (2.0x upscaled) \
             before their central 16 px: set dataset.image_size to 32"
        ),
        "{all}"
    );
    // Without labelled test images there is no kNN monitor, and nothing to say about its images.
    let out = byol_run(
        dir.path(),
        &[
            "tiny.toml",
            "--quiet",
            "--set",
            "schedule.epochs=1",
            "--set",
            "augment.eval_crop_fraction=0.5",
            "--set",
            "dataset.test_size=0",
            "--fresh",
        ],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("kNN monitor's images"), "{all}");
}

/// A micro-batch of one image leaves the heads' batch norms without statistics (a NaN variance
/// in PyTorch's formula): refused with what to change, before any step. Two processes with
/// synchronized batch norm have two images per statistic and are not concerned.
#[test]
fn a_micro_batch_of_one_image_is_refused() {
    let dir = setup();
    let out = byol_run(
        dir.path(),
        &[
            "tiny.toml",
            "--set",
            "schedule.batch_size=4",
            "--set",
            "schedule.accumulate=4",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("is 1 image per batch-norm batch") && all.contains("accumulate less"),
        "{all}"
    );
    // `validate` finds it too, naming the flag.
    let error = refused(dir.path(), &["validate", "tiny.toml", "--set", "schedule.batch_size=1"]);
    assert!(
        error.contains("--set schedule.batch_size=1: schedule.batch_size = 1 over schedule.accumulate = 1 is 1 image"),
        "{error}"
    );
}

/// `validate` lists the data as a start does (it decodes no image): what the start refuses from
/// the listing alone is refused by `validate` too, for a plain file and every trial of a sweep.
#[test]
fn validate_refuses_data_that_the_start_refuses_from_its_listing() {
    let dir = setup();
    let folder = TINY.replace(
        "type = \"synthetic\"\ntrain_size = 512\ntest_size = 64\nimage_size = 16",
        "type = \"image_folder\"\ntrain = \"data/train\"\nimage_size = 16",
    );
    assert!(folder.contains("data/train"));
    std::fs::write(dir.path().join("folder.toml"), &folder).unwrap();
    std::fs::create_dir_all(dir.path().join("data/train")).unwrap();
    let error = refused(dir.path(), &["validate", "folder.toml"]);
    assert!(
        error.contains("data/train has no class sub-folders and no images"),
        "{error}"
    );

    super::random_pngs(&dir.path().join("data/train"), &["a", "b"], 3);
    let out = byol_run(
        dir.path(),
        &["validate", "folder.toml", "--set", "schedule.batch_size=6"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let error = refused(
        dir.path(),
        &["validate", "folder.toml", "--set", "schedule.batch_size=8"],
    );
    assert!(
        error.contains("schedule.batch_size = 8 is larger than the 6 training images"),
        "{error}"
    );

    std::fs::write(dir.path().join("list.txt"), "a/0.png\na/missing.png\n").unwrap();
    let list = [
        "--set",
        "schedule.batch_size=2",
        "--set",
        "dataset.file_list=\"list.txt\"",
    ];
    let error = refused(dir.path(), &[&["validate", "folder.toml"][..], &list].concat());
    assert!(
        error.contains("list.txt line 2") && error.contains("missing.png"),
        "{error}"
    );

    // Each trial of a sweep, against its own batch.
    let sweep = format!("{folder}\n[sweep]\nmetric = \"final_loss\"\ngoal = \"min\"\n[sweep.parameters]\n\"schedule.batch_size\" = [2, 8]\n");
    std::fs::write(dir.path().join("sweep.toml"), sweep).unwrap();
    let error = refused(dir.path(), &["validate", "sweep.toml"]);
    assert!(
        error.contains("trial-002") && error.contains("schedule.batch_size = 8 is larger than the 6 training images"),
        "{error}"
    );
    let error = refused(dir.path(), &["sweep", "sweep.toml"]);
    assert!(
        error.contains("no trial was run") && error.contains("trial-002"),
        "{error}"
    );
    // Nothing trained: no checkpoints folder anywhere under the working directory.
    fn holds_checkpoints(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir).unwrap().flatten().any(|entry| {
            entry.file_name() == "checkpoints" || (entry.path().is_dir() && holds_checkpoints(&entry.path()))
        })
    }
    assert!(!holds_checkpoints(dir.path()), "{error}");
}

/// `validate` says what a start says about the data it lists: a folder read as unlabelled, files
/// of other formats, images beside class folders, classes without images, for `[dataset]` and
/// `[eval]`'s folders alike; each line as the start prints it.
#[test]
fn validate_says_what_the_start_says_about_the_data_listed() {
    let dir = setup();
    let data = dir.path().join("data");
    super::random_pngs(&data.join("train"), &["a", "b"], 3);
    std::fs::create_dir_all(data.join("train/empty")).unwrap();
    std::fs::write(data.join("train/a/photo.webp"), b"not read").unwrap();
    for (i, image) in ["a/0.png", "a/1.png", "b/0.png", "b/1.png"].iter().enumerate() {
        std::fs::create_dir_all(data.join("flat")).unwrap();
        std::fs::copy(data.join("train").join(image), data.join(format!("flat/{i}.png"))).unwrap();
    }
    super::random_pngs(&data.join("eval-train"), &["a", "b"], 2);
    super::random_pngs(&data.join("eval-test"), &["a", "b"], 2);
    std::fs::copy(data.join("eval-test/a/0.png"), data.join("eval-test/loose.png")).unwrap();

    let folder = |train: &str| {
        byol_testkit::fixtures::with_table(
            TINY,
            "dataset",
            &format!("type = \"image_folder\"\ntrain = \"{train}\"\nimage_size = 16"),
        )
    };
    let cases = [
        (
            "classes.toml",
            folder("data/train"),
            ["formats that are not read", "hold no images"],
        ),
        (
            "flat.toml",
            folder("data/flat"),
            ["read as unlabelled", "note: dataset.train = data/flat"],
        ),
        (
            "eval.toml",
            byol_testkit::fixtures::with_keys(
                &folder("data/flat"),
                &[
                    ("eval.train", "\"data/eval-train\""),
                    ("eval.test", "\"data/eval-test\""),
                ],
            ),
            ["read as unlabelled", "are in no class folder"],
        ),
    ];
    for (name, experiment, expected) in cases {
        std::fs::write(dir.path().join(name), experiment).unwrap();
        let args = ["--set", "schedule.batch_size=2", "--set", "schedule.epochs=1"];
        let validated = byol_run(dir.path(), &[&["validate", name][..], &args].concat());
        assert!(validated.status.success(), "{name}: {}", text(&validated));
        let said = text(&validated);
        for words in expected {
            assert!(said.contains(words), "{name}: validate does not say {words:?}:\n{said}");
        }
        let started = byol_run(dir.path(), &[&[name][..], &args].concat());
        assert!(started.status.success(), "{name}: {}", text(&started));
        let start_said = text(&started);
        let about_data: Vec<&str> = said
            .lines()
            .filter(|line| line.starts_with("note: ") || line.starts_with("warning: "))
            .filter(|line| line.contains("data/"))
            .collect();
        assert!(!about_data.is_empty(), "{name}: nothing said about the data:\n{said}");
        for line in about_data {
            assert!(
                start_said.lines().any(|l| l == line),
                "{name}: validate says what the start does not:\n{line}\nthe start:\n{start_said}"
            );
        }
    }
}

/// A memory cache larger than this machine's memory is refused by validate, as by the start,
/// from the files listed: empty PNGs at 4096 pixels a side (48 MiB each decoded), one more per
/// class than the machine's memory (or its container's limit) holds of them.
#[test]
fn validate_refuses_a_memory_cache_the_machine_cannot_hold() {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    let limit = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map_or(total_kib * 1024, |group| group.min(total_kib * 1024));
    let per_image = 3 * 4096 * 4096;
    let per_class = limit / per_image / 2 + 1;
    let dir = setup();
    for class in ["a", "b"] {
        let folder = dir.path().join("data").join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            std::fs::File::create(folder.join(format!("{i:06}.png"))).unwrap();
        }
    }
    let folder = TINY.replace(
        "type = \"synthetic\"\ntrain_size = 512\ntest_size = 64\nimage_size = 16",
        "type = \"image_folder\"\ntrain = \"data\"\nimage_size = 4096",
    );
    std::fs::write(dir.path().join("big.toml"), folder).unwrap();
    let error = refused(dir.path(), &["validate", "big.toml"]);
    assert!(
        error.contains(&format!(
            "the {} images of data at 4096x4096 pixels take",
            2 * per_class
        )) && error.contains("set dataset.cache = \"none\""),
        "{error}"
    );
}
