//! The gradient all-reduce of a data-parallel step on a real job (two ranks as threads of this
//! process, each with its own TCPStore client and Gloo backend): a parameter that one rank's
//! backward reached and the other's did not gets the same averaged gradient on both ranks (a
//! missing gradient counts as zero), so that both step it and the replicas stay equal; one that
//! no rank's backward reached keeps no gradient anywhere.

use byol_train::distributed::{DataParallel, StopRequests};
use byol_train::experiment::DistributedConfig;
use tch::{Device, Kind, Tensor};

fn join(rank: usize, world: usize, port: u16) -> DataParallel {
    let rendezvous = byol_testkit::local_rendezvous(rank, world, port);
    DataParallel::join(&rendezvous, &DistributedConfig::default(), Device::Cpu).unwrap()
}

/// Three parameters, each in the loss of the ranks that `reaches[rank]` names, with gradient
/// `rank + 1` per element. Returns each parameter's gradient after the all-reduce (None: no
/// gradient), the averaged loss and the stop requests as read (rank 1 asks to stop; rank r last
/// measured r + 1 seconds a step).
fn run_rank(rank: usize, port: u16, reaches: [[bool; 3]; 2]) -> (Vec<Option<Tensor>>, f64, StopRequests) {
    tch::set_num_threads(1);
    let parallel = join(rank, 2, port);
    let parameters: Vec<Tensor> = (0..3)
        .map(|_| Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true))
        .collect();
    let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
    for (p, _) in parameters.iter().zip(reaches[rank]).filter(|(_, reached)| *reached) {
        loss += (p * (rank as f64 + 1.0)).sum(Kind::Float);
    }
    loss.backward();
    let agreed = parallel
        .all_reduce_gradients(&parameters, &loss.detach(), rank == 1, rank as f64 + 1.0)
        .unwrap();
    let grads = parameters
        .iter()
        .map(|p| Some(p.grad()).filter(Tensor::defined).map(|g| g.copy()))
        .collect();
    (
        grads,
        agreed.loss.double_value(&[]),
        StopRequests::read(&agreed.stop_requests).unwrap(),
    )
}

/// Both ranks' results for `reaches`.
fn job(reaches: [[bool; 3]; 2]) -> Vec<(Vec<Option<Tensor>>, f64, StopRequests)> {
    let port = byol_testkit::free_port();
    let ranks: Vec<_> = (0..2)
        .map(|rank| std::thread::spawn(move || run_rank(rank, port, reaches)))
        .collect();
    ranks.into_iter().map(|r| r.join().unwrap()).collect()
}

/// What every rank must hold after the all-reduce: the sum over the ranks that reached a
/// parameter of `rank + 1`, over the 2 ranks (a missing gradient counts as zero); no gradient
/// where no rank reached it.
fn check(reaches: [[bool; 3]; 2]) {
    for (rank, (grads, loss, stops)) in job(reaches).iter().enumerate() {
        for (i, grad) in grads.iter().enumerate() {
            let sum: f64 = (0..2).filter(|&r| reaches[r][i]).map(|r| r as f64 + 1.0).sum();
            let reached_somewhere = reaches.iter().any(|r| r[i]);
            match grad {
                // Exact in float32: halves of small integers.
                Some(g) => assert_eq!(
                    g,
                    &Tensor::full([2, 3], sum / 2.0, (Kind::Float, Device::Cpu)),
                    "rank {rank}, parameter {i} of {reaches:?}"
                ),
                None => assert!(
                    !reached_somewhere,
                    "rank {rank}: parameter {i}, reached on another rank ({reaches:?}), has no gradient here"
                ),
            }
            if !reached_somewhere {
                assert!(
                    grad.is_none(),
                    "rank {rank}: parameter {i}, reached nowhere, got a gradient"
                );
            }
        }
        // Both losses are 0 (zero parameters); one rank of two asked to stop, so both read a stop;
        // both read the mean of 1 s and 2 s a step (exact in float32).
        let agreed = StopRequests {
            any: true,
            seconds_per_step: 1.5,
        };
        assert_eq!((*loss, *stops), (0.0, agreed), "rank {rank}");
    }
}

#[test]
fn a_gradient_reached_on_some_ranks_only_is_averaged_on_every_rank() {
    // Parameter 0 on both ranks, 1 on rank 0 only, 2 on neither.
    check([[true, true, false], [true, false, false]]);
}

#[test]
fn a_rank_that_reached_every_parameter_shares_them_with_one_that_did_not() {
    // Rank 0 takes the path where every parameter has a gradient; rank 1 lacks one.
    check([[true, true, true], [true, false, true]]);
    check([[true, true, true], [true, true, true]]);
}
