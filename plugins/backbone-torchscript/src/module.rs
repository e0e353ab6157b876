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
    /// What loading found ([`Backbone::warnings`]).
    warnings: Vec<String>,
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
            0 | 1 => {
                return Err(TchError::Torch(format!(
                    "the module returns a tensor of shape {:?}, without a dimension per image: a backbone returns \
                     [batch, features] (or [batch, channels, height, width], pooled)",
                    out.size()
                )))
            }
            _ => out.flatten(1, -1),
        })
    }
}

impl TorchScriptBackbone {
    /// Loads the module in `file` onto `path`'s device, adds its parameters (trainable as saved:
    /// `requires_grad`) and buffers (not trainable) under `path` with their state_dict names, and
    /// finds the output width with an eval-mode forward of a `[2, 3, input_size, input_size]`
    /// batch. The same forward at `views_size` (the size training feeds) must give the same
    /// width. The probe forwards in both modes also show what tracing recorded ([`mode_warnings`]);
    /// the module's buffers are restored after every probe, so that loading changes nothing.
    pub fn load(file: &Path, path: &nn::Path, input_size: i64, views_size: i64) -> Result<Self, ByolError> {
        let config_error = |what: String| ByolError::Config(format!("backbone.path = {}: {what}", file.display()));
        if file.is_dir() {
            return Err(config_error(
                "is a folder; name the module's file, saved with torch.jit.script(model).save(\"backbone.pt\")".into(),
            ));
        }
        if !file.is_file() {
            let cwd = std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(config_error(format!(
                "no such file (relative paths start from the working directory {cwd}); export a module with \
                 torch.jit.script(model).save(\"backbone.pt\")"
            )));
        }
        let inner = ScriptModule::load(file, path.device()).map_err(|e| {
            // libtorch's own text suggests a corrupt file; most often it is a torch.save file.
            let cause = e.0.lines().next().unwrap_or_default().to_string();
            config_error(format!(
                "not a TorchScript module saved by torch.jit.save (most often a file of torch.save, a \
                 state_dict or a pickled model: save torch.jit.script(model) with its .save(\"backbone.pt\"); \
                 else a damaged file, or one saved by a newer PyTorch than this libtorch) ({cause})"
            ))
        })?;
        let parameters = inner.named_parameters().map_err(|e| ByolError::Torch(torch_error(e)))?;
        if !parameters.iter().any(|(_, t)| t.requires_grad()) {
            return Err(config_error("the module has no trainable parameter".into()));
        }
        if let Some((name, t)) = parameters
            .iter()
            .find(|(_, t)| !t.is_floating_point() || t.kind() != path.kind())
        {
            return Err(config_error(format!(
                "parameter '{name}' is {:?}, the model is {:?}; save the module in float32 (model.float())",
                t.kind(),
                path.kind()
            )));
        }
        let buffers = inner.named_buffers().map_err(|e| ByolError::Torch(torch_error(e)))?;
        // Loading maps tensors to the run's device; a module saved with tensors on the meta device
        // (torch.device("meta"), no values) keeps them there.
        if let Some((name, _)) = parameters
            .iter()
            .chain(&buffers)
            .find(|(_, t)| t.device() != path.device())
        {
            // (tch has no meta device: its Device names such a tensor's as another.)
            return Err(config_error(format!(
                "'{name}' did not load onto the run's device: a tensor saved on the meta device \
                 (torch.device(\"meta\")) holds no values to train; save the module with its weights \
                 (model.to(\"cpu\") after loading them)"
            )));
        }
        for (name, tensor) in parameters {
            let trainable = tensor.requires_grad();
            add_variable(path, &name, tensor, trainable);
        }
        let mut saved = Vec::with_capacity(buffers.len());
        for (name, tensor) in buffers {
            saved.push(SavedBuffer {
                name: name.clone(),
                live: tensor.shallow_clone(),
                copy: tensor.copy(),
            });
            add_variable(path, &name, tensor, false);
        }
        let mut probe = Probe {
            module: Module { inner, training: None },
            saved,
            kind: path.kind(),
            device: path.device(),
        };

        let (out, counted_in_eval) = probe.forward_counting(input_size, false);
        let out = out.map_err(|e| {
            config_error(format!(
                "the forward of a [2, 3, {input_size}, {input_size}] batch fails (set backbone.input_size to \
                 a size the module accepts; its forward must take one image tensor and return one tensor): {e}"
            ))
        })?;
        let size = out.size();
        if size.len() < 2 || size[0] != 2 || out.kind() != path.kind() {
            return Err(config_error(format!(
                "the forward returns a {:?} tensor of shape {size:?}; a backbone returns [N, C] or [N, C, H, W] \
                 features of the model's kind",
                out.kind()
            )));
        }
        let dim = size[1];
        // The eval-mode output at the views' size (the forward above when the sizes agree).
        let (at_views, counted_in_eval) = if views_size == input_size {
            (out, counted_in_eval)
        } else {
            let (at_views, counted) = probe.forward_counting(views_size, false);
            let at_views = at_views.map_err(|e| {
                config_error(format!(
                    "the forward of a [2, 3, {views_size}, {views_size}] batch, the size of the views \
                     (augment.image_size), fails: the module does not take the images training feeds it: {e}"
                ))
            })?;
            let views_dim = at_views.size().get(1).copied().unwrap_or(0);
            if views_dim != dim {
                return Err(config_error(format!(
                    "the output's width depends on the image size: {dim} at backbone.input_size = {input_size}, \
                     {views_dim} at the views' {views_size} px (augment.image_size); an output of other than 2 or \
                     4 dimensions ([N, tokens, C]) is flattened, and grows with the image: return pooled features \
                     ([N, C]: tokens.mean(1), or the class token x[:, 0]), or set backbone.input_size = {views_size}"
                )));
            }
            (at_views, counted)
        };
        // Training runs the module in train mode: its output must have the width found here.
        let (trained, counted_in_train) = probe.forward_counting(views_size, true);
        let trained = trained.map_err(|e| {
            config_error(format!(
                "the train-mode forward of a [2, 3, {views_size}, {views_size}] batch fails (the eval-mode one \
                 works): {e}"
            ))
        })?;
        if trained.size().get(1) != Some(&dim) {
            return Err(config_error(format!(
                "the output is [N, {dim}] in eval mode but {:?} in train mode; a backbone's features have one \
                 width in both modes",
                trained.size()
            )));
        }
        // Features that are NaN or infinite for moderate pixels stop training at its first step
        // with a NaN loss: say so when the module loads, as `validate` does it too.
        for (features, mode) in [(&at_views, "eval"), (&trained, "train")] {
            if features.isfinite().all().int64_value(&[]) == 0 {
                return Err(config_error(format!(
                    "the {mode}-mode forward of a [2, 3, {views_size}, {views_size}] batch of values in [-1, 1] \
                     returns NaN or infinite features: training would stop at its first step with a NaN loss; \
                     check the module's forward (a log, a square root or a division of values that can be zero \
                     or negative)"
                )));
            }
        }
        let again = probe.forward(views_size, false).ok();
        let warnings = mode_warnings(file, counted_in_train, counted_in_eval, &at_views, again.as_ref());
        Ok(Self {
            module: Mutex::new(probe.module),
            dim,
            file: file.to_path_buf(),
            warnings,
        })
    }
}

impl TorchScriptBackbone {
    /// Says, where the module has batch norms, that a data-parallel run's synchronized batch
    /// norm (`distributed.sync_batch_norm`) does not reach them: they run inside the module's own
    /// code, on each process's share of the batch.
    pub fn note_batch_norms_stay_per_process(&mut self) {
        let variables = self
            .module
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .inner
            .named_buffers();
        let has_batch_norms = variables.is_ok_and(|buffers| buffers.iter().any(|(n, _)| n.ends_with("running_mean")));
        if has_batch_norms {
            self.warnings.push(format!(
                "backbone.path = {}: the module's batch norms compute their statistics on each process's share \
                 of the batch: synchronized batch norm (distributed.sync_batch_norm) reaches the projector's and \
                 predictor's only, not code inside a TorchScript module",
                self.file.display()
            ));
        }
    }
}

/// A buffer of the module and its value when loaded.
struct SavedBuffer {
    name: String,
    live: Tensor,
    copy: Tensor,
}

/// The module being loaded, with what restores its buffers after a probe forward.
struct Probe {
    module: Module,
    saved: Vec<SavedBuffer>,
    kind: tch::Kind,
    device: tch::Device,
}

impl Probe {
    /// The module's output for a fixed `[2, 3, size, size]` batch of varied pixels (drawn from
    /// no random generator; a module's own dropout does draw from it, so a run's starting heads
    /// depend on whether its module has dropout, the same on every start), without gradients; the
    /// buffers are restored afterwards.
    fn forward(&mut self, size: i64, train: bool) -> Result<Tensor, TchError> {
        self.forward_counting(size, train).0
    }

    /// [`Probe::forward`], and how many batches its batch norms counted in
    /// `num_batches_tracked` (None: the module has no such counter).
    fn forward_counting(&mut self, size: i64, train: bool) -> (Result<Tensor, TchError>, Option<i64>) {
        let batch = (Tensor::arange(2 * 3 * size * size, (tch::Kind::Float, self.device)) * 0.7)
            .sin()
            .view([2, 3, size, size])
            .to_kind(self.kind);
        let out = tch::no_grad(|| self.module.forward(&batch, train));
        let counters = || self.saved.iter().filter(|b| b.name.ends_with("num_batches_tracked"));
        let counted = (counters().count() > 0).then(|| {
            counters()
                .map(|b| b.live.int64_value(&[]) - b.copy.int64_value(&[]))
                .sum()
        });
        tch::no_grad(|| {
            for buffer in &self.saved {
                buffer.live.shallow_clone().copy_(&buffer.copy);
            }
        });
        (out, counted)
    }
}

/// What a module recorded by `torch.jit.trace` gives away in the probe forwards at the views'
/// size: batch norms that count no batch in train mode (`counted_in_train`: traced in eval mode,
/// training would keep the loaded statistics and no dropout), or that count one in eval mode
/// (`counted_in_eval`: traced in train mode, `embed`, `eval` and the kNN monitor would update the
/// statistics that checkpoints keep), and an eval-mode forward that gives two outputs for one
/// batch (`eval_out` and `eval_again`: dropout traced in train mode, embeddings would be random).
fn mode_warnings(
    file: &Path,
    counted_in_train: Option<i64>,
    counted_in_eval: Option<i64>,
    eval_out: &Tensor,
    eval_again: Option<&Tensor>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let module = format!("backbone.path = {}", file.display());
    let retrace = "script the module (torch.jit.script), or trace it in the mode it is trained in";
    if counted_in_train == Some(0) {
        warnings.push(format!(
            "{module}: its batch norms count no batch in train mode (a module traced in eval mode): \
             training would keep their loaded running statistics and skip any dropout; {retrace}"
        ));
    }
    if counted_in_eval.is_some_and(|n| n > 0) {
        warnings.push(format!(
            "{module}: its batch norms update their running statistics in eval mode too (a module traced \
             in train mode): embed, eval and the kNN monitor use batch statistics and change the running \
             ones that checkpoints keep; script the module (torch.jit.script) if you can"
        ));
    }
    // Dropout changes outputs by their own size; a GPU's nondeterministic sums, by rounding.
    if eval_again.is_some_and(|again| !eval_out.allclose(again, 1e-4, 1e-6, true)) {
        warnings.push(format!(
            "{module}: its eval-mode forward gives different outputs for the same images (dropout \
             traced in train mode): embed and eval would give random embeddings; {retrace}, or trace \
             it without dropout"
        ));
    }
    warnings
}

impl Backbone for TorchScriptBackbone {
    fn taps(&self) -> Vec<&'static str> {
        vec![OUTPUT]
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        (tap == OUTPUT).then_some(self.dim)
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
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
