//! Parity with torchvision's `VisionTransformer` (the venv's), on the same weights and fresh random
//! inputs: ours carries timm's names, which this test maps to torchvision's one by one (timm's
//! `attn.qkv` is torchvision's `in_proj`, both q, k, v stacked). Class-token outputs and the other
//! taps (patch embedding, patch tokens) within 1e-4, gradients within 1e-3 relative. And ViT-S/16
//! at 224 px has exactly torchvision's parameter shapes (timm's 22.05M less the 1000-class head).

use std::collections::HashMap;

use backbone_vit::{ViTConfig, ViTSmall16};
use byol::BackboneSpec;
use byol_testkit::{max_abs_diff, run_python};
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

const FORWARD: &str = r#"
image, patch, depth, heads, dim = CONFIG
model = VisionTransformer(image, patch, depth, heads, dim, 4 * dim)
model.heads = torch.nn.Identity()
weights = {torchvision_name(k): v for k, v in inputs.items() if k not in ("x", "w")}
model.load_state_dict(weights, strict=True)
x = inputs["x"].requires_grad_(True)
for train in (False, True):
    model.train(train)
    outputs[f"y_{train}"] = model(x)
with torch.no_grad():
    # The other taps, pooled over the patches: the patch embedding, and the encoder's patch
    # tokens after its final norm (torchvision's forward keeps only the class token).
    patches = model.conv_proj(x)
    outputs["patch_embed"] = patches.mean((2, 3))
    tokens = model._process_input(x)
    cls = model.class_token.expand(tokens.shape[0], -1, -1)
    outputs["tokens"] = model.encoder(torch.cat([cls, tokens], dim=1))[:, 1:].mean(1)
(outputs["y_True"] * inputs["w"]).sum().backward()
outputs["grad_x"] = x.grad
back = {torchvision_name(k): k for k in inputs if k not in ("x", "w")}
for name, p in model.named_parameters():
    outputs["grad." + back[name]] = p.grad
"#;

#[test]
fn a_small_vit_matches_torchvision() {
    tch::set_num_threads(1);
    tch::manual_seed(5);
    let (image, patch, depth, heads, dim) = (32, 8, 2, 3, 48);
    let spec = ViTSmall16(ViTConfig {
        image_size: image,
        patch_size: patch,
        embed_dim: dim,
        depth,
        num_heads: heads,
        mlp_ratio: 4.0,
        pretrained: None,
    });
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
    assert!(max_abs_diff(&y_eval, &reference["y_False"]) < 1e-4, "eval-mode output");
    assert!(max_abs_diff(&y_train, &reference["y_True"]) < 1e-4, "train-mode output");
    for tap in ["patch_embed", "tokens"] {
        let ours = tch::no_grad(|| net.embed(&x, false, tap));
        let d = max_abs_diff(&ours, &reference[tap]);
        assert!(d < 1e-4, "the {tap} tap differs by {d}");
    }
    let relative =
        |ours: &Tensor, theirs: &Tensor| max_abs_diff(ours, theirs) / theirs.abs().max().double_value(&[]).max(1e-12);
    assert!(relative(&xg.grad(), &reference["grad_x"]) < 1e-3, "input gradient");
    let variables: HashMap<String, Tensor> = vs.variables();
    let mut compared = 0;
    for (key, theirs) in reference.iter().filter(|(k, _)| k.starts_with("grad.")) {
        let name = &key["grad.".len()..];
        let r = relative(&variables[name].grad(), theirs);
        assert!(r < 1e-3, "gradient of {name} differs (relative {r})");
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
    ViTSmall16::default()
        .build(&vs.root(), &byol::BuildContext::new(Device::Cpu, 224))
        .unwrap();
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
