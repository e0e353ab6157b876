fn main() {
    torch_link::emit()
}
