//! `run.device` resolved to a libtorch device, for one process or one rank of a data-parallel job.

use std::sync::OnceLock;

use anyhow::{bail, Context};
use tch::Device;

/// Sets libtorch's CPU threads to `run.threads`, or for 0 to libtorch's own default, read before
/// this first changes it: trials of a sweep train one after another in one process, and one that
/// leaves `run.threads` at 0 must not keep the count of the trial before it.
pub fn set_cpu_threads(threads: usize) {
    static LIBTORCH_DEFAULT: OnceLock<i32> = OnceLock::new();
    let default = *LIBTORCH_DEFAULT.get_or_init(tch::get_num_threads);
    let wanted = if threads > 0 { threads as i32 } else { default };
    if tch::get_num_threads() != wanted {
        tch::set_num_threads(wanted);
    }
}

/// Resolves `run.device`.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    parse_device_for(spec, 0, 1)
}

/// Resolves a command's `--device` flag, as `run.device` is resolved; errors name the flag.
pub fn parse_device_flag(spec: &str) -> anyhow::Result<Device> {
    resolve(spec, 0, 1, &format!("--device {spec}"), "--device")
}

/// Resolves `run.device` for the process with LOCAL_RANK `local_rank`, one of `on_node`
/// processes of a job on this node: "auto" and "cuda" mean that process's own GPU. "cuda:N" is
/// refused for several on a node: all would take the same GPU, which NCCL refuses at its first
/// collective.
pub fn parse_device_for(spec: &str, local_rank: usize, on_node: usize) -> anyhow::Result<Device> {
    resolve(
        spec,
        local_rank,
        on_node,
        &format!("run.device = \"{spec}\""),
        "run.device =",
    )
}

/// `said`: how the messages name the setting (`run.device = "cuda"`); `set`: how they name
/// another value of it (`run.device =`).
fn resolve(spec: &str, local_rank: usize, on_node: usize, said: &str, set: &str) -> anyhow::Result<Device> {
    if on_node > 1 && spec.starts_with("cuda:") {
        bail!(
            "{said} would put the {on_node} processes on this node on one GPU: use \"cuda\" or \"auto\", \
             with which each process takes the GPU of its LOCAL_RANK"
        );
    }
    let local_gpu = || -> anyhow::Result<Device> {
        let count = tch::Cuda::device_count();
        if local_rank as i64 >= count {
            bail!("LOCAL_RANK {local_rank} has no GPU of its own: this node has {count}; start at most {count} processes per node");
        }
        Ok(Device::Cuda(local_rank))
    };
    Ok(match spec {
        "auto" if tch::Cuda::is_available() => local_gpu()?,
        "auto" => Device::Cpu,
        "cpu" => Device::Cpu,
        "cuda" => {
            if !tch::Cuda::is_available() {
                bail!(
                    "{said} but CUDA is not available here (`byol-run doctor` tells why); use {set} \"auto\" or \
                     \"cpu\""
                );
            }
            local_gpu()?
        }
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if (i as i64) < tch::Cuda::device_count() => Device::Cuda(i),
            Some(i) => bail!(
                "{said}: there are {} CUDA devices, no cuda:{i}",
                tch::Cuda::device_count()
            ),
            None => bail!("{said} is not one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
        },
    })
}

/// `device` as `run.device` spells it: "cpu", "cuda:0".
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Readies `device` for training steps: on CUDA, makes it this thread's current device (what
/// new streams, such as a CUDA graph's, belong to; `cuda:1` would otherwise be captured on a
/// stream of GPU 0, recording nothing), and has cuDNN time its algorithms for each new input
/// shape once and keep the fastest (`torch.backends.cudnn.benchmark = True`, what the PyTorch
/// references and tuned PyTorch training set). Training and the benchmarks both call it, so a
/// benchmark times the convolutions training runs. `tf32` is `run.tf32`: whether float32
/// matmuls and convolutions may use TF32 tensor cores.
pub fn prepare_for_steps(device: Device, tf32: bool) -> anyhow::Result<()> {
    if let Device::Cuda(index) = device {
        torch_ext::memory::set_cuda_device(index).with_context(|| format!("making cuda:{index} the current device"))?;
        tch::Cuda::cudnn_set_benchmark(true);
        torch_ext::set_allow_tf32(tf32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_processes_on_a_node_refuse_one_named_gpu() {
        let error = parse_device_for("cuda:1", 0, 2).unwrap_err().to_string();
        assert!(
            error.contains("the 2 processes on this node") && error.contains("LOCAL_RANK"),
            "{error}"
        );
        assert_eq!(parse_device_for("cpu", 1, 2).unwrap(), Device::Cpu);
        // One process per node may name its GPU (here it may not exist, which is another error).
        if let Err(e) = parse_device_for("cuda:0", 0, 1) {
            assert!(!e.to_string().contains("this node"), "{e}");
        }
    }
}
