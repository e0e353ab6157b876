//! The runtime side: a TorchScript module whose tensors are variables of the `VarStore`.
//!
//! tch's `TrainableCModule::load` registers a module's parameters as variables, but under
//! flattened names (`layer1_0_conv1_weight`) and without its buffers. This does the same job with
//! torch-ext's [`ScriptModule`]: every parameter and every buffer (batch-norm `running_mean`,
//! `running_var`, `num_batches_tracked`) is added under its state_dict name, as a handle to the
//! very tensor the module computes with (one `TensorImpl`, two handles). So everything that works
//! on variables works on the module: the optimizer steps the parameters in place, BYOL's EMA
//! re-seats the target's parameters as views of one flat buffer with `set_data` (which the
//! module then reads), checkpoints save and restore buffers with the parameters, `pretrained`
//! and `byol-run export` use PyTorch's names.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tch::{nn, TchError, Tensor};
use torch_ext::torchscript::ScriptModule;

use byol::{Backbone, ByolError};

/// The one feature tap: the module's forward output.
pub const OUTPUT: &str = "output";

/// A TorchScript module as a backbone. One tap, [`OUTPUT`]: the forward output as is when it is
/// `[N, C]` or `[N, C, H, W]` (BYOL's embedding pools the latter), flattened to `[N, -1]`
/// otherwise. `train` switches the module between `train()` and `eval()` before each forward.
///
/// A traced module (`torch.jit.trace`) recorded batch norm and dropout in the mode it was traced
/// in, and ignores the switch: prefer `torch.jit.script`, or trace in the mode you train in.
#[derive(Debug)]
pub struct TorchScriptBackbone {
    module: Mutex<Module>,
    dim: i64,
    file: PathBuf,
}

#[derive(Debug)]
struct Module {
    inner: ScriptModule,
    /// The mode last set, so that the recursive `train()`/`eval()` runs only on a change.
    training: Option<bool>,
}

impl Module {
    fn forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor, TchError> {
        if self.training != Some(train) {
            self.inner.set_training(train).map_err(torch_error)?;
            self.training = Some(train);
        }
        let out = self.inner.forward(images).map_err(torch_error)?;
        Ok(match out.dim() {
            2 | 4 => out,
            _ => out.flatten(1, -1),
        })
    }
}

impl TorchScriptBackbone {
    /// Loads the module in `file` onto `path`'s device, adds its parameters (trainable as saved:
    /// `requires_grad`) and buffers (not trainable) under `path` with their state_dict names, and
    /// finds the output width with an eval-mode forward of a `[2, 3, input_size, input_size]` batch
    /// of zeros (buffers restored afterwards, in case a traced module updates them anyway).
    pub fn load(file: &Path, path: &nn::Path, input_size: i64) -> Result<Self, ByolError> {
        if !file.is_file() {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(ByolError::Config(format!(
                "backbone.path = {}: no such file (relative paths start from the working directory {cwd}); \
                 export a module with torch.jit.script(model).save(\"backbone.pt\")",
                file.display()
            )));
        }
        let inner = ScriptModule::load(file, path.device()).map_err(|e| {
            ByolError::Config(format!(
                "backbone.path = {}: not a TorchScript module saved by torch.jit.save ({e})",
                file.display()
            ))
        })?;
        let parameters = inner.named_parameters().map_err(|e| ByolError::Torch(torch_error(e)))?;
        if !parameters.iter().any(|(_, t)| t.requires_grad()) {
            return Err(ByolError::Config(format!(
                "backbone.path = {}: the module has no trainable parameter",
                file.display()
            )));
        }
        if let Some((name, t)) = parameters
            .iter()
            .find(|(_, t)| t.is_floating_point() && t.kind() != path.kind())
        {
            return Err(ByolError::Config(format!(
                "backbone.path = {}: parameter '{name}' is {:?}, the model is {:?}; save the module in float32 \
                 (model.float())",
                file.display(),
                t.kind(),
                path.kind()
            )));
        }
        let buffers = inner.named_buffers().map_err(|e| ByolError::Torch(torch_error(e)))?;
        for (name, tensor) in parameters {
            let trainable = tensor.requires_grad();
            add_variable(path, &name, tensor, trainable);
        }
        let mut saved = Vec::with_capacity(buffers.len());
        for (name, tensor) in buffers {
            saved.push((tensor.shallow_clone(), tensor.copy()));
            add_variable(path, &name, tensor, false);
        }

        let mut module = Module { inner, training: None };
        let probe = Tensor::zeros([2, 3, input_size, input_size], (path.kind(), path.device()));
        let out = tch::no_grad(|| module.forward(&probe, false));
        tch::no_grad(|| {
            for (live, copy) in &saved {
                live.shallow_clone().copy_(copy);
            }
        });
        let out = out.map_err(|e| {
            ByolError::Config(format!(
                "backbone.path = {}: the forward of a [2, 3, {input_size}, {input_size}] batch fails (set \
                 backbone.input_size to a size the module accepts; its forward must take one image tensor and \
                 return one tensor): {e}",
                file.display()
            ))
        })?;
        let size = out.size();
        if size.len() < 2 || size[0] != 2 || out.kind() != path.kind() {
            return Err(ByolError::Config(format!(
                "backbone.path = {}: the forward returns a {:?} tensor of shape {size:?}; a backbone returns \
                 [N, C] or [N, C, H, W] features of the model's kind",
                file.display(),
                out.kind()
            )));
        }
        Ok(Self {
            module: Mutex::new(module),
            dim: size[1],
            file: file.to_path_buf(),
        })
    }
}

impl Backbone for TorchScriptBackbone {
    fn taps(&self) -> Vec<&'static str> {
        vec![OUTPUT]
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        (tap == OUTPUT).then_some(self.dim)
    }

    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor> {
        if let Some(t) = taps.iter().find(|t| **t != OUTPUT) {
            panic!("torchscript has no tap '{t}' (taps: {OUTPUT})");
        }
        if taps.is_empty() {
            return Vec::new();
        }
        let out = self
            .module
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .forward(images, train)
            .unwrap_or_else(|e| panic!("torchscript {}: forward failed: {e}", self.file.display()));
        taps.iter().map(|_| out.shallow_clone()).collect()
    }
}

/// Adds `tensor` (kept as the same TensorImpl) as the variable `name` (dotted) under `path`.
fn add_variable(path: &nn::Path, name: &str, tensor: Tensor, trainable: bool) {
    let mut segments: Vec<&str> = name.split('.').collect();
    let last = segments.pop().expect("split yields at least one segment");
    let parent = segments.into_iter().fold(path.clone(), |p, s| p.sub(s));
    let _ = parent.add(last, tensor, trainable);
}

/// The shim's error as tch's, the type [`ByolError::Torch`] and the forward path carry.
fn torch_error(error: torch_ext::TorchExtError) -> TchError {
    TchError::Torch(error.0)
}
