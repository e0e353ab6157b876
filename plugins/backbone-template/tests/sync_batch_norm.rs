//! Which batch norms a data-parallel run synchronizes is decided where they are built, by the
//! `BuildContext`: `distributed.sync_batch_norm = "all"` reaches the backbone's and the heads',
//! `"heads"` the projector's and predictor's only, and a single process none. A recording
//! cross-replica gather (of one replica) tells which ran: each synchronized batch norm gathers
//! one row of `2 * channels + 1` values, and the widths below make every layer's size distinct.
//! Replicas simulated in one process check the statistics and gradients against PyTorch.

use std::sync::{Arc, Mutex};

use backbone_template::TinyCnnConfig;
use byol::nn::{batch_norm2d, BatchNorm, BatchStatistics, CrossReplicaGather, SyncScope};
use byol::{BuildContext, Byol, ByolConfig};
use byol_testkit::{max_abs_diff, run_python};
use tch::{nn::ModuleT, nn::VarStore, Device, Kind, Tensor};

const WIDTHS: [i64; 3] = [4, 8, 16];
const HIDDEN: i64 = 24;

#[derive(Default)]
struct RecordingGather(Mutex<Vec<i64>>);

impl CrossReplicaGather for RecordingGather {
    fn gather(&self, row: &Tensor) -> Tensor {
        self.0.lock().unwrap().push(row.numel() as i64);
        row.unsqueeze(0)
    }
}

/// The distinct sizes of the rows gathered from the replicas during one training loss and one
/// evaluation embedding.
fn synchronized_channels(scope: Option<SyncScope>) -> Vec<i64> {
    let gather = Arc::new(RecordingGather::default());
    let mut context = BuildContext::new(Device::Cpu, 16);
    if let Some(scope) = scope {
        context = context.with_sync_batch_norm(gather.clone(), scope);
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
    let mut sizes = gather.0.lock().unwrap().clone();
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

// ---------------------------------------------------------------------------------------------
// Replicas simulated in one process: the global batch's statistics, against PyTorch's BatchNorm2d
// on the whole batch.

/// One process standing in for a job of several replicas. Each replica's batch norm is run twice:
/// first on a throwaway layer, to record the live row it gathers; then on its own layer, whose
/// gather returns every replica's recorded row with its own live one in its slot. The second
/// pass's losses, summed, then depend on each replica's input through every replica's statistics,
/// as the all-reduce's backward makes them do across processes.
struct SimulatedJob {
    rows: Mutex<Vec<Tensor>>,
}

struct Replica {
    job: Arc<SimulatedJob>,
    rank: usize,
    recording: bool,
}

impl CrossReplicaGather for Replica {
    fn gather(&self, row: &Tensor) -> Tensor {
        let mut rows = self.job.rows.lock().unwrap();
        if self.recording {
            rows.push(row.shallow_clone());
            return row.unsqueeze(0);
        }
        let table: Vec<Tensor> = (0..rows.len())
            .map(|r| {
                if r == self.rank {
                    row.shallow_clone()
                } else {
                    rows[r].shallow_clone()
                }
            })
            .collect();
        Tensor::stack(&table, 0)
    }
}

const WHOLE_BATCH: &str = r#"
x = inputs["x"].double().requires_grad_(True)
bn = torch.nn.BatchNorm2d(x.shape[1]).double()
y = bn(x)
(y * inputs["g"].double()).sum().backward()
outputs["y"] = y
outputs["grad_x"] = x.grad
outputs["grad_weight"] = bn.weight.grad
outputs["grad_bias"] = bn.bias.grad
outputs["running_mean"] = bn.running_mean
outputs["running_var"] = bn.running_var
"#;

/// Three replicas of unequal batches (the counts must weigh their means), channels whose means
/// lie up to 1000 standard deviations from zero: fp32 outputs, input gradients, summed parameter
/// gradients and every replica's running statistics against PyTorch's float64 batch norm of the
/// whole batch.
///
/// Tolerance: both sides read the same fp32 input, so the difference is our fp32 arithmetic. The
/// mean carries an error of a few u·|μ| (u = 2^-24), and so does x - μ; normalized, that is a
/// few u·|μ|/σ, 6e-5 per u·|μ|/σ for the far channel (measured: about 0.7 of that). Hence
/// 8·u·(|μ|/σ + 1) for one output or input gradient; a parameter's gradient sums one such term
/// per element of its channel (times |g| ≤ 5), so its bound is that many times larger. Computing
/// the variance as E[x²] - E[x]² in fp32 instead would be off by about u·(|μ|/σ)² = 6e-2 and fail.
#[test]
fn replicas_normalize_with_the_statistics_of_the_whole_batch() {
    tch::set_num_threads(1);
    tch::manual_seed(11);
    const CHANNELS: i64 = 4;
    let shards = [5i64, 3, 8];
    let offsets = Tensor::from_slice(&[0.0f32, 3.0, -40.0, 1000.0]).view([1, CHANNELS, 1, 1]);
    let spreads = Tensor::from_slice(&[1.0f32, 0.5, 2.0, 1.0]).view([1, CHANNELS, 1, 1]);
    let total: i64 = shards.iter().sum();
    let x = Tensor::randn([total, CHANNELS, 4, 4], (Kind::Float, Device::Cpu)) * &spreads + &offsets;
    let g = Tensor::randn([total, CHANNELS, 4, 4], (Kind::Float, Device::Cpu)).clamp(-5.0, 5.0);
    let oracle = run_python(WHOLE_BATCH, &[("x", &x), ("g", &g)]);

    let job = Arc::new(SimulatedJob {
        rows: Mutex::new(Vec::new()),
    });
    let inputs: Vec<Tensor> = x
        .split_with_sizes(shards, 0)
        .into_iter()
        .map(|s| s.detach().requires_grad_(true))
        .collect();
    let layer = |rank: usize, recording: bool| {
        let vs = VarStore::new(Device::Cpu);
        let replica = Arc::new(Replica {
            job: job.clone(),
            rank,
            recording,
        });
        let bn = batch_norm2d(&vs.root(), CHANNELS, &BatchStatistics::Global(replica));
        (vs, bn)
    };
    for (rank, input) in inputs.iter().enumerate() {
        let (_vs, bn) = layer(rank, true);
        let _ = bn.forward_t(input, true);
    }
    let layers: Vec<_> = (0..shards.len()).map(|rank| layer(rank, false)).collect();
    let outputs: Vec<Tensor> = layers
        .iter()
        .zip(&inputs)
        .map(|((_, bn), input)| bn.forward_t(input, true))
        .collect();
    let y = Tensor::cat(&outputs, 0);
    (&y * &g).sum(Kind::Float).backward();

    let far = 1000.0 / 1.0;
    let per_element = 8.0 * f64::powi(2.0, -24) * (far + 1.0);
    let per_parameter = per_element * (total * 16) as f64 * 5.0;
    let check = |name: &str, ours: &Tensor, bound: f64| {
        let difference = max_abs_diff(ours, &oracle[name]);
        eprintln!("{name}: {difference:.2e} (bound {bound:.2e})");
        assert!(difference <= bound, "{name}: {difference} > {bound}");
    };
    check("y", &y, per_element);
    let grad_x = Tensor::cat(&inputs.iter().map(|i| i.grad()).collect::<Vec<_>>(), 0);
    check("grad_x", &grad_x, per_element);
    let summed = |pick: fn(&BatchNorm) -> &Tensor| {
        layers
            .iter()
            .map(|(_, bn)| pick(bn).grad())
            .reduce(|a, b| a + b)
            .unwrap()
    };
    check("grad_weight", &summed(|bn| &bn.weight), per_parameter);
    check("grad_bias", &summed(|bn| &bn.bias), per_parameter);
    for (_, bn) in &layers {
        // Running statistics move 0.1 of the way from 0 and 1: well within an output's bound.
        check("running_mean", &bn.running_mean, per_element);
        check("running_var", &bn.running_var, per_element);
    }
}
