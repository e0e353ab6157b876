//! Links libtorch into the test binaries, and compiles the one C++ function tch lacks:
//! `torch::jit::Module::named_buffers`, so that batch-norm running statistics become variables.

use std::path::PathBuf;

fn main() {
    torch_link::emit();
    println!("cargo:rerun-if-changed=csrc/buffers.cpp");
    // torch-sys (`links = "tch"`) exports the libtorch lib folder; its headers sit next to it
    // (`torch/lib` and `torch/include` in the PyTorch wheel, `libtorch/{lib,include}` otherwise).
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("DEP_TCH_LIBTORCH_LIB: depend on torch-sys directly");
    let include = PathBuf::from(lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/buffers.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // libtorch 2.11 is built with the new C++11 ABI only.
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("byol_torchscript_shim");
}
