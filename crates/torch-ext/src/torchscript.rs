//! A TorchScript module loaded and owned by the shim (`torch::jit::load`), for what tch's
//! `CModule` cannot give: the module's buffers under their state_dict names. Owning the module
//! here means no crate reads tch's private layout.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use tch::{Device, Tensor};

use crate::{ffi, Result, TorchExtError};

/// A `torch::jit::Module`, freed on drop.
#[derive(Debug)]
pub struct ScriptModule {
    module: NonNull<c_void>,
}

// SAFETY: a torch::jit::Module is a handle to reference-counted module state that libtorch lets
// any thread use; `&mut self` on the mutating calls keeps Rust callers from racing on it.
unsafe impl Send for ScriptModule {}

impl ScriptModule {
    /// `torch.jit.load(file, map_location=device)`.
    pub fn load(file: &Path, device: Device) -> Result<Self> {
        let file = file
            .to_str()
            .ok_or_else(|| TorchExtError(format!("{}: not a UTF-8 path", file.display())))?;
        let file = CString::new(file).map_err(|_| TorchExtError(format!("{file}: path holds a NUL byte")))?;
        let mut out = std::ptr::null_mut();
        // SAFETY: a valid C string; on success the shim hands over a boxed module.
        unsafe { ffi::check(ffi::tx_script_load(file.as_ptr(), device_code(device), &mut out))? };
        let module = NonNull::new(out).expect("the shim returns a module on success");
        Ok(Self { module })
    }

    /// `module.train(training)`: recursively, as PyTorch does.
    pub fn set_training(&mut self, training: bool) -> Result<()> {
        // SAFETY: live module.
        unsafe { ffi::check(ffi::tx_script_set_training(self.module.as_ptr(), training)) }
    }

    /// `module(input)`, for a forward that takes one tensor and returns one tensor.
    pub fn forward(&mut self, input: &Tensor) -> Result<Tensor> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live module and tensor; on success the shim hands over a new tensor.
        unsafe {
            ffi::check(ffi::tx_script_forward(self.module.as_ptr(), input.as_ptr(), &mut out))?;
            Ok(Tensor::from_ptr(out))
        }
    }

    /// `module.named_parameters()`: handles to the very tensors the module computes with.
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_tensors(false)
    }

    /// `module.named_buffers()` (batch-norm running statistics and `num_batches_tracked`), as
    /// handles to the module's own tensors.
    pub fn named_buffers(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_tensors(true)
    }

    fn named_tensors(&self, buffers: bool) -> Result<Vec<(String, Tensor)>> {
        extern "C" fn push(data: *mut c_void, name: *const c_char, tensor: *mut torch_sys::C_tensor) {
            // SAFETY: `data` is the `&mut Vec` passed below, alive for the call; `name` is a C
            // string valid during the callback; `tensor` is a fresh at::Tensor* whose ownership
            // passes to the `Tensor`.
            let list = unsafe { &mut *(data as *mut Vec<(String, Tensor)>) };
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
            list.push((name, unsafe { Tensor::from_ptr(tensor) }));
        }
        let mut list: Vec<(String, Tensor)> = Vec::new();
        // SAFETY: live module; the callback matches the C signature.
        unsafe {
            ffi::check(ffi::tx_script_named_tensors(
                self.module.as_ptr(),
                buffers,
                &mut list as *mut _ as *mut c_void,
                push,
            ))?
        };
        Ok(list)
    }
}

/// The device as torch-sys's C code for it (`device_of_code` in csrc/torchscript.cpp reads it).
fn device_code(device: Device) -> i32 {
    match device {
        Device::Cpu => -1,
        Device::Cuda(index) => index as i32,
        Device::Mps => -2,
        Device::Vulkan => -3,
    }
}

impl Drop for ScriptModule {
    fn drop(&mut self) {
        // SAFETY: the module came from the shim and is freed exactly once.
        unsafe { ffi::tx_script_free(self.module.as_ptr()) }
    }
}
