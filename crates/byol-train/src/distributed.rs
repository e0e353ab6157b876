//! Data parallelism on c10d: one process per device, started by torchrun. Every process holds a
//! replica; they start from rank 0's parameters, train on disjoint shards of each global batch,
//! average gradients over the processes (by default in buckets while backward runs, as
//! DistributedDataParallel does), and (by default) compute batch-norm statistics over the
//! global batch. Rank 0 alone logs and writes checkpoints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tch::{nn::VarStore, Kind, Tensor};
use torch_ext::distributed::{nccl_available, Backend, GradientReducer, ProcessGroup, Rendezvous};

use byol::nn::{CrossReplica, SyncScope};
use byol::BuildContext;

use crate::experiment::{DistributedBackend, DistributedConfig, SyncBatchNorm};
use crate::optimizer::NamedParameter;

/// This process's place in a data-parallel job.
#[derive(Debug, Clone)]
pub struct DataParallel {
    group: Arc<ProcessGroup>,
    local_rank: usize,
    /// Which batch norms `distributed.sync_batch_norm` synchronizes (`None`: none).
    sync_scope: Option<SyncScope>,
}

/// What the step-end all-reduce returns besides the averaged gradients.
#[derive(Debug)]
pub struct StepAgreement {
    /// The loss averaged over the processes, a scalar on the device.
    pub loss: Tensor,
    /// Two figures averaged over the processes, on the device: the share that were asked to stop
    /// (SIGINT/SIGTERM) and their pace in seconds per step ([`crate::train::StopPoll`]). Read at
    /// the same steps by every process, so that all stop after the same one.
    pub stop_requests: Tensor,
}

/// The processes' stop requests as read from a [`StepAgreement`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StopRequests {
    /// Whether any process was asked to stop.
    pub any: bool,
    /// The processes' mean seconds per step, as their last reads measured it (0: not yet).
    pub seconds_per_step: f64,
}

impl StopRequests {
    /// Reads [`StepAgreement::stop_requests`] (waits for the device).
    pub fn read(stop_requests: &Tensor) -> anyhow::Result<Self> {
        let figures = Vec::<f64>::try_from(stop_requests.to_device(tch::Device::Cpu))
            .context("reading the processes' stop requests")?;
        Ok(StopRequests {
            any: figures[0] > 0.0,
            seconds_per_step: figures[1],
        })
    }
}

impl DataParallel {
    /// The job described by torchrun's environment, with `config`'s timeout; `None` for a plain
    /// single-process run.
    pub fn rendezvous(config: &DistributedConfig) -> anyhow::Result<Option<Rendezvous>> {
        let rendezvous = Rendezvous::from_env().map_err(anyhow::Error::msg)?;
        Ok(rendezvous.map(|mut r| {
            r.timeout = Duration::from_secs(config.timeout_s.max(1));
            r
        }))
    }

    /// Joins the job at `rendezvous` for training on `device` (NCCL for CUDA when built, else
    /// Gloo, unless `config` names one); [`DataParallel::build_context`] then carries `config`'s
    /// batch-norm synchronization to the networks.
    pub fn join(rendezvous: &Rendezvous, config: &DistributedConfig, device: tch::Device) -> anyhow::Result<Self> {
        let backend = match config.backend {
            DistributedBackend::Auto if device.is_cuda() && nccl_available() => Backend::Nccl,
            DistributedBackend::Auto | DistributedBackend::Gloo => Backend::Gloo,
            DistributedBackend::Nccl => Backend::Nccl,
        };
        if let tch::Device::Cuda(index) = device {
            torch_ext::memory::set_cuda_device(index)?;
        }
        let group = ProcessGroup::new(rendezvous, backend)
            .with_context(|| format!("joining the data-parallel job (c10d, {backend:?})"))?;
        let sync_scope = match config.sync_batch_norm {
            SyncBatchNorm::All => Some(SyncScope::All),
            SyncBatchNorm::Heads => Some(SyncScope::Heads),
            SyncBatchNorm::None => None,
        };
        Ok(Self {
            group: Arc::new(group),
            local_rank: rendezvous.local_rank,
            sync_scope,
        })
    }

    /// `context` with this job's batch-norm synchronization: what the networks are built from.
    pub fn build_context(&self, context: BuildContext) -> BuildContext {
        match self.sync_scope {
            Some(scope) => context.with_sync_batch_norm(self.cross_replica(), scope),
            None => context,
        }
    }

    /// The group as synchronized batch norm's view of the job.
    pub fn cross_replica(&self) -> Arc<dyn CrossReplica> {
        Arc::new(GroupReplicas(self.group.clone()))
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// The process's device index on its node (LOCAL_RANK).
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Overwrites every variable of `vs` (parameters and buffers) with rank 0's, so the replicas
    /// start identical whatever each process's initialization drew.
    pub fn broadcast_variables(&self, vs: &VarStore) -> anyhow::Result<()> {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| -> anyhow::Result<()> {
            for (name, variable) in variables {
                // c10d wants dense row-major buffers; channels_last views go through a copy.
                let buffer = variable.contiguous();
                self.group
                    .broadcast_(&buffer, 0)
                    .with_context(|| format!("broadcasting '{name}' from rank 0"))?;
                variable.shallow_clone().copy_(&buffer);
            }
            Ok(())
        })
    }

    /// Overwrites `buffers` (the same list, in the same order, on every process) with rank 0's,
    /// in one broadcast and one multi-tensor copy per dtype. For the running statistics of batch
    /// norms that each process computes on its own shard (those left unsynchronized, a
    /// TorchScript module's): afterwards every process holds the model that rank 0 saves, so all
    /// evaluate the same model and a resumed run goes on as the uninterrupted one
    /// (DistributedDataParallel's `broadcast_buffers`).
    pub fn broadcast_buffers(&self, buffers: &[Tensor]) -> anyhow::Result<()> {
        let mut kinds: Vec<Kind> = buffers.iter().map(Tensor::kind).collect();
        kinds.sort_by_key(|k| format!("{k:?}"));
        kinds.dedup();
        tch::no_grad(|| {
            for kind in kinds {
                let of_kind: Vec<Tensor> = buffers
                    .iter()
                    .filter(|b| b.kind() == kind)
                    .map(Tensor::shallow_clone)
                    .collect();
                let flat = Tensor::cat(&of_kind.iter().map(|b| b.reshape([-1])).collect::<Vec<_>>(), 0);
                self.group
                    .broadcast_(&flat, 0)
                    .context("sharing rank 0's batch-norm statistics")?;
                let sizes: Vec<i64> = of_kind.iter().map(|b| b.numel() as i64).collect();
                let pieces: Vec<Tensor> = flat
                    .split_with_sizes(&sizes, 0)
                    .iter()
                    .zip(&of_kind)
                    .map(|(piece, b)| piece.view(b.size().as_slice()))
                    .collect();
                torch_ext::foreach::copy_(&of_kind, &pieces)?;
            }
            Ok(())
        })
    }

    /// Averages the gradients of `parameters` over the processes in one bucket, which also
    /// carries this process's loss, its stop request and its pace in `seconds_per_step`
    /// ([`crate::train::StopPoll`]): one collective per step.
    ///
    /// A parameter that some processes' backward reached and others' did not (a branch taken on
    /// some shards only) gets the average on every process, a missing gradient counting as zero,
    /// as one process computing the whole batch would have; one that no process's backward
    /// reached keeps no gradient. Every process thus steps the same parameters with the same
    /// values, and the replicas stay equal.
    pub fn all_reduce_gradients(
        &self,
        parameters: &[Tensor],
        loss: &Tensor,
        stop: bool,
        seconds_per_step: f64,
    ) -> anyhow::Result<StepAgreement> {
        let world = self.world_size() as f64;
        tch::no_grad(|| {
            let device = loss.device();
            let mut pieces: Vec<Tensor> = parameters
                .iter()
                .map(|p| {
                    let g = p.grad();
                    if g.defined() {
                        g.to_kind(Kind::Float).reshape([-1])
                    } else {
                        Tensor::zeros([p.numel() as i64], (Kind::Float, device))
                    }
                })
                .collect();
            let reached: Vec<bool> = parameters.iter().map(|p| p.grad().defined()).collect();
            let everywhere = reached.iter().all(|&r| r);
            // Filled on the device in the common case: a copy from the host would wait for it.
            pieces.push(if everywhere {
                Tensor::ones([reached.len() as i64], (Kind::Float, device))
            } else {
                let flags: Vec<f32> = reached.iter().map(|&r| f32::from(u8::from(r))).collect();
                Tensor::from_slice(&flags).to_device(device)
            });
            pieces.push(loss.detach().to_kind(Kind::Float).reshape([1]));
            // Filled on the device too.
            pieces.push(Tensor::full([1], if stop { 1.0 } else { 0.0 }, (Kind::Float, device)));
            pieces.push(Tensor::full([1], seconds_per_step, (Kind::Float, device)));
            let bucket = Tensor::cat(&pieces, 0);
            self.group.all_reduce_sum_(&bucket).context("averaging gradients")?;
            let mut offset: i64 = parameters.iter().map(|p| p.numel() as i64).sum();
            // How many processes' backward reached each parameter, read on the host (one wait for
            // the device) only when this process lacks a gradient.
            let reached_anywhere: Vec<f32> = if everywhere {
                vec![1.0; parameters.len()]
            } else {
                Vec::try_from(
                    bucket
                        .narrow(0, offset, parameters.len() as i64)
                        .to_device(tch::Device::Cpu),
                )?
            };
            offset += parameters.len() as i64;
            let bucket = bucket / world;
            let mut start = 0;
            for (i, p) in parameters.iter().enumerate() {
                let n = p.numel() as i64;
                let averaged = bucket.narrow(0, start, n).view(p.size().as_slice());
                if reached[i] {
                    p.grad().copy_(&averaged);
                } else if reached_anywhere[i] > 0.0 {
                    torch_ext::foreach::set_grad(p, &averaged.to_kind(p.kind()))?;
                }
                start += n;
            }
            // Both stay on the device until something reads them.
            Ok(StepAgreement {
                loss: bucket.get(offset),
                stop_requests: bucket.narrow(0, offset + 1, 2),
            })
        })
    }

    /// `parameters`' gradients averaged over the processes while backward runs, in buckets of at
    /// most `bucket_mb` MiB (see [`OverlappedGradients`]); set up at the first step.
    pub fn overlapped_gradients(&self, parameters: &[NamedParameter], bucket_mb: f64) -> OverlappedGradients {
        OverlappedGradients {
            parallel: self.clone(),
            parameters: parameters.to_vec(),
            bucket_bytes: (bucket_mb * 1024.0 * 1024.0) as usize,
            reducing: None,
        }
    }

    /// Waits for every process (e.g. while rank 0 evaluates or writes a checkpoint).
    pub fn barrier(&self) -> anyhow::Result<()> {
        self.group.barrier().context("waiting for the other processes")
    }

    /// The job's normal end for this process, after its last collective (as
    /// `destroy_process_group`, without waiting for the others): NCCL destroys its communicators
    /// instead of aborting them when the process exits.
    pub fn finish(&self) -> anyhow::Result<()> {
        self.group.shutdown().context("ending the data-parallel group")
    }

    /// Every process's rows of `tensor` (same shape everywhere), concatenated in rank order.
    pub fn all_gather(&self, tensor: &Tensor) -> anyhow::Result<Tensor> {
        Ok(self.group.all_gather(tensor)?)
    }
}

/// The online network's gradients averaged over the processes during backward
/// (`distributed.overlap_gradients`, the default). c10d's Reducer, the engine of PyTorch's
/// DistributedDataParallel, all-reduces each bucket as soon as backward has produced all its
/// gradients, so the communication runs under the rest of backward instead of after it. As in
/// DDP, the first step reduces one bucket after backward; from the second on, the buckets follow
/// the order in which that backward produced the gradients.
///
/// The Reducer is set up at the first step, over the parameters its loss reaches. Those it does
/// not reach (a backbone's layers past `byol.embedding_layer`) are averaged after backward with
/// the loss, as when nothing overlaps, so one that takes part in a later step is averaged too.
pub struct OverlappedGradients {
    parallel: DataParallel,
    parameters: Vec<NamedParameter>,
    bucket_bytes: usize,
    /// Set up by the first [`OverlappedGradients::prepare`].
    reducing: Option<Reducing>,
}

struct Reducing {
    reducer: GradientReducer,
    /// The parameters the first step's loss did not reach.
    left_out: Vec<Tensor>,
}

impl OverlappedGradients {
    /// Arms the all-reduce for the backward of `loss`, the step's last micro-batch's (the earlier
    /// ones accumulate locally, as under DDP's `no_sync`).
    pub fn prepare(&mut self, loss: &Tensor) -> anyhow::Result<()> {
        if self.reducing.is_none() {
            self.reducing = Some(self.set_up(loss)?);
        }
        let reducing = self.reducing.as_ref().expect("set up above");
        Ok(reducing.reducer.prepare_for_backward()?)
    }

    /// The Reducer over the parameters that `loss` reaches, the same on every process.
    fn set_up(&self, loss: &Tensor) -> anyhow::Result<Reducing> {
        let tensors: Vec<Tensor> = self.parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
        let left_out = torch_ext::distributed::unreached_leaves(loss, &tensors)?;
        // The processes must agree on the set, or their buckets would not match.
        let mask: Vec<f32> = (0..tensors.len())
            .map(|i| f32::from(u8::from(left_out.contains(&i))))
            .collect();
        let mask = Tensor::from_slice(&mask).to_device(loss.device());
        self.parallel
            .group()
            .all_reduce_sum_(&mask)
            .context("comparing the parameters each process's loss reaches")?;
        let world = self.parallel.world_size() as f32;
        if Vec::<f32>::try_from(mask.to_device(tch::Device::Cpu))?
            .iter()
            .any(|&n| n != 0.0 && n != world)
        {
            bail!(
                "the processes' losses reach different parameters of the online network at the first step: \
                 either the network differs between processes (a node-local copy of a module that is not the \
                 same), or its forward takes branches that depend on the data (one process's shard takes \
                 one, another's the other); for the latter set distributed.overlap_gradients = false, which \
                 averages every gradient after backward"
            );
        }
        let pick = |out: bool| -> Vec<Tensor> {
            (0..tensors.len())
                .filter(|i| left_out.contains(i) == out)
                .map(|i| tensors[i].shallow_clone())
                .collect()
        };
        let reducer = self
            .parallel
            .group()
            .gradient_reducer(&pick(false), self.bucket_bytes)
            .context("setting up the gradient all-reduce")?;
        Ok(Reducing {
            reducer,
            left_out: pick(true),
        })
    }

    /// Fails when the backward just run left some gradient unaveraged (a parameter that the first
    /// step's loss reached got no gradient in step `step`, 0-based), before anything uses them.
    pub fn check_reduced(&self, step: u64) -> anyhow::Result<()> {
        if self.reducing.as_ref().is_some_and(|r| !r.reducer.reduced()) {
            bail!(
                "step {}'s backward did not reach every parameter of the online network that the first \
                 step's did, so the gradients were not averaged over the processes: a network whose \
                 parameters take part in some steps only needs distributed.overlap_gradients = false",
                step + 1
            );
        }
        Ok(())
    }

    /// The parameters left out of the Reducer, whose gradients are averaged after backward.
    pub fn left_out(&self) -> Vec<Tensor> {
        self.reducing
            .as_ref()
            .map_or(Vec::new(), |r| r.left_out.iter().map(Tensor::shallow_clone).collect())
    }
}

/// The process group as synchronized batch norm's view of the job.
struct GroupReplicas(Arc<ProcessGroup>);

// A failed collective means a peer is gone: the step's panic guard reports it.
impl CrossReplica for GroupReplicas {
    fn gather(&self, row: &Tensor) -> Tensor {
        let rows = self
            .0
            .all_gather(&row.detach().unsqueeze(0))
            .unwrap_or_else(|e| panic!("synchronized batch norm: {e}"));
        // This rank's own slot is the live row, so that its gradient reaches this rank's batch.
        let (rank, world) = (self.0.rank() as i64, self.0.world_size() as i64);
        Tensor::cat(
            &[
                rows.narrow(0, 0, rank),
                row.unsqueeze(0),
                rows.narrow(0, rank + 1, world - rank - 1),
            ],
            0,
        )
    }

    fn sum_gradients(&self, tensor: &Tensor) -> Tensor {
        self.0
            .sum_gradients_over_ranks(tensor)
            .unwrap_or_else(|e| panic!("synchronized batch norm: {e}"))
    }
}
