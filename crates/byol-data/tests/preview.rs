//! The image grid for TensorBoard: every cell where it belongs, padding filled.

use byol_data::preview::{grid, to_uint8};
use tch::{Device, Kind, Tensor};

#[test]
fn grid_places_row_i_of_every_column() {
    // Three columns of two 4x5 images; image i of column j is filled with 10 * j + i + 1 in
    // channel 0, 100 + ... in channel 1, 200 + ... in channel 2.
    let column = |j: i64| {
        let values = Tensor::arange(2, (Kind::Int64, Device::Cpu)) + 10 * j + 1;
        let per_channel = Tensor::stack(&[&values, &(&values + 100), &(&values + 200)], 1);
        per_channel
            .view([2, 3, 1, 1])
            .expand([2, 3, 4, 5], false)
            .to_kind(Kind::Uint8)
    };
    let columns = [column(0), column(1), column(2)];
    let g = grid(&[&columns[0], &columns[1], &columns[2]], 2, 255);
    // Height: 2 rows of 4 + 3 paddings; width: 3 columns of 5 + 4 paddings.
    assert_eq!(g.size(), [3, 2 * 4 + 3 * 2, 3 * 5 + 4 * 2]);
    assert_eq!(g.kind(), Kind::Uint8);
    for i in 0..2i64 {
        for j in 0..3i64 {
            let (top, left) = (2 + i * 6, 2 + j * 7);
            let cell = g.narrow(1, top, 4).narrow(2, left, 5);
            for c in 0..3i64 {
                let expected = 10 * j + i + 1 + 100 * c;
                let plane = cell.get(c);
                assert_eq!(plane.min().int64_value(&[]), expected, "cell ({i}, {j}) channel {c}");
                assert_eq!(plane.max().int64_value(&[]), expected, "cell ({i}, {j}) channel {c}");
            }
        }
    }
    // Padding: the first two rows and columns, and the gaps.
    assert_eq!(g.narrow(1, 0, 2).min().int64_value(&[]), 255);
    assert_eq!(g.narrow(2, 0, 2).min().int64_value(&[]), 255);
    assert_eq!(g.narrow(1, 6, 2).min().int64_value(&[]), 255);
    assert_eq!(g.narrow(2, 7, 2).min().int64_value(&[]), 255);
    // Total: the cells' sums plus the padding's.
    let cells: i64 = columns
        .iter()
        .map(|c| c.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]))
        .sum();
    let padding = (g.numel() as i64 - 3 * 6 * 20) * 255;
    assert_eq!(
        g.to_kind(Kind::Int64).sum(Kind::Int64).int64_value(&[]),
        cells + padding
    );
}

#[test]
fn to_uint8_rounds_and_clamps() {
    let x = Tensor::from_slice(&[-0.5f32, 0.0, 0.5 / 255.0 + 1e-4, 0.5, 1.0, 3.0]);
    assert_eq!(Vec::<u8>::try_from(to_uint8(&x)).unwrap(), [0, 0, 1, 128, 255, 255]);
}
