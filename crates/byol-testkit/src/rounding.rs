//! How far a float32 result of ours may be from PyTorch's, from what float32 rounding costs.
//!
//! PyTorch computes the reference twice, in float32 and in float64. The float64 result stands for
//! the exact one, and PyTorch's own float32 error against it measures what float32 rounding
//! costs on these inputs and weights (deep networks amplify it, and no a-priori bound is tight
//! enough to catch a wrong layer). Ours, also float32, may be off the float64 result by at most
//! [`ROUNDING_RATIO`] times PyTorch's error, plus [`FLOOR_ULPS`] units in the last place of the
//! largest value compared (for a result PyTorch happened to round exactly). A wrong layer, name,
//! stride, scale or normalization misses by orders of magnitude more.

use tch::{Kind, Tensor};

/// Two float32 evaluations of the same function round the same operations, at most in another
/// order: their errors against the exact result are of the same size, and one 4 times the other
/// is far outside what another summation order gives. This holds for one pass through ReLUs
/// while both evaluate the same kernels up to each of them (as ours and PyTorch's do: libtorch's
/// own), so that they cross the same kinks; after a training step, weights a rounding apart may
/// put a ReLU input on either side of zero and change a gradient entry by its whole size, so a
/// comparison after several steps needs another bound.
pub const ROUNDING_RATIO: f64 = 4.0;

/// The floor, in float32 units in the last place of the largest value compared: a few dozen
/// roundings of that size, as a sum of a few dozen terms can make.
pub const FLOOR_ULPS: f64 = 64.0;

/// Ours' error against `exact` (PyTorch in float64), and its bound from PyTorch's float32 result
/// `torch32` (see the module's head).
pub fn error_and_bound(ours: &Tensor, torch32: &Tensor, exact: &Tensor) -> (f64, f64) {
    assert_eq!(ours.size(), exact.size(), "shapes differ");
    assert_eq!(torch32.size(), exact.size(), "shapes differ");
    let exact = exact.to_kind(Kind::Double);
    let error = |t: &Tensor| (t.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]);
    let largest = exact.abs().max().double_value(&[]);
    let floor = FLOOR_ULPS * f64::from(f32::EPSILON) * largest;
    (error(ours), ROUNDING_RATIO * error(torch32) + floor)
}

/// Asserts that `ours` is within its bound of `outputs[key + "_f64"]`, PyTorch's float64 result,
/// given PyTorch's float32 one, `outputs[key]`; `what` and `replay` name it in the failure.
pub fn assert_within_rounding(
    outputs: &std::collections::HashMap<String, Tensor>,
    key: &str,
    ours: &Tensor,
    (what, replay): (&str, &str),
) {
    let torch32 = &outputs[key];
    let exact = &outputs[&format!("{key}_f64")];
    let (error, bound) = error_and_bound(ours, torch32, exact);
    assert!(
        error <= bound,
        "{replay}: {what} is off PyTorch's float64 result by {error:e}, more than its bound {bound:e} \
         (PyTorch's float32 result is off by {:e})",
        error_and_bound(torch32, torch32, exact).0
    );
}

/// Asserts that `ours` is PyTorch's float32 result `outputs[key]` bit for bit. Where ours and
/// PyTorch's module make the same libtorch calls in the same order (tch links the venv's
/// libtorch), on one thread each, they round every operation alike: any difference is another
/// computation, however small. A layer built otherwise (attention written out where PyTorch
/// fuses it, an EMA over flat buffers) rounds otherwise and is held to
/// [`assert_within_rounding`] instead.
pub fn assert_bit_equal(
    outputs: &std::collections::HashMap<String, Tensor>,
    key: &str,
    ours: &Tensor,
    (what, replay): (&str, &str),
) {
    let torch32 = &outputs[key];
    assert_eq!(ours.size(), torch32.size(), "{replay}: {what}: shapes differ");
    if let Some((count, first, a, b)) = crate::bit_difference(ours, torch32) {
        panic!(
            "{replay}: {what} differs from PyTorch's float32 result in {count} of {} entries (first at flat index \
             {first}: {a:e} against {b:e}; largest difference {:e}), where the same kernels in the same order give \
             the same bits",
            ours.numel(),
            crate::max_abs_diff(ours, torch32)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_off_by_more_than_rounding_is_out_of_bounds() {
        let exact = Tensor::from_slice(&[1.0f64, -2.0, 3.0]);
        let torch32 = Tensor::from_slice(&[1.0f32 + 1e-7, -2.0, 3.0]);
        let (error, bound) = error_and_bound(&torch32, &torch32, &exact);
        assert!(error <= bound);
        let wrong = Tensor::from_slice(&[1.0f32, -2.0, 3.01]);
        let (error, bound) = error_and_bound(&wrong, &torch32, &exact);
        assert!(error > bound, "{error} {bound}");
    }
}
