//! The TensorBoard picture of the views: rows of (original, view 1, view 2).

use augment_byol::ByolAugmentConfig;
use byol::Augment;
use tch::{Device, Kind, Tensor};

#[test]
fn preview_shows_originals_and_two_different_views() {
    let config: ByolAugmentConfig = toml::from_str("preset = \"cifar\"\nimage_size = 16\n").unwrap();
    let augment = config.resolve().unwrap();
    tch::manual_seed(0);
    let images = Tensor::randint(256, [5, 3, 16, 16], (Kind::Uint8, Device::Cpu));
    let grid = augment.preview(&images).expect("the byol augment has a preview");
    // Rows of 3 cells of 16 px with 2 px padding; the first 5 images (fewer than 8).
    assert_eq!(grid.size(), [3, 5 * 18 + 2, 3 * 18 + 2]);
    assert_eq!(grid.kind(), Kind::Uint8);
    assert_eq!(grid.device(), Device::Cpu);
    let cell = |i: i64, j: i64| grid.narrow(1, 2 + i * 18, 16).narrow(2, 2 + j * 18, 16);
    for i in 0..5 {
        // The original at its own size is shown as is.
        assert!(cell(i, 0).equal(&images.get(i)), "row {i}: original");
        assert!(!cell(i, 1).equal(&cell(i, 2)), "row {i}: the two views differ");
    }
    // Views are un-normalized back to pixels: the CIFAR mean/std must not leave them dark.
    let mean = grid.to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(mean > 60.0, "mean pixel {mean}");
    // At most 8 rows.
    let many = Tensor::randint(256, [20, 3, 16, 16], (Kind::Uint8, Device::Cpu));
    assert_eq!(augment.preview(&many).unwrap().size()[1], 8 * 18 + 2);
}
