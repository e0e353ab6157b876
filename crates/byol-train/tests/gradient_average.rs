//! The gradient all-reduce of a data-parallel step on a real job (two ranks as threads of this
//! process, each with its own TCPStore client and Gloo backend): a parameter that one rank's
//! backward reached and the other's did not gets the same averaged gradient on both ranks (a
//! missing gradient counts as zero), so that both step it and the replicas stay equal; one that
//! no rank's backward reached keeps no gradient anywhere.

use byol_train::distributed::DataParallel;
use byol_train::experiment::DistributedConfig;
use tch::{Device, Kind, Tensor};

fn join(rank: usize, world: usize, port: u16) -> DataParallel {
    let rendezvous = byol_testkit::local_rendezvous(rank, world, port);
    DataParallel::join(&rendezvous, &DistributedConfig::default(), Device::Cpu).unwrap()
}

/// Three parameters: `shared` reached on both ranks, `branch` on rank 0 only, `unused` on
/// neither. Returns each parameter's gradient after the all-reduce (None: no gradient), the
/// averaged loss and the stop requests.
fn run_rank(rank: usize, port: u16) -> (Vec<Option<Tensor>>, f64, f64) {
    tch::set_num_threads(1);
    let parallel = join(rank, 2, port);
    let parameters: Vec<Tensor> = (0..3)
        .map(|_| Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    let r = rank as f64 + 1.0;
    let mut loss = (&parameters[0] * r).sum(Kind::Float);
    if rank == 0 {
        loss += (&parameters[1] * 4.0).sum(Kind::Float);
    }
    loss.backward();
    let agreed = parallel
        .all_reduce_gradients(&parameters, &loss.detach(), rank == 1)
        .unwrap();
    let grads = parameters
        .iter()
        .map(|p| Some(p.grad()).filter(Tensor::defined).map(|g| g.copy()))
        .collect();
    (
        grads,
        agreed.loss.double_value(&[]),
        agreed.stop_requests.double_value(&[]),
    )
}

#[test]
fn a_gradient_reached_on_some_ranks_only_is_averaged_on_every_rank() {
    let port = byol_testkit::free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| std::thread::spawn(move || run_rank(rank, port)))
        .collect();
    let results: Vec<_> = ranks.into_iter().map(|r| r.join().unwrap()).collect();
    for (rank, (grads, loss, stops)) in results.iter().enumerate() {
        let shared = grads[0]
            .as_ref()
            .unwrap_or_else(|| panic!("rank {rank}: shared has no gradient"));
        // (1 + 2) / 2 per element, exact in float32.
        assert_eq!(
            shared,
            &Tensor::full([2, 3], 1.5, (Kind::Float, Device::Cpu)),
            "rank {rank}"
        );
        let branch = grads[1]
            .as_ref()
            .unwrap_or_else(|| panic!("rank {rank}: the parameter reached on rank 0 only has no gradient here"));
        // (4 + 0) / 2.
        assert_eq!(
            branch,
            &Tensor::full([2, 3], 2.0, (Kind::Float, Device::Cpu)),
            "rank {rank}"
        );
        assert!(
            grads[2].is_none(),
            "rank {rank}: a parameter no backward reached got a gradient"
        );
        // Both losses are 0 (zero parameters); one rank of two asked to stop.
        assert_eq!((*loss, *stops), (0.0, 0.5), "rank {rank}");
    }
}
