//! Stopping on SIGINT/SIGTERM. The first signal asks the work to stop at its next safe point (a
//! training run after its current step, with a checkpoint); a second one ends the process at
//! once, for when that point is far off (a kNN evaluation of a large split on a CPU, a dataset
//! being read). Ending at once loses nothing saved: checkpoints are written to a temporary
//! folder and renamed, so the newest one is whole and the run resumes from it.
//!
//! A signal that the process was started with ignored stays ignored, as in every Unix program: a
//! non-interactive shell starts its background jobs with SIGINT ignored, so that a Ctrl-C meant
//! for the script leaves them alone.
//!
//! A run stopped either way exits with the shell's status for the signal (128 + its number), not
//! 0: the work is saved but not done, and `byol-run train x.toml && next-step` must not go on. (A
//! signal during a run's last evaluation, after its last step, lets it finish: it exits 0.)

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::SigId;

/// The signal handlers of one piece of work, removed when it is dropped (so that trainings run
/// one after another in one process do not pile handlers up). Once the last is dropped, SIGINT and
/// SIGTERM are ignored (signal-hook keeps its handler, with no action left): hold them for as
/// long as a signal should stop the work.
#[derive(Debug)]
pub struct StopOnSignals {
    requested: Arc<AtomicBool>,
    /// The first signal that arrived (0: none yet).
    signal: Arc<AtomicI32>,
    handlers: Vec<SigId>,
}

impl StopOnSignals {
    /// Installs the handlers; `what_happens` is printed on the first signal ("stopping after the
    /// current step"), followed by how to quit at once.
    pub fn install(what_happens: &str) -> anyhow::Result<Self> {
        Self::install_relayed(what_happens, None)
    }

    /// The handlers of one training run; `relay` as in [`Self::install_relayed`].
    pub fn for_run(relay: Option<u32>) -> anyhow::Result<Self> {
        Self::install_relayed("stopping: the run finishes its step and saves a checkpoint", relay)
    }

    /// As [`Self::install`], in a process whose signals may come twice for one request: `relay`
    /// (a process ID) passes on the signals it gets (a sweep to its trials), while the sender may
    /// have signalled this process directly too (Slurm and systemd signal every process of a
    /// job), before or after the relay. A signal from `relay` asks to stop but never quits at
    /// once: the process quits at the second signal from anyone else.
    pub fn install_relayed(what_happens: &str, relay: Option<u32>) -> anyhow::Result<Self> {
        let requested = Arc::new(AtomicBool::new(false));
        let first_signal = Arc::new(AtomicI32::new(0));
        let direct_signals = Arc::new(AtomicUsize::new(0));
        let message: Arc<[u8]> =
            format!("\n{what_happens}; signal again (Ctrl-C) to quit at once, the last checkpoint stays whole\n")
                .into_bytes()
                .into();
        let mut handlers = Vec::new();
        for signal in [SIGINT, SIGTERM]
            .into_iter()
            .filter(|s| !ignored_at_start().contains(s))
        {
            let (seen, message, first, direct) = (
                requested.clone(),
                message.clone(),
                first_signal.clone(),
                direct_signals.clone(),
            );
            let action = move |info: &libc::siginfo_t| {
                // SAFETY: si_pid is defined for every signal (0 when the kernel sent it).
                let sender = unsafe { info.si_pid() };
                let relayed = relay.is_some_and(|relay| relay as libc::pid_t == sender);
                if !relayed && direct.fetch_add(1, Ordering::SeqCst) > 0 {
                    // The shell's exit status for a signal.
                    signal_hook::low_level::exit(128 + signal);
                }
                // The first signal only (SIGINT and SIGTERM may run at once on two threads): the
                // signal, then the message, then the flag, so that whoever sees the flag finds both.
                if first
                    .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    // SAFETY: write(2) is async-signal-safe; the closure owns the buffer.
                    unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
                    seen.store(true, Ordering::SeqCst);
                }
            };
            // SAFETY: the action only touches atomics and calls write(2) and _exit(2), all
            // async-signal-safe.
            handlers.push(
                unsafe { signal_hook_registry::register_sigaction(signal, action) }
                    .context("installing the signal handler")?,
            );
        }
        Ok(Self {
            requested,
            signal: first_signal,
            handlers,
        })
    }

    /// True once SIGINT or SIGTERM arrived.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// The signal that asked to stop, once one did.
    pub fn signal(&self) -> Option<i32> {
        Some(self.signal.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }

    /// The flag itself, for threads and loops that poll it.
    pub fn flag(&self) -> &AtomicBool {
        &self.requested
    }
}

/// The signals among SIGINT and SIGTERM that this process was started with ignored. Read once,
/// at the first install, before any handler of ours replaces the inherited disposition.
fn ignored_at_start() -> &'static [i32] {
    static IGNORED: std::sync::OnceLock<Vec<i32>> = std::sync::OnceLock::new();
    IGNORED.get_or_init(|| {
        [SIGINT, SIGTERM]
            .into_iter()
            .filter(|&signal| {
                // SAFETY: sigaction with a null new action only reads the current one.
                let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
                let read = unsafe { libc::sigaction(signal, std::ptr::null(), &mut current) };
                read == 0 && current.sa_sigaction == libc::SIG_IGN
            })
            .collect()
    })
}

impl Drop for StopOnSignals {
    fn drop(&mut self) {
        for handler in self.handlers.drain(..) {
            signal_hook::low_level::unregister(handler);
        }
    }
}
