//! Parity with torchvision's `VisionTransformer` (the venv's), on the same weights and inputs drawn
//! from a seed of each run's own (`VIT_PARITY_SEED` replays one): ours carries timm's names, which
//! this test maps to torchvision's one by one (timm's `attn.qkv` is torchvision's `in_proj`, both
//! q, k, v stacked). Class-token outputs, the other taps (patch embedding, patch tokens), the
//! input's gradient and every gradient outside attention are torchvision's bit for bit (the same
//! libtorch calls, one thread each). The attention's parameter gradients (`attn.qkv`,
//! `attn.proj`, weights and biases) are not: torchvision's
//! `MultiheadAttention` differentiates its packed in-projection through other ops than timm's
//! `scaled_dot_product_attention` block, which ours follows; they are held within a few times
//! torchvision's own float32 error of its float64 result ([`byol_testkit::rounding`]). And
//! ViT-S/16 at 224 px has exactly torchvision's parameter shapes (timm's 22.05M less the
//! 1000-class head). Against the venv's timm, whose names and rules it follows: the initial
//! weights (a KS test per tensor) and a timm state_dict loaded through `pretrained`, whose
//! embedding is timm's bit for bit.

use std::collections::HashMap;
use std::path::PathBuf;

use backbone_vit::{ViTConfig, ViTSmall16};
use byol::BackboneSpec;
use byol_testkit::rounding::{assert_bit_equal, assert_within_rounding};
use byol_testkit::{draw_failures, fresh_seed, run_python, COMPARE_DRAWS};
use tch::{nn, Device, Kind, Tensor};

/// timm name -> torchvision name, in Python, for a model with `depth` blocks.
const RENAME: &str = r#"
import re
def torchvision_name(k):
    k = k.replace("patch_embed.proj.", "conv_proj.")
    k = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding"}.get(k, k)
    k = re.sub(r"^norm\.", "encoder.ln.", k)
    m = re.match(r"^blocks\.(\d+)\.(.*)$", k)
    if m:
        i, rest = m.groups()
        rest = {"norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
                "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
                "attn.qkv.weight": "self_attention.in_proj_weight",
                "attn.qkv.bias": "self_attention.in_proj_bias",
                "attn.proj.weight": "self_attention.out_proj.weight",
                "attn.proj.bias": "self_attention.out_proj.bias",
                "mlp.fc1.weight": "mlp.0.weight", "mlp.fc1.bias": "mlp.0.bias",
                "mlp.fc2.weight": "mlp.3.weight", "mlp.fc2.bias": "mlp.3.bias"}[rest]
        k = f"encoder.layers.encoder_layer_{i}.{rest}"
    return k
from torchvision.models.vision_transformer import VisionTransformer
"#;

/// A ViT of `(image, patch, depth, heads, dim)` with timm's MLP ratio, from `pretrained`.
fn small_vit((image, patch, depth, heads, dim): (i64, i64, i64, i64, i64), pretrained: Option<PathBuf>) -> ViTSmall16 {
    ViTSmall16(ViTConfig {
        image_size: image,
        patch_size: patch,
        embed_dim: dim,
        depth,
        num_heads: heads,
        mlp_ratio: 4.0,
        pretrained,
    })
}

/// The tests of this file draw from libtorch's one generator: one at a time, so that a seed
/// replays its inputs.
static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

const FORWARD: &str = r#"
import copy
image, patch, depth, heads, dim = CONFIG
model = VisionTransformer(image, patch, depth, heads, dim, 4 * dim)
model.heads = torch.nn.Identity()
weights = {torchvision_name(k): v for k, v in inputs.items() if k not in ("x", "w")}
model.load_state_dict(weights, strict=True)
back = {torchvision_name(k): k for k in inputs if k not in ("x", "w")}
# In float32, and in float64 for the exact result.
for net, suffix in ((model, ""), (copy.deepcopy(model).double(), "_f64")):
    dtype = next(net.parameters()).dtype
    x = inputs["x"].detach().to(dtype).clone().requires_grad_(True)
    for train in (False, True):
        net.train(train)
        outputs[f"y_{train}{suffix}"] = net(x)
    with torch.no_grad():
        # The other taps, pooled over the patches: the patch embedding, and the encoder's patch
        # tokens after its final norm (torchvision's forward keeps only the class token).
        patches = net.conv_proj(x)
        outputs["patch_embed" + suffix] = patches.mean((2, 3))
        tokens = net._process_input(x)
        cls = net.class_token.expand(tokens.shape[0], -1, -1)
        outputs["tokens" + suffix] = net.encoder(torch.cat([cls, tokens], dim=1))[:, 1:].mean(1)
    (outputs["y_True" + suffix] * inputs["w"].to(dtype)).sum().backward()
    outputs["grad_x" + suffix] = x.grad
    for name, p in net.named_parameters():
        outputs["grad." + back[name] + suffix] = p.grad
"#;

#[test]
fn a_small_vit_matches_torchvision() {
    tch::set_num_threads(1);
    let generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let seed = fresh_seed("VIT_PARITY_SEED");
    let replay = format!("seed {seed} (VIT_PARITY_SEED={seed} replays it)");
    tch::manual_seed(seed);
    let (image, patch, depth, heads, dim) = (32, 8, 2, 3, 48);
    let spec = small_vit((image, patch, depth, heads, dim), None);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = spec
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, image))
        .unwrap();
    // Weights of unit gain (timm's std 0.02 init leaves the blocks close to the identity, which
    // would hide a wrong activation or attention scale), non-trivial norms and biases.
    tch::no_grad(|| {
        for (name, t) in vs.variables() {
            let value = if t.dim() >= 2 && name.ends_with("weight") {
                let fan_in: i64 = t.size()[1..].iter().product();
                Tensor::randn_like(&t) / (fan_in as f64).sqrt()
            } else if name.contains("norm") && name.ends_with("weight") {
                Tensor::randn_like(&t) * 0.2 + 1.0
            } else {
                Tensor::randn_like(&t) * 0.5
            };
            t.shallow_clone().copy_(&value);
        }
    });
    let weights = byol::state_dict::to_cpu_sorted(&vs.variables());
    let x = Tensor::randn([3, 3, image, image], (Kind::Float, Device::Cpu));
    let w = Tensor::randn([3, dim], (Kind::Float, Device::Cpu));
    drop(generator);
    let mut inputs: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    inputs.push(("x", &x));
    inputs.push(("w", &w));
    let script = format!(
        "{RENAME}{}",
        FORWARD.replace("CONFIG", &format!("({image}, {patch}, {depth}, {heads}, {dim})"))
    );
    let reference = run_python(&script, &inputs);

    let y_eval = tch::no_grad(|| net.embed(&x, false, "cls"));
    let xg = x.set_requires_grad(true);
    let y_train = net.embed(&xg, true, "cls");
    (&y_train * &w).sum(Kind::Float).backward();
    let check = |what: &str, ours: &Tensor, key: &str| assert_bit_equal(&reference, key, ours, (what, &replay));
    check("the eval-mode output", &y_eval, "y_False");
    check("the train-mode output", &y_train, "y_True");
    for tap in ["patch_embed", "tokens"] {
        let ours = tch::no_grad(|| net.embed(&x, false, tap));
        check(&format!("the {tap} tap"), &ours, tap);
    }
    check("the input gradient", &xg.grad(), "grad_x");
    let variables: HashMap<String, Tensor> = vs.variables();
    let mut compared = 0;
    for key in reference
        .keys()
        .filter(|k| k.starts_with("grad.") && !k.ends_with("_f64"))
    {
        let name = &key["grad.".len()..];
        let what = format!("the gradient of {name}");
        if name.contains(".attn.") {
            assert_within_rounding(&reference, key, &variables[name].grad(), (&what, &replay));
        } else {
            check(&what, &variables[name].grad(), key);
        }
        compared += 1;
    }
    assert_eq!(compared, variables.len(), "every parameter's gradient compared");
}

const SHAPES: &str = r#"
model = VisionTransformer(224, 16, 12, 6, 384, 1536)
del model.heads
ours = {torchvision_name(k): tuple(v.shape) for k, v in inputs.items()}
theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
assert ours == theirs, (set(ours) ^ set(theirs), [k for k in ours if k in theirs and ours[k] != theirs[k]])
outputs["parameters"] = torch.tensor(sum(p.numel() for p in model.parameters()))
"#;

#[test]
fn vit_s16_has_torchvisions_shapes_and_22m_parameters() {
    let vs = nn::VarStore::new(Device::Cpu);
    let generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    ViTSmall16::default()
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 224))
        .unwrap();
    drop(generator);
    // Shapes only: the values need not travel.
    let shapes: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (k, Tensor::zeros(t.size(), (Kind::Int8, Device::Cpu))))
        .collect();
    let inputs: Vec<(&str, &Tensor)> = shapes.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let reference = run_python(&format!("{RENAME}{SHAPES}"), &inputs);
    let ours: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(ours, reference["parameters"].int64_value(&[]));
    assert_eq!(
        ours,
        22_050_664 - (384 * 1000 + 1000),
        "timm's vit_small_patch16_224 without its head"
    );
}

/// A tensor's test of [`the_initial_weights_are_drawn_as_timm_draws_them`] fails by chance with
/// probability at most 1e-6 (the asymptotic critical value of the two-sample KS statistic,
/// `sqrt(-ln(alpha / 2) / 2) * sqrt((n + m) / (n m))`); over the two dozen tensors of the model, a
/// false failure is rarer than one run in ten thousand.
const KS_ALPHA: f64 = 1e-6;

/// timm's `VisionTransformer` of the same shape, drawn from a seed; each of our tensors is tested
/// against timm's of the same name: two samples of one distribution when the rules agree.
const TIMM_INIT: &str = r#"
from timm.models.vision_transformer import VisionTransformer as TimmViT
image, patch, depth, heads, dim, alpha, seed = CONFIG
torch.manual_seed(seed)
model = TimmViT(img_size=image, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                mlp_ratio=4.0, num_classes=0)
compare_draws(dict(inputs), model.state_dict(), alpha, "timm's")
"#;

/// The network starts from the weights timm's `VisionTransformer` draws (the venv's timm): its
/// linear layers from a normal of std 0.02 with zero biases, the patch projection as PyTorch's
/// `Conv2d` draws itself (uniform within 1/sqrt(fan-in), bias too), the position embedding from
/// std 0.02, the class token from std 1e-6, layer norms at 1 and 0. A wrong rule moves a tensor's
/// KS statistic far past its critical value.
#[test]
fn the_initial_weights_are_drawn_as_timm_draws_them() {
    let generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let seed = fresh_seed("VIT_INIT_SEED");
    tch::manual_seed(seed);
    // Wide enough that the weight matrices hold tens of thousands of values, where the KS test
    // tells a std off by a few percent (the 128-value biases and norms, by some twenty).
    let (image, patch, depth, heads, dim) = (64, 16, 2, 4, 128);
    let spec = small_vit((image, patch, depth, heads, dim), None);
    let vs = nn::VarStore::new(Device::Cpu);
    spec.build(&vs.root(), &byol::BuildContext::new(Device::Cpu, image))
        .unwrap();
    drop(generator);
    let weights = byol::state_dict::to_cpu_sorted(&vs.variables());
    let inputs: Vec<(&str, &Tensor)> = weights.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let config = format!(
        "({image}, {patch}, {depth}, {heads}, {dim}, {KS_ALPHA:e}, {})",
        seed.wrapping_add(1)
    );
    let script = format!("{COMPARE_DRAWS}{}", TIMM_INIT.replace("CONFIG", &config));
    let reference = run_python(&script, &inputs);
    let failures = draw_failures(&reference);
    assert!(
        failures.is_empty(),
        "seed {seed} (VIT_INIT_SEED={seed} replays ours): initial weights drawn otherwise than timm's:\n{failures}"
    );
    assert_eq!(reference["compared"].int64_value(&[]), weights.len() as i64);
}

/// timm's model with a 10-class head and weights of unit gain, saved as safetensors (`head.*`
/// included), with its embedding (`forward_head(pre_logits=True)`: the class token after the
/// final norm).
const TIMM_PRETRAINED: &str = r#"
import math
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
image, patch, depth, heads, dim, seed, path = CONFIG
torch.manual_seed(seed)
model = TimmViT(img_size=image, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                mlp_ratio=4.0, num_classes=10)
with torch.no_grad():
    for name, p in model.named_parameters():
        if p.dim() >= 2 and name.endswith("weight"):
            p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(torch.randn_like(p) * 0.2 + 1.0)
        else:
            p.copy_(torch.randn_like(p) * 0.5)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
model.eval()
with torch.no_grad():
    outputs["cls"] = model.forward_head(model.forward_features(inputs["x"]), pre_logits=True)
"#;

/// A timm state_dict saved as safetensors loads by name through `pretrained` (its head ignored),
/// and the `cls` embedding is timm's bit for bit.
#[test]
fn timm_weights_load_by_name_and_embed_as_timm_does() {
    tch::set_num_threads(1);
    let seed = fresh_seed("VIT_PRETRAINED_SEED");
    let replay = format!("seed {seed} (VIT_PRETRAINED_SEED={seed} replays it)");
    let (image, patch, depth, heads, dim) = (32, 8, 2, 3, 48);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("timm-vit.safetensors");
    let x = {
        let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        Tensor::randn([3, 3, image, image], (Kind::Float, Device::Cpu))
    };
    let config = format!(
        "({image}, {patch}, {depth}, {heads}, {dim}, {seed}, {:?})",
        path.to_str().unwrap()
    );
    let reference = run_python(&TIMM_PRETRAINED.replace("CONFIG", &config), &[("x", &x)]);
    let spec = small_vit((image, patch, depth, heads, dim), Some(path));
    let vs = nn::VarStore::new(Device::Cpu);
    let config = byol::ByolConfig {
        hidden_dim: 32,
        projection_dim: 16,
        ..Default::default()
    };
    let byol = {
        let _generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
        byol::Byol::new(&vs, &spec, image, "cls", &config).unwrap()
    };
    assert_bit_equal(&reference, "cls", &byol.embed(&x), ("the cls embedding", &replay));
}
