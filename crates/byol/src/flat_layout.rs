//! Where each tensor lives in a flat buffer that holds many (the EMA's and the fused optimizer's
//! buffers): every slot starts on a 64-byte boundary, as libtorch's CPU allocator places a tensor
//! of its own. A kernel may take another path for data at another alignment (a BLAS may block a
//! misaligned row otherwise and sum it in another order; a GPU's vectorised loads need 16 bytes),
//! so on a CPU views of the buffer are laid out as tensors allocated one by one are, and on CUDA
//! (whose allocator aligns to 512 bytes) aligned for the widest vector loads. The gaps hold
//! zeros, which every whole-buffer op (EMA, momentum) keeps at zero.

use tch::Kind;

/// The alignment of every slot, in bytes.
pub const SLOT_ALIGNMENT: usize = 64;

/// The offset of each of `numels` (in elements of `kind`) in a flat buffer, each slot starting
/// on a [`SLOT_ALIGNMENT`] boundary, and the buffer's length.
pub fn slot_offsets(numels: impl IntoIterator<Item = i64>, kind: Kind) -> (Vec<i64>, i64) {
    let step = (SLOT_ALIGNMENT / kind.elt_size_in_bytes()).max(1) as i64;
    let mut end = 0;
    let offsets = numels
        .into_iter()
        .map(|numel| {
            let offset = (end + step - 1) / step * step;
            end = offset + numel;
            offset
        })
        .collect();
    (offsets, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_starts_on_a_64_byte_boundary_and_follows_the_last() {
        assert_eq!(
            slot_offsets([3, 16, 1, 0, 5], Kind::Float),
            (vec![0, 16, 32, 48, 48], 53)
        );
        assert_eq!(slot_offsets([3, 40], Kind::BFloat16), (vec![0, 32], 72));
        assert_eq!(slot_offsets([3, 1], Kind::Double), (vec![0, 8], 9));
        assert_eq!(slot_offsets([], Kind::Float), (vec![], 0));
    }
}
