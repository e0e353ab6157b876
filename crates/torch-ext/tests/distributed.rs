//! c10d through the shim: two ranks (threads of this process, each with its own TCPStore client
//! and Gloo backend, exactly as two processes would have) run the collectives.

use std::time::Duration;

use tch::{Kind, Tensor};
use torch_ext::distributed::{ProcessGroup, Rendezvous};

/// Runs `body(group)` on `world` ranks at once and returns their results in rank order.
fn on_ranks<T: Send + 'static>(world: usize, body: fn(&ProcessGroup) -> T) -> Vec<T> {
    let port = byol_testkit::free_port();
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            std::thread::spawn(move || {
                let group = ProcessGroup::gloo(&Rendezvous {
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                    rank,
                    world_size: world,
                    local_rank: rank,
                    local_world_size: world,
                    agent_store: false,
                    restart_count: 0,
                    timeout: Duration::from_secs(60),
                })
                .unwrap();
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
    // One test owns the process environment (tests in this file run on threads).
    std::env::remove_var("WORLD_SIZE");
    assert_eq!(Rendezvous::from_env().unwrap(), None);
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
