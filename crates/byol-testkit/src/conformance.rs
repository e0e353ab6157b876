//! The conformance harness: what every backbone plugin must do for BYOL, the runner and the
//! weight tools to work with it. A plugin's tests call
//!
//! ```no_run
//! # fn spec() -> Box<dyn byol::BackboneSpec> { unimplemented!() }
//! byol_testkit::check_backbone(spec().as_ref(), 32);
//! ```
//!
//! which runs every check below on the CPU, on random images of `image_size` pixels, and panics
//! with a message naming the spec's `type`, the check and the offending tap or variable. Each check
//! is also public, to run one at a time while writing a plugin.

use std::collections::{BTreeMap, HashMap};

use byol::backbone::pool_flatten;
use byol::{Backbone, BackboneSpec, BuildContext, Byol, ByolConfig, PluginKind};
use tch::{nn, Device, Kind, Tensor};

/// Images per test batch (at least 4: the batch-dependence checks split it in halves).
const BATCH: i64 = 4;

/// Runs every check on `spec` with `image_size` x `image_size` RGB images. The checks seed
/// libtorch's CPU generator, which is global: two conformance runs in one test binary take turns,
/// so that neither draws from the other's seed (the round trip tells two builds apart by their
/// seeds). Any other test that seeds or draws from it (one that trains) must not run beside
/// them: keep the harness in a test binary of its own (a `tests/conformance.rs`).
pub fn check_backbone(spec: &dyn BackboneSpec, image_size: i64) {
    static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    let name = check_registration(spec);
    check_names(spec, image_size);
    check_taps(spec, image_size);
    check_train_eval(spec, image_size);
    check_state_dict_round_trip(spec, image_size);
    check_gradients(spec, image_size);
    check_byol(spec, image_size);
    check_channels_last(spec, image_size);
    println!("conformance: backbone '{name}' passed every check at {image_size} px");
}

/// The spec serializes with its typetag `type`, that name is registered as a backbone (with a
/// description and an example table that parses), and TOML -> spec -> TOML is the identity.
/// Returns the `type`.
pub fn check_registration(spec: &dyn BackboneSpec) -> String {
    let value =
        toml::Value::try_from(spec).unwrap_or_else(|e| panic!("conformance: {spec:?} does not serialize to TOML: {e}"));
    let name = value
        .get("type")
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("conformance: {spec:?} serializes without a `type` key: {value}"))
        .to_string();
    let info = byol::registry::find(PluginKind::Backbone, &name).unwrap_or_else(|| {
        panic!(
            "conformance [{name}]: no backbone named '{name}' in the inventory registry (registered: {}); \
             register it with byol::register_plugin! and name the crate in the test (`use my_plugin as _;`)",
            byol::registry::names(PluginKind::Backbone).join(", ")
        )
    });
    assert!(
        !info.description.trim().is_empty(),
        "conformance [{name}]: the registry entry has no description"
    );
    let example = info
        .example_table()
        .unwrap_or_else(|e| panic!("conformance [{name}]: {e}"));
    assert_eq!(
        example.get("type").and_then(toml::Value::as_str),
        Some(name.as_str()),
        "conformance [{name}]: the registered example must start with `type = \"{name}\"`"
    );
    toml::Value::Table(example)
        .try_into::<Box<dyn BackboneSpec>>()
        .unwrap_or_else(|e| {
            panic!(
                "conformance [{name}]: the registered example does not parse: {e}\n{}",
                info.example()
            )
        });
    check_example_keys(&name, info);
    let text = toml::to_string(&value).expect("a TOML table prints");
    let parsed: Box<dyn BackboneSpec> = toml::from_str::<toml::Value>(&text)
        .and_then(|v| v.try_into())
        .unwrap_or_else(|e| panic!("conformance [{name}]: its own TOML does not parse back: {e}\n{text}"));
    let again = toml::Value::try_from(parsed.as_ref()).expect("serializes");
    assert_eq!(
        again, value,
        "conformance [{name}]: TOML -> spec -> TOML changed the configuration"
    );
    name
}

/// The registered example shows every key the spec accepts (set, or commented out under
/// `optional:`), each commented with its field's doc, and a `pretrained` it shows reaches
/// [`BackboneSpec::pretrained`].
fn check_example_keys(name: &str, info: &byol::PluginInfo) {
    let parse_backbone = |whole: toml::Table| -> Result<Box<dyn BackboneSpec>, String> {
        let table = whole.get("backbone").cloned().ok_or("no [backbone] table")?;
        table.try_into::<Box<dyn BackboneSpec>>().map_err(|e| e.to_string())
    };
    let text = format!("[backbone]\n{}", info.example());
    let missing = crate::keys::missing_keys(&text, &["backbone"], &|whole| parse_backbone(whole).map(drop));
    assert!(
        missing.is_empty(),
        "conformance [{name}]: the registered example does not show {missing:?}: give them a value in \
         the config's Default, or list them under `optional:` in its register_plugin!\n{text}"
    );
    let example = info.example();
    let undocumented = crate::keys::undocumented_example_keys(&example);
    assert!(
        undocumented.is_empty(),
        "conformance [{name}]: the example shows keys without a comment: {undocumented:?}; give their \
         fields a /// doc comment (its first sentence becomes the comment)\n{text}"
    );
    let every_key: toml::Table = toml::from_str(&crate::keys::uncomment_keys(&text)).expect("checked above");
    let spec = parse_backbone(every_key.clone()).expect("checked above");
    let shows_pretrained = every_key.get("backbone").and_then(|t| t.get("pretrained")).is_some();
    assert!(
        !shows_pretrained || spec.pretrained().is_some(),
        "conformance [{name}]: the example sets `pretrained`, but BackboneSpec::pretrained() gives None: \
         return the path from it, or no file is ever loaded"
    );
}

/// Variable names are PyTorch state_dict names: dot-separated segments of `[A-Za-z0-9_]`, nothing
/// hard-coded above the module (`online.`, `backbone.`), the same names and shapes under any
/// parent path and on every build.
pub fn check_names(spec: &dyn BackboneSpec, image_size: i64) {
    let name = type_name(spec);
    let (at_root, _) = build(spec, image_size, 1, &[]);
    let (nested, _) = build(spec, image_size, 1, &["online", "backbone"]);
    let (again, _) = build(spec, image_size, 2, &[]);
    let shapes = |vs: &nn::VarStore, prefix: &str| -> BTreeMap<String, Vec<i64>> {
        vs.variables()
            .into_iter()
            .map(|(k, t)| {
                let relative = k
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| {
                        panic!("conformance [{name}]: variable '{k}' is outside the path '{prefix}' it was built under")
                    })
                    .to_string();
                (relative, t.size())
            })
            .collect()
    };
    let names = shapes(&at_root, "");
    assert!(!names.is_empty(), "conformance [{name}]: the backbone has no variables");
    for key in names.keys() {
        let segments: Vec<&str> = key.split('.').collect();
        assert!(
            segments
                .iter()
                .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
            "conformance [{name}]: '{key}' is not a PyTorch state_dict name (empty segment or odd character)"
        );
        assert!(
            !["online", "target", "backbone", "net", "model"].contains(&segments[0]),
            "conformance [{name}]: '{key}' starts with '{}.': build under the path you are given, \
             BYOL adds `online.backbone.` itself",
            segments[0]
        );
    }
    assert_eq!(
        shapes(&nested, "online.backbone."),
        names,
        "conformance [{name}]: names or shapes change with the parent path"
    );
    assert_eq!(
        shapes(&again, ""),
        names,
        "conformance [{name}]: two builds give different names or shapes"
    );
}

/// Every tap has a dimension, every tap's tensor is `[N, dim]` or `[N, dim, H, W]`, taps come
/// back in the order asked, a subset equals the same taps of a full pass, `embed` is
/// `[N, dim]`, and an unknown tap is refused by `check_tap` with the list of taps.
pub fn check_taps(spec: &dyn BackboneSpec, image_size: i64) {
    let name = type_name(spec);
    let (_vs, net) = build(spec, image_size, 3, &[]);
    let taps = net.taps();
    assert!(!taps.is_empty(), "conformance [{name}]: no taps");
    let mut unique = taps.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        taps.len(),
        "conformance [{name}]: duplicate taps in {taps:?}"
    );
    assert!(
        net.tap_dim("no_such_tap").is_none(),
        "conformance [{name}]: tap_dim answers for an unknown tap"
    );
    let error = net.check_tap("no_such_tap").unwrap_err().to_string();
    assert!(
        taps.iter().all(|t| error.contains(t)),
        "conformance [{name}]: the unknown-tap error does not list the taps: {error}"
    );
    let x = images(image_size, 30);
    let all = tch::no_grad(|| net.forward_taps(&x, false, &taps));
    assert_eq!(
        all.len(),
        taps.len(),
        "conformance [{name}]: forward_taps returned {} tensors for {} taps",
        all.len(),
        taps.len()
    );
    for (tap, t) in taps.iter().zip(&all) {
        let dim = net
            .tap_dim(tap)
            .unwrap_or_else(|| panic!("conformance [{name}]: tap '{tap}' is listed but has no tap_dim"));
        assert!(dim > 0, "conformance [{name}]: tap '{tap}' has dim {dim}");
        let size = t.size();
        assert!(
            (size.len() == 2 || size.len() == 4) && size[0] == BATCH && size[1] == dim,
            "conformance [{name}]: tap '{tap}' is {size:?}, expected [{BATCH}, {dim}] or [{BATCH}, {dim}, H, W]"
        );
        assert_eq!(
            t.kind(),
            Kind::Float,
            "conformance [{name}]: tap '{tap}' is not float32"
        );
        assert!(finite(t), "conformance [{name}]: tap '{tap}' has Inf or NaN");
        let embedded = tch::no_grad(|| net.embed(&x, false, tap));
        assert_eq!(embedded.size(), [BATCH, dim], "conformance [{name}]: embed at '{tap}'");
    }
    let reversed: Vec<&str> = taps.iter().rev().copied().collect();
    let back = tch::no_grad(|| net.forward_taps(&x, false, &reversed));
    for (tap, (ours, full)) in reversed.iter().zip(back.iter().zip(all.iter().rev())) {
        assert_same(
            ours,
            full,
            &format!("conformance [{name}]: tap '{tap}' asked in reverse order"),
        );
    }
    let first = tch::no_grad(|| net.forward_taps(&x, false, &taps[..1]));
    assert_same(
        &first[0],
        &all[0],
        &format!("conformance [{name}]: tap '{}' asked alone", taps[0]),
    );
}

/// Eval mode is a pure function of each image (no variable changes, no dependence on the rest of
/// the batch). With batch norm: train mode normalizes by batch statistics (outputs depend on the
/// batch, differ from eval) and moves the running statistics.
pub fn check_train_eval(spec: &dyn BackboneSpec, image_size: i64) {
    let name = type_name(spec);
    let (vs, net) = build(spec, image_size, 4, &[]);
    let taps = net.taps();
    let last = [*taps.last().expect("taps checked")];
    let x = images(image_size, 40);
    let before = snapshot(&vs);
    let eval = tch::no_grad(|| net.forward_taps(&x, false, &taps));
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, t) in variables {
        assert!(
            t.equal(&before[&key]),
            "conformance [{name}]: an eval-mode forward changed '{key}'"
        );
    }
    let again = tch::no_grad(|| net.forward_taps(&x, false, &taps));
    assert!(
        again.iter().zip(&eval).all(|(a, b)| a.equal(b)),
        "conformance [{name}]: two eval-mode forwards differ"
    );
    let half = tch::no_grad(|| net.forward_taps(&x.narrow(0, 0, BATCH / 2), false, &last)).remove(0);
    assert_close(
        &half,
        &eval.last().expect("one per tap").narrow(0, 0, BATCH / 2),
        &format!("conformance [{name}]: in eval mode an image's output depends on the rest of the batch"),
    );

    let statistics: Vec<String> = vs
        .variables()
        .into_keys()
        .filter(|k| k.ends_with("running_mean") || k.ends_with("running_var"))
        .collect();
    if statistics.is_empty() {
        return;
    }
    let train = tch::no_grad(|| net.forward_taps(&x, true, &last)).remove(0);
    let variables = vs.variables();
    let unchanged: Vec<&String> = statistics.iter().filter(|k| variables[*k].equal(&before[*k])).collect();
    assert!(
        unchanged.is_empty(),
        "conformance [{name}]: a train-mode forward left the running statistics {unchanged:?} unchanged"
    );
    assert!(
        !train.allclose(eval.last().expect("one per tap"), 1e-4, 1e-5, false),
        "conformance [{name}]: train and eval mode give the same output although the net has batch norm"
    );
    let train_half = tch::no_grad(|| net.forward_taps(&x.narrow(0, 0, BATCH / 2), true, &last)).remove(0);
    assert!(
        !train_half.allclose(&train.narrow(0, 0, BATCH / 2), 1e-4, 1e-5, false),
        "conformance [{name}]: in train mode outputs do not depend on the batch (are batch statistics used?)"
    );
}

/// Weights saved as a safetensors state_dict (names relative to the module, as `byol-run export`
/// writes them and `pretrained = ...` reads them) load into a freshly built, different copy,
/// which then computes exactly the same outputs in eval and train mode.
pub fn check_state_dict_round_trip(spec: &dyn BackboneSpec, image_size: i64) {
    let name = type_name(spec);
    let (vs_a, a) = build(spec, image_size, 5, &[]);
    let x = images(image_size, 50);
    // Non-trivial running statistics, so that buffers are part of what must round-trip.
    let taps = a.taps();
    let last = [*taps.last().expect("taps")];
    tch::no_grad(|| {
        a.forward_taps(&images(image_size, 51), true, &last);
        a.forward_taps(&images(image_size, 52), true, &last);
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("backbone.safetensors");
    Tensor::write_safetensors(&byol::state_dict::to_cpu_sorted(&vs_a.variables()), &file)
        .unwrap_or_else(|e| panic!("conformance [{name}]: cannot write its state_dict as safetensors: {e}"));

    let (vs_b, b) = build(spec, image_size, 6, &[]);
    tch::no_grad(|| {
        for (_, t) in vs_b.variables() {
            if t.is_floating_point() {
                let _ = t.shallow_clone().g_add_(&(Tensor::randn_like(&t) * 0.5));
            }
        }
    });
    let out_a = tch::no_grad(|| a.forward_taps(&x, false, &last)).remove(0);
    let out_b = tch::no_grad(|| b.forward_taps(&x, false, &last)).remove(0);
    assert!(
        !out_a.equal(&out_b),
        "conformance [{name}]: two different sets of weights give the same output"
    );
    byol::state_dict::load_safetensors(&vs_b.variables(), &file, |_| false)
        .unwrap_or_else(|e| panic!("conformance [{name}]: its own state_dict does not load back: {e}"));
    let out_b = tch::no_grad(|| b.forward_taps(&x, false, &last)).remove(0);
    assert!(
        out_a.equal(&out_b),
        "conformance [{name}]: after a save/load round trip the eval-mode output differs by {}",
        crate::max_abs_diff(&out_a, &out_b)
    );
    let train_a = tch::no_grad(|| a.forward_taps(&x, true, &last)).remove(0);
    let train_b = tch::no_grad(|| b.forward_taps(&x, true, &last)).remove(0);
    assert!(
        train_a.equal(&train_b),
        "conformance [{name}]: after a save/load round trip the train-mode output differs"
    );
    let (va, vb) = (vs_a.variables(), vs_b.variables());
    for (key, t) in &va {
        assert!(
            t.equal(&vb[key]),
            "conformance [{name}]: '{key}' differs after the round trip and one train step"
        );
    }
}

/// A loss on every tap reaches every trainable variable with a finite, non-zero gradient.
pub fn check_gradients(spec: &dyn BackboneSpec, image_size: i64) {
    let name = type_name(spec);
    let (vs, net) = build(spec, image_size, 7, &[]);
    let taps = net.taps();
    let outputs = net.forward_taps(&images(image_size, 70), true, &taps);
    let loss = outputs
        .iter()
        .map(|t| {
            let pooled = pool_flatten(t);
            (&pooled * Tensor::randn_like(&pooled)).sum(Kind::Float)
        })
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |a, b| a + b);
    loss.backward();
    let mut problems = Vec::new();
    let mut trainable = 0;
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, t) in &variables {
        if !t.requires_grad() {
            continue;
        }
        trainable += 1;
        let grad = t.grad();
        if !grad.defined() {
            problems.push(format!("{key}: no gradient"));
        } else if !finite(&grad) {
            problems.push(format!("{key}: Inf or NaN gradient"));
        } else if grad.abs().sum(Kind::Double).double_value(&[]) == 0.0 {
            problems.push(format!("{key}: zero gradient"));
        }
    }
    assert!(trainable > 0, "conformance [{name}]: no trainable variables");
    assert!(
        problems.is_empty(),
        "conformance [{name}]: gradients do not reach every parameter:\n  {}",
        problems.join("\n  ")
    );
}

/// BYOL builds online and target copies from the spec (matching names), embeds at the last
/// tap's dimension, takes a loss, backward and EMA step with finite numbers, and computes with
/// what is written into its variables.
pub fn check_byol(spec: &dyn BackboneSpec, image_size: i64) {
    // Its comparison with the backbone built alone is bit for bit: both on one thread, whatever
    // the machine's count.
    tch::set_num_threads(1);
    let name = type_name(spec);
    let (_, probe) = build(spec, image_size, 8, &[]);
    let tap = *probe.taps().last().expect("taps");
    let dim = probe.tap_dim(tap).expect("dim");
    let vs = nn::VarStore::new(Device::Cpu);
    let config = ByolConfig {
        embedding_layer: tap.to_string(),
        hidden_dim: 32,
        projection_dim: 16,
        tau_base: 0.99,
        ..Default::default()
    };
    let byol = Byol::new(&vs, spec, image_size, tap, &config)
        .unwrap_or_else(|e| panic!("conformance [{name}]: Byol::new fails: {e}"));
    assert_eq!(
        byol.embedding_dim(),
        dim,
        "conformance [{name}]: BYOL's embedding dim at '{tap}'"
    );
    let loss = byol.loss(&images(image_size, 80), &images(image_size, 81));
    let value = loss.double_value(&[]);
    assert!(value.is_finite(), "conformance [{name}]: BYOL loss is {value}");
    loss.backward();
    byol.update_target(0, 10);
    let variables = vs.variables();
    for (key, t) in &variables {
        if let Some(sub) = key.strip_prefix("online.backbone.") {
            let target = variables
                .get(&format!("target.backbone.{sub}"))
                .unwrap_or_else(|| panic!("conformance [{name}]: '{key}' has no target copy"));
            assert_eq!(t.size(), target.size());
            if t.requires_grad() {
                assert!(
                    t.grad().defined(),
                    "conformance [{name}]: BYOL's loss does not reach '{key}'"
                );
            }
        }
    }
    let embedding = byol.embed(&images(image_size, 82));
    assert_eq!(embedding.size(), [BATCH, dim], "conformance [{name}]: Byol::embed");

    // BYOL moved every variable into the EMA's flat buffers after the backbone was built: a
    // backbone that kept a view or a copy of a weight from its build computes with the old values
    // ever after, and training would not change its output. What is written into the variables
    // in place must be what it computes with, as for a backbone built on its own.
    let (plain_vs, plain) = build(spec, image_size, 9, &[]);
    let plain_variables = plain_vs.variables();
    tch::manual_seed(84);
    tch::no_grad(|| {
        for (key, t) in &variables {
            let Some(sub) = key.strip_prefix("online.backbone.").filter(|_| t.is_floating_point()) else {
                continue;
            };
            // A positive factor keeps running variances positive.
            let written = t * (t.rand_like() * 0.5 + 0.75);
            t.shallow_clone().copy_(&written);
            plain_variables[sub].shallow_clone().copy_(&written);
        }
    });
    let x = images(image_size, 85);
    assert_same(
        &byol.embed(&x),
        &tch::no_grad(|| plain.embed(&x, false, tap)),
        &format!(
            "conformance [{name}]: after values are written into BYOL's online backbone variables, its embedding \
             against the backbone built alone with those values (a backbone must compute from its variables \
             at each forward, not from views or copies of them kept from its build)"
        ),
    );
}

/// BYOL with its weights laid out channels_last and channels_last views (the runner's default
/// on CUDA) computes what the contiguous layout does: the same embedding and loss, and the
/// backbone the same gradients, up to the float reordering of other kernels. A backbone that
/// `.view`s a convolution's output (which channels_last makes non-contiguous) fails here, on the
/// CPU, before a GPU run does. The gradients are compared in eval mode: through train-mode batch
/// statistics of a 4-image batch, float32's own rounding moves some gradients by percents (in
/// PyTorch, float32 against float64 on a ResNet-50 at 64 px), which no entrywise bound survives.
pub fn check_channels_last(spec: &dyn BackboneSpec, image_size: i64) {
    let name = type_name(spec);
    let nhwc = |t: &Tensor| torch_ext::channels_last(t).expect("a 4-D tensor");
    let (_, probe) = build(spec, image_size, 8, &[]);
    let tap = *probe.taps().last().expect("taps");
    let config = ByolConfig {
        embedding_layer: tap.to_string(),
        hidden_dim: 32,
        projection_dim: 16,
        ..Default::default()
    };
    let byol = |seed: i64| {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let byol = Byol::new(&vs, spec, image_size, tap, &config)
            .unwrap_or_else(|e| panic!("conformance [{name}]: Byol::new fails: {e}"));
        (vs, byol)
    };
    let (contiguous_vs, contiguous) = byol(21);
    let (mut laid_out_vs, mut laid_out) = byol(22);
    laid_out
        .use_channels_last(&laid_out_vs)
        .unwrap_or_else(|e| panic!("conformance [{name}]: Byol::use_channels_last fails: {e}"));
    tch::no_grad(|| laid_out_vs.copy(&contiguous_vs)).expect("the same variables");
    let (view1, view2, x) = (images(image_size, 86), images(image_size, 87), images(image_size, 88));
    assert_close(
        &laid_out.embed(&nhwc(&x)),
        &contiguous.embed(&x),
        &format!("conformance [{name}]: the embedding of channels_last weights and images"),
    );
    assert_close(
        &tch::no_grad(|| laid_out.loss(&nhwc(&view1), &nhwc(&view2))),
        &tch::no_grad(|| contiguous.loss(&view1, &view2)),
        &format!("conformance [{name}]: the BYOL loss of channels_last weights and views"),
    );

    let gradients = |channels_last: bool| {
        let (vs, net) = build(spec, image_size, 23, &[]);
        let input = match channels_last {
            true => {
                for (_, mut variable) in vs.variables().into_iter().filter(|(_, v)| v.dim() == 4) {
                    variable.set_data(&nhwc(&variable));
                }
                nhwc(&x)
            }
            false => x.shallow_clone(),
        };
        let embedding = net.embed(&input, false, tap);
        (&embedding * &embedding).sum(Kind::Float).backward();
        let mut grads: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, v)| v.requires_grad())
            .map(|(key, v)| (key, v.grad().contiguous()))
            .collect();
        grads.sort_by(|a, b| a.0.cmp(&b.0));
        grads
    };
    for ((key, got), (_, expected)) in gradients(true).iter().zip(&gradients(false)) {
        assert_close(
            got,
            expected,
            &format!("conformance [{name}]: the gradient of '{key}' with channels_last weights and images (eval mode)"),
        );
    }
}

fn type_name(spec: &dyn BackboneSpec) -> String {
    toml::Value::try_from(spec)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str().map(String::from)))
        .unwrap_or_else(|| format!("{spec:?}"))
}

/// Builds the backbone with a fixed seed under `vs.root() / path[0] / path[1] ...`.
fn build(spec: &dyn BackboneSpec, image_size: i64, seed: i64, path: &[&str]) -> (nn::VarStore, Box<dyn Backbone>) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut p = vs.root();
    for segment in path {
        p = p / *segment;
    }
    let net = spec
        .build(&p, &BuildContext::new(Device::Cpu, image_size))
        .unwrap_or_else(|e| panic!("conformance [{}]: build fails: {e}", type_name(spec)));
    (vs, net)
}

fn images(image_size: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([BATCH, 3, image_size, image_size], (Kind::Float, Device::Cpu))
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, t)| (k, t.detach().copy()))
        .collect()
}

fn finite(t: &Tensor) -> bool {
    t.isfinite().all().int64_value(&[]) != 0
}

/// Bit for bit: the same kernels on the same shapes, values and storage round alike, so a tap's
/// output cannot depend on which other taps are asked, nor a backbone's on whether BYOL holds its
/// variables (in a flat buffer whose slots keep a tensor's own alignment, `byol::flat_layout`).
fn assert_same(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    if let Some((count, first, x, y)) = crate::bit_difference(a, b) {
        panic!(
            "{what}: {count} of {} entries differ (first at flat index {first}: {x:e} against {y:e}); the same \
             computation must give the same bits",
            a.numel()
        );
    }
}

/// Equal up to the rounding of other kernels: another batch size or memory layout picks other
/// blockings, which sum in another order. Not a bound derived for every backbone
/// (errors grow with depth, and a bias gradient that cancels to near 0 has no relative accuracy,
/// hence the floor of 1): a sanity bound, above what reordering gives the shipped backbones
/// (measured at most 1.4e-6 of the largest entry for gradients and embeddings, 2e-5 for the BYOL
/// loss) and far below what a layout or batching mistake gives (the wrong pixels: errors of
/// order 1).
fn assert_close(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let scale = b.abs().max().double_value(&[]).max(1.0);
    let diff = crate::max_abs_diff(a, b);
    assert!(
        diff <= 1e-4 * scale,
        "{what}: differs by {diff} (largest entry {scale})"
    );
}
