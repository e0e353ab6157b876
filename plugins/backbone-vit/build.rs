// Link flags for libtorch in this crate's test binaries (they run tensors).
fn main() {
    torch_link::emit()
}
