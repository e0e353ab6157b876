//! `tiny_cnn`: the template backbone plugin. Three conv-BN-ReLU blocks and a global average pool,
//! small enough to read in one sitting and to train on a CPU, complete in what a plugin must do:
//!
//! - [`config`](TinyCnnConfig): the TOML table (`[backbone] type = "tiny_cnn"`), its defaults and
//!   docs, and the one `byol::register_plugin!` call that makes `type = "tiny_cnn"` work and lists
//!   it in `byol-run plugins`;
//! - [`TinyCnn`]: the network, with PyTorch state_dict names and named feature taps;
//! - `tests/conformance.rs`: the harness every backbone runs; `tests/parity.rs`: the same net in
//!   PyTorch, compared on the same weights.
//!
//! Copy this crate to start a new backbone; the README's "Write a backbone plugin" walks through it.

mod config;
mod tiny_cnn;

pub use config::TinyCnnConfig;
pub use tiny_cnn::TinyCnn;
