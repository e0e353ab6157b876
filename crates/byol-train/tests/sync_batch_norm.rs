//! Synchronized batch norm on a real data-parallel job (four ranks as threads of this process,
//! each with its own TCPStore client and Gloo backend, as four processes would have), against
//! PyTorch's BatchNorm2d on the whole batch in float64: outputs, input gradients, the parameter
//! gradients summed over the ranks (what the gradient all-reduce averages) and every rank's
//! running statistics. A batch norm left unsynchronized takes rank 0's statistics when a step
//! ends.

use byol::nn::{batch_norm2d, BatchNorm};
use byol::BuildContext;
use byol_testkit::{max_abs_diff, run_python};
use byol_train::distributed::DataParallel;
use byol_train::experiment::{DistributedConfig, SyncBatchNorm};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

const CHANNELS: i64 = 4;

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

/// What one rank computed: its shard's output and input gradient, its layer's parameter
/// gradients and running statistics.
struct RankResult {
    y: Tensor,
    grad_x: Tensor,
    grad_weight: Tensor,
    grad_bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

/// Rank `rank` of a `world`-process job on localhost, as a data-parallel run joins it.
fn join(rank: usize, world: usize, port: u16, config: &DistributedConfig) -> DataParallel {
    let rendezvous = byol_testkit::local_rendezvous(rank, world, port);
    DataParallel::join(&rendezvous, config, Device::Cpu).unwrap()
}

/// One training-mode batch norm per rank, built as a data-parallel run builds its networks, on
/// the rank's shard; loss (y * g).sum() over the shard.
fn run_rank(rank: usize, world: usize, port: u16, x: Tensor, g: Tensor) -> RankResult {
    tch::set_num_threads(1);
    let parallel = join(rank, world, port, &DistributedConfig::default());
    let context = parallel.build_context(BuildContext::new(Device::Cpu, 4));
    let vs = VarStore::new(Device::Cpu);
    let bn: BatchNorm = batch_norm2d(&vs.root(), CHANNELS, &context.backbone_batch_norm);
    let x = x.set_requires_grad(true);
    let y = bn.forward_t(&x, true);
    (&y * &g).sum(Kind::Float).backward();
    RankResult {
        y: y.detach(),
        grad_x: x.grad(),
        grad_weight: bn.weight.grad(),
        grad_bias: bn.bias.grad(),
        running_mean: bn.running_mean.copy(),
        running_var: bn.running_var.copy(),
    }
}

/// Four ranks with unequal shards, one of them empty (the counts must weigh the means, and the
/// empty rank must still join the backward all-reduce), channels whose means lie up to 1000
/// standard deviations from zero. On the CPU only: on a GPU the ranks' backward passes would share
/// one autograd device thread, and one rank's blocking all-reduce would stall the others.
///
/// Tolerance: both sides read the same fp32 input, so the difference is our fp32 arithmetic.
/// With u = 2^-24: the mean carries an error of a few u·|μ|, and y = x·scale + shift rounds at
/// u·(|x| + |μ|)/σ, so an output is off by a few u·(|μ|/σ + |x̂|), x̂ the normalized input
/// (at most about 4 here). The bound per channel is 8·u·(|μ|/σ + max|x̂|) for an output; an
/// input gradient multiplies such errors by g/σ, so its bound is that times max|g|/σ; a parameter's
/// gradient sums one per element of its channel, weighted by |g|, so its bound is that times
/// Σ|g|. Computing the variance as E[x²] - E[x]² in fp32 instead would be off by about
/// u·(|μ|/σ)² = 6e-2 in the far channel and fail; so would means not weighted by the counts, or
/// statistics that gradients do not flow through on every rank.
#[test]
fn ranks_normalize_with_the_statistics_of_the_whole_batch() {
    tch::set_num_threads(1);
    tch::manual_seed(3);
    let shards = [5i64, 0, 8, 3];
    let offsets = [0.0f32, 3.0, -40.0, 1000.0];
    let spreads = [1.0f32, 0.5, 2.0, 1.0];
    let total: i64 = shards.iter().sum();
    let per_channel = |v: &[f32]| Tensor::from_slice(v).view([1, CHANNELS, 1, 1]);
    let x = Tensor::randn([total, CHANNELS, 4, 4], (Kind::Float, Device::Cpu)) * per_channel(&spreads)
        + per_channel(&offsets);
    let g = Tensor::randn([total, CHANNELS, 4, 4], (Kind::Float, Device::Cpu));
    let oracle = run_python(WHOLE_BATCH, &[("x", &x), ("g", &g)]);

    let port = byol_testkit::free_port();
    let world = shards.len();
    let handles: Vec<_> = x
        .split_with_sizes(shards, 0)
        .into_iter()
        .zip(g.split_with_sizes(shards, 0))
        .enumerate()
        .map(|(rank, (x, g))| std::thread::spawn(move || run_rank(rank, world, port, x.copy(), g.copy())))
        .collect();
    let ranks: Vec<RankResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    let u = f64::powi(2.0, -24);
    let per_channel_max = |t: &Tensor| t.abs().amax([0i64, 2, 3].as_slice(), false).to_kind(Kind::Double);
    let max_normalized = per_channel_max(&oracle["y"]);
    let max_g = per_channel_max(&g);
    let sum_g = g.abs().sum_dim_intlist([0i64, 2, 3].as_slice(), false, Kind::Double);
    let element_bound: Vec<f64> = (0..CHANNELS as usize)
        .map(|c| 8.0 * u * (f64::from(offsets[c].abs() / spreads[c]) + max_normalized.double_value(&[c as i64])))
        .collect();
    let check = |name: &str, ours: &Tensor, scale: &dyn Fn(usize) -> f64| {
        let theirs = &oracle[name];
        for c in 0..CHANNELS {
            let channel = |t: &Tensor| {
                if t.dim() == 1 {
                    t.narrow(0, c, 1)
                } else {
                    t.narrow(1, c, 1)
                }
            };
            let difference = max_abs_diff(&channel(ours), &channel(theirs));
            let bound = element_bound[c as usize] * scale(c as usize);
            assert!(
                difference <= bound,
                "{name}, channel {c}: {difference:.3e} > {bound:.3e}"
            );
        }
    };
    let cat = |pick: fn(&RankResult) -> &Tensor| Tensor::cat(&ranks.iter().map(pick).collect::<Vec<_>>(), 0);
    let sum = |pick: fn(&RankResult) -> &Tensor| {
        ranks
            .iter()
            .map(|r| pick(r).shallow_clone())
            .reduce(|a, b| a + b)
            .unwrap()
    };
    let one = |_| 1.0;
    let times_max_g = |c: usize| max_g.double_value(&[c as i64]) / f64::from(spreads[c]);
    let times_sum_g = |c: usize| sum_g.double_value(&[c as i64]);
    check("y", &cat(|r| &r.y), &one);
    check("grad_x", &cat(|r| &r.grad_x), &times_max_g);
    check("grad_weight", &sum(|r| &r.grad_weight), &times_sum_g);
    check("grad_bias", &sum(|r| &r.grad_bias), &times_sum_g);
    for rank in &ranks {
        // Running statistics move 0.1 of the way from 0 and 1: within an output's bound.
        check("running_mean", &rank.running_mean, &one);
        check("running_var", &rank.running_var, &one);
    }
}

/// A batch norm that each rank runs on its own shard (`sync_batch_norm = "none"`), then
/// [`DataParallel::broadcast_buffers`] as a data-parallel step ends: its running statistics and
/// its int64 count. Returns the buffers before and after.
fn unsynced_rank(rank: usize, world: usize, port: u16) -> (Vec<Tensor>, Vec<Tensor>) {
    tch::set_num_threads(1);
    let config = DistributedConfig {
        sync_batch_norm: SyncBatchNorm::None,
        ..DistributedConfig::default()
    };
    let parallel = join(rank, world, port, &config);
    let context = parallel.build_context(BuildContext::new(Device::Cpu, 4));
    let vs = VarStore::new(Device::Cpu);
    let bn: BatchNorm = batch_norm2d(&vs.root(), CHANNELS, &context.backbone_batch_norm);
    // Shards of different means and sizes, and one more step on rank 1.
    for _ in 0..=rank {
        let shard = Tensor::randn([3 + rank as i64, CHANNELS, 2, 2], (Kind::Float, Device::Cpu)) + rank as f64;
        let _ = tch::no_grad(|| bn.forward_t(&shard, true));
    }
    let buffers = [&bn.running_mean, &bn.running_var, &bn.num_batches_tracked].map(Tensor::shallow_clone);
    let before = buffers.iter().map(Tensor::copy).collect();
    parallel.broadcast_buffers(&buffers).unwrap();
    (before, buffers.iter().map(Tensor::copy).collect())
}

#[test]
fn unsynchronized_batch_norms_take_rank_0s_statistics_when_a_step_ends() {
    let port = byol_testkit::free_port();
    let handles: Vec<_> = (0..2)
        .map(|rank| std::thread::spawn(move || unsynced_rank(rank, 2, port)))
        .collect();
    let ranks: Vec<(Vec<Tensor>, Vec<Tensor>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let (rank0_before, rank0_after) = &ranks[0];
    let (rank1_before, rank1_after) = &ranks[1];
    for i in 0..3 {
        assert!(!rank1_before[i].equal(&rank0_before[i]), "buffer {i} differed before");
        assert!(rank0_after[i].equal(&rank0_before[i]), "rank 0 keeps buffer {i}");
        assert!(
            rank1_after[i].equal(&rank0_before[i]),
            "rank 1 takes rank 0's buffer {i}"
        );
    }
}
