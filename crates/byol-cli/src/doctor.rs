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
    writeln!(
        out,
        "libtorch_cuda    {}",
        if maps.contains("libtorch_cuda.so") {
            "loaded"
        } else {
            "not loaded (CPU-only libtorch?)"
        }
    )?;
    let cuda = tch::Cuda::is_available();
    writeln!(out, "CUDA available   {cuda}")?;
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
