//! The out-of-tree plugin passes the conformance harness, alone in this test binary: the harness
//! seeds libtorch's global generator, which a training test on another thread of the same binary
//! would reseed and draw from between a build and its twin.

use out_of_tree_plugin::ToyConvNetConfig;

#[test]
fn toy_convnet_passes_the_conformance_harness() {
    plugins_all::link();
    byol_testkit::check_backbone(&ToyConvNetConfig::default(), 16);
}
