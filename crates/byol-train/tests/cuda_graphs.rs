//! `run.cuda_graphs` refuses, before anything trains, what a replayed CUDA graph cannot do, each
//! refusal naming the key to change. (The capture itself needs a GPU: tests/gpu/checks.sh.)

use byol_testkit::fixtures::TINY_EXPERIMENT;
use byol_train::train::graphed_step;
use byol_train::Experiment;
use tch::Device;

fn refusal(overrides: &[&str], device: Device, data_parallel: bool) -> String {
    plugins_all::link();
    let mut all = vec!["run.cuda_graphs=true".to_string()];
    all.extend(overrides.iter().map(|s| s.to_string()));
    let experiment = Experiment::parse(TINY_EXPERIMENT, &all).unwrap();
    match graphed_step(&experiment, device, data_parallel) {
        Ok(_) => panic!("{overrides:?} on {device:?} (data-parallel: {data_parallel}) was accepted"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn cuda_graphs_are_refused_where_a_replay_cannot_work() {
    let cpu = refusal(&[], Device::Cpu, false);
    assert!(
        cpu.contains("needs a CUDA device") && cpu.contains("run.cuda_graphs = false"),
        "{cpu}"
    );

    let torchrun = refusal(&[], Device::Cuda(0), true);
    assert!(
        torchrun.contains("without torchrun") && torchrun.contains("run.cuda_graphs = false"),
        "{torchrun}"
    );

    let accumulate = refusal(&["schedule.accumulate=2"], Device::Cuda(0), false);
    assert!(accumulate.contains("schedule.accumulate = 2"), "{accumulate}");
}

#[test]
fn without_cuda_graphs_there_is_no_graphed_step() {
    plugins_all::link();
    let experiment = Experiment::parse(TINY_EXPERIMENT, &[]).unwrap();
    assert!(graphed_step(&experiment, Device::Cpu, false).unwrap().is_none());
}
