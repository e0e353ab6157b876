//! Compiles the shim's csrc/*.cpp against the headers of the libtorch that torch-sys links (the
//! PyPI torch wheel's `include/` folder, next to its `lib/`), with torch-sys's own flags.

use std::path::PathBuf;

fn main() {
    torch_link::emit();
    println!("cargo:rerun-if-changed=csrc");
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys sets DEP_TCH_LIBTORCH_LIB"));
    let include = lib
        .parent()
        .expect("libtorch's lib folder has a parent")
        .join("include");
    let site_packages = lib
        .parent()
        .and_then(|torch| torch.parent())
        .expect("torch/lib inside site-packages");
    let cuda_include = site_packages.join("nvidia/cu13/include");
    let nccl_include = site_packages.join("nvidia/nccl/include");
    // NCCL only where every header ProcessGroupNCCL.hpp needs is installed (`cargo xtask setup`
    // puts them in the venv); elsewhere the crate builds without it and says so at run time.
    let cuda_headers = ["crt/host_config.h", "nv/target", "cuda_runtime_api.h"]
        .iter()
        .all(|h| cuda_include.join(h).exists());
    let nccl = cuda_headers && nccl_include.join("nccl.h").exists();
    println!("cargo::rustc-check-cfg=cfg(torch_ext_nccl)");
    println!("cargo::rustc-check-cfg=cfg(torch_ext_cuda)");
    if cuda_headers {
        println!("cargo:rustc-cfg=torch_ext_cuda");
        build(&include)
            .file("csrc/cuda_graph.cpp")
            .file("csrc/cuda_sync.cpp")
            .include(&cuda_include)
            .define("USE_CUDA", None)
            .compile("torch_ext_cuda");
        // c10::cuda's streams and sync-debug state; libtorch_cuda, which the graphs themselves are
        // in, torch-sys links.
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    if nccl {
        println!("cargo:rustc-cfg=torch_ext_nccl");
        build(&include)
            .file("csrc/nccl.cpp")
            .include(&cuda_include)
            .include(&nccl_include)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None)
            .compile("torch_ext_nccl");
    } else {
        println!(
            "cargo:warning=building without NCCL: the CUDA headers are not in {} (run `cargo xtask setup`)",
            cuda_include.display()
        );
    }
    build(&include)
        .file("csrc/torch_ext.cpp")
        .file("csrc/reducer.cpp")
        .file("csrc/torchscript.cpp")
        .compile("torch_ext");
}

/// A C++ build against libtorch's headers with torch-sys's flags.
fn build(include: &std::path::Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        // libtorch's wheel lacks gloo's headers; see csrc/gloo-declarations/README.md.
        .include("csrc/gloo-declarations")
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        // Line tables for the shim's C++ would cost a third of its compile time (libtorch's
        // headers are template-heavy); the Rust side keeps the profile's.
        .debug(false)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false);
    build
}
