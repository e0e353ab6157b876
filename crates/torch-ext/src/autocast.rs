//! `torch.autocast(device_type, dtype)`: tch's `autocast` only turns on CUDA autocast with its
//! default dtype (fp16); training in bf16, or autocasting on the CPU, needs the dtype set first.

use tch::{Device, Kind};

use crate::ffi;

fn device_code(device: Device) -> i32 {
    if device.is_cuda() {
        1
    } else {
        0
    }
}

fn scalar_type(kind: Kind) -> i8 {
    match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::BFloat16 => 15,
        other => panic!("autocast runs in fp16 or bf16, not {other:?}"),
    }
}

fn kind_of(scalar_type: i8) -> Kind {
    match scalar_type {
        5 => Kind::Half,
        15 => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// Runs `f` with autocast on for `device`'s type in `kind` (`Kind::BFloat16` or `Kind::Half`),
/// restoring the previous state afterwards (nesting works as in PyTorch). `enabled = false` just
/// runs `f`, so callers can pass their precision setting straight through.
pub fn autocast<T>(device: Device, kind: Kind, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let code = device_code(device);
    // SAFETY: plain calls into libtorch's thread-local autocast state.
    let (was_enabled, previous) = unsafe { (ffi::tx_autocast_is_enabled(code), ffi::tx_autocast_dtype(code)) };
    // SAFETY: as above; errors come back as strings.
    unsafe { ffi::check(ffi::tx_autocast_enter(code, scalar_type(kind))) }.expect("entering autocast");
    struct Exit(i32, bool, i8);
    impl Drop for Exit {
        fn drop(&mut self) {
            // SAFETY: restores what `autocast` read before entering, also when `f` panics.
            let restored = unsafe { ffi::check(ffi::tx_autocast_exit(self.0, self.1, self.2)) };
            if let Err(e) = restored {
                // Not eprintln!: a panic here, while unwinding from `f`, would abort the process.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "warning: leaving autocast: {e}");
            }
        }
    }
    let _exit = Exit(code, was_enabled, previous);
    f()
}

/// Whether autocast is on for `device`'s type, and in which dtype.
pub fn state(device: Device) -> (bool, Kind) {
    let code = device_code(device);
    // SAFETY: reads libtorch's thread-local autocast state.
    unsafe { (ffi::tx_autocast_is_enabled(code), kind_of(ffi::tx_autocast_dtype(code))) }
}
