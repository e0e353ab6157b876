//! TorchScript modules exported by the venv's PyTorch inside the test: a small conv-BN net
//! (scripted and traced) and torchvision's ResNet-18 without its classifier. Forward and gradient
//! parity with PyTorch, the conformance harness, the EMA reaching the target module, and BYOL training through
//! the real runner.

use std::collections::HashMap;
use std::path::PathBuf;

use backbone_torchscript::{TorchScriptConfig, OUTPUT};
use byol::{Backbone, BackboneSpec, TargetUpdater};
use byol_testkit::{max_abs_diff, run_python};
use tch::{nn, Device, Kind, Tensor};

/// Takes this binary's turn with libtorch's global generator: the conformance harness seeds it
/// and builds twins from the seed, and a test that trains (or seeds) on another thread would draw
/// from it in between.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    GENERATOR.lock().unwrap_or_else(|e| e.into_inner())
}

/// The small module, written to a file in the test's folder: `torch.jit.script` reads the source.
const TINY_NET: &str = r#"
import torch

class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 12)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
"#;

/// Exports the modules into `DIR` and computes PyTorch's outputs on `inputs["x"]`.
const EXPORT: &str = r#"
import copy
sys.path.insert(0, DIR)
from tiny_net import TinyNet
torch.manual_seed(0)

def with_statistics(model):
    # Non-trivial running statistics, so that eval mode really reads them.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.1)
            m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()

x = inputs["x"]
tiny = with_statistics(TinyNet())
torch.jit.script(tiny).save(DIR + "/tiny_scripted.pt")
torch.jit.trace(tiny, x).save(DIR + "/tiny_traced.pt")
with torch.no_grad():
    outputs["tiny.eval"] = tiny(x)
for k, v in tiny.state_dict().items():
    outputs["tiny.state." + k] = v
trained = copy.deepcopy(tiny).train()
with torch.no_grad():
    outputs["tiny.train"] = trained(x)
for k, v in trained.named_buffers():
    outputs["tiny.after_train." + k] = v
graded = copy.deepcopy(tiny).train()
(graded(x) * inputs["w"]).sum().backward()
for k, p in graded.named_parameters():
    outputs["tiny.grad." + k] = p.grad
if RESNET:
    import torchvision
    resnet = torchvision.models.resnet18(num_classes=10)
    resnet.fc = torch.nn.Identity()
    resnet = with_statistics(resnet)
    torch.jit.script(resnet).save(DIR + "/resnet18.pt")
    with torch.no_grad():
        outputs["resnet18.eval"] = resnet(x)
"#;

struct Exported {
    dir: tempfile::TempDir,
    x: Tensor,
    w: Tensor,
    reference: HashMap<String, Tensor>,
    /// How to draw the same inputs again: `seed S (TORCHSCRIPT_SEED=S replays it)`.
    replay: String,
}

impl Exported {
    fn new(resnet: bool, image_size: i64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tiny_net.py"), TINY_NET).unwrap();
        let seed = byol_testkit::fresh_seed("TORCHSCRIPT_SEED");
        tch::manual_seed(seed);
        let x = Tensor::randn([4, 3, image_size, image_size], (Kind::Float, Device::Cpu));
        // The weights of a scalar function of the small net's output, for its gradients.
        let w = Tensor::randn([4, 12], (Kind::Float, Device::Cpu));
        let script = format!(
            "DIR = {:?}\nRESNET = {}\n{EXPORT}",
            dir.path().to_str().unwrap(),
            if resnet { "True" } else { "False" }
        );
        let reference = run_python(&script, &[("x", &x), ("w", &w)]);
        let replay = format!("seed {seed} (TORCHSCRIPT_SEED={seed} replays it)");
        Self {
            dir,
            x,
            w,
            reference,
            replay,
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn spec(&self, file: &str) -> TorchScriptConfig {
        TorchScriptConfig {
            path: self.path(file),
            input_size: self.x.size()[2],
        }
    }

    /// PyTorch's `prefix*` outputs, with the prefix removed.
    fn under(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.reference
            .iter()
            .filter_map(|(k, t)| k.strip_prefix(prefix).map(|k| (k.to_string(), t.shallow_clone())))
            .collect()
    }
}

fn output(net: &dyn Backbone, x: &Tensor, train: bool) -> Tensor {
    tch::no_grad(|| net.forward_taps(x, train, &[OUTPUT])).remove(0)
}

#[test]
fn forward_equals_pytorch_for_scripted_traced_and_resnet18_modules() {
    let _turn = one_at_a_time();
    tch::set_num_threads(1);
    let exported = Exported::new(true, 32);
    // Bit for bit throughout: the module runs the same libtorch kernels (tch links the venv's
    // libtorch) in the same order as PyTorch's eager forward and backward, on one thread each.
    let replay = &exported.replay;
    // Eval mode (running statistics), the same module file.
    for (file, reference, dim) in [
        ("tiny_scripted.pt", "tiny.eval", 12),
        ("tiny_traced.pt", "tiny.eval", 12),
        ("resnet18.pt", "resnet18.eval", 512),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = exported
            .spec(file)
            .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 32))
            .unwrap();
        assert_eq!(
            net.tap_dim(OUTPUT),
            Some(dim),
            "{file}: output width found by the dummy forward"
        );
        let d = max_abs_diff(
            &output(net.as_ref(), &exported.x, false),
            &exported.reference[reference],
        );
        assert_eq!(
            d, 0.0,
            "{replay}: {file}: eval-mode output differs from PyTorch's by {d}"
        );
    }

    // Variables are the state_dict, buffers included, under PyTorch's names and with its values.
    let vs = nn::VarStore::new(Device::Cpu);
    let net = exported
        .spec("tiny_scripted.pt")
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 32))
        .unwrap();
    let state = exported.under("tiny.state.");
    let variables = vs.variables();
    let mut ours: Vec<&String> = variables.keys().collect();
    let mut theirs: Vec<&String> = state.keys().collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "variable names are the state_dict keys");
    for (name, t) in &state {
        assert!(variables[name].equal(t), "{name} differs from the state_dict");
        assert_eq!(
            variables[name].requires_grad(),
            !name.contains("running_") && !name.contains("num_batches"),
            "{name}: parameters are trainable, buffers are not"
        );
    }
    // Train mode: batch statistics, and the running statistics move as in PyTorch.
    let d = max_abs_diff(
        &output(net.as_ref(), &exported.x, true),
        &exported.reference["tiny.train"],
    );
    assert_eq!(d, 0.0, "{replay}: train-mode output differs from PyTorch's by {d}");
    for (name, t) in exported.under("tiny.after_train.") {
        let d = max_abs_diff(&variables[&name], &t);
        assert_eq!(
            d, 0.0,
            "{replay}: buffer {name} after a train-mode forward differs by {d}"
        );
    }

    // Gradients through the module's graph, of a scalar function of a train-mode forward.
    let vs = nn::VarStore::new(Device::Cpu);
    let net = exported
        .spec("tiny_scripted.pt")
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 32))
        .unwrap();
    let y = net.forward_taps(&exported.x, true, &[OUTPUT]).remove(0);
    (y * &exported.w).sum(Kind::Float).backward();
    let variables = vs.variables();
    let grads = exported.under("tiny.grad.");
    assert_eq!(grads.len(), 9, "the small net's parameters");
    for (name, theirs) in grads {
        let d = max_abs_diff(&variables[&name].grad(), &theirs);
        assert_eq!(d, 0.0, "{replay}: gradient of {name} differs from PyTorch's by {d}");
    }
}

#[test]
fn scripted_module_passes_the_conformance_harness() {
    let _turn = one_at_a_time();
    let exported = Exported::new(false, 16);
    byol_testkit::check_backbone(&exported.spec("tiny_scripted.pt"), 16);
}

#[test]
fn resnet18_module_passes_the_conformance_harness() {
    let _turn = one_at_a_time();
    let exported = Exported::new(true, 32);
    byol_testkit::check_backbone(&exported.spec("resnet18.pt"), 32);
}

/// BYOL's target is a second build of the module whose parameters `TargetUpdater` re-seats as
/// views of one flat buffer (`set_data` on the variable); the module must compute with them.
#[test]
fn the_ema_update_reaches_what_the_target_module_computes() {
    let _turn = one_at_a_time();
    tch::set_num_threads(1);
    let exported = Exported::new(false, 16);
    let spec = exported.spec("tiny_scripted.pt");
    let vs = nn::VarStore::new(Device::Cpu);
    let online = spec
        .build(&(vs.root() / "online"), &byol::BuildContext::new(Device::Cpu, 16))
        .unwrap();
    let target = spec
        .build(&(vs.root() / "target"), &byol::BuildContext::new(Device::Cpu, 16))
        .unwrap();
    let updater = TargetUpdater::new(&vs, "online.", "target.").unwrap();
    assert_eq!(
        updater.parameter_count(),
        9,
        "2 convs (one with a bias), 2 BNs, the linear head"
    );
    let x = &exported.x;
    let before = output(target.as_ref(), x, false);

    // An in-place step on the online variables (what the optimizer does) changes the online module.
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            if name.starts_with("online.") && t.requires_grad() {
                let _ = t.shallow_clone().g_add_(&(Tensor::randn_like(&t) * 0.2));
            }
        }
    });
    let stepped = output(online.as_ref(), x, false);
    assert!(
        max_abs_diff(&stepped, &before) > 1e-3,
        "the online step changed the online output"
    );
    assert!(
        output(target.as_ref(), x, false).equal(&before),
        "the target is a separate module"
    );

    updater.update(0.5);
    let halfway = output(target.as_ref(), x, false);
    assert!(
        max_abs_diff(&halfway, &before) > 1e-4 && max_abs_diff(&halfway, &stepped) > 1e-4,
        "tau = 0.5 moves the target module halfway"
    );
    updater.update(0.0);
    let d = max_abs_diff(&output(target.as_ref(), x, false), &stepped);
    assert!(
        d < 1e-6,
        "tau = 0 makes the target module compute what the online one does ({d})"
    );
    let variables = vs.variables();
    assert!(variables["target.head.weight"].equal(&variables["online.head.weight"]));
}

const EXPERIMENT: &str = r#"
[run]
device = "cpu"
threads = 1
seed = 3

[dataset]
type = "synthetic"
train_size = 128
test_size = 32
image_size = 16
classes = 4

[backbone]
type = "torchscript"
path = 'MODULE'
input_size = 16

[augment]
type = "byol"
preset = "cifar"
image_size = 16

[optimizer]
type = "sgd"
lr = 0.5

[byol]
embedding_layer = "output"
hidden_dim = 32
projection_dim = 16

[schedule]
epochs = 2
batch_size = 32
warmup_epochs = 0

[eval]
knn_k = 5
"#;

#[test]
fn a_scripted_module_trains_through_the_runner_and_its_parameters_change() {
    let _turn = one_at_a_time();
    plugins_all::link();
    let exported = Exported::new(false, 16);
    let text = EXPERIMENT.replace("MODULE", exported.path("tiny_scripted.pt").to_str().unwrap());
    let experiment = byol_train::Experiment::parse(&text, &[]).unwrap();
    let run_dir = exported.dir.path().join("run");
    let options = byol_train::RunOptions {
        run_dir: Some(run_dir.clone()),
        quiet: true,
        ..Default::default()
    };
    let summary = byol_train::train(&experiment, &options).unwrap();
    assert_eq!(summary.steps, 8, "2 epochs of 4 steps");
    assert!(summary.final_loss.is_some_and(f64::is_finite), "{summary:?}");
    assert!(
        summary.knn_after.is_some(),
        "the kNN monitor ran on the output embedding"
    );

    let trained: HashMap<String, Tensor> = Tensor::read_safetensors(run_dir.join("checkpoints/last/model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let initial = exported.under("tiny.state.");
    for (name, before) in &initial {
        let after = &trained[&format!("online.backbone.{name}")];
        assert!(
            !after.equal(before),
            "online.backbone.{name} did not change in training"
        );
    }
    // Batch-norm buffers are variables, so the checkpoint holds the running statistics training
    // produced: 8 steps, each view through the online network once.
    assert_eq!(
        trained["online.backbone.features.1.num_batches_tracked"].int64_value(&[]),
        7 + 8 * 2
    );
    // The target moved by EMA only, and less than the online net.
    let moved = |prefix: &str| -> f64 {
        initial
            .iter()
            .filter(|(n, t)| t.is_floating_point() && !n.contains("running_"))
            .map(|(n, t)| max_abs_diff(&trained[&format!("{prefix}{n}")], t))
            .fold(0.0, f64::max)
    };
    let (online, target) = (moved("online.backbone."), moved("target.backbone."));
    assert!(
        target > 0.0 && target < online,
        "online moved {online}, target {target}"
    );
}

#[test]
fn a_missing_or_foreign_file_is_refused_naming_the_key() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let missing = TorchScriptConfig::new(dir.path().join("nope.pt"));
    let error = missing
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 224))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("backbone.path") && error.contains("no such file"),
        "{error}"
    );
    let foreign = dir.path().join("weights.pt");
    std::fs::write(&foreign, b"not a zip archive").unwrap();
    let error = TorchScriptConfig::new(&foreign)
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 224))
        .unwrap_err()
        .to_string();
    assert!(error.contains("not a TorchScript module"), "{error}");
    let spec = TorchScriptConfig {
        input_size: 0,
        ..TorchScriptConfig::new(&foreign)
    };
    let error = spec
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 224))
        .unwrap_err()
        .to_string();
    assert!(error.contains("backbone.input_size"), "{error}");
}

#[test]
fn the_toml_table_parses() {
    let _turn = one_at_a_time();
    let spec: Box<dyn BackboneSpec> = toml::from_str("type = \"torchscript\"\npath = \"resnet18.pt\"\n").unwrap();
    let value = toml::Value::try_from(spec.as_ref()).unwrap();
    assert_eq!(value["path"].as_str(), Some("resnet18.pt"));
    assert_eq!(
        value["input_size"].as_integer(),
        Some(224),
        "the default dummy-forward size"
    );
    let typo = toml::from_str::<Box<dyn BackboneSpec>>("type = \"torchscript\"\npath = \"a.pt\"\nembeding_dim = 3\n");
    assert!(typo.is_err(), "unknown keys are refused");
}

/// Modules that cannot train as they are; in a file, as `torch.jit.script` reads their source.
const AWKWARD_NETS: &str = r#"
import torch

class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = torch.nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x):
        return self.patches(x).flatten(2).transpose(1, 2)  # [N, tokens, 8]

class Complex(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.z = torch.nn.Parameter(torch.ones(4, dtype=torch.complex64))

    def forward(self, x):
        return self.conv(x).mean((2, 3)) * self.z.real

class ModeWidth(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)

    def forward(self, x):
        features = self.conv(x).mean((2, 3))
        if self.training:
            return features[:, :8]
        return features

class Pooled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))

class NotFinite(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3)) / 0.0  # inf, -inf or NaN, whatever the weights

class Scalar(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).sum()
"#;

/// Exports into `DIR` modules that tracing recorded in one mode, and the awkward ones.
const AWKWARD: &str = r#"
import copy
sys.path.insert(0, DIR)
from tiny_net import TinyNet
from awkward_nets import Tokens, Complex, ModeWidth, Pooled, Scalar, NotFinite
torch.manual_seed(0)
x = torch.randn(2, 3, 16, 16)
tiny = TinyNet()
torch.jit.script(tiny).save(DIR + "/scripted.pt")
torch.jit.trace(copy.deepcopy(tiny).eval(), x).save(DIR + "/traced_eval.pt")
dropout = torch.nn.Sequential(TinyNet(), torch.nn.Dropout(0.5))
torch.jit.trace(dropout.train(), x, check_trace=False).save(DIR + "/traced_train.pt")
torch.jit.script(Tokens()).save(DIR + "/tokens.pt")
torch.jit.script(Complex()).save(DIR + "/complex.pt")
torch.save(tiny.state_dict(), DIR + "/state_dict.pt")
torch.jit.script(ModeWidth()).save(DIR + "/mode_width.pt")
torch.jit.script(Pooled().to("meta")).save(DIR + "/meta.pt")
torch.jit.script(Scalar()).save(DIR + "/scalar.pt")
torch.jit.script(NotFinite()).save(DIR + "/not_finite.pt")
"#;

/// What `torch.jit.trace` records is found when the module loads and said as warnings (a module
/// traced in eval mode trains with frozen batch-norm statistics; one traced in train mode with
/// dropout embeds at random and updates its statistics while evaluating); a flattened output
/// whose width depends on the image size or on the mode, a complex parameter, a module saved on
/// the meta device, NaN features, a folder and a `torch.save` file are refused naming the key and what to do. Loading changes no buffer.
#[test]
fn modes_recorded_by_tracing_are_warned_of_and_modules_that_cannot_train_are_refused() {
    let _turn = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tiny_net.py"), TINY_NET).unwrap();
    std::fs::write(dir.path().join("awkward_nets.py"), AWKWARD_NETS).unwrap();
    run_python(&format!("DIR = {:?}\n{AWKWARD}", dir.path().to_str().unwrap()), &[]);
    let build = |file: &str, input_size: i64| {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = TorchScriptConfig {
            path: dir.path().join(file),
            input_size,
        };
        let built = spec.build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 16));
        let state: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(k, t)| (k, t.copy())).collect();
        (built, state)
    };
    let warnings = |file: &str| build(file, 16).0.unwrap().warnings();

    assert_eq!(warnings("scripted.pt"), Vec::<String>::new());
    let traced_eval = warnings("traced_eval.pt");
    assert_eq!(traced_eval.len(), 1, "{traced_eval:?}");
    assert!(
        traced_eval[0].contains("count no batch in train mode"),
        "{traced_eval:?}"
    );
    let traced_train = warnings("traced_train.pt");
    assert_eq!(traced_train.len(), 2, "{traced_train:?}");
    assert!(
        traced_train[0].contains("update their running statistics in eval mode"),
        "{traced_train:?}"
    );
    assert!(
        traced_train[1].contains("different outputs for the same images"),
        "{traced_train:?}"
    );

    // The probes leave the buffers as saved: the counters hold the one batch of the trace itself.
    let (_, state) = build("traced_train.pt", 16);
    let counters: Vec<i64> = state
        .iter()
        .filter(|(k, _)| k.ends_with("num_batches_tracked"))
        .map(|(_, v)| v.int64_value(&[]))
        .collect();
    assert_eq!(counters, [1, 1], "the batch norms' counters");

    // Tokens at 16 px are 16 x 8 wide, at 32 px 64 x 8: the views (16 px) would not fit the heads.
    assert_eq!(build("tokens.pt", 16).0.unwrap().tap_dim(OUTPUT), Some(128));
    let error = build("tokens.pt", 32).0.unwrap_err().to_string();
    assert!(
        error.contains(
            "the output's width depends on the image size: 512 at backbone.input_size = 32, 128 at the views' 16 px"
        ),
        "{error}"
    );
    let refused = |file: &str| build(file, 16).0.unwrap_err().to_string();
    let error = refused("complex.pt");
    assert!(
        error.contains("parameter 'z' is ComplexFloat") && error.contains("model.float()"),
        "{error}"
    );
    let error = refused("mode_width.pt");
    assert!(
        error.contains("the output is [N, 16] in eval mode but [2, 8] in train mode"),
        "{error}"
    );
    let error = refused("meta.pt");
    assert!(
        error.contains("'conv.weight' did not load onto the run's device"),
        "{error}"
    );
    let error = refused("state_dict.pt");
    assert!(
        error.contains("most often a file of torch.save, a state_dict"),
        "{error}"
    );
    let error = refused("scalar.pt");
    assert!(
        error.contains("the module returns a tensor of shape [], without a dimension per image"),
        "{error}"
    );
    let error = refused("not_finite.pt");
    assert!(
        error.contains("the eval-mode forward of a [2, 3, 16, 16] batch of values in [-1, 1] returns NaN or infinite"),
        "{error}"
    );
    let error = build("scalar.pt", 5000).0.unwrap_err().to_string();
    assert!(
        error.contains("backbone.input_size = 5000 is not an image side in [1, 4096]"),
        "{error}"
    );
    std::fs::create_dir(dir.path().join("folder.pt")).unwrap();
    let error = refused("folder.pt");
    assert!(
        error.contains("backbone.path") && error.contains("is a folder"),
        "{error}"
    );
}
