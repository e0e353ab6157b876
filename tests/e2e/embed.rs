//! `byol-run embed` over awkward folders: a symbolic-link loop is entered once, unreadable
//! images and broken links are skipped with one counted warning (as training skips them), and
//! `--strict` stops at the first one; hidden files and folders (macOS's `._x.jpg` among them) are
//! left out as training leaves them out; the names file keeps one line per row whatever the
//! names hold; a wrong `--out` extension stops before any work. And what `export` writes loads
//! into torchvision, whose forward is what `embed` computes; a failed write of either leaves the
//! earlier output whole.

use super::TINY;
use super::{byol_run, text};

fn png(path: &std::path::Path) {
    let image = tch::Tensor::randint(255, [3, 20, 24], (tch::Kind::Uint8, tch::Device::Cpu));
    tch::vision::image::save(&image, path).unwrap();
}

#[test]
fn loops_are_entered_once_and_bad_files_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let out = byol_run(
        dir.path(),
        &["tiny.toml", "--run-dir", "r", "--quiet", "--set", "schedule.epochs=1"],
    );
    assert!(out.status.success(), "{}", text(&out));

    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("a")).unwrap();
    for name in ["a/0.png", "a/1.png", "2.png"] {
        png(&images.join(name));
    }
    std::os::unix::fs::symlink("..", images.join("a/loop")).unwrap(); // images/a/loop -> images
    std::os::unix::fs::symlink("missing.png", images.join("dangling.png")).unwrap();
    // A second name for an image: embed gives it its own row, as it gives every name.
    std::os::unix::fs::symlink("a/0.png", images.join("alias.png")).unwrap();
    // (Its name is not UTF-8 either: the list writes it byte for byte, as the names file does.)
    let broken = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"broken\xff.jpg");
    std::fs::write(images.join(broken), "not a jpeg").unwrap();
    // Hidden: a resource fork macOS leaves beside each file, and a hidden folder of images.
    std::fs::write(images.join("._2.png"), b"\0\x05\x16\x07 AppleDouble").unwrap();
    std::fs::create_dir_all(images.join(".thumbnails")).unwrap();
    png(&images.join(".thumbnails/t.png"));
    png(&images.join("new\nline.png"));
    png(&images.join("back\\slash.png"));
    // A name that is not UTF-8, and a pipe named like an image (opening it would wait forever).
    let not_utf8 = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\xfe.png");
    png(&dir.path().join("utf8.png"));
    std::fs::rename(dir.path().join("utf8.png"), images.join(not_utf8)).unwrap();
    let fifo = std::ffi::CString::new(images.join("pipe.png").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let embed = |extra: &[&str]| {
        let mut args = vec!["embed", "r/checkpoints/last", "--images", "images", "--out", "emb.npy"];
        args.extend_from_slice(extra);
        byol_run(dir.path(), &args)
    };
    let out = embed(&[]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("embedded 7 images"), "{all}");
    assert!(all.contains("were not read there, to read each folder once"), "{all}");
    assert!(!all.contains("class folder"), "images embedded have no classes: {all}");
    assert!(
        all.contains("not files (pipes, sockets or devices)") && all.contains("pipe.png"),
        "{all}"
    );
    assert!(
        all.contains("warning: skipped 2 unreadable image(s)") && all.contains("--strict"),
        "{all}"
    );
    let names = std::fs::read_to_string(dir.path().join("emb.npy.names.txt")).unwrap();
    assert_eq!(
        names, "2.png\na/0.png\na/1.png\nalias.png\nback\\\\slash.png\nnew\\nline.png\n\\xff\\xfe.png\n",
        "one escaped line per row"
    );
    let emb = tch::Tensor::read_npy(dir.path().join("emb.npy")).unwrap();
    assert_eq!(emb.size()[0], 7);
    // A folder where a list goes is found before anything is written.
    std::fs::create_dir(dir.path().join("other.npy.skipped.txt")).unwrap();
    let out = byol_run(dir.path(), &["embed", "r", "--images", "images", "--out", "other.npy"]);
    assert!(
        !out.status.success() && text(&out).contains("other.npy.skipped.txt is a folder"),
        "{}",
        text(&out)
    );
    assert!(!dir.path().join("other.npy").exists());
    // Every skipped one is listed beside the embeddings, with why.
    let list = std::fs::read_to_string(dir.path().join("emb.npy.skipped.txt")).unwrap();
    assert_eq!(list.lines().count(), 2, "{list}");
    assert!(list.contains("broken\\xff.jpg: "), "{list}");
    assert!(
        list.contains("dangling.png: a broken link: it leads to images/missing.png, which does not exist"),
        "{list}"
    );

    let out = embed(&["--strict"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("broken") && all.contains("--strict stops"), "{all}");
    assert!(!all.contains("panicked"), "{all}");

    // A folder copied from a Mac: --strict reads its images and passes over the resource forks.
    let mac = dir.path().join("mac");
    std::fs::create_dir_all(&mac).unwrap();
    png(&mac.join("photo.png"));
    std::fs::write(mac.join("._photo.png"), b"\0\x05\x16\x07 AppleDouble").unwrap();
    let out = byol_run(
        dir.path(),
        &[
            "embed",
            "r/checkpoints/last",
            "--images",
            "mac",
            "--out",
            "mac.npy",
            "--strict",
        ],
    );
    let all = text(&out);
    assert!(out.status.success() && all.contains("embedded 1 images"), "{all}");
    assert!(!all.contains("warning"), "{all}");
    // Written where an earlier embedding skipped images, that embedding's list goes with it.
    std::fs::copy(
        dir.path().join("emb.npy.skipped.txt"),
        dir.path().join("mac.npy.skipped.txt"),
    )
    .unwrap();
    let out = byol_run(dir.path(), &["embed", "r", "--images", "mac", "--out", "mac.npy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !dir.path().join("mac.npy.skipped.txt").exists(),
        "a stale list of skipped images is left"
    );

    // A run trained on a GPU, embedded on a machine without one: on the CPU, with a note, unless
    // --device asks for the GPU. (The manifest's experiment is not hashed: the GPU is edited in.)
    if !tch::Cuda::is_available() {
        let manifest = dir.path().join("r/checkpoints/last/manifest.json");
        let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
        let config = json["config"].as_str().unwrap().to_string();
        let mut experiment: toml::Table = toml::from_str(&config).unwrap();
        experiment["run"]["device"] = "cuda".into();
        json["config"] = toml::to_string(&experiment).unwrap().into();
        std::fs::write(&manifest, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        let out = embed(&[]);
        let all = text(&out);
        assert!(out.status.success() && all.contains("embedded 7 images"), "{all}");
        assert!(
            all.contains("note: the run trained on run.device = \"cuda\", not usable here"),
            "{all}"
        );
        let out = embed(&["--device", "cuda"]);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains("error: --device cuda but CUDA is not available")
                && !all.contains("run.device = \"cuda\" but"),
            "the flag, not the run's key: {all}"
        );
    }

    // A wrong --out extension stops before the checkpoint or the images are read.
    let out = byol_run(
        dir.path(),
        &[
            "embed",
            "r/checkpoints/last",
            "--images",
            "no-such-folder",
            "--out",
            "emb.txt",
        ],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("--out emb.txt must end in .safetensors or .npy"), "{all}");
    assert!(!dir.path().join("emb.txt.names.txt").exists());

    // An output inside the run's checkpoints is refused (a file of a checkpoint's name there would
    // damage it), by export and embed, and the checkpoint stays intact; so is a folder that does
    // not exist, before any image is read.
    let model = dir.path().join("r/checkpoints/last/model.safetensors");
    let before = std::fs::read(&model).unwrap();
    let refused = [
        ["export", "r", "--out", "r/checkpoints/last/model.safetensors"].as_slice(),
        &["export", "r", "--out", "r/checkpoints/other.safetensors"],
        &[
            "embed",
            "r",
            "--images",
            "images",
            "--out",
            "r/checkpoints/last/model.safetensors",
        ],
    ];
    for args in refused {
        let out = byol_run(dir.path(), args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(
            all.contains("a run's checkpoints") && all.contains("write it elsewhere"),
            "{all}"
        );
    }
    // Through a link, the file written is the link's target: a link to a checkpoint's file is
    // refused as the file itself. The run folder's own records are refused to eval's --json.
    std::os::unix::fs::symlink(&model, dir.path().join("link.safetensors")).unwrap();
    let summary = dir.path().join("r/summary.json");
    let summary_before = std::fs::read(&summary).unwrap();
    let refused = [
        (
            ["export", "r", "--out", "link.safetensors"].as_slice(),
            "a run's checkpoints",
        ),
        (
            &[
                "eval",
                "knn",
                "r",
                "--train",
                "images",
                "--test",
                "images",
                "--json",
                "r/summary.json",
            ],
            "would replace summary.json, a record of the run folder",
        ),
        (
            &[
                "eval",
                "linear",
                "r",
                "--train",
                "images",
                "--test",
                "images",
                "--json",
                "r/checkpoints/last/manifest.json",
            ],
            "a run's checkpoints",
        ),
    ];
    for (args, why) in refused {
        let out = byol_run(dir.path(), args);
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        assert!(all.contains(why), "{all}");
    }
    assert_eq!(std::fs::read(&model).unwrap(), before, "the checkpoint is untouched");
    assert_eq!(std::fs::read(&summary).unwrap(), summary_before);
    // Nor a file in a record folder of the run (its TensorBoard log), a sweep folder's
    // summaries, or a folder that cannot be written (found before any image is read).
    let events = std::fs::read_dir(dir.path().join("r/tensorboard"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .expect("an event file");
    let events_before = std::fs::read(&events).unwrap();
    let sweep = dir.path().join("sw");
    std::fs::create_dir_all(sweep.join("trial-001")).unwrap();
    std::fs::write(sweep.join("trial-001/sweep-trial.toml"), "").unwrap();
    std::fs::write(sweep.join("run.lock"), "").unwrap();
    let eval_into = |json: &str| {
        let args = [
            "eval", "knn", "r", "--train", "images", "--test", "images", "--json", json,
        ];
        text(&byol_run(dir.path(), &args))
    };
    let all = eval_into(events.to_str().unwrap());
    assert!(
        all.contains("would replace tensorboard/events") && all.contains("a record of the run folder"),
        "{all}"
    );
    assert_eq!(std::fs::read(&events).unwrap(), events_before);
    let all = eval_into("sw/summary.csv");
    assert!(
        all.contains("would replace summary.csv, a record of the sweep folder"),
        "{all}"
    );
    assert!(!sweep.join("summary.csv").exists());
    // A file of the user's own in the sweep folder is none of the sweep's.
    let out = byol_run(dir.path(), &["export", "r", "--out", "sw/best.safetensors"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(
        dir.path(),
        &["embed", "r", "--images", "images", "--out", "/proc/self/e.npy"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("cannot be written") && !all.contains("images/"), "{all}");
    let out = byol_run(
        dir.path(),
        &["embed", "r", "--images", "no-such-folder", "--out", "gone/emb.npy"],
    );
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("the folder gone does not exist; create it first"), "{all}");
    let out = byol_run(dir.path(), &["export", "r", "--out", "r/backbone.safetensors"]);
    assert!(
        out.status.success(),
        "the run folder itself takes exports: {}",
        text(&out)
    );
    // The same checkpoint exported again: the same bytes (its metadata in name order).
    let out = byol_run(dir.path(), &["export", "r", "--out", "again.safetensors"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("note: backbone.width = 4: torchvision.models.resnet18() cannot load this export"),
        "{all}"
    );
    assert!(
        std::fs::read(dir.path().join("again.safetensors")).unwrap()
            == std::fs::read(dir.path().join("r/backbone.safetensors")).unwrap()
    );
    // A project's own `checkpoints/exports` beside its config.toml is no run's checkpoint.
    std::fs::create_dir_all(dir.path().join("proj/checkpoints/exports")).unwrap();
    std::fs::write(dir.path().join("proj/config.toml"), "").unwrap();
    let out = byol_run(
        dir.path(),
        &["export", "r", "--out", "proj/checkpoints/exports/b.safetensors"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(
        dir.path(),
        &["export", "r", "--out", "r/backbone.safetensors/x.safetensors"],
    );
    let all = text(&out);
    assert!(
        !out.status.success() && all.contains("is a file, not a folder"),
        "{all}"
    );
}

/// A one-epoch run in `<dir>/r` of the tiny experiment with torchvision's ResNet-18 widths (64),
/// and `sets` as `--set`s.
fn resnet18_run(sets: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let mut args = vec!["tiny.toml", "--run-dir", "r", "--quiet"];
    for set in ["backbone.width=64", "schedule.epochs=1"].iter().chain(sets) {
        args.extend(["--set", set]);
    }
    let out = byol_run(dir.path(), &args);
    assert!(out.status.success(), "{}", text(&out));
    dir
}

/// `count` random 16 px PNGs in `<dir>/images` (the views' size, so that the evaluation
/// transform is the normalization) embedded by run `r`: the folder, the embeddings and their
/// names, one a line.
fn embed_random_images(dir: &std::path::Path, count: usize) -> (std::path::PathBuf, tch::Tensor, String) {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..count {
        let image = tch::Tensor::randint(256, [3, 16, 16], (tch::Kind::Uint8, tch::Device::Cpu));
        tch::vision::image::save(&image, images.join(format!("{i}.png"))).unwrap();
    }
    let out = byol_run(dir, &["embed", "r", "--images", "images", "--out", "emb.npy"]);
    assert!(out.status.success(), "{}", text(&out));
    let embeddings = tch::Tensor::read_npy(dir.join("emb.npy")).unwrap();
    let names = std::fs::read_to_string(dir.join("emb.npy.names.txt")).unwrap();
    (images, embeddings, names)
}

/// `embed`'s rows against torchvision's forward of the export (`embeddings`): both run fp32
/// kernels in eval mode, ours on two threads, so they differ by float32 roundings of sums taken
/// in another order. Held within a few times torchvision's own float32 error against the exact
/// result (`embeddings_f64`: the same bytes, normalized and forwarded in float64), the bound of
/// [`byol_testkit::rounding`].
fn assert_same_embeddings(ours: &tch::Tensor, reference: &std::collections::HashMap<String, tch::Tensor>) {
    let what = ("embed's rows", "against torchvision's forward of the export");
    byol_testkit::rounding::assert_within_rounding(reference, "embeddings", ours, what);
}

/// The lines of a reference script that forward `images` (uint8, NCHW) through `model`,
/// normalized by the tensors `mean` and `std`, into `embeddings` and, in float64 from the same
/// bytes, `embeddings_f64`.
const FORWARD_IN_BOTH_PRECISIONS: &str = r#"
with torch.no_grad():
    outputs["embeddings"] = model((images.float() / 255 - mean) / std)
    outputs["embeddings_f64"] = model.double()((images.double() / 255 - mean.double()) / std.double())
"#;

/// What `export` writes is a torchvision state_dict: torchvision's own ResNet-18 loads it
/// strictly, and its forward on the images (read and normalized by torchvision) is what
/// `embed` wrote, within float32 rounding ([`assert_same_embeddings`]).
#[test]
fn export_loads_into_torchvision_and_embed_matches_its_forward() {
    let (mean, std) = ("[0.4, 0.45, 0.5]", "[0.2, 0.25, 0.3]");
    let dir = resnet18_run(&[
        "dataset.train_size=64",
        &format!("augment.mean={mean}"),
        &format!("augment.std={std}"),
    ]);
    let out = byol_run(dir.path(), &["export", "r", "--out", "backbone.safetensors"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    // The CIFAR stem's replacement, as the check below makes it.
    assert!(
        all.contains("note: backbone.cifar_stem = true: before torchvision.models.resnet18() loads this export")
            && all.contains("model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)"),
        "{all}"
    );

    let (images, embeddings, names) = embed_random_images(dir.path(), 5);

    let script = format!(
        r#"
import torchvision
from torchvision.io import read_image
model = torchvision.models.resnet18()
model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
model.maxpool = torch.nn.Identity()
model.fc = torch.nn.Identity()
model.load_state_dict(load_file({export:?}), strict=True)
model.eval()
from safetensors import safe_open
with safe_open({export:?}, "pt") as f:
    outputs["step"] = torch.tensor(int(f.metadata()["byol_rs.step"]))
images = torch.stack([read_image({images:?} + "/" + name) for name in {names:?}.split()])
mean, std = torch.tensor({mean}).view(1, 3, 1, 1), torch.tensor({std}).view(1, 3, 1, 1)
{FORWARD_IN_BOTH_PRECISIONS}"#,
        export = dir.path().join("backbone.safetensors").to_str().unwrap(),
        images = images.to_str().unwrap(),
    );
    let reference = byol_testkit::run_python(&script, &[]);
    // The metadata's tables, from the file's header: the [backbone] table the run trained.
    let export = std::fs::read(dir.path().join("backbone.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(export[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&export[8..8 + header_len]).unwrap();
    let metadata = &header["__metadata__"];
    let table = |key: &str| toml::from_str::<toml::Table>(metadata[key].as_str().unwrap()).unwrap();
    let backbone = table("byol_rs.backbone");
    assert_eq!(backbone["width"].as_integer(), Some(64), "{metadata}");
    assert_eq!(table("byol_rs.experiment")["backbone"].as_table(), Some(&backbone));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r/summary.json")).unwrap()).unwrap();
    assert_eq!(
        reference["step"].int64_value(&[]),
        summary["steps"].as_i64().unwrap(),
        "the metadata's step"
    );
    assert_same_embeddings(&embeddings, &reference);

    // A write that fails (here: its partial file cannot be created, as a full disk would fail it)
    // leaves the earlier outputs whole, and the embeddings still paired with their names.
    let kept: Vec<(&str, Vec<u8>)> = ["backbone.safetensors", "emb.npy", "emb.npy.names.txt"]
        .into_iter()
        .map(|name| (name, std::fs::read(dir.path().join(name)).unwrap()))
        .collect();
    std::fs::create_dir(dir.path().join("backbone.safetensors.partial")).unwrap();
    let out = byol_run(dir.path(), &["export", "r", "--out", "backbone.safetensors"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("cannot write backbone.safetensors"),
        "{}",
        text(&out)
    );
    std::fs::create_dir(dir.path().join("emb.npy.names.txt.partial")).unwrap();
    std::fs::remove_file(images.join("4.png")).unwrap();
    let out = byol_run(dir.path(), &["embed", "r", "--images", "images", "--out", "emb.npy"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cannot write emb.npy.names.txt"), "{}", text(&out));
    for (name, bytes) in kept {
        assert!(std::fs::read(dir.path().join(name)).unwrap() == bytes, "{name} changed");
    }
    assert!(!dir.path().join("emb.npy.partial").exists(), "a partial file is left");
}

/// With the embedding taken inside the backbone (`byol.embedding_layer = "layer3"`), the layers
/// past it are never trained: `export` leaves them out, says so and records the layer, and
/// torchvision's ResNet-18 with those layers replaced by `Identity` loads the rest (missing
/// exactly `layer4.*`) and computes what `embed` wrote (tolerance as above).
#[test]
fn export_leaves_out_the_layers_past_the_embedding() {
    let dir = resnet18_run(&["dataset.train_size=32", "byol.embedding_layer=\"layer3\""]);
    let out = byol_run(dir.path(), &["export", "r", "--out", "backbone.safetensors"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("past byol.embedding_layer = \"layer3\" (layer4.0.*, layer4.1.*)"),
        "{all}"
    );
    let (images, embeddings, names) = embed_random_images(dir.path(), 4);
    let script = format!(
        r#"
import json, torchvision
from torchvision.io import read_image
from safetensors import safe_open
model = torchvision.models.resnet18()
model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem
model.maxpool = torch.nn.Identity()
model.layer4 = torch.nn.Identity()
model.fc = torch.nn.Identity()
expected = {{k for k in model.state_dict()}}
result = model.load_state_dict(load_file({export:?}), strict=False)
assert not result.missing_keys and not result.unexpected_keys, result
full = torchvision.models.resnet18().state_dict()
left_out = sorted(k for k in full if k not in expected and not k.startswith("fc."))
assert all(k.startswith("layer4.") for k in left_out) and left_out, left_out
with safe_open({export:?}, "pt") as f:
    assert f.metadata()["byol_rs.embedding_layer"] == "layer3", f.metadata()
    assert not any(k.startswith("layer4.") for k in f.keys())
    preprocess = json.loads(f.metadata()["byol_rs.preprocess"])
model.eval()
mean = torch.tensor(preprocess["mean"]).view(1, 3, 1, 1)
std = torch.tensor(preprocess["std"]).view(1, 3, 1, 1)
images = torch.stack([read_image({images:?} + "/" + name) for name in {names:?}.split()])
{FORWARD_IN_BOTH_PRECISIONS}"#,
        export = dir.path().join("backbone.safetensors").to_str().unwrap(),
        images = images.to_str().unwrap(),
    );
    let reference = byol_testkit::run_python(&script, &[]);
    assert_eq!(embeddings.size()[1], 256, "layer3's channels");
    assert_same_embeddings(&embeddings, &reference);

    // The export starts another run of the same backbone: the layers it left out keep their
    // initial values there, said in a note; a file without the record still lacks them.
    let again = [
        "tiny.toml",
        "--run-dir",
        "again",
        "--quiet",
        "--set",
        "backbone.width=64",
        "--set",
        "schedule.epochs=1",
        "--set",
        "byol.embedding_layer=\"layer3\"",
        "--set",
        "backbone.pretrained=\"backbone.safetensors\"",
    ];
    let out = byol_run(dir.path(), &again);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("backbone.safetensors leaves out 30 tensors its run never trained"),
        "{all}"
    );
    let stripped = dir.path().join("stripped.safetensors");
    let tensors = tch::Tensor::read_safetensors(dir.path().join("backbone.safetensors")).unwrap();
    tch::Tensor::write_safetensors(&tensors, &stripped).unwrap();
    let mut without_record = again.to_vec();
    without_record[2] = "without-record";
    without_record[11] = "backbone.pretrained=\"stripped.safetensors\"";
    let out = byol_run(dir.path(), &without_record);
    assert!(
        !out.status.success() && text(&out).contains("missing keys (30): layer4."),
        "{}",
        text(&out)
    );
}

/// `embed` and `export` of a run folder whose run trains on, saving a checkpoint every step and
/// keeping only the newest: the checkpoint found is often removed while it is read. The command
/// then reads the newest one again, and when the run outpaces it each time it says so, never
/// with a bare "file not found".
#[test]
fn a_run_that_trains_on_is_read_from_its_newest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), TINY).unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    png(&images.join("0.png"));
    let mut training = super::byol_run_command(dir.path())
        .args(["tiny.toml", "--run-dir", "r", "--quiet"])
        .args(["--set", "schedule.epochs=1000", "--set", "dataset.train_size=64"])
        .args(["--set", "checkpoint.every_steps=1", "--set", "checkpoint.keep_last=1"])
        .args(["--set", "eval.curve_points=0", "--set", "eval.before_training=false"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("training.err")).unwrap())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !dir.path().join("r/checkpoints/last").exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut failures = Vec::new();
    for i in 0..12 {
        let out = match i % 2 {
            0 => byol_run(dir.path(), &["embed", "r", "--images", "images", "--out", "e.npy"]),
            _ => byol_run(dir.path(), &["export", "r", "--out", "b.safetensors"]),
        };
        let all = text(&out);
        if !out.status.success() && !all.contains("before it was read: it saves them faster than they are read") {
            failures.push(all);
        }
    }
    let still_training = training.try_wait().unwrap().is_none();
    let _ = training.kill();
    let _ = training.wait();
    let err = std::fs::read_to_string(dir.path().join("training.err")).unwrap_or_default();
    assert!(still_training, "the run ended early: {err}");
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

/// A module whose output is its input, flattened (plus a parameter that changes nothing, for
/// the optimizer): what `embed` writes is then the evaluation's pixels themselves.
const PIXELS_MODULE: &str = r#"
import torch

class Pixels(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.flatten(1) + 0.0 * self.unused
"#;

/// `embed` decodes images to the run's `dataset.image_size` before the evaluation's resize and
/// crop, as the kNN monitor's images were decoded: with squares decoded at 24 px and an
/// evaluation that resizes to 32 and crops 16, its pixels are the image's central square resized
/// to 24 px by PIL (bilinear, antialiased) through torchvision's `Resize(32)` and `CenterCrop(16)`. The tolerance is the
/// decode's: within 1 level of PIL's (the resize that follows mixes levels convexly), over the
/// std. Decoding straight to 32 px differs by tens of levels on these noisy images.
#[test]
fn embed_sees_the_pixels_the_knn_monitor_sees() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pixels.py"), PIXELS_MODULE).unwrap();
    let module = d.join("pixels.pt");
    byol_testkit::run_python(
        &format!(
            "sys.path.insert(0, {:?})\nfrom pixels import Pixels\ntorch.jit.script(Pixels()).save({:?})\n",
            d.to_str().unwrap(),
            module.to_str().unwrap()
        ),
        &[],
    );
    for (split, per_class) in [("train", 8), ("test", 3)] {
        for class in ["a", "b"] {
            let folder = d.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..per_class {
                // Square, tall and wide (the central square's offset a half pixel) images.
                let [h, w] = [[40, 40], [45, 30], [31, 45]][i % 3];
                let image = tch::Tensor::randint(256, [3, h, w], (tch::Kind::Uint8, tch::Device::Cpu));
                tch::vision::image::save(&image, folder.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let experiment = byol_testkit::fixtures::with_table(
        TINY,
        "dataset",
        "type = \"image_folder\"\ntrain = \"train\"\ntest = \"test\"\nimage_size = 24\n",
    );
    let experiment = byol_testkit::fixtures::with_table(
        &experiment,
        "backbone",
        "type = \"torchscript\"\npath = \"pixels.pt\"\ninput_size = 16\n",
    );
    std::fs::write(d.join("pixels.toml"), experiment).unwrap();
    let out = byol_run(
        d,
        &[
            "pixels.toml",
            "--run-dir",
            "r",
            "--quiet",
            "--set",
            "byol.embedding_layer=\"output\"",
            "--set",
            "augment.eval_crop_fraction=0.5",
            "--set",
            "augment.mean=[0.5, 0.5, 0.5]",
            "--set",
            "augment.std=[0.25, 0.25, 0.25]",
            "--set",
            "schedule.batch_size=8",
            "--set",
            "schedule.epochs=1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = byol_run(d, &["embed", "r", "--images", "test", "--out", "emb.npy"]);
    assert!(out.status.success(), "{}", text(&out));
    let ours = tch::Tensor::read_npy(d.join("emb.npy")).unwrap();
    let names = std::fs::read_to_string(d.join("emb.npy.names.txt")).unwrap();
    // The export's metadata gives the same transform, through the README's own snippet.
    let out = byol_run(d, &["export", "r", "--out", "backbone.safetensors"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = "its inputs: the image's central square resized to 24x24, resized to 32, a central 16x16 crop, \
                pixels scaled to [0, 1], normalized with mean [0.5, 0.5, 0.5] and std [0.25, 0.25, 0.25]";
    assert!(text(&out).contains(said), "{}", text(&out));
    let script = format!(
        r#"
from PIL import Image
import numpy as np
import os
import torchvision.transforms.functional as F
rows = []
for name in {names:?}.split():
    image = Image.open({test:?} + "/" + name).convert("RGB")
    w, h = image.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    square = image.resize((24, 24), Image.BILINEAR, box=box)
    x = torch.from_numpy(np.asarray(square).copy()).permute(2, 0, 1).float() / 255
    x = F.center_crop(F.resize(x, [32], antialias=True), [16])
    rows.append(((x - 0.5) / 0.25).flatten())
outputs["pixels"] = torch.stack(rows)

os.chdir({d:?})
{readme}
outputs["from_metadata"] = torch.stack(
    [preprocess(Image.open({test:?} + "/" + name).convert("RGB")).flatten() for name in {names:?}.split()])
"#,
        test = d.join("test").to_str().unwrap(),
        d = d.to_str().unwrap(),
        readme = readme_python_block("byol_rs.preprocess"),
    );
    let reference = byol_testkit::run_python(&script, &[]);
    // Ours and PIL's central squares are each within one level of the exact resize (PIL rounds
    // to 8 bits after each of its two passes, half a level each), so within two levels of each
    // other; the float resize and crop after are convex combinations of them and keep that
    // bound, and the normalization divides it by the std. (One level held in most draws; a draw
    // of random images reached 1.09.)
    let tolerance = 2.0 / 255.0 / 0.25 + 1e-5;
    for (what, theirs) in [
        ("the monitor's pipeline in PyTorch", &reference["pixels"]),
        (
            "the README's transform from the export's metadata",
            &reference["from_metadata"],
        ),
    ] {
        assert_eq!(ours.size(), theirs.size());
        let difference = byol_testkit::max_abs_diff(&ours, theirs);
        assert!(
            difference <= tolerance,
            "embed's pixels differ from {what} by {difference} (tolerance {tolerance})"
        );
    }
}

/// The README's Python code block that contains `marker`.
fn readme_python_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(crate::repo_root().join("README.md")).unwrap();
    readme
        .split("```python\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("the README has no python block with {marker}"))
        .to_string()
}
