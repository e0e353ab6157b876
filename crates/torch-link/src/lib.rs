//! Link flags that every package with tensor-running binaries (the CLI, and any crate with tests)
//! emits from its build script, because link arguments do not propagate from dependencies.
//!
//! torch-sys links libtorch without an rpath, and the default `--as-needed` drops
//! `libtorch_cuda.so` (no symbol of it is referenced), so CUDA is never registered
//! (tch-rs issue 980). The package must depend on `torch-sys` directly so that cargo passes
//! torch-sys's `links = "tch"` metadata as `DEP_TCH_LIBTORCH_LIB` to its build script.

use std::path::Path;

/// Call from `build.rs`: `fn main() { torch_link::emit() }`.
pub fn emit() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: add torch-sys as a direct dependency of this package");
        return;
    };
    // Binaries find libtorch without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    // Keep libtorch_cuda NEEDED so its CUDA backend registers itself at load time.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
