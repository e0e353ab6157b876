//! `byol-run doctor`: what this binary runs on.

use std::path::Path;
use std::process::Command;

pub fn run() -> anyhow::Result<()> {
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
    println!("byol-run         {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch         {version}");
    println!("libtorch path    {lib}");
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    println!(
        "libtorch_cuda    {}",
        if maps.contains("libtorch_cuda.so") {
            "loaded"
        } else {
            "not loaded (CPU-only libtorch?)"
        }
    );
    let cuda = tch::Cuda::is_available();
    println!("CUDA available   {cuda}");
    println!("cuDNN available  {}", tch::Cuda::cudnn_is_available());
    println!("CUDA devices     {}", tch::Cuda::device_count());
    if cuda {
        // tch exposes no device properties; nvidia-smi has them when the driver is installed.
        match Command::new("nvidia-smi")
            .args(["--query-gpu=index,name,memory.total", "--format=csv,noheader"])
            .output()
        {
            Ok(out) if out.status.success() => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("  device         {line}");
                }
            }
            _ => println!("  device         (nvidia-smi not available for names and memory)"),
        }
    }
    println!(
        "CPU threads      {} (libtorch intra-op), {} available",
        tch::get_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    Ok(())
}
