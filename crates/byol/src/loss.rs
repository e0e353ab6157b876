//! "We define the following mean squared error between the normalized predictions and target
//! projections: L = ||q̄ − z̄'||² = 2 − 2·<q, z'>/(||q||·||z'||)" (BYOL, eq. 2), symmetrized by
//! swapping the views (eq. 3).

use tch::Tensor;

/// Per-sample `2 - 2 cos(p, z)`, `[N]`. Norms are clamped at 1e-12 as `F.normalize` does.
pub fn normalized_mse(prediction: &Tensor, target: &Tensor) -> Tensor {
    let p = prediction
        / prediction
            .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
            .clamp_min(1e-12);
    let z = target / target.norm_scalaropt_dim(2, [-1i64].as_slice(), true).clamp_min(1e-12);
    (p * z).sum_dim_intlist([-1i64].as_slice(), false, None) * -2.0 + 2.0
}

/// The symmetric BYOL loss: mean over the batch of `L(p1, sg(z2'))` plus `L(p2, sg(z1'))`.
/// Targets are detached here, so callers cannot forget the stop-gradient.
pub fn byol_loss(p1: &Tensor, p2: &Tensor, target_z1: &Tensor, target_z2: &Tensor) -> Tensor {
    normalized_mse(p1, &target_z2.detach()).mean(None) + normalized_mse(p2, &target_z1.detach()).mean(None)
}
