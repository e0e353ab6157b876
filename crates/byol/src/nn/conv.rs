use tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform, Init};

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
