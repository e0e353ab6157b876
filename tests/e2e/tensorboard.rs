//! TensorBoard tells runs apart: each run writes its hyperparameters (HParams plugin) and its
//! resolved config (text plugin). Read back by TensorBoard's own reader and served by a real
//! TensorBoard on 127.0.0.1, after a 2-trial sweep.

use super::{byol_run, text};

/// The tiny config of resume.rs, 1 epoch of 4 steps, swept over two learning rates.
const SWEEP: &str = r#"
[run]
device = "cpu"
threads = 1
seed = 5

[dataset]
type = "synthetic"
train_size = 128
test_size = 64
image_size = 16

[backbone]
type = "resnet18"
cifar_stem = true
width = 4

[augment]
type = "byol"
preset = "cifar"
image_size = 16

[optimizer]
type = "lars"
lr = 0.5

[byol]
hidden_dim = 32
projection_dim = 16

[schedule]
epochs = 1
batch_size = 32
warmup_epochs = 0

[eval]
knn_k = 5

[sweep]
metric = "knn_gain"

[sweep.parameters]
"optimizer.lr" = [0.2, 0.8]
"#;

/// Reads the trials' event files with TensorBoard's EventAccumulator, then starts TensorBoard on
/// the sweep folder and asks its HParams and text endpoints.
const READ_BACK: &str = r#"
import json, urllib.request
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard import program

SWEEP_DIR = PLACEHOLDER
for trial, lr in (("trial-001", 0.2), ("trial-002", 0.8)):
    acc = EventAccumulator(f"{SWEEP_DIR}/{trial}/tensorboard", size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert abs(hparams["optimizer.lr"].number_value - lr) < 1e-12, hparams
    assert hparams["backbone.type"].string_value == "resnet18", hparams
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert end.session_end_info.status == 1, end  # STATUS_SUCCESS
    config = acc.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "[optimizer]" in config and f"lr = {lr}" in config, config
    assert "knn/gain" in acc.Tags()["scalars"], acc.Tags()

tb = program.TensorBoard()
# The logs loaded once, before the server answers (by default a thread loads them meanwhile, and a
# request can come first).
tb.configure(argv=[None, "--logdir", SWEEP_DIR, "--host", "127.0.0.1", "--port", "0", "--load_fast", "false",
                   "--reload_task", "blocking", "--reload_interval", "0"])
url = tb.launch().rstrip("/")

def post(path, body):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", "X-TensorBoard-Feature-Flags": "{}"})
    return json.load(urllib.request.urlopen(request, timeout=60))

experiment = post("/data/plugin/hparams/experiment", {"experimentName": ""})
names = {h["name"] for h in experiment["hparamInfos"]}
assert {"optimizer.lr", "backbone.type", "run.seed"} <= names, experiment
metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
assert {"knn/top1", "knn/gain", "train/loss"} <= metrics, metrics
groups = post("/data/plugin/hparams/session_groups", {
    "experimentName": "",
    "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
    "colParams": [{"hparam": "optimizer.lr"}, {"metric": {"tag": "knn/top1"}}],
    "startIndex": 0,
    "sliceSize": 100,
})["sessionGroups"]
assert len(groups) == 2, groups
assert sorted(g["hparams"]["optimizer.lr"] for g in groups) == [0.2, 0.8], groups
for g in groups:
    values = {v["name"]["tag"]: v["value"] for v in g["metricValues"]}
    assert 0.0 <= values["knn/top1"] <= 1.0, g

tags = json.load(urllib.request.urlopen(url + "/data/plugin/text/tags", timeout=60))
assert tags.get("trial-001/tensorboard") == ["config"], tags
run = urllib.parse.quote("trial-002/tensorboard")
shown = json.load(urllib.request.urlopen(f"{url}/data/plugin/text/text?run={run}&tag=config", timeout=60))
assert "lr = 0.8" in shown[0]["text"], shown
print("read back", sorted(names))
"#;

#[test]
fn a_sweeps_trials_show_their_hyperparameters_and_config_in_tensorboard() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny.toml"), SWEEP).unwrap();
    let out = byol_run(dir.path(), &["sweep", "tiny.toml", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    let sweep_dir = dir.path().join("runs/tiny-sweep");
    for trial in ["trial-001", "trial-002"] {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sweep_dir.join(trial).join("summary.json")).unwrap()).unwrap();
        let probe = summary["probe_top1_after"]
            .as_f64()
            .expect("the online probe's held-out accuracy");
        assert!((0.0..=1.0).contains(&probe), "{summary}");
        // The curve, as TensorBoard, has no probe point before training: it had seen nothing.
        let curve: serde_json::Value =
            serde_json::from_slice(&std::fs::read(sweep_dir.join(trial).join("knn-curve.json")).unwrap()).unwrap();
        assert_eq!(curve[0]["step"], 0, "{curve}");
        assert!(
            curve[0].get("probe_top1").is_none() && curve[0]["knn_top1"].is_f64(),
            "{curve}"
        );
        assert!(curve[1]["probe_top1"].is_f64(), "{curve}");
    }
    let table = std::fs::read_to_string(sweep_dir.join("summary.md")).unwrap();
    assert!(
        table.contains("| kNN before | kNN after | kNN top-5 | gain | probe | final loss | time (s) | img/s |"),
        "{table}"
    );
    let script = READ_BACK.replace("PLACEHOLDER", &format!("{:?}", sweep_dir.to_str().unwrap()));
    byol_testkit::run_python(&script, &[]);
}
