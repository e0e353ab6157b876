//! The TF32 switches against PyTorch's own: the defaults that a fresh `import torch` reports
//! (before anything here sets them), and what `set_allow_tf32` leaves them at. Its own test
//! binary, since the switches are process-wide.

use byol_testkit::run_python;
use torch_ext::{allow_tf32, set_allow_tf32};

#[test]
fn tf32_switches_start_as_pytorchs_and_set_both_backends() {
    let reference = run_python(
        "outputs = {'cublas': torch.tensor(int(torch.backends.cuda.matmul.allow_tf32)),\n\
         \x20          'cudnn': torch.tensor(int(torch.backends.cudnn.allow_tf32))}\n",
        &[],
    );
    let defaults = (
        reference["cublas"].int64_value(&[]) == 1,
        reference["cudnn"].int64_value(&[]) == 1,
    );
    assert_eq!(allow_tf32(), defaults, "(cuBLAS, cuDNN) before any setting");
    set_allow_tf32(true);
    assert_eq!(allow_tf32(), (true, true));
    set_allow_tf32(false);
    assert_eq!(allow_tf32(), (false, false));
}
