//! A trial of a sweep gets the sweep's signal and may get the job manager's too, in either order:
//! together they are one request to stop. A second signal from elsewhere than the sweep still
//! quits at once, which a child process of this test binary shows. Its own test binary: a
//! signal reaches every handler of the process.

use std::process::Command;
use std::time::{Duration, Instant};

use byol_train::stop::StopOnSignals;
use signal_hook::consts::SIGTERM;

/// SIGTERM from another process (`kill`), as a job manager sends it, and a wait for its
/// handler (kill(2) returns before it ran): until `signals` has a request, or else a fixed time.
fn direct_sigterm(signals: &StopOnSignals) {
    let already = signals.requested();
    let status = Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    while !already && !signals.requested() {
        assert!(started.elapsed() < Duration::from_secs(10), "the signal asks to stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    if already {
        std::thread::sleep(Duration::from_millis(200));
    }
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
    direct_sigterm(&signals);
    // And the relay's again after that: still no quit.
    signal_hook::low_level::raise(SIGTERM).unwrap();
    assert!(signals.requested());
    drop(signals);

    // The other order: the job manager's first, then the relay's.
    let signals = StopOnSignals::install_relayed("stopping", relay).unwrap();
    direct_sigterm(&signals);
    assert!(signals.requested());
    signal_hook::low_level::raise(SIGTERM).unwrap();
    assert!(signals.requested());
}

/// Run by the next test in a process of its own (`--ignored`): handlers relayed by this process,
/// then a wait for signals from outside.
#[test]
#[ignore = "run by a_second_signal_from_elsewhere_still_quits_at_once in a child process"]
fn relayed_handlers_waiting_for_signals() {
    let signals = StopOnSignals::install_relayed("stopping", Some(std::process::id())).unwrap();
    println!("ready");
    // Says when the first signal has been taken, so that the second is not sent while the first
    // is still pending (two pending SIGTERMs are one).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if signals.requested() {
            println!("requested");
            std::thread::sleep(Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// With a relay, two signals from elsewhere still end the process at once, with the shell's
/// status for the signal.
#[test]
fn a_second_signal_from_elsewhere_still_quits_at_once() {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "relayed_handlers_waiting_for_signals",
            "--ignored",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|line| line.unwrap().contains("ready")), "the child started");
    let started = Instant::now();
    let sigterm = || {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    sigterm();
    assert!(
        lines.any(|line| line.unwrap().contains("requested")),
        "the first signal taken"
    );
    sigterm();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + SIGTERM), "{status}");
    assert!(started.elapsed() < Duration::from_secs(30), "it quit at once");
}
