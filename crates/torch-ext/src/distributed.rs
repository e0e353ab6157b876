//! c10d, the engine under torch.distributed: a TCPStore rendezvous and a Gloo or NCCL process group
//! with the collectives data-parallel BYOL needs. Started the way torchrun starts workers (the
//! RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT environment), so
//! `torchrun --nproc-per-node=N --no-python byol-run exp.toml` works.

use std::ffi::{c_void, CString};
use std::ptr::NonNull;
use std::time::Duration;

use tch::Tensor;

use crate::{ffi, Result, TorchExtError};

/// Where and who: what torchrun (or a launcher of one's own) tells every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Processes on this node (LOCAL_WORLD_SIZE; the whole job when unset).
    pub local_world_size: usize,
    /// torchrun's agent already hosts the store (TORCHELASTIC_USE_AGENT_STORE=True): every
    /// worker is a client, under the restart's own key prefix.
    pub agent_store: bool,
    /// TORCHELASTIC_RESTART_COUNT: a restarted job rendezvouses under fresh keys.
    pub restart_count: u64,
    /// How long a collective or the rendezvous waits for the other ranks.
    pub timeout: Duration,
}

impl Rendezvous {
    /// Reads torchrun's environment. `Ok(None)` when WORLD_SIZE is unset (a plain single-process
    /// run); an error naming the variable when one is missing or malformed.
    pub fn from_env() -> std::result::Result<Option<Self>, String> {
        let Ok(world_size) = std::env::var("WORLD_SIZE") else {
            // A rank without a world is a launch gone wrong, not a single process: rank 1 alone
            // would write a run folder as if it were the job.
            if let Ok(rank) = std::env::var("RANK") {
                return Err(format!(
                    "RANK={rank} is set but WORLD_SIZE is not: start distributed runs with torchrun, or set RANK, \
                     WORLD_SIZE, MASTER_ADDR and MASTER_PORT (unset RANK for a single process)"
                ));
            }
            return Ok(None);
        };
        let number = |name: &str, value: String| {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("environment variable {name}={value:?} is not a non-negative integer"))
        };
        let required = |name: &str| {
            std::env::var(name).map_err(|_| {
                format!("WORLD_SIZE is set but {name} is not: start distributed runs with torchrun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
            })
        };
        let world_size = number("WORLD_SIZE", world_size)? as usize;
        let rank = number("RANK", required("RANK")?)? as usize;
        if world_size == 0 {
            return Err("WORLD_SIZE=0: a job has at least one process".into());
        }
        if rank >= world_size {
            return Err(format!("RANK={rank} must be below WORLD_SIZE={world_size}"));
        }
        let local_rank = match std::env::var("LOCAL_RANK") {
            Ok(v) => number("LOCAL_RANK", v)? as usize,
            Err(_) => rank,
        };
        let local_world_size = match std::env::var("LOCAL_WORLD_SIZE") {
            Ok(v) => number("LOCAL_WORLD_SIZE", v)? as usize,
            Err(_) => world_size,
        };
        let master_port = number("MASTER_PORT", required("MASTER_PORT")?)?;
        let master_port = u16::try_from(master_port).map_err(|_| format!("MASTER_PORT={master_port} is not a port"))?;
        Ok(Some(Self {
            master_addr: required("MASTER_ADDR")?,
            master_port,
            rank,
            world_size,
            local_rank,
            local_world_size,
            agent_store: std::env::var("TORCHELASTIC_USE_AGENT_STORE").is_ok_and(|v| v == "True"),
            restart_count: match std::env::var("TORCHELASTIC_RESTART_COUNT") {
                Ok(v) => number("TORCHELASTIC_RESTART_COUNT", v)?,
                Err(_) => 0,
            },
            // c10d's default; callers set their own (byol-train: `distributed.timeout_s`).
            timeout: Duration::from_secs(1800),
        }))
    }
}

/// The c10d backend that runs the collectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// CPU tensors, and CUDA tensors through host memory: works everywhere.
    Gloo,
    /// CUDA tensors, GPU to GPU (built when the CUDA headers are installed: [`nccl_available`]).
    Nccl,
}

/// Whether this build has c10d's NCCL backend.
pub fn nccl_available() -> bool {
    cfg!(torch_ext_nccl)
}

/// A c10d process group.
pub struct ProcessGroup {
    store: NonNull<c_void>,
    backend: NonNull<c_void>,
    kind: Backend,
    rank: usize,
    world_size: usize,
}

// SAFETY: c10d backends and stores are thread-safe objects (PyTorch calls them from any thread);
// the handles are only freed in Drop.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("backend", &self.kind)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| TorchExtError(format!("{s:?} contains a NUL byte")))
}

impl ProcessGroup {
    /// Joins a Gloo group (see [`ProcessGroup::new`]).
    pub fn gloo(rendezvous: &Rendezvous) -> Result<Self> {
        Self::new(rendezvous, Backend::Gloo)
    }

    /// Joins the group: rank 0 hosts the TCPStore unless torchrun's agent does; returns once
    /// every rank has connected (or fails after the rendezvous timeout).
    pub fn new(rendezvous: &Rendezvous, kind: Backend) -> Result<Self> {
        if kind == Backend::Nccl && !nccl_available() {
            return Err(TorchExtError(
                "this build has no NCCL backend (its CUDA headers were not installed when torch-ext was built: \
                 run `cargo xtask setup` and rebuild), use the Gloo backend"
                    .into(),
            ));
        }
        let timeout_ms = rendezvous.timeout.as_millis().min(i64::MAX as u128) as i64;
        let host = c_string(&rendezvous.master_addr)?;
        let prefix = if rendezvous.agent_store {
            format!("/worker/attempt_{}/byol-rs/", rendezvous.restart_count)
        } else {
            "byol-rs/".to_string()
        };
        let prefix = c_string(&prefix)?;
        let mut store = std::ptr::null_mut();
        // SAFETY: valid C strings; on success the shim hands over a boxed store.
        unsafe {
            ffi::check(ffi::tx_store_new(
                host.as_ptr(),
                rendezvous.master_port,
                rendezvous.world_size as i32,
                rendezvous.rank == 0 && !rendezvous.agent_store,
                timeout_ms,
                prefix.as_ptr(),
                &mut store,
            ))
            .map_err(|e| {
                let port = rendezvous.master_port;
                let (what, hint) = match rendezvous.rank == 0 && !rendezvous.agent_store {
                    // Rank 0 serves the store: it failed to listen (the port taken, most often).
                    true => (
                        "could not serve the TCPStore on",
                        format!("is another program using MASTER_PORT {port}? choose another port"),
                    ),
                    // The others connect to rank 0's: it is not running, or elsewhere.
                    false => (
                        "could not reach the TCPStore at",
                        format!(
                            "is rank 0 running, at MASTER_ADDR {} and MASTER_PORT {port}? start every process of \
                             the job, with the same MASTER_ADDR and MASTER_PORT",
                            rendezvous.master_addr
                        ),
                    ),
                };
                TorchExtError(format!(
                    "rank {} {what} {}:{port}: {e} ({hint})",
                    rendezvous.rank, rendezvous.master_addr
                ))
            })?;
        }
        let store = NonNull::new(store).expect("the shim returns a store on success");
        let mut backend = std::ptr::null_mut();
        let (rank, world) = (rendezvous.rank as i32, rendezvous.world_size as i32);
        // SAFETY: `store` is live; on success the shim hands over a boxed backend.
        let created = unsafe {
            match kind {
                Backend::Gloo => ffi::check(ffi::tx_gloo_new(store.as_ptr(), rank, world, timeout_ms, &mut backend)),
                #[cfg(torch_ext_nccl)]
                Backend::Nccl => ffi::check(ffi::tx_nccl_new(store.as_ptr(), rank, world, timeout_ms, &mut backend)),
                #[cfg(not(torch_ext_nccl))]
                Backend::Nccl => unreachable!("checked above"),
            }
        };
        if let Err(e) = created {
            // SAFETY: freed once; nothing else holds it.
            unsafe { ffi::tx_store_free(store.as_ptr()) };
            let error = e.to_string();
            let hint = match error.to_lowercase().contains("timeout") {
                true => format!(
                    " (not every one of the {} processes joined in time: start them all, with the same \
                     MASTER_ADDR and MASTER_PORT, or look for the one that stopped at its start)",
                    rendezvous.world_size
                ),
                false => String::new(),
            };
            return Err(TorchExtError(format!(
                "rank {} of {}: creating the {kind:?} process group failed: {error}{hint}",
                rendezvous.rank, rendezvous.world_size
            )));
        }
        Ok(Self {
            kind,
            store,
            backend: NonNull::new(backend).expect("the shim returns a backend on success"),
            rank: rendezvous.rank,
            world_size: rendezvous.world_size,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn backend(&self) -> Backend {
        self.kind
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    fn context(&self, what: &str, e: TorchExtError) -> TorchExtError {
        TorchExtError(format!(
            "{what} failed on rank {} of {} (did another rank stop?): {e}",
            self.rank, self.world_size
        ))
    }

    /// Sums `tensor` (dense; CPU or CUDA for Gloo, CUDA for NCCL) over the ranks, in place.
    pub fn all_reduce_sum_(&self, tensor: &Tensor) -> Result<()> {
        // SAFETY: live backend and tensor.
        unsafe { ffi::check(ffi::tx_all_reduce_sum(self.backend.as_ptr(), tensor.as_ptr())) }
            .map_err(|e| self.context("all_reduce", e))
    }

    /// Overwrites `tensor` on every rank with rank `root`'s.
    pub fn broadcast_(&self, tensor: &Tensor, root: usize) -> Result<()> {
        // SAFETY: live backend and tensor.
        unsafe { ffi::check(ffi::tx_broadcast(self.backend.as_ptr(), tensor.as_ptr(), root as i32)) }
            .map_err(|e| self.context("broadcast", e))
    }

    /// Every rank's `tensor` concatenated along dim 0, in rank order (same shape on every rank).
    pub fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        let input = tensor.contiguous();
        let mut size = input.size();
        size[0] *= self.world_size as i64;
        let output = Tensor::empty(size, (input.kind(), input.device()));
        // SAFETY: live backend and tensors; `output` is world_size times `input`.
        unsafe {
            ffi::check(ffi::tx_all_gather(
                self.backend.as_ptr(),
                input.as_ptr(),
                output.as_ptr(),
            ))
        }
        .map_err(|e| self.context("all_gather", e))?;
        Ok(output)
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live backend.
        unsafe { ffi::check(ffi::tx_barrier(self.backend.as_ptr())) }.map_err(|e| self.context("barrier", e))
    }

    /// Ends the group normally, once this rank has no more collectives to run
    /// (`destroy_process_group`): NCCL finishes its queued work and destroys its communicators.
    /// A group dropped without it is aborted, which suits a job that is failing.
    pub fn shutdown(&self) -> Result<()> {
        // SAFETY: live backend.
        unsafe { ffi::check(ffi::tx_backend_shutdown(self.backend.as_ptr())) }.map_err(|e| self.context("shutdown", e))
    }

    /// `tensor` unchanged, as an autograd op whose backward sums the gradients over the ranks
    /// (synchronized batch norm's backward all-reduce). Every rank must call it in the same order,
    /// and run backward through it alike. The graph holds its own reference to the group's
    /// backend, so this `ProcessGroup` may be dropped before backward runs.
    pub fn sum_gradients_over_ranks(&self, tensor: &Tensor) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live backend and tensor; on success the shim hands over a new tensor.
        unsafe {
            ffi::check(ffi::tx_sum_gradients_over_ranks(
                self.backend.as_ptr(),
                tensor.as_ptr(),
                &mut out,
            ))
            .map_err(|e| self.context("sum_gradients_over_ranks", e))?;
            Ok(Tensor::from_ptr(out))
        }
    }

    /// DDP's gradient reducer over `parameters` (see [`GradientReducer`]), with buckets of at
    /// most `bucket_cap_bytes` (DDP's `bucket_cap_mb`) once the first backward has shown the
    /// order in which gradients arrive.
    pub fn gradient_reducer(&self, parameters: &[Tensor], bucket_cap_bytes: usize) -> Result<GradientReducer> {
        let pointers = crate::foreach::pointers(parameters);
        let mut handle = std::ptr::null_mut();
        // SAFETY: live backend and tensors; on success the shim hands over a boxed reducer, which
        // holds its own references to the backend and the parameters.
        unsafe {
            ffi::check(ffi::tx_reducer_new(
                self.backend.as_ptr(),
                pointers.as_ptr(),
                pointers.len() as i64,
                bucket_cap_bytes.min(i64::MAX as usize) as i64,
                &mut handle,
            ))
            .map_err(|e| self.context("creating the gradient reducer", e))?;
        }
        Ok(GradientReducer {
            handle: NonNull::new(handle).expect("the shim returns a reducer on success"),
            parameters: parameters.len(),
            rank: self.rank,
            world_size: self.world_size,
        })
    }
}

/// c10d's `Reducer`, the engine of PyTorch's DistributedDataParallel. It hooks the parameters'
/// gradient accumulators; during a backward armed by [`GradientReducer::prepare_for_backward`],
/// each bucket of gradients is all-reduced (and averaged over the ranks) as soon as backward has
/// produced all of them, while backward goes on with the layers below, and the backward call
/// returns with every parameter's `.grad` averaged. A backward that is not armed leaves the
/// gradients alone (DDP's `no_sync`, for accumulating micro-batches).
///
/// Every armed backward must reach every parameter, on every rank, in the same graph: a bucket
/// with a parameter that got no gradient is never reduced ([`GradientReducer::reduced`] says so
/// after the backward, [`unreached_leaves`] finds such parameters before it).
pub struct GradientReducer {
    handle: NonNull<c_void>,
    /// How many parameters it reduces.
    parameters: usize,
    rank: usize,
    world_size: usize,
}

// SAFETY: the Reducer guards its state with a mutex (its hooks run on autograd's threads); the
// handle is only freed in Drop.
unsafe impl Send for GradientReducer {}
unsafe impl Sync for GradientReducer {}

impl std::fmt::Debug for GradientReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientReducer")
            .field("parameters", &self.parameters)
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

impl GradientReducer {
    /// Arms the hooks for the next backward. Once, after the first reduced backward, it also
    /// rebuilds the buckets in the order that backward produced the gradients (a broadcast of
    /// rank 0's order): every rank calls it at the same points.
    pub fn prepare_for_backward(&self) -> Result<()> {
        // SAFETY: live reducer.
        unsafe { ffi::check(ffi::tx_reducer_prepare_for_backward(self.handle.as_ptr())) }.map_err(|e| {
            TorchExtError(format!(
                "preparing the gradient all-reduce failed on rank {} of {}: {e}",
                self.rank, self.world_size
            ))
        })
    }

    /// Whether the last armed backward averaged every gradient (false: some parameter got no
    /// gradient, so its bucket was never all-reduced).
    pub fn reduced(&self) -> bool {
        let mut out = false;
        // SAFETY: live reducer; `out` outlives the call.
        unsafe { ffi::check(ffi::tx_reducer_reduced(self.handle.as_ptr(), &mut out)) }
            .expect("reading the reducer's state cannot fail");
        out
    }

    /// How many buckets the gradients are all-reduced in: one until the first reduced backward
    /// has shown their order, then about the parameters' bytes over the bucket cap.
    pub fn bucket_count(&self) -> usize {
        let mut out = 0i64;
        // SAFETY: live reducer; `out` outlives the call.
        unsafe { ffi::check(ffi::tx_reducer_bucket_count(self.handle.as_ptr(), &mut out)) }
            .expect("listing the reducer's buckets cannot fail");
        out as usize
    }
}

/// The indices of `leaves` whose gradient a backward from `root` would not reach: a walk of
/// root's autograd graph on the host, as DDP's `find_unused_parameters` makes.
pub fn unreached_leaves(root: &Tensor, leaves: &[Tensor]) -> Result<Vec<usize>> {
    let pointers = crate::foreach::pointers(leaves);
    let mut unreached = vec![false; pointers.len()];
    // SAFETY: live tensors; `unreached` has one slot per leaf.
    unsafe {
        ffi::check(ffi::tx_unreached_leaves(
            root.as_ptr(),
            pointers.as_ptr(),
            pointers.len() as i64,
            unreached.as_mut_ptr(),
        ))?;
    }
    Ok(unreached
        .iter()
        .enumerate()
        .filter(|(_, &u)| u)
        .map(|(i, _)| i)
        .collect())
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        // SAFETY: the handle came from the shim and is freed exactly once; the Reducer removes
        // its hooks from the parameters.
        unsafe { ffi::tx_reducer_free(self.handle.as_ptr()) }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: both handles came from the shim and are freed exactly once, backend first.
        unsafe {
            ffi::tx_backend_free(self.backend.as_ptr());
            ffi::tx_store_free(self.store.as_ptr());
        }
    }
}
