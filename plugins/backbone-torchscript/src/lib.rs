//! `torchscript`: any TorchScript module as a trainable BYOL backbone. Export the network from
//! PyTorch without its classifier, so that its forward returns features:
//!
//! ```python
//! import torch, torchvision
//! model = torchvision.models.resnet18()
//! model.fc = torch.nn.Identity()              # features, not logits: forward gives [N, 512]
//! torch.jit.script(model).save("resnet18.pt")  # or torch.jit.trace(model.train(), example)
//! ```
//!
//! ```toml
//! [backbone]
//! type = "torchscript"
//! path = "resnet18.pt"   # relative to the working directory
//! input_size = 224       # the dummy forward that finds the output width (512 here)
//!
//! [byol]
//! embedding_layer = "output"
//! ```
//!
//! - Variables carry the module's state_dict names (`layer1.0.bn1.weight`), parameters and
//!   buffers alike, so BYOL's online and target copies pair by name, checkpoints hold the
//!   batch-norm running statistics, and `byol-run export` writes a state_dict that
//!   `model.load_state_dict` takes strictly. The starting weights are the module's own (there is no
//!   `pretrained` key: export the model with the weights you want to start from).
//! - One tap, `output`: the forward's result, `[N, C]` (or `[N, C, H, W]`, pooled by BYOL; other
//!   shapes flattened, so their width must not depend on the image size, which loading checks).
//! - `train` selects `module.train()` / `module.eval()`. A **traced** module keeps the batch-norm
//!   and dropout behaviour of the mode it was traced in whatever the mode: script the model when
//!   you can. Loading finds either mode with probe forwards and warns
//!   ([`byol::Backbone::warnings`]).
//! - tch has no `named_buffers` for a TorchScript module: the module is loaded and owned by
//!   torch-ext's shim ([`torch_ext::torchscript::ScriptModule`]), which has it.

mod config;
mod module;

pub use config::TorchScriptConfig;
pub use module::{TorchScriptBackbone, OUTPUT};
