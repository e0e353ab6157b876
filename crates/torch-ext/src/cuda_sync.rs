//! Counting host-device synchronizations (`torch.cuda.set_sync_debug_mode("warn")`, with the
//! warnings counted instead of printed). Every operation that makes the host wait for a CUDA
//! device counts: reading a value, a copy from pageable memory, a stream synchronize. A step
//! that syncs cannot queue the next step's kernels while the device is busy, so a benchmark
//! reports the count beside its timing. Available where the shim was built with the CUDA
//! headers; elsewhere [`SyncCounter::start`] says so.

use std::marker::PhantomData;

/// Counts the synchronizations of the thread that started it, until dropped.
#[derive(Debug)]
pub struct SyncCounter {
    #[cfg(torch_ext_cuda)]
    handle: *mut std::ffi::c_void,
    // libtorch's warning handler is per thread: the counter must end where it started.
    _same_thread: PhantomData<*mut ()>,
}

#[cfg(torch_ext_cuda)]
mod imp {
    use std::marker::PhantomData;

    use super::SyncCounter;
    use crate::{ffi, Result};

    impl SyncCounter {
        pub fn start() -> Result<Self> {
            let mut handle = std::ptr::null_mut();
            // SAFETY: on success the shim hands us a new counter, freed in Drop.
            unsafe { ffi::check(ffi::tx_sync_counter_start(&mut handle))? };
            Ok(Self {
                handle,
                _same_thread: PhantomData,
            })
        }

        /// Synchronizations counted so far.
        pub fn count(&self) -> u64 {
            // SAFETY: `handle` is live until Drop.
            unsafe { ffi::tx_sync_counter_count(self.handle) as u64 }
        }
    }

    impl Drop for SyncCounter {
        fn drop(&mut self) {
            // SAFETY: created by tx_sync_counter_start on this thread (the type is not Send),
            // freed once.
            unsafe { ffi::tx_sync_counter_free(self.handle) }
        }
    }
}

#[cfg(not(torch_ext_cuda))]
mod imp {
    use super::SyncCounter;
    use crate::{Result, TorchExtError};

    impl SyncCounter {
        pub fn start() -> Result<Self> {
            Err(TorchExtError(
                "counting CUDA synchronizations: this build has no CUDA headers (run `cargo xtask setup`, then rebuild)"
                    .into(),
            ))
        }

        pub fn count(&self) -> u64 {
            0
        }
    }
}
