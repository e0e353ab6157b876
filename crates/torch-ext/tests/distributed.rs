//! c10d through the shim: two ranks (threads of this process, each with its own TCPStore client
//! and Gloo backend, exactly as two processes would have) run the collectives.

use std::time::Duration;

use tch::{Kind, Tensor};
use torch_ext::distributed::{unreached_leaves, ProcessGroup, Rendezvous};

/// The environment is the process's, and the tests of this file run on threads: the test that
/// sets torchrun's variables runs alone (setenv beside a getenv in libtorch or Gloo is a data
/// race), the others beside each other.
static ENVIRONMENT: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Runs `body(group)` on `world` ranks at once and returns their results in rank order.
fn on_ranks<T: Send + 'static>(world: usize, body: fn(&ProcessGroup) -> T) -> Vec<T> {
    let port = byol_testkit::free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            std::thread::spawn(move || {
                let group = ProcessGroup::gloo(&byol_testkit::local_rendezvous(rank, world, port)).unwrap();
                body(&group)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn rank_tensor(group: &ProcessGroup) -> Tensor {
    Tensor::from_slice(&[1.0f32, 2.0, 3.0]) * (group.rank() as f64 + 1.0)
}

#[test]
fn all_reduce_broadcast_and_all_gather_across_two_ranks() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    let results = on_ranks(2, |group| {
        let summed = rank_tensor(group);
        group.all_reduce_sum_(&summed).unwrap();
        let broadcast = rank_tensor(group);
        group.broadcast_(&broadcast, 1).unwrap();
        let gathered = group.all_gather(&rank_tensor(group).view([1, 3])).unwrap();
        group.barrier().unwrap();
        (
            Vec::<f32>::try_from(summed).unwrap(),
            Vec::<f32>::try_from(broadcast).unwrap(),
            Vec::<f32>::try_from(gathered.flatten(0, -1)).unwrap(),
        )
    });
    for (summed, broadcast, gathered) in results {
        assert_eq!(summed, vec![3.0, 6.0, 9.0]);
        assert_eq!(broadcast, vec![2.0, 4.0, 6.0], "rank 1's values everywhere");
        assert_eq!(gathered, vec![1.0, 2.0, 3.0, 2.0, 4.0, 6.0], "rank order");
    }
}

#[test]
fn summing_gradients_over_ranks_is_the_identity_forward_and_an_all_reduce_backward() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    // y_r = x_r; loss_r = (c_r * y_r).sum() with c_r = rank + 1. The gradient that reaches x_r is
    // the sum over ranks of c_r: 1 + 2 = 3 everywhere, on both ranks.
    let results = on_ranks(2, |group| {
        let x = rank_tensor(group).set_requires_grad(true);
        let y = group.sum_gradients_over_ranks(&x).unwrap();
        let c = group.rank() as f64 + 1.0;
        (&y * c).sum(Kind::Float).backward();
        (
            Vec::<f32>::try_from(y.detach()).unwrap(),
            Vec::<f32>::try_from(x.grad()).unwrap(),
            Vec::<f32>::try_from(rank_tensor(group)).unwrap(),
        )
    });
    for (y, grad, x) in results {
        assert_eq!(y, x, "forward is the identity");
        assert_eq!(grad, vec![3.0, 3.0, 3.0]);
    }
}

#[test]
fn the_graph_keeps_the_group_alive_when_it_is_dropped_before_backward() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    // Built by hand rather than by `on_ranks`, so that the group can be dropped (its store and
    // backend handles freed) while the graph still references the backend. World size 1: the
    // gradient of (3 * y).sum(), summed over the one rank, is 3.
    let group = ProcessGroup::gloo(&Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: byol_testkit::free_port(),
        rank: 0,
        world_size: 1,
        local_rank: 0,
        local_world_size: 1,
        agent_store: false,
        restart_count: 0,
        timeout: Duration::from_secs(60),
    })
    .unwrap();
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
    let y = group.sum_gradients_over_ranks(&x).unwrap();
    drop(group);
    (&y * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(y.detach()).unwrap(), vec![1.0, 2.0, 3.0]);
    assert_eq!(Vec::<f32>::try_from(x.grad()).unwrap(), vec![3.0, 3.0, 3.0]);
}

#[test]
fn a_missing_peer_is_a_clear_error_after_the_timeout() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    let port = byol_testkit::free_port();
    let err = ProcessGroup::gloo(&Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 0,
        world_size: 2,
        local_rank: 0,
        local_world_size: 1,
        agent_store: false,
        restart_count: 0,
        timeout: Duration::from_secs(2),
    })
    .unwrap_err();
    assert!(err.to_string().contains("rank 0 of 2"), "{err}");
}

#[test]
fn torchrun_environment_is_read_with_clear_errors() {
    let _env = ENVIRONMENT.write().unwrap_or_else(|e| e.into_inner());
    std::env::remove_var("WORLD_SIZE");
    std::env::remove_var("RANK");
    assert_eq!(Rendezvous::from_env().unwrap(), None);
    // A rank without a world: a launch gone wrong, not a single process.
    std::env::set_var("RANK", "1");
    let err = Rendezvous::from_env().unwrap_err();
    assert!(err.contains("RANK=1 is set but WORLD_SIZE is not"), "{err}");
    std::env::set_var("WORLD_SIZE", "0");
    assert!(Rendezvous::from_env()
        .unwrap_err()
        .contains("WORLD_SIZE=0: a job has at least one process"));
    std::env::set_var("WORLD_SIZE", "2");
    std::env::remove_var("RANK");
    let err = Rendezvous::from_env().unwrap_err();
    assert!(err.contains("RANK"), "{err}");
    std::env::set_var("RANK", "1");
    std::env::set_var("MASTER_ADDR", "127.0.0.1");
    std::env::set_var("MASTER_PORT", "29500");
    std::env::set_var("TORCHELASTIC_USE_AGENT_STORE", "True");
    let r = Rendezvous::from_env().unwrap().unwrap();
    assert_eq!(
        (r.rank, r.world_size, r.local_rank, r.master_port, r.agent_store),
        (1, 2, 1, 29500, true)
    );
    std::env::set_var("RANK", "2");
    assert!(Rendezvous::from_env().unwrap_err().contains("below WORLD_SIZE"));
    for v in [
        "WORLD_SIZE",
        "RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "TORCHELASTIC_USE_AGENT_STORE",
    ] {
        std::env::remove_var(v);
    }
}

#[test]
fn nccl_without_a_gpu_is_a_clear_error() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    use torch_ext::distributed::{nccl_available, Backend};
    if tch::Cuda::is_available() {
        eprintln!("SKIPPED nccl_without_a_gpu_is_a_clear_error: this machine has a GPU");
        return;
    }
    let err = ProcessGroup::new(
        &Rendezvous {
            master_addr: "127.0.0.1".into(),
            master_port: byol_testkit::free_port(),
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            agent_store: false,
            restart_count: 0,
            timeout: Duration::from_secs(20),
        },
        Backend::Nccl,
    )
    .unwrap_err()
    .to_string();
    eprintln!("{err}");
    if nccl_available() {
        // Built with NCCL: c10d itself refuses a machine without GPUs, and says so.
        assert!(err.contains("creating the Nccl process group failed"), "{err}");
        assert!(err.to_lowercase().contains("gpu") || err.contains("CUDA"), "{err}");
    } else {
        assert!(err.contains("no NCCL backend"), "{err}");
    }
}

/// A two-layer perceptron's parameters, alike on every rank (w1, b1, w2, b2).
fn mlp_parameters() -> Vec<Tensor> {
    let values = |n: i64, phase: f64| (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.37 + phase).sin();
    vec![
        values(12, 0.0).view([4, 3]),
        values(4, 1.0),
        values(8, 2.0).view([2, 4]),
        values(2, 3.0),
    ]
    .into_iter()
    .map(|p| p.set_requires_grad(true))
    .collect()
}

/// Rank `rank`'s input at step `step`.
fn mlp_input(rank: usize, step: usize) -> Tensor {
    let offset = (rank * 7 + step * 3) as f64;
    ((Tensor::arange(15, (Kind::Float, tch::Device::Cpu)) + offset) * 0.61)
        .cos()
        .view([5, 3])
}

fn mlp_loss(parameters: &[Tensor], input: &Tensor) -> Tensor {
    let hidden = input.linear(&parameters[0], Some(&parameters[1])).relu();
    hidden
        .linear(&parameters[2], Some(&parameters[3]))
        .square()
        .mean(Kind::Float)
}

fn gradients(parameters: &[Tensor]) -> Vec<Vec<f32>> {
    parameters
        .iter()
        .map(|p| Vec::<f32>::try_from(p.grad().flatten(0, -1)).unwrap())
        .collect()
}

fn clear(parameters: &[Tensor]) {
    for p in parameters {
        let mut grad = p.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
    }
}

/// The gradients that backward of every `input` accumulates, without any reducer.
fn local_gradients(inputs: &[Tensor]) -> Vec<Tensor> {
    let parameters = mlp_parameters();
    for input in inputs {
        mlp_loss(&parameters, input).backward();
    }
    parameters.iter().map(Tensor::grad).collect()
}

/// (g0 + g1) / 2 in fp32. The reducer halves each rank's gradient (exact in binary) and sums the
/// halves, one rounding, the same as rounding g0 + g1 and halving: the results are bit-equal.
fn averaged(rank0: Vec<Tensor>, rank1: Vec<Tensor>) -> Vec<Vec<f32>> {
    rank0
        .iter()
        .zip(&rank1)
        .map(|(a, b)| Vec::<f32>::try_from(((a + b) / 2.0).flatten(0, -1)).unwrap())
        .collect()
}

#[test]
fn the_gradient_reducer_averages_every_armed_backward_in_buckets() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    // A bucket closes once it holds the cap, so a 1-byte cap puts each parameter in its own bucket
    // once the first backward has set the order: step 0 runs DDP's single first bucket, steps 1
    // and 2 the four rebuilt ones.
    let results = on_ranks(2, |group| {
        let parameters = mlp_parameters();
        let reducer = group.gradient_reducer(&parameters, 1).unwrap();
        (0..3)
            .map(|step| {
                clear(&parameters);
                let loss = mlp_loss(&parameters, &mlp_input(group.rank(), step));
                assert!(unreached_leaves(&loss, &parameters).unwrap().is_empty());
                reducer.prepare_for_backward().unwrap();
                assert_eq!(reducer.bucket_count(), if step == 0 { 1 } else { 4 }, "step {step}");
                loss.backward();
                assert!(reducer.reduced(), "step {step}");
                gradients(&parameters)
            })
            .collect::<Vec<_>>()
    });
    for step in 0..3 {
        let expected = averaged(
            local_gradients(&[mlp_input(0, step)]),
            local_gradients(&[mlp_input(1, step)]),
        );
        for (rank, steps) in results.iter().enumerate() {
            assert_eq!(steps[step], expected, "rank {rank}, step {step}");
        }
    }
}

#[test]
fn a_backward_that_is_not_armed_accumulates_locally_and_the_armed_one_reduces_the_sum() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    let results = on_ranks(2, |group| {
        let parameters = mlp_parameters();
        let reducer = group.gradient_reducer(&parameters, 25 << 20).unwrap();
        mlp_loss(&parameters, &mlp_input(group.rank(), 0)).backward();
        let local = gradients(&parameters);
        reducer.prepare_for_backward().unwrap();
        mlp_loss(&parameters, &mlp_input(group.rank(), 1)).backward();
        (local, gradients(&parameters))
    });
    let inputs = |rank| [mlp_input(rank, 0), mlp_input(rank, 1)];
    let expected = averaged(local_gradients(&inputs(0)), local_gradients(&inputs(1)));
    for (rank, (local, reduced)) in results.into_iter().enumerate() {
        let own: Vec<Vec<f32>> = local_gradients(&inputs(rank)[..1])
            .iter()
            .map(|g| Vec::<f32>::try_from(g.flatten(0, -1)).unwrap())
            .collect();
        assert_eq!(local, own, "rank {rank}: the unarmed backward is not reduced");
        assert_eq!(reduced, expected, "rank {rank}: both micro-batches, averaged");
    }
}

#[test]
fn a_parameter_outside_the_loss_is_named_before_backward_and_leaves_the_reduction_unfinished() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    let results = on_ranks(2, |group| {
        let parameters = mlp_parameters();
        let reducer = group.gradient_reducer(&parameters, 25 << 20).unwrap();
        // The second layer's bias takes no part.
        let input = mlp_input(group.rank(), 0);
        let hidden = input.linear(&parameters[0], Some(&parameters[1])).relu();
        let loss = hidden.linear::<Tensor>(&parameters[2], None).square().mean(Kind::Float);
        let unreached = unreached_leaves(&loss, &parameters).unwrap();
        reducer.prepare_for_backward().unwrap();
        loss.backward();
        let reduced = reducer.reduced();
        let next = reducer.prepare_for_backward().map_err(|e| e.0);
        (unreached, reduced, next)
    });
    for (unreached, reduced, next) in results {
        assert_eq!(unreached, vec![3]);
        assert!(!reduced);
        let message = next.expect_err("the unfinished reduction is refused at the next step");
        assert!(message.contains("finished reduction"), "{message}");
    }
}

#[test]
fn a_rank_whose_parameters_differ_from_rank_0s_is_refused_before_any_step() {
    let _env = ENVIRONMENT.read().unwrap_or_else(|e| e.into_inner());
    // Rank 0's shapes and strides are broadcast; a rank that differs fails (the job with it).
    let results = on_ranks(2, |group| {
        let mut parameters = mlp_parameters();
        if group.rank() == 1 {
            parameters[0] = parameters[0].detach().view([3, 4]).set_requires_grad(true);
        }
        group
            .gradient_reducer(&parameters, 25 << 20)
            .map(|_| ())
            .map_err(|e| e.0)
    });
    assert!(results[0].is_ok(), "{:?}", results[0]);
    let message = results[1].as_ref().expect_err("rank 1 is refused");
    assert!(
        message.contains("creating the gradient reducer") && message.contains("params[0]"),
        "{message}"
    );
}
