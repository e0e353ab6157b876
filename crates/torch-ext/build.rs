//! Compiles csrc/torch_ext.cpp against the headers of the libtorch that torch-sys links (the
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
    cc::Build::new()
        .cpp(true)
        .file("csrc/torch_ext.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        // libtorch's wheel lacks gloo's headers; see csrc/gloo-declarations/README.md.
        .include("csrc/gloo-declarations")
        .define("USE_C10D_GLOO", None)
        .define("GLOG_USE_GLOG_EXPORT", None)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("torch_ext");
}
