//! `byol-run` with the workspace's plugins; see the library for a binary with plugins of your own.

fn main() -> std::process::ExitCode {
    byol_cli::main()
}
