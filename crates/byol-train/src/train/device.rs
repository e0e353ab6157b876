//! `run.device` resolved to a libtorch device, for one process or one rank of a data-parallel job.

use anyhow::bail;
use tch::Device;

/// Resolves `run.device`.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    parse_device_for(spec, 0)
}

/// Resolves `run.device` for the process with LOCAL_RANK `local_rank`: "auto" and "cuda" mean
/// that process's own GPU.
pub fn parse_device_for(spec: &str, local_rank: usize) -> anyhow::Result<Device> {
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
                bail!("run.device = \"cuda\" but CUDA is not available here (`byol-run doctor` tells why); use \"auto\" or \"cpu\"");
            }
            local_gpu()?
        }
        other => match other.strip_prefix("cuda:").and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if (i as i64) < tch::Cuda::device_count() => Device::Cuda(i),
            Some(i) => bail!(
                "run.device = \"{other}\": there are {} CUDA devices, no cuda:{i}",
                tch::Cuda::device_count()
            ),
            None => bail!("run.device = \"{other}\" is not one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
        },
    })
}

/// Readies `device` for training steps: on CUDA, cuDNN times its algorithms for each new input
/// shape once and keeps the fastest (`torch.backends.cudnn.benchmark = True`, what the PyTorch
/// references and tuned PyTorch training set). Training and the benchmarks both call it, so a
/// benchmark times the convolutions training runs.
pub fn prepare_for_steps(device: Device) {
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
}
