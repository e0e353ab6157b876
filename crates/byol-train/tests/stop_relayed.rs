//! A trial of a sweep gets the sweep's signal and may get the job manager's too, in either order:
//! together they are one request to stop. A second signal from elsewhere than the sweep still
//! quits at once, which this test cannot send: it would end the test. Its own test binary: a
//! signal reaches every handler of the process.

use std::process::Command;
use std::time::{Duration, Instant};

use byol_train::stop::StopOnSignals;
use signal_hook::consts::SIGTERM;

/// SIGTERM from another process (`kill`), as a job manager sends it.
fn direct_sigterm() {
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // kill(2) returns before the handler ran; wait until it has.
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn the_relay_s_signal_and_one_from_elsewhere_are_one_request_in_either_order() {
    // The "relay" is this process: signals it raises come from it.
    let relay = Some(std::process::id());
    let signals = StopOnSignals::install_relayed("stopping", relay).unwrap();
    signal_hook::low_level::raise(SIGTERM).unwrap();
    let started = Instant::now();
    while !signals.requested() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the relayed signal asks to stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(signals.signal(), Some(SIGTERM));
    // After the relay's: the job manager's own is the same request (the process would end here).
    direct_sigterm();
    // And the relay's again after that: still no quit.
    signal_hook::low_level::raise(SIGTERM).unwrap();
    assert!(signals.requested());
    drop(signals);

    // The other order: the job manager's first, then the relay's.
    let signals = StopOnSignals::install_relayed("stopping", relay).unwrap();
    direct_sigterm();
    assert!(signals.requested());
    signal_hook::low_level::raise(SIGTERM).unwrap();
    assert!(signals.requested());
}
