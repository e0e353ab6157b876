//! The BYOL networks of an experiment on one device, built one way for training, benchmarks and
//! every later use of a checkpoint (embed, eval, export).

use anyhow::{bail, Context};
use tch::{nn::VarStore, Device, Kind, Tensor};

use byol::{BuildContext, Byol};

use crate::optimizer::NamedParameter;
use crate::Experiment;

/// Where the weights of a model being built come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// A run starting at step 0: the backbone's initialization, or its `pretrained` file.
    Initial,
    /// A checkpoint, loaded right after building: `pretrained` files are not read, so a
    /// checkpoint never depends on the file it superseded.
    Checkpoint,
}

/// The online, target and predictor networks in one variable store (state_dict names
/// `online.*`, `target.*`; an online probe adds `probe.*`).
pub struct Model {
    pub vs: VarStore,
    pub byol: Byol,
    /// The online network's trainable parameters, sorted by name: what the optimizer updates.
    pub parameters: Vec<NamedParameter>,
}

impl Model {
    /// The experiment's networks (`[backbone]`, `[byol]`) on `context`'s device, with its
    /// batch-norm statistics (synchronized in a data-parallel run).
    pub fn build(experiment: &Experiment, context: &BuildContext, weights: Weights) -> anyhow::Result<Self> {
        let vs = VarStore::new(context.device);
        let (backbone, config) = (experiment.backbone.as_ref(), &experiment.byol);
        let layer = config.embedding_layer.as_str();
        let what = "building the BYOL networks ([backbone], [byol])";
        // libtorch's errors while the variables are made (networks too large for the memory)
        // come as panics.
        let built = super::guarded(|| match weights {
            Weights::Initial => Byol::in_context(&vs, backbone, context, layer, config),
            Weights::Checkpoint => Byol::for_checkpoint(&vs, backbone, context, layer, config),
        });
        let byol = match built {
            Ok(byol) => byol.context(what)?,
            Err(panic) => {
                let message = super::panic_message(panic.as_ref());
                let first_line = message.lines().next().unwrap_or_default();
                match super::guard::is_out_of_memory(&message) {
                    true => bail!(
                        "{what}: the networks do not fit in the {}'s memory: make [backbone] or [byol] smaller\n\
                         ({first_line})",
                        match context.device {
                            Device::Cpu => "machine".to_string(),
                            device => super::device_name(device),
                        }
                    ),
                    false => bail!("{what}: {first_line}"),
                }
            }
        };
        let parameters = byol.parameters(&vs);
        Ok(Self { vs, byol, parameters })
    }

    /// Builds what a run's start builds from the experiment, on the CPU and then dropped: the
    /// networks (reading `backbone.pretrained` or a TorchScript module), the optimizer over them
    /// and the augmentation. For `byol-run validate`, so that what only building finds (a missing
    /// file, an unknown `byol.embedding_layer`, a ViT at another size than the views) is found
    /// before a run is started. Returns the backbone's warnings ([`Byol::backbone_warnings`]).
    pub fn check_builds(experiment: &Experiment) -> anyhow::Result<Vec<String>> {
        let model = Self::build_for_check(experiment)?;
        model.check_builds_around(experiment)?;
        Ok(model.byol.backbone_warnings())
    }

    /// The networks of [`Model::check_builds`], on the CPU.
    pub fn build_for_check(experiment: &Experiment) -> anyhow::Result<Self> {
        let context = BuildContext::new(Device::Cpu, experiment.augment.image_size());
        Self::build(experiment, &context, Weights::Initial)
    }

    /// The rest of [`Model::check_builds`] around networks already built: the optimizer over
    /// them and the augmentation (a sweep builds each distinct network once).
    pub fn check_builds_around(&self, experiment: &Experiment) -> anyhow::Result<()> {
        let context = BuildContext::new(Device::Cpu, experiment.augment.image_size());
        experiment
            .optimizer
            .build(self.parameters.clone(), &context)
            .context("building [optimizer]")?;
        experiment.augment.build(&context).context("building [augment]")?;
        Ok(())
    }

    /// Re-lays the conv weights channels_last (for channels_last inputs); right after building.
    pub fn into_channels_last(mut self) -> anyhow::Result<Self> {
        self.byol
            .use_channels_last(&self.vs)
            .context("laying out the weights channels_last")?;
        // The layout change replaces the variables: the optimizer must see the new ones.
        self.parameters = self.byol.parameters(&self.vs);
        Ok(self)
    }

    /// The online network's parameters that the BYOL loss does not reach (a backbone's layers
    /// past `byol.embedding_layer`), by name: training never changes them. Found by one backward
    /// through the loss on two random views of `image_size` pixels, on networks that have not
    /// been through a backward yet (their gradients undefined; this leaves them defined).
    pub fn unreached_parameters(&self, image_size: i64) -> Vec<String> {
        let views = || Tensor::randn([2, 3, image_size, image_size], (Kind::Float, self.device()));
        self.byol.loss(&views(), &views()).backward();
        self.parameters
            .iter()
            .filter(|p| !p.tensor.grad().defined())
            .map(|p| p.name.clone())
            .collect()
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The buffers (batch norms' running statistics and counts, of both networks), sorted by
    /// name: every variable that is neither a trainable parameter nor the target's copy of one.
    /// A TorchScript module's frozen parameters (`requires_grad=False`) count among them.
    pub fn buffers(&self) -> Vec<Tensor> {
        let trainable = self.vs.trainable_variables();
        let mut buffers: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| !trainable.iter().any(|v| v.data_ptr() == t.data_ptr()))
            .collect();
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        buffers.into_iter().map(|(_, t)| t).collect()
    }

    /// Every variable (online, target, buffers, probe), sorted, on the CPU: what a checkpoint holds.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        byol::state_dict::to_cpu_sorted(&self.vs.variables())
    }

    /// Copies saved variables into the model in place (views such as the EMA's flat buffers stay
    /// intact): every variable of the BYOL networks must be given, with its shape
    /// ([`Model::check_fits`]), or nothing is copied. The online probe's are copied where the
    /// model has a probe, they fit it and `same_probe` says they were trained over the classes it
    /// predicts; else ignored. Returns whether the model's probe starts untrained (it has one,
    /// and `saved` holds none to go on from: the probe was off, or over other classes).
    pub fn load_state(&self, saved: &[(String, Tensor)], same_probe: bool) -> anyhow::Result<bool> {
        self.check_fits(saved)?;
        let variables = self.vs.variables();
        let has_probe = variables.keys().filter(|name| is_probe(name)).count();
        let saved_probe: Vec<&(String, Tensor)> = saved.iter().filter(|(name, _)| is_probe(name)).collect();
        let probe_fits = same_probe
            && saved_probe.len() == has_probe
            && saved_probe
                .iter()
                .all(|(name, t)| variables.get(name).is_some_and(|v| v.size() == t.size()));
        let loaded = saved.iter().filter(|(name, _)| !is_probe(name) || probe_fits);
        for (name, tensor) in loaded {
            tch::no_grad(|| variables[name].shallow_clone().copy_(tensor));
        }
        Ok(has_probe > 0 && !probe_fits)
    }

    /// Whether `saved` holds every variable of the BYOL networks, with its shape, and nothing
    /// else; the online probe's, a monitor's, are left out on both sides.
    pub fn check_fits(&self, saved: &[(String, Tensor)]) -> anyhow::Result<()> {
        let mut variables = self.vs.variables();
        variables.retain(|name, _| !is_probe(name));
        let mut saved: Vec<&(String, Tensor)> = saved.iter().filter(|(name, _)| !is_probe(name)).collect();
        // The first misfit by name, whichever order the file lists them in.
        saved.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, tensor) in &saved {
            let target = variables
                .get(name)
                .with_context(|| format!("checkpoint holds '{name}', which this model lacks"))?;
            if target.size() != tensor.size() {
                bail!(
                    "checkpoint's '{name}' has shape {:?}, the model's {:?}",
                    tensor.size(),
                    target.size()
                );
            }
        }
        if saved.len() != variables.len() {
            bail!(
                "checkpoint holds {} variables, the model has {}",
                saved.len(),
                variables.len()
            );
        }
        Ok(())
    }
}

/// Whether `name` is a variable of the online probe (`probe.weight`).
fn is_probe(name: &str) -> bool {
    name.strip_prefix(super::monitor::PROBE_PATH)
        .is_some_and(|rest| rest.starts_with('.'))
}
