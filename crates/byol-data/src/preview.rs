//! Pictures of batches for TensorBoard: image grids as uint8 CHW tensors.

use tch::{Device, Kind, Tensor};

/// Float images in [0, 1] (any shape) to uint8, rounded and clamped.
pub fn to_uint8(images: &Tensor) -> Tensor {
    (images.to_kind(Kind::Float) * 255.0)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
}

/// Lays out `columns` (each uint8 `[N, 3, S, S]`, all the same shape) as one uint8 image
/// `[3, N * (S + padding) + padding, columns * (S + padding) + padding]` on the CPU: row `i`
/// shows image `i` of every column, left to right, on a background of `fill`.
pub fn grid(columns: &[&Tensor], padding: i64, fill: u8) -> Tensor {
    assert!(!columns.is_empty(), "a grid needs at least one column");
    let shape = columns[0].size();
    assert!(
        shape.len() == 4 && shape[1] == 3,
        "grid columns are [N, 3, H, W] images, got {shape:?}"
    );
    for c in columns {
        assert_eq!(c.size(), shape, "grid columns must have the same shape");
    }
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    let k = columns.len() as i64;
    let p = padding;
    let stacked = Tensor::stack(
        &columns
            .iter()
            .map(|c| c.to_device(Device::Cpu).to_kind(Kind::Uint8))
            .collect::<Vec<_>>(),
        1,
    );
    // [N, K, 3, H, W] into cells padded right and below, then rows and columns interleaved.
    let padded = Tensor::full([n, k, 3, h + p, w + p], fill as i64, (Kind::Uint8, Device::Cpu));
    padded.narrow(3, 0, h).narrow(4, 0, w).copy_(&stacked);
    let body = padded.permute([2, 0, 3, 1, 4]).reshape([3, n * (h + p), k * (w + p)]);
    let out = Tensor::full(
        [3, n * (h + p) + p, k * (w + p) + p],
        fill as i64,
        (Kind::Uint8, Device::Cpu),
    );
    out.narrow(1, p, n * (h + p)).narrow(2, p, k * (w + p)).copy_(&body);
    out
}
