//! Which batch norms a data-parallel run synchronizes is decided where they are built, by the
//! `BuildContext`: `distributed.sync_batch_norm = "all"` reaches the backbone's and the heads',
//! `"heads"` the projector's and predictor's only, and a single process none. A recording
//! cross-replica sum (the identity, as with one replica) tells which ran: each synchronized
//! batch norm sums `channels + 1` and then `channels` values, and the widths below make every
//! layer's sizes distinct.

use std::sync::{Arc, Mutex};

use backbone_template::TinyCnnConfig;
use byol::nn::{CrossReplicaSum, SyncScope};
use byol::{BuildContext, Byol, ByolConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const WIDTHS: [i64; 3] = [4, 8, 16];
const HIDDEN: i64 = 24;

#[derive(Default)]
struct RecordingSum(Mutex<Vec<i64>>);

impl CrossReplicaSum for RecordingSum {
    fn sum(&self, tensor: &Tensor) -> Tensor {
        self.0.lock().unwrap().push(tensor.numel() as i64);
        tensor.shallow_clone()
    }
}

/// The distinct sizes of the tensors summed over replicas during one training loss and one
/// evaluation embedding.
fn synchronized_channels(scope: Option<SyncScope>) -> Vec<i64> {
    let sum = Arc::new(RecordingSum::default());
    let mut context = BuildContext::new(Device::Cpu, 16);
    if let Some(scope) = scope {
        context = context.with_sync_batch_norm(sum.clone(), scope);
    }
    let vs = VarStore::new(Device::Cpu);
    let config = ByolConfig {
        embedding_layer: "avgpool".into(),
        hidden_dim: HIDDEN,
        projection_dim: 8,
        ..ByolConfig::default()
    };
    let spec = TinyCnnConfig {
        widths: WIDTHS,
        ..TinyCnnConfig::default()
    };
    let byol = Byol::in_context(&vs, &spec, &context, "avgpool", &config).unwrap();
    tch::manual_seed(0);
    let views = Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let _ = byol.loss(&views, &views.flip([3]));
    let _ = byol.embed(&views); // eval mode: never synchronized
    let mut sizes = sum.0.lock().unwrap().clone();
    sizes.sort();
    sizes.dedup();
    sizes
}

/// What synchronized batch norms of these widths sum: `channels + 1` values (per-channel sums
/// and the count), then `channels` (squared deviations from the global mean).
fn sums_of(channels: &[i64]) -> Vec<i64> {
    let mut sizes: Vec<i64> = channels.iter().flat_map(|&c| [c, c + 1]).collect();
    sizes.sort();
    sizes
}

#[test]
fn all_synchronizes_the_backbone_and_the_heads() {
    assert_eq!(
        synchronized_channels(Some(SyncScope::All)),
        sums_of(&[4, 8, 16, HIDDEN])
    );
}

#[test]
fn heads_synchronizes_the_projector_and_predictor_only() {
    assert_eq!(synchronized_channels(Some(SyncScope::Heads)), sums_of(&[HIDDEN]));
}

#[test]
fn a_single_process_synchronizes_nothing() {
    assert_eq!(synchronized_channels(None), Vec::<i64>::new());
}
