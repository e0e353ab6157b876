fn main() {
    torch_link::emit();
    // `byol-run doctor` reports which libtorch the binary was linked against.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-env=BYOL_LIBTORCH_LIB={lib}");
    }
}
