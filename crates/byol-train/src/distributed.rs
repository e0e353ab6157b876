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
    /// How many processes were asked to stop (SIGINT/SIGTERM), a scalar on the device: read
    /// at the same steps by every process, so that all stop after the same one.
    pub stop_requests: Tensor,
}

impl StepAgreement {
    /// Whether any process asked to stop (waits for the device).
    pub fn any_stop(&self) -> bool {
        self.stop_requests.double_value(&[]) > 0.0
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

    /// Averages the gradients of `parameters` over the processes in one bucket, which also
    /// carries this process's loss and stop request: one collective per step.
    pub fn all_reduce_gradients(
        &self,
        parameters: &[Tensor],
        loss: &Tensor,
        stop: bool,
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
            pieces.extend(agreement_pieces(loss, stop));
            let bucket = Tensor::cat(&pieces, 0);
            self.group.all_reduce_sum_(&bucket).context("averaging gradients")?;
            let bucket = bucket / world;
            let mut offset = 0;
            for p in parameters {
                let n = p.numel() as i64;
                let mut g = p.grad();
                let averaged = bucket.narrow(0, offset, n).view(p.size().as_slice());
                // Every replica runs the same graph, so a parameter without a gradient here has
                // none anywhere (its zeros above kept the bucket's layout aligned).
                if g.defined() {
                    g.copy_(&averaged);
                }
                offset += n;
            }
            // Both stay on the device until something reads them.
            Ok(StepAgreement {
                loss: bucket.get(offset),
                stop_requests: bucket.get(offset + 1),
            })
        })
    }

    /// The loss averaged over the processes and how many asked to stop, in one small all-reduce:
    /// what a step whose gradients were averaged during backward still has to agree on.
    pub fn agree(&self, loss: &Tensor, stop: bool) -> anyhow::Result<StepAgreement> {
        tch::no_grad(|| {
            let both = Tensor::cat(&agreement_pieces(loss, stop), 0);
            self.group
                .all_reduce_sum_(&both)
                .context("agreeing on the step's loss")?;
            Ok(StepAgreement {
                loss: both.get(0) / self.world_size() as f64,
                stop_requests: both.get(1),
            })
        })
    }

    /// `parameters`' gradients averaged over the processes while backward runs, in buckets of at
    /// most `bucket_mb` MiB (see [`OverlappedGradients`]).
    pub fn overlapped_gradients(
        &self,
        parameters: &[NamedParameter],
        bucket_mb: f64,
    ) -> anyhow::Result<OverlappedGradients> {
        let tensors: Vec<Tensor> = parameters.iter().map(|p| p.tensor.shallow_clone()).collect();
        let reducer = self
            .group
            .gradient_reducer(&tensors, (bucket_mb * 1024.0 * 1024.0) as usize)?;
        Ok(OverlappedGradients {
            reducer,
            names: parameters.iter().map(|p| p.name.clone()).collect(),
            checked: false,
        })
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

/// This process's loss and stop request, as the two values the processes sum.
fn agreement_pieces(loss: &Tensor, stop: bool) -> [Tensor; 2] {
    let device = loss.device();
    [
        loss.detach().to_kind(Kind::Float).reshape([1]),
        Tensor::full([1], if stop { 1.0 } else { 0.0 }, (Kind::Float, device)),
    ]
}

/// The online network's gradients averaged over the processes during backward
/// (`distributed.overlap_gradients`, the default). c10d's Reducer, the engine of PyTorch's
/// DistributedDataParallel, all-reduces each bucket as soon as backward has produced all its
/// gradients, so the communication runs under the rest of backward instead of after it. As in
/// DDP, the first step reduces one bucket after backward; from the second on, the buckets follow
/// the order in which that backward produced the gradients.
pub struct OverlappedGradients {
    reducer: GradientReducer,
    names: Vec<String>,
    /// Whether the first armed loss was checked to reach every parameter.
    checked: bool,
}

impl OverlappedGradients {
    /// Arms the all-reduce for the backward of `loss`: the last micro-batch's (the earlier ones
    /// accumulate locally, as under DDP's `no_sync`). The first time, checks that this backward
    /// reaches every parameter: one outside the loss would leave its bucket unreduced.
    pub fn prepare(&mut self, loss: &Tensor) -> anyhow::Result<()> {
        if !self.checked {
            let unreached = self.reducer.unreached(loss)?;
            if !unreached.is_empty() {
                let names: Vec<&str> = unreached.iter().map(|&i| self.names[i].as_str()).collect();
                bail!(
                    "these trainable parameters of the online network take no part in the loss: {}. \
                     A data-parallel run averages every parameter's gradient while backward runs, so each \
                     must get one: take them out of the network, or set distributed.overlap_gradients = false \
                     (one all-reduce after backward, which leaves them as they are)",
                    names.join(", ")
                );
            }
            self.checked = true;
        }
        Ok(self.reducer.prepare_for_backward()?)
    }

    /// Fails when the backward just run left some gradient unaveraged (a parameter the first
    /// step's loss reached got no gradient in step `step`), before the optimizer uses them.
    pub fn check_reduced(&self, step: u64) -> anyhow::Result<()> {
        if !self.reducer.reduced() {
            bail!(
                "step {step}'s backward did not reach every trainable parameter of the online network, so \
                 the gradients were not averaged over the processes: a network whose parameters take part \
                 in some steps only needs distributed.overlap_gradients = false"
            );
        }
        Ok(())
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
