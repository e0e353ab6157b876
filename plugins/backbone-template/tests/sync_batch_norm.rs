//! Which batch norms a data-parallel run synchronizes is decided where they are built, by the
//! `BuildContext`: `distributed.sync_batch_norm = "all"` reaches the backbone's and the heads',
//! `"heads"` the projector's and predictor's only, and a single process none. A recording job of
//! one replica tells which ran: each synchronized batch norm gathers one row of
//! `2 * channels + 1` values, and the widths below make every layer's size distinct. (The
//! statistics themselves are checked against PyTorch in byol-train's tests, on real process
//! groups.)

use std::sync::{Arc, Mutex};

use backbone_template::TinyCnnConfig;
use byol::nn::{CrossReplica, SyncScope};
use byol::{BuildContext, Byol, ByolConfig};
use tch::{nn::VarStore, Device, Kind, Tensor};

const WIDTHS: [i64; 3] = [4, 8, 16];
const HIDDEN: i64 = 24;

#[derive(Default)]
struct RecordingReplica(Mutex<Vec<i64>>);

impl CrossReplica for RecordingReplica {
    fn gather(&self, row: &Tensor) -> Tensor {
        self.0.lock().unwrap().push(row.numel() as i64);
        row.unsqueeze(0)
    }

    fn sum_gradients(&self, tensor: &Tensor) -> Tensor {
        tensor.shallow_clone()
    }
}

/// The distinct sizes of the rows gathered from the replicas during one training loss and one
/// evaluation embedding.
fn synchronized_channels(scope: Option<SyncScope>) -> Vec<i64> {
    let replica = Arc::new(RecordingReplica::default());
    let mut context = BuildContext::new(Device::Cpu, 16);
    if let Some(scope) = scope {
        context = context.with_sync_batch_norm(replica.clone(), scope);
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
    let mut sizes = replica.0.lock().unwrap().clone();
    sizes.sort();
    sizes.dedup();
    sizes
}

/// What synchronized batch norms of these widths gather, once each: a row of per-channel means
/// and squared deviations, and the count.
fn rows_of(channels: &[i64]) -> Vec<i64> {
    channels.iter().map(|&c| 2 * c + 1).collect()
}

#[test]
fn all_synchronizes_the_backbone_and_the_heads() {
    assert_eq!(
        synchronized_channels(Some(SyncScope::All)),
        rows_of(&[4, 8, 16, HIDDEN])
    );
}

#[test]
fn heads_synchronizes_the_projector_and_predictor_only() {
    assert_eq!(synchronized_channels(Some(SyncScope::Heads)), rows_of(&[HIDDEN]));
}

#[test]
fn a_single_process_synchronizes_nothing() {
    assert_eq!(synchronized_channels(None), Vec::<i64>::new());
}
