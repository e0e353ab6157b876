//! A signal that arrives while the caller's handlers are installed but before a run starts (a
//! sweep between two trials) is not lost: the run given those handlers stops after its first step
//! with a checkpoint and reports the signal. Its own test binary: a signal reaches every handler
//! of the process, and would stop any other test's training.

use byol_testkit::fixtures::TINY_EXPERIMENT;
use byol_train::stop::StopOnSignals;
use byol_train::{train, Experiment, RunOptions};
use std::sync::Arc;

#[test]
fn a_signal_before_the_run_stops_it_at_its_first_step_with_a_checkpoint() {
    plugins_all::link();
    let out = tempfile::tempdir().unwrap();
    let experiment = Experiment::parse(TINY_EXPERIMENT, &[]).unwrap();
    let signals = Arc::new(StopOnSignals::install("stopping").unwrap());
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    assert_eq!(signals.signal(), Some(signal_hook::consts::SIGTERM));

    let options = RunOptions {
        run_dir: Some(out.path().join("run")),
        quiet: true,
        signals: Some(signals.clone()),
        ..Default::default()
    };
    let summary = train(&experiment, &options).unwrap();
    assert!(summary.interrupted, "{summary:?}");
    assert_eq!(summary.signal, Some(signal_hook::consts::SIGTERM));
    assert_eq!(summary.steps, 1, "the run finishes the step it is in, then stops");
    assert!(summary.checkpoint.exists(), "{summary:?}");
}
