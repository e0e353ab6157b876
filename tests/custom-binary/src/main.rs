//! `byol-run` with the `toy_convnet` backbone of the out-of-tree plugin crate.

// Named once, or the linker drops the crate and its plugin registration with it.
use out_of_tree_plugin as _;

fn main() -> std::process::ExitCode {
    byol_cli::main()
}
