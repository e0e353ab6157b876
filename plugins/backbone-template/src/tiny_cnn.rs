//! The network. Its variables carry the state_dict names of this PyTorch module, so weights move
//! between the two by name (`byol-run export` writes them, `pretrained = ...` reads them):
//!
//! ```python
//! class TinyCnn(torch.nn.Module):
//!     def __init__(self, widths=(16, 32, 64)):
//!         super().__init__()
//!         blocks, c = [], 3
//!         for w in widths:
//!             blocks.append(torch.nn.Sequential(
//!                 torch.nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False),
//!                 torch.nn.BatchNorm2d(w),
//!                 torch.nn.ReLU()))
//!             c = w
//!         self.blocks = torch.nn.Sequential(*blocks)
//!         for m in self.modules():  # torchvision's ResNet init (byol::nn::conv2d's)
//!             if isinstance(m, torch.nn.Conv2d):
//!                 torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
//! ```

use tch::{nn, nn::ModuleT, Tensor};

use byol::backbone::tap_positions;
use byol::nn::{batch_norm2d, conv2d, BatchNorm, BatchStatistics};
use byol::Backbone;

/// Feature taps in forward order; BYOL's `byol.embedding_layer` names one of them.
const TAPS: [&str; 4] = ["block1", "block2", "block3", "avgpool"];

/// Three conv-BN-ReLU blocks (`blocks.{i}.0` conv, `blocks.{i}.1` batch norm) and a global
/// average pool. Taps: `block1`..`block3` (`[N, C, H, W]`, each half the size of the one before)
/// and `avgpool` (`[N, C]`).
#[derive(Debug)]
pub struct TinyCnn {
    blocks: Vec<(nn::Conv2D, BatchNorm)>,
    widths: [i64; 3],
}

impl TinyCnn {
    /// Builds the variables under `path`. Name sub-paths exactly as PyTorch names the module's
    /// children (`path / "blocks" / i / 0`): never prefix them with `online` or `backbone`, BYOL
    /// builds each copy under its own path. `statistics` is the run's choice for a backbone's
    /// batch norms ([`byol::BuildContext::backbone_batch_norm`]).
    pub fn new(path: &nn::Path, widths: [i64; 3], statistics: &BatchStatistics) -> Self {
        let mut c_in = 3;
        let blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let block = path / "blocks" / i;
                // byol::nn layers have PyTorch's variables (BN's num_batches_tracked included)
                // and torchvision's ResNet initialization (conv: Kaiming normal, fan-out; BN: 1, 0),
                // not plain `nn.Conv2d`'s uniform draw: the module above re-draws its convs so.
                let conv = conv2d(&(&block / 0), c_in, c_out, 3, 2, 1);
                let bn = batch_norm2d(&(&block / 1), c_out, statistics);
                c_in = c_out;
                (conv, bn)
            })
            .collect();
        Self { blocks, widths }
    }
}

impl Backbone for TinyCnn {
    fn taps(&self) -> Vec<&'static str> {
        TAPS.to_vec()
    }

    fn tap_dim(&self, tap: &str) -> Option<i64> {
        let i = TAPS.iter().position(|t| *t == tap)?;
        Some(self.widths[i.min(2)])
    }

    fn forward_taps(&self, images: &Tensor, train: bool, taps: &[&str]) -> Vec<Tensor> {
        let wanted = tap_positions("tiny_cnn", &TAPS, taps);
        // Run only as far as the deepest tap asked for.
        let deepest = wanted.iter().copied().max().unwrap_or(0);
        let mut at: Vec<Tensor> = Vec::with_capacity(TAPS.len());
        let mut x = images.shallow_clone();
        for (conv, bn) in self.blocks.iter().take(deepest + 1) {
            // `train` selects batch statistics (and updates the running ones) or running statistics.
            x = bn.forward_t(&x.apply(conv), train).relu();
            at.push(x.shallow_clone());
        }
        if deepest == 3 {
            at.push(x.adaptive_avg_pool2d([1, 1]).flatten(1, -1));
        }
        wanted.iter().map(|&i| at[i].shallow_clone()).collect()
    }
}
