//! BYOL's three networks and one training objective.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::ModuleT, Tensor};

use crate::backbone::{Backbone, BackboneSpec};
use crate::heads::MlpHead;
use crate::loss::byol_loss;
use crate::optimizer::NamedParameter;
use crate::state_dict::load_safetensors;
use crate::target::{tau_at, variables_under, TargetUpdater};
use crate::{BuildContext, ByolError};

/// The `[byol]` table: head sizes and the target's moving-average schedule.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ByolConfig {
    /// Backbone tap whose pooled output is the representation y ("avgpool" for ResNets).
    /// `byol-run` passes it to [`Byol::new`] (or its siblings), which take the tap as their own
    /// argument, as the original class did, and refuse a field set to another tap than theirs
    /// (the default, "avgpool", leaves the tap to the argument).
    pub embedding_layer: String,
    /// Hidden width of the projector and predictor MLPs (paper: 4096).
    pub hidden_dim: i64,
    /// Output size of the projector and predictor (paper: 256).
    pub projection_dim: i64,
    /// Base EMA decay of the target network, annealed to 1 by a cosine (paper: 0.996).
    pub tau_base: f64,
    /// Run both views through the networks as one batch of 2N (faster on a GPU; batch norm then
    /// pools both views' statistics, as many PyTorch implementations do). Default: each view on
    /// its own, as the paper's implementation.
    pub concat_views: bool,
}

impl Default for ByolConfig {
    fn default() -> Self {
        Self {
            embedding_layer: "avgpool".into(),
            hidden_dim: 4096,
            projection_dim: 256,
            tau_base: 0.996,
            concat_views: false,
        }
    }
}

/// BYOL: online network (backbone -> projector) with a predictor, and a target network (a
/// copy of backbone + projector updated only by EMA). Variable names:
/// `online.backbone.*`, `online.projector.*`, `online.predictor.*`, `target.backbone.*`,
/// `target.projector.*`, the sub-paths being the PyTorch state_dict names.
#[derive(Debug)]
pub struct Byol {
    online_backbone: Box<dyn Backbone>,
    online_projector: MlpHead,
    predictor: MlpHead,
    target_backbone: Box<dyn Backbone>,
    target_projector: MlpHead,
    target: TargetUpdater,
    embedding_layer: String,
    embedding_dim: i64,
    tau_base: f64,
    concat_views: bool,
    /// Whether the heads' batch norms take statistics over every replica's batch, so that a
    /// replica's batch of one image is no batch norm's batch of one.
    synchronized_heads: bool,
    /// What loading the pretrained weights had to say ([`load_safetensors`]).
    pretrained_notes: Vec<String>,
}

/// Builds a backbone under a path: a [`BackboneSpec`]'s `build`, or a closure of one's own.
type BuildBackbone<'a> = dyn Fn(&nn::Path, &BuildContext) -> Result<Box<dyn Backbone>, ByolError> + 'a;

/// A safetensors file of weights to start from, and which of its keys the backbone does not have.
type Pretrained<'a> = (&'a std::path::Path, &'a dyn Fn(&str) -> bool);

/// What one loss evaluation saw, for logging (the collapse signal among others).
#[derive(Debug)]
pub struct LossParts {
    /// The symmetric BYOL loss, a 0-d tensor ([`Byol::loss`]).
    pub loss: Tensor,
    /// Online projections of both views, `[2N, projection_dim]`, detached.
    pub online_projections: Tensor,
    /// Online representations (backbone embeddings) of view 1, `[N, embedding_dim]`, detached:
    /// what an online linear probe trains on.
    pub online_embeddings: Tensor,
}

impl Byol {
    /// Builds all networks in `vs` (online from `backbone`, target as an identical copy), for one
    /// process. `image_size` is the side of the square views the augmentation produces.
    pub fn new(
        vs: &nn::VarStore,
        backbone: &dyn BackboneSpec,
        image_size: i64,
        embedding_layer: &str,
        config: &ByolConfig,
    ) -> Result<Self, ByolError> {
        let context = BuildContext::new(vs.device(), image_size);
        Self::assemble(vs, backbone, &context, embedding_layer, config, true)
    }

    /// [`Byol::new`] from a run's [`BuildContext`] (on `vs`'s device), whose batch-norm choice
    /// reaches the backbone's and the heads' batch norms.
    pub fn in_context(
        vs: &nn::VarStore,
        backbone: &dyn BackboneSpec,
        context: &BuildContext,
        embedding_layer: &str,
        config: &ByolConfig,
    ) -> Result<Self, ByolError> {
        Self::assemble(vs, backbone, context, embedding_layer, config, true)
    }

    /// [`Byol::in_context`] for networks whose weights come from a checkpoint next: the backbone's
    /// `pretrained` file is not read (the checkpoint supersedes it, and it may be gone).
    pub fn for_checkpoint(
        vs: &nn::VarStore,
        backbone: &dyn BackboneSpec,
        context: &BuildContext,
        embedding_layer: &str,
        config: &ByolConfig,
    ) -> Result<Self, ByolError> {
        Self::assemble(vs, backbone, context, embedding_layer, config, false)
    }

    /// [`Byol::new`] around a backbone of your own that is no plugin (no TOML spec, no
    /// registration): `build` makes a [`Backbone`] with its variables under the path it is given,
    /// and is called twice, for the online network and then for the target's copy.
    pub fn with_backbone(
        vs: &nn::VarStore,
        build: impl Fn(&nn::Path, &BuildContext) -> Result<Box<dyn Backbone>, ByolError>,
        image_size: i64,
        embedding_layer: &str,
        config: &ByolConfig,
    ) -> Result<Self, ByolError> {
        let context = BuildContext::new(vs.device(), image_size);
        Self::assemble_with(vs, &build, None, &context, embedding_layer, config)
    }

    fn assemble(
        vs: &nn::VarStore,
        backbone: &dyn BackboneSpec,
        context: &BuildContext,
        embedding_layer: &str,
        config: &ByolConfig,
        read_pretrained: bool,
    ) -> Result<Self, ByolError> {
        let ignores = |key: &str| backbone.pretrained_ignores(key);
        let pretrained = backbone
            .pretrained()
            .filter(|_| read_pretrained)
            .map(|path| (path, &ignores as &dyn Fn(&str) -> bool));
        let build = |path: &nn::Path, context: &BuildContext| backbone.build(path, context);
        Self::assemble_with(vs, &build, pretrained, context, embedding_layer, config)
    }

    /// Builds the networks with `build`, loading `pretrained` (a safetensors file, and the keys of
    /// it the backbone does not have) into the online backbone.
    fn assemble_with(
        vs: &nn::VarStore,
        build: &BuildBackbone<'_>,
        pretrained: Option<Pretrained<'_>>,
        context: &BuildContext,
        embedding_layer: &str,
        config: &ByolConfig,
    ) -> Result<Self, ByolError> {
        if config.hidden_dim <= 0 || config.projection_dim <= 0 {
            return Err(ByolError::Config(
                "byol.hidden_dim and byol.projection_dim must be positive".into(),
            ));
        }
        if !(0.0..=1.0).contains(&config.tau_base) {
            return Err(ByolError::Config(format!(
                "byol.tau_base = {} is outside [0, 1]",
                config.tau_base
            )));
        }
        let default_layer = ByolConfig::default().embedding_layer;
        if config.embedding_layer != embedding_layer && config.embedding_layer != default_layer {
            return Err(ByolError::Config(format!(
                "the networks were asked to embed at tap {embedding_layer:?}, but their ByolConfig says \
                 embedding_layer = {:?}: the tap is the constructor's argument (the field is the [byol] key \
                 that byol-run passes as it); give both the same tap",
                config.embedding_layer
            )));
        }
        if context.image_size < 1 {
            return Err(ByolError::Config(format!(
                "the views' image size is {}: give the side of the square views, in pixels",
                context.image_size
            )));
        }
        // A second set of networks in one store would take names with `__N` suffixes beside the
        // first's, and the EMA's pairing would fail half-way, the first networks' target reset.
        if let Some(name) = vs
            .variables()
            .keys()
            .find(|name| name.starts_with("online.") || name.starts_with("target."))
        {
            return Err(ByolError::Config(format!(
                "this VarStore already holds BYOL networks ('{name}'): build each Byol in a VarStore of its own"
            )));
        }
        if context.device != vs.device() {
            return Err(ByolError::Config(format!(
                "the build context is on {:?} but the variable store on {:?}",
                context.device,
                vs.device()
            )));
        }
        let root = vs.root();
        let online = &root / "online";
        let target = &root / "target";
        let online_backbone = build(&(&online / "backbone"), context)?;
        let embedding_dim = online_backbone.check_tap(embedding_layer)?;
        let mut pretrained_notes = Vec::new();
        if let Some((path, ignores)) = pretrained {
            let variables = variables_under(vs, "online.backbone.");
            pretrained_notes.extend(load_safetensors(&variables, path, ignores)?);
        }
        let (hidden, projection) = (config.hidden_dim, config.projection_dim);
        let heads = &context.head_batch_norm;
        let online_projector = MlpHead::new(&(&online / "projector"), embedding_dim, hidden, projection, heads);
        let predictor = MlpHead::new(&(&online / "predictor"), projection, hidden, projection, heads);
        let target_backbone = build(&(&target / "backbone"), context)?;
        let target_projector = MlpHead::new(&(&target / "projector"), embedding_dim, hidden, projection, heads);
        // The target gets no gradients: it only moves by EMA.
        for (name, t) in vs.variables() {
            if name.starts_with("target.") {
                let _ = t.set_requires_grad(false);
            }
        }
        let target = TargetUpdater::new(vs, "online.", "target.")?;
        Ok(Self {
            online_backbone,
            online_projector,
            predictor,
            target_backbone,
            target_projector,
            target,
            embedding_layer: embedding_layer.to_string(),
            embedding_dim,
            tau_base: config.tau_base,
            concat_views: config.concat_views,
            synchronized_heads: matches!(context.head_batch_norm, crate::nn::BatchStatistics::Global(_)),
            pretrained_notes,
        })
    }

    /// The online backbone's [`Backbone::warnings`](crate::Backbone::warnings).
    pub fn backbone_warnings(&self) -> Vec<String> {
        self.online_backbone.warnings()
    }

    /// What loading the pretrained weights it was built from had to say (tensors the file left
    /// out as never trained keep their initial values), for the caller to show once.
    pub fn pretrained_notes(&self) -> &[String] {
        &self.pretrained_notes
    }

    /// The symmetric BYOL loss of two views of the same images (`contrast` in the original,
    /// which drew the views itself; here an [`Augment`](crate::Augment) draws them, or your own
    /// augmentation): normalized `[N, 3, H, W]` batches of one shape, view `i` of both batches
    /// from image `i`, at the `image_size` the networks were built for.
    ///
    /// # Panics
    /// When the two views differ in shape, are not float `[N, 3, H, W]` batches, or hold fewer
    /// than 2 images (training-mode batch norm needs two values per channel; 1 will do where
    /// the views go through as one batch, `concat_views`, or the heads' batch norms are
    /// synchronized across replicas); libtorch panics on other input the backbone cannot take.
    pub fn loss(&self, view1: &Tensor, view2: &Tensor) -> Tensor {
        self.loss_parts(view1, view2).loss
    }

    /// The loss plus what the logger wants to see of it.
    pub fn loss_parts(&self, view1: &Tensor, view2: &Tensor) -> LossParts {
        // Pairs are matched by position: views of unequal batches would pair the wrong images
        // (or, concatenated, drop rows) without an error.
        let (size1, size2) = (view1.size(), view2.size());
        assert!(
            size1 == size2,
            "Byol::loss: the two views have shapes {size1:?} and {size2:?}; they must be two views of the \
             same images, of one shape"
        );
        check_images("Byol::loss", view1);
        check_images("Byol::loss", view2);
        // Of one image, batch-norm statistics are undefined (a NaN variance) unless the views go
        // through as one batch or the heads' batch norms gather every replica's.
        let least = if self.concat_views || self.synchronized_heads {
            1
        } else {
            2
        };
        assert!(
            size1[0] >= least,
            "Byol::loss: a batch of {} image(s); training-mode batch norm needs at least {least} per view (drop a \
             last batch that small)",
            size1[0]
        );
        if self.concat_views {
            return self.loss_parts_concatenated(view1, view2);
        }
        // Each view goes through the networks on its own, so batch-norm statistics are per view,
        // as in the paper's implementation.
        let y1 = self.online_backbone.embed(view1, true, &self.embedding_layer);
        self.check_width(&y1);
        let z1 = self.online_projector.forward_t(&y1, true);
        let z2 = self.online_projection(view2);
        let p1 = self.predictor.forward_t(&z1, true);
        let p2 = self.predictor.forward_t(&z2, true);
        let (t1, t2) = tch::no_grad(|| (self.target_projection(view1), self.target_projection(view2)));
        let loss = byol_loss(&p1, &p2, &t1, &t2);
        LossParts {
            loss,
            online_projections: Tensor::cat(&[z1.detach(), z2.detach()], 0),
            online_embeddings: y1.detach(),
        }
    }

    /// Both views as one batch: two network passes instead of four.
    fn loss_parts_concatenated(&self, view1: &Tensor, view2: &Tensor) -> LossParts {
        let n = view1.size()[0];
        let views = Tensor::cat(&[view1, view2], 0);
        let y = self.online_backbone.embed(&views, true, &self.embedding_layer);
        self.check_width(&y);
        let z = self.online_projector.forward_t(&y, true);
        let p = self.predictor.forward_t(&z, true);
        let t = tch::no_grad(|| self.target_projection(&views));
        let loss = byol_loss(
            &p.narrow(0, 0, n),
            &p.narrow(0, n, n),
            &t.narrow(0, 0, n),
            &t.narrow(0, n, n),
        );
        LossParts {
            loss,
            online_projections: z.detach(),
            online_embeddings: y.narrow(0, 0, n).detach(),
        }
    }

    /// Moves the target towards the online network with tau for `step` (0-based: the first
    /// optimizer step is 0) of `total_steps` (`updateTargetEncoder` in the original); returns tau.
    ///
    /// # Panics
    /// When `total_steps` is 0 (there is no schedule to be on), or the store was converted after
    /// the networks were built (the EMA would move tensors the networks no longer read).
    pub fn update_target(&self, step: u64, total_steps: u64) -> f64 {
        assert!(
            total_steps > 0,
            "Byol::update_target: total_steps is 0; give the number of optimizer steps training makes"
        );
        let tau = self.tau_at(step, total_steps);
        self.target.update(tau);
        tau
    }

    /// The EMA decay at `step` (0-based) of `total_steps`: BYOL's cosine schedule from
    /// `tau_base` at step 0 to 1 at `total_steps`.
    pub fn tau_at(&self, step: u64, total_steps: u64) -> f64 {
        tau_at(step, total_steps, self.tau_base)
    }

    /// Re-lays the online and target conv weights as channels_last (NHWC) inside the EMA's flat
    /// buffers, keeping every value (the target's EMA too); call it before building an optimizer
    /// over the parameters, which it replaces. Inputs must then be channels_last as well for the
    /// fast convolution kernels.
    pub fn use_channels_last(&mut self, vs: &nn::VarStore) -> Result<(), ByolError> {
        self.target = TargetUpdater::relaid_out(vs, "online.", "target.", true)?;
        Ok(())
    }

    /// EMA step with an explicit decay.
    pub fn update_target_with_tau(&self, tau: f64) {
        self.target.update(tau);
    }

    /// The EMA with `1 - tau` read from the 0-d tensor `weight` when the kernel runs (for a
    /// step captured in a CUDA graph).
    pub fn update_target_with_weight(&self, weight: &Tensor) {
        self.target.update_with_weight(weight);
    }

    /// The trainable parameters of the online network and predictor in `vs` (the store these
    /// networks were built in), sorted by state_dict name: what an
    /// [`OptimizerSpec`](crate::OptimizerSpec) updates. Take them after
    /// [`Byol::use_channels_last`], which replaces them.
    pub fn parameters(&self, vs: &nn::VarStore) -> Vec<NamedParameter> {
        let mut parameters: Vec<NamedParameter> = vs
            .variables()
            .into_iter()
            .filter(|(name, t)| name.starts_with("online.") && t.requires_grad())
            .map(|(name, tensor)| NamedParameter { name, tensor })
            .collect();
        parameters.sort_by(|a, b| a.name.cmp(&b.name));
        parameters
    }

    /// The online backbone's representation of (already normalized) float `[N, 3, H, W]`
    /// images, in eval mode.
    pub fn embed(&self, images: &Tensor) -> Tensor {
        check_images("Byol::embed", images);
        let y = tch::no_grad(|| self.online_backbone.embed(images, false, &self.embedding_layer));
        self.check_width(&y);
        y
    }

    /// Panics when the backbone's features at the tap are not as wide as its `tap_dim` said when
    /// the heads were built for them.
    fn check_width(&self, features: &Tensor) {
        let width = features.size().get(1).copied();
        assert!(
            width == Some(self.embedding_dim),
            "the backbone's tap '{}' gives features of shape {:?}, where its tap_dim said {} (the width the \
             heads were built for): make tap_dim return the width forward_taps gives",
            self.embedding_layer,
            features.size(),
            self.embedding_dim
        );
    }

    /// Whether the embedding is taken at the backbone's last tap, so that every layer of the
    /// backbone computes it.
    pub fn embeds_at_last_tap(&self) -> bool {
        self.online_backbone.taps().last() == Some(&self.embedding_layer.as_str())
    }

    /// The width of [`Byol::embed`]'s rows: the embedding tap's channels.
    pub fn embedding_dim(&self) -> i64 {
        self.embedding_dim
    }

    fn online_projection(&self, view: &Tensor) -> Tensor {
        let y = self.online_backbone.embed(view, true, &self.embedding_layer);
        self.online_projector.forward_t(&y, true)
    }

    fn target_projection(&self, view: &Tensor) -> Tensor {
        // Train mode: the target uses batch statistics and keeps its own running averages.
        let y = self.target_backbone.embed(view, true, &self.embedding_layer);
        self.target_projector.forward_t(&y, true)
    }
}

/// Panics, naming `what`, when `images` is not a float `[N, 3, H, W]` batch.
fn check_images(what: &str, images: &Tensor) {
    let size = images.size();
    assert!(
        size.len() == 4 && size[1] == 3,
        "{what}: images of shape {size:?}; it takes [N, 3, H, W] batches (channels first, a batch dimension \
         even for one image)"
    );
    assert!(
        images.is_floating_point(),
        "{what}: images of kind {:?}; convert them to float and normalize them first",
        images.kind()
    );
}
