//! CUDA graphs (`torch.cuda.CUDAGraph`): record the kernels of some work once, on a side stream,
//! and replay them with a single launch. Available where the shim was built with the CUDA
//! headers (`cargo xtask setup` installs them); elsewhere [`CudaGraph::new`] says so.

/// One captured graph, with the side stream its warm-up and capture run on.
#[derive(Debug)]
pub struct CudaGraph {
    #[cfg(torch_ext_cuda)]
    handle: *mut std::ffi::c_void,
}

#[cfg(torch_ext_cuda)]
mod imp {
    use super::CudaGraph;
    use crate::{ffi, Result};

    impl CudaGraph {
        pub fn new() -> Result<Self> {
            let mut handle = std::ptr::null_mut();
            // SAFETY: on success the shim hands us a new graph handle, freed in Drop.
            unsafe { ffi::check(ffi::tx_cuda_graph_new(&mut handle))? };
            Ok(Self { handle })
        }

        /// Until [`CudaGraph::warmup_end`], work runs eagerly on the graph's side stream.
        pub fn warmup_begin(&mut self) -> Result<()> {
            // SAFETY: `handle` is live until Drop.
            unsafe { ffi::check(ffi::tx_cuda_graph_warmup_begin(self.handle)) }
        }

        pub fn warmup_end(&mut self) -> Result<()> {
            // SAFETY: `handle` is live until Drop.
            unsafe { ffi::check(ffi::tx_cuda_graph_warmup_end(self.handle)) }
        }

        /// Until [`CudaGraph::capture_end`], CUDA work is recorded, not run.
        pub fn capture_begin(&mut self) -> Result<()> {
            // SAFETY: `handle` is live until Drop.
            unsafe { ffi::check(ffi::tx_cuda_graph_capture_begin(self.handle)) }
        }

        pub fn capture_end(&mut self) -> Result<()> {
            // SAFETY: `handle` is live until Drop.
            unsafe { ffi::check(ffi::tx_cuda_graph_capture_end(self.handle)) }
        }

        /// Runs the recorded work once more, on the same tensors.
        pub fn replay(&self) -> Result<()> {
            // SAFETY: `handle` is live until Drop.
            unsafe { ffi::check(ffi::tx_cuda_graph_replay(self.handle)) }
        }
    }

    impl Drop for CudaGraph {
        fn drop(&mut self) {
            // SAFETY: created by tx_cuda_graph_new, freed once.
            unsafe { ffi::tx_cuda_graph_free(self.handle) }
        }
    }
}

// Without the CUDA headers `new` fails, so the other methods are never reached; they exist so
// that callers compile the same way in both builds.
#[cfg(not(torch_ext_cuda))]
mod imp {
    use super::CudaGraph;
    use crate::{Result, TorchExtError};

    impl CudaGraph {
        pub fn new() -> Result<Self> {
            Err(TorchExtError(
                "CUDA graphs: this build has no CUDA headers (run `cargo xtask setup`, then rebuild)".into(),
            ))
        }

        pub fn warmup_begin(&mut self) -> Result<()> {
            Ok(())
        }

        pub fn warmup_end(&mut self) -> Result<()> {
            Ok(())
        }

        pub fn capture_begin(&mut self) -> Result<()> {
            Ok(())
        }

        pub fn capture_end(&mut self) -> Result<()> {
            Ok(())
        }

        pub fn replay(&self) -> Result<()> {
            Ok(())
        }
    }
}
