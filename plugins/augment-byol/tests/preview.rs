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

/// With loader crops the view cells are made from the crops, not from the (resized) originals:
/// with every random step off and no normalization, they are the crops themselves.
#[test]
fn preview_of_loader_crops_shows_the_crops() {
    let off = "crop_scale = [1.0, 1.0]\ncrop_ratio = [1.0, 1.0]\nflip_p = 0.0\njitter_p = 0.0\n\
               grayscale_p = 0.0\nblur_p = 0.0\nsolarize_p = 0.0\n";
    let config: ByolAugmentConfig = toml::from_str(&format!(
        "preset = \"cifar\"\nimage_size = 16\nmean = [0.0, 0.0, 0.0]\nstd = [1.0, 1.0, 1.0]\n\
         [view1]\n{off}[view2]\n{off}"
    ))
    .unwrap();
    let augment = config.resolve().unwrap();
    tch::manual_seed(1);
    let images = Tensor::randint(256, [3, 3, 16, 16], (Kind::Uint8, Device::Cpu));
    let crops = Tensor::randint(256, [3, 6, 16, 16], (Kind::Uint8, Device::Cpu));
    let grid = augment
        .preview_of_crops(&images, &crops)
        .expect("the byol augment previews crops");
    assert_eq!(grid.size(), [3, 3 * 18 + 2, 3 * 18 + 2]);
    let cell = |i: i64, j: i64| grid.narrow(1, 2 + i * 18, 16).narrow(2, 2 + j * 18, 16);
    for i in 0..3 {
        assert!(cell(i, 0).equal(&images.get(i)), "row {i}: original");
        assert!(
            cell(i, 1).equal(&crops.get(i).narrow(0, 0, 3)),
            "row {i}: view 1 is the first crop"
        );
        assert!(
            cell(i, 2).equal(&crops.get(i).narrow(0, 3, 3)),
            "row {i}: view 2 is the second crop"
        );
    }
}
