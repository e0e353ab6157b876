//! `byol-run doctor`: what this binary runs on.

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Writes with `writeln!`, not `println!` (which panics on a closed pipe): `doctor | head` ends
/// with an error that `main` treats as a quiet exit.
pub fn run() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let lib = env!("BYOL_LIBTORCH_LIB");
    let version = std::fs::read_to_string(Path::new(lib).join("../version.py"))
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown (version.py not found)".into());
    writeln!(out, "byol-run         {}", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "libtorch         {version}")?;
    writeln!(out, "libtorch path    {lib}")?;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let libtorch_cuda = maps.contains("libtorch_cuda.so");
    writeln!(
        out,
        "libtorch_cuda    {}",
        if libtorch_cuda {
            "loaded"
        } else {
            "not loaded (CPU-only libtorch?)"
        }
    )?;
    let cuda = tch::Cuda::is_available();
    match cuda {
        true => writeln!(out, "CUDA available   true")?,
        false => writeln!(out, "CUDA available   false ({})", why_no_cuda(libtorch_cuda, &version))?,
    }
    writeln!(out, "cuDNN available  {}", tch::Cuda::cudnn_is_available())?;
    writeln!(out, "CUDA devices     {}", tch::Cuda::device_count())?;
    if cuda {
        // tch exposes no device properties; nvidia-smi has them when the driver is installed.
        match Command::new("nvidia-smi")
            .args(["--query-gpu=index,name,memory.total", "--format=csv,noheader"])
            .output()
        {
            Ok(smi) if smi.status.success() => {
                for line in String::from_utf8_lossy(&smi.stdout).lines() {
                    writeln!(out, "  device         {line}")?;
                }
            }
            _ => writeln!(out, "  device         (nvidia-smi not available for names and memory)")?,
        }
    }
    writeln!(
        out,
        "CPU threads      {} (libtorch intra-op), {} available",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;
    writeln!(
        out,
        "JPEG decoder     libjpeg-turbo, {}",
        if byol_data::decode::jpeg_simd() {
            "SIMD"
        } else {
            "without SIMD (nasm was not found when byol-run was built: install it and rebuild to decode large \
             JPEGs faster, to the same pixels)"
        }
    )?;
    out.flush()?;
    Ok(())
}

/// Why CUDA is not available, as far as this machine shows it: a libtorch without CUDA, no NVIDIA
/// driver, or a driver that CUDA could not start with.
fn why_no_cuda(libtorch_cuda: bool, libtorch: &str) -> String {
    if !libtorch_cuda {
        return "this libtorch has no CUDA: build against a CUDA build of torch".into();
    }
    match std::fs::read_to_string("/proc/driver/nvidia/version") {
        Err(_) => "no NVIDIA driver on this machine: /proc/driver/nvidia is missing, so there is no GPU here or its driver is not \
                   installed"
            .into(),
        Ok(driver) => format!(
            "the NVIDIA driver is loaded ({}) but CUDA did not start: libtorch {libtorch} needs a driver of its CUDA \
             version or newer (nvidia-smi shows the driver's), and a GPU this process may use \
             (CUDA_VISIBLE_DEVICES)",
            driver.lines().next().unwrap_or_default().trim()
        ),
    }
}
