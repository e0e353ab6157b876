use tch::{Kind, Tensor};

/// Normalized 1-D Gaussian kernels `[N, k]`, one per sigma, as torchvision's `_get_gaussian_kernel1d`.
pub fn gaussian_kernels(sigma: &Tensor, kernel_size: i64) -> Tensor {
    let half = (kernel_size - 1) as f64 * 0.5;
    let x = Tensor::linspace(-half, half, kernel_size, (Kind::Float, sigma.device()));
    let pdf = (x.view([1, -1]) / sigma.view([-1, 1]))
        .square()
        .g_mul_scalar(-0.5)
        .exp();
    &pdf / pdf.sum_dim_intlist([1i64].as_slice(), true, None)
}

/// Gaussian blur with one sigma per sample and reflect padding, as torchvision's
/// `gaussian_blur` (separable: the 2-D kernel is the outer product of the 1-D one).
pub fn gaussian_blur(images: &Tensor, kernel_size: i64, sigma: &Tensor) -> Tensor {
    assert!(kernel_size % 2 == 1, "blur kernel size must be odd, got {kernel_size}");
    let size = images.size();
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let kernels = gaussian_kernels(sigma, kernel_size).to_kind(images.kind());
    // One group per (sample, channel): [N*C, 1, 1, k] and [N*C, 1, k, 1].
    let per_channel = kernels
        .unsqueeze(1)
        .expand([n, c, kernel_size], false)
        .reshape([n * c, 1, 1, kernel_size]);
    let pad = kernel_size / 2;
    let x = images.reshape([1, n * c, h, w]).reflection_pad2d([pad, pad, pad, pad]);
    let no_bias: Option<Tensor> = None;
    let x = x.conv2d(&per_channel, no_bias.as_ref(), [1, 1], [0, 0], [1, 1], n * c);
    let x = x.conv2d(
        &per_channel.view([n * c, 1, kernel_size, 1]),
        no_bias.as_ref(),
        [1, 1],
        [0, 0],
        [1, 1],
        n * c,
    );
    x.view([n, c, h, w])
}
