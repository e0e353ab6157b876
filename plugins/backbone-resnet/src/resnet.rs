use tch::{nn, nn::ModuleT, Tensor};

use byol::backbone::tap_positions;
use byol::nn::{batch_norm2d, conv2d, pointwise_conv2d, BatchNorm, BatchStatistics};
use byol::Backbone;

/// Residual block type: two 3x3 convs (ResNet-18/34) or 1x1-3x3-1x1 with 4x expansion (50+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

#[derive(Debug)]
struct Downsample {
    conv: nn::Conv2D,
    stride: i64,
    bn: BatchNorm,
}

/// One residual block; `convs[i]`/`bns[i]` are torchvision's `conv{i+1}`/`bn{i+1}`.
#[derive(Debug)]
struct Block {
    convs: Vec<nn::Conv2D>,
    bns: Vec<BatchNorm>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(
        path: &nn::Path,
        kind: BlockKind,
        c_in: i64,
        planes: i64,
        stride: i64,
        zero_init_residual: bool,
        statistics: &BatchStatistics,
    ) -> Self {
        let c_out = planes * kind.expansion();
        // (in, out, kernel, stride, padding) of conv1, conv2[, conv3]
        let shapes: Vec<(i64, i64, i64, i64, i64)> = match kind {
            BlockKind::Basic => vec![(c_in, planes, 3, stride, 1), (planes, planes, 3, 1, 1)],
            BlockKind::Bottleneck => {
                vec![
                    (c_in, planes, 1, 1, 0),
                    (planes, planes, 3, stride, 1),
                    (planes, c_out, 1, 1, 0),
                ]
            }
        };
        let mut convs = Vec::new();
        let mut bns = Vec::new();
        for (i, &(ci, co, k, s, p)) in shapes.iter().enumerate() {
            convs.push(conv2d(&(path / format!("conv{}", i + 1)), ci, co, k, s, p));
            bns.push(batch_norm2d(&(path / format!("bn{}", i + 1)), co, statistics));
        }
        if zero_init_residual {
            bns.last().expect("blocks have convs").zero_weight();
        }
        let downsample = (stride != 1 || c_in != c_out).then(|| Downsample {
            conv: conv2d(&(path / "downsample" / "0"), c_in, c_out, 1, stride, 0),
            stride,
            bn: batch_norm2d(&(path / "downsample" / "1"), c_out, statistics),
        });
        Self { convs, bns, downsample }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut out = xs.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            out = bn.forward_t(&out.apply(conv), train);
            if i != last {
                out = out.relu();
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => d.bn.forward_t(&pointwise_conv2d(&d.conv, xs, d.stride), train),
            None => xs.shallow_clone(),
        };
        (out + shortcut).relu()
    }
}

const TAPS: [&str; 6] = ["stem", "layer1", "layer2", "layer3", "layer4", "avgpool"];

/// torchvision's ResNet without `fc`. Taps: `stem` (after the max-pool), `layer1`..`layer4`,
/// `avgpool` (`[N, C]`).
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    cifar_stem: bool,
    layers: Vec<Vec<Block>>,
    tap_dims: [i64; 6],
}

impl ResNet {
    pub fn new(
        path: &nn::Path,
        kind: BlockKind,
        depths: [i64; 4],
        width: i64,
        cifar_stem: bool,
        zero_init_residual: bool,
        statistics: &BatchStatistics,
    ) -> Self {
        let conv1 = if cifar_stem {
            conv2d(&(path / "conv1"), 3, width, 3, 1, 1)
        } else {
            conv2d(&(path / "conv1"), 3, width, 7, 2, 3)
        };
        let bn1 = batch_norm2d(&(path / "bn1"), width, statistics);
        let mut c_in = width;
        let mut layers = Vec::new();
        let mut tap_dims = [width; 6];
        for (i, &depth) in depths.iter().enumerate() {
            let planes = width << i;
            let layer_path = path / format!("layer{}", i + 1);
            let blocks = (0..depth)
                .map(|b| {
                    let stride = if i > 0 && b == 0 { 2 } else { 1 };
                    let block = Block::new(
                        &(&layer_path / b),
                        kind,
                        c_in,
                        planes,
                        stride,
                        zero_init_residual,
                        statistics,
                    );
                    c_in = planes * kind.expansion();
                    block
                })
                .collect();
            layers.push(blocks);
            tap_dims[i + 1] = c_in;
        }
        tap_dims[5] = c_in;
        Self {
            conv1,
            bn1,
            cifar_stem,
            layers,
            tap_dims,
        }
    }
}

impl Backbone for ResNet {
    fn taps(&self) -> Vec<&'static str> {
        TAPS.to_vec()
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        TAPS.iter().position(|t| *t == tap).map(|i| self.tap_dims[i])
    }

    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor> {
        let wanted = tap_positions("ResNet", &TAPS, taps);
        let last = wanted.iter().copied().max().unwrap_or(0);
        let mut at: Vec<Option<Tensor>> = (0..TAPS.len()).map(|_| None).collect();
        let mut x = self.bn1.forward_t(&images.apply(&self.conv1), train).relu();
        if !self.cifar_stem {
            x = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        at[0] = Some(x.shallow_clone());
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 > last {
                break;
            }
            for block in layer {
                x = block.forward_t(&x, train);
            }
            at[i + 1] = Some(x.shallow_clone());
        }
        if last == 5 {
            at[5] = Some(x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        }
        wanted
            .iter()
            .map(|&i| at[i].as_ref().expect("tap computed").shallow_clone())
            .collect()
    }
}
