//! The learning-rate plan of a run: a fractional `schedule.warmup_epochs` warms up over that
//! share of the epoch's optimizer steps (rounded to the nearest step), then the cosine starts at
//! the peak.

use byol_testkit::fixtures::TINY_EXPERIMENT;
use byol_train::train::Plan;
use byol_train::Experiment;

fn plan(overrides: &[&str], micro_batches_per_epoch: usize) -> Plan {
    plugins_all::link();
    Plan::new(
        &Experiment::parse(TINY_EXPERIMENT, &to_strings(overrides)).unwrap(),
        micro_batches_per_epoch,
    )
}

/// The number of warmup steps, read from the lr alone: the first step whose lr is the peak
/// (step k of a warmup of n steps has peak * (k + 1) / n), plus one.
fn warmup_steps(p: &Plan) -> u64 {
    let peak = (0..p.total_steps).map(|s| p.lr_at(s)).fold(0.0, f64::max);
    (0..p.total_steps).find(|&s| p.lr_at(s) == peak).unwrap() + 1
}

#[test]
fn a_fractional_warmup_covers_its_share_of_the_steps() {
    let p = plan(&["schedule.epochs=4", "schedule.warmup_epochs=1.5"], 10);
    assert_eq!((p.steps_per_epoch, p.total_steps), (10, 40));
    assert_eq!(warmup_steps(&p), 15);
    let peak = p.lr_at(14);
    for k in 0..15 {
        let expected = peak * (k + 1) as f64 / 15.0;
        assert!((p.lr_at(k) - expected).abs() <= 1e-15 * peak, "step {k}");
    }
    assert_eq!(p.lr_at(15), peak, "the cosine starts at the peak");
    assert!(p.lr_at(16) < peak);

    // In optimizer steps: 20 micro-batches of 2 per step are 10 steps, 0.25 of them 2.5 -> 3.
    let p = plan(
        &[
            "schedule.epochs=4",
            "schedule.accumulate=2",
            "schedule.warmup_epochs=0.25",
        ],
        20,
    );
    assert_eq!(p.steps_per_epoch, 10);
    assert_eq!(warmup_steps(&p), 3);
}

#[test]
fn a_warmup_shorter_than_half_a_step_is_warned_of() {
    plugins_all::link();
    let warned = |overrides: &[&str], micro_batches: usize| {
        let experiment = Experiment::parse(TINY_EXPERIMENT, &to_strings(overrides)).unwrap();
        let p = Plan::new(&experiment, micro_batches);
        (warmup_steps(&p), p.warnings(&experiment))
    };
    // 0.1 of 4 steps rounds to none: the lr starts at the peak.
    let (steps, warnings) = warned(&["schedule.epochs=4", "schedule.warmup_epochs=0.1"], 4);
    assert_eq!(steps, 1, "the first step is at the peak");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("schedule.warmup_epochs = 0.1 is 0.40 of a step at 4 steps per epoch")
            && warnings[0].contains("set schedule.warmup_epochs to 0.25 (one step) or more, or to 0"),
        "{}",
        warnings[0]
    );
    // Half a step rounds to one; none asked, none warned of.
    assert!(warned(&["schedule.epochs=4", "schedule.warmup_epochs=0.125"], 4)
        .1
        .is_empty());
    assert!(warned(&["schedule.epochs=4", "schedule.warmup_epochs=0"], 4)
        .1
        .is_empty());
}

fn to_strings(overrides: &[&str]) -> Vec<String> {
    overrides.iter().map(|s| s.to_string()).collect()
}
