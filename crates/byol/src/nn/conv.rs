use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init};
use tch::{Device, Tensor};

/// A bias-free 2-D convolution initialized as torchvision's ResNet does:
/// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`.
pub fn conv2d(path: &nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64, padding: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(path, c_in, c_out, kernel, config)
}

/// `torch.nn.Linear` with PyTorch's default initialization: weight and bias U(-1/sqrt(in), 1/sqrt(in)).
pub fn linear(path: &nn::Path, c_in: i64, c_out: i64) -> nn::Linear {
    let bound = 1.0 / (c_in as f64).sqrt();
    let config = nn::LinearConfig {
        ws_init: Init::Uniform { lo: -bound, up: bound },
        bs_init: Some(Init::Uniform { lo: -bound, up: bound }),
        bias: true,
    };
    nn::linear(path, c_in, c_out, config)
}

/// `conv`, a bias-free 1x1 convolution with `stride`, applied to `xs`.
///
/// On the CPU, oneDNN's 1x1 backward-weights kernel for strides above 1 copies the strided input
/// into a workspace sized for whole channel blocks; with a channels_last input whose channel
/// count is not a multiple of the block (8 on AVX2, 16 on AVX-512) it writes past that workspace:
/// heap corruption, hangs or wrong weight gradients (oneDNN issue
/// https://github.com/uxlfoundation/oneDNN/issues/6035). Such a convolution runs on NCHW tensors
/// instead, which takes a correct kernel; real networks (64+ channels) never take this branch.
/// Its weight is then a view, which autocast does not cache: under bf16 each forward casts it
/// anew, and its gradients from BYOL's two views add in float32 instead of bfloat16.
pub fn pointwise_conv2d(conv: &nn::Conv2D, xs: &Tensor, stride: i64) -> Tensor {
    const WIDEST_CHANNEL_BLOCK: i64 = 16;
    let channels = xs.size()[1];
    if stride > 1 && xs.device() == Device::Cpu && channels % WIDEST_CHANNEL_BLOCK != 0 {
        // A [O, I, 1, 1] weight is "contiguous" whatever its strides (size-1 dimensions do not
        // count), and channels_last strides would pull the convolution back to NHWC: give it
        // NCHW strides explicitly.
        let size = conv.ws.size();
        let weight = conv.ws.contiguous().flatten(1, -1).view(size.as_slice());
        return xs
            .contiguous()
            .conv2d(&weight, conv.bs.as_ref(), [stride, stride], [0, 0], [1, 1], 1);
    }
    xs.apply(conv)
}
