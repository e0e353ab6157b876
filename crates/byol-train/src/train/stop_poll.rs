//! When a data-parallel run reads its processes' stop requests.
//!
//! Every step's gradient all-reduce carries each process's stop request, but reading the result
//! on the host waits for the device, so the processes read it only every few steps, all at the
//! same ones (a process that stopped alone would leave the others waiting in the next
//! all-reduce). torchrun kills workers that have not stopped 30 s after it passed a signal on,
//! so the reads are spaced by time, not by a fixed count of steps: each read also carries the
//! processes' pace, and from the same figures every process computes the same next read.

use std::time::Instant;

/// The wall-clock time between reads that the spacing aims at: a stop lands within about this
/// long of the signal, well inside torchrun's 30 s grace (a checkpoint still has to be written).
pub const READ_EVERY_S: f64 = 3.0;

/// The most steps between two reads, however fast the steps are.
pub const MAX_STEPS_BETWEEN_READS: u64 = 10;

/// The steps at which a data-parallel run reads its stop requests.
#[derive(Debug)]
pub struct StopPoll {
    /// Steps done at the last read (or at the start).
    last_read_at: u64,
    /// When the last read returned: the device had finished the steps before it, so the time
    /// between two reads is the device's, not the host's, which runs ahead of it.
    last_read: Option<Instant>,
    /// Seconds per step between the last two reads; 0 before two reads have measured it.
    seconds_per_step: f64,
    /// Steps done at which the next read is due.
    next_read_at: u64,
}

impl StopPoll {
    /// For a run starting with `steps_done` steps done: it reads after every step until two
    /// reads have measured how long steps take.
    pub fn new(steps_done: u64) -> Self {
        StopPoll {
            last_read_at: steps_done,
            last_read: None,
            seconds_per_step: 0.0,
            next_read_at: steps_done + 1,
        }
    }

    /// This process's share of the agreement, carried by the step's all-reduce: seconds per
    /// step between its last two reads (0: not measured yet).
    pub fn seconds_per_step(&self) -> f64 {
        self.seconds_per_step
    }

    /// Whether the read is due after `steps_done` steps, by the spacing alone (the loop also
    /// reads wherever it waits for the device anyway).
    pub fn due(&self, steps_done: u64) -> bool {
        steps_done >= self.next_read_at
    }

    /// Records a read after `steps_done` steps that found the processes' mean `seconds_per_step`:
    /// the next read comes after as many steps as fit in [`READ_EVERY_S`] at that pace, between
    /// 1 and [`MAX_STEPS_BETWEEN_READS`] (1 while unmeasured). Every process reads the same
    /// figures, so all compute the same next read; the time since the last read is this
    /// process's share of the next agreement.
    pub fn read(&mut self, steps_done: u64, seconds_per_step: f64) {
        let now = Instant::now();
        if let Some(previous) = self.last_read {
            let steps = steps_done.saturating_sub(self.last_read_at).max(1);
            self.seconds_per_step = now.duration_since(previous).as_secs_f64() / steps as f64;
        }
        self.last_read = Some(now);
        self.last_read_at = steps_done;
        self.next_read_at = steps_done + steps_between_reads(seconds_per_step);
    }
}

/// How many steps of `seconds_per_step` fit in [`READ_EVERY_S`], between 1 and
/// [`MAX_STEPS_BETWEEN_READS`]; 1 for a pace not measured yet (0, or not a number).
pub fn steps_between_reads(seconds_per_step: f64) -> u64 {
    if seconds_per_step.is_nan() || seconds_per_step <= 0.0 {
        return 1;
    }
    let fit = (READ_EVERY_S / seconds_per_step).floor();
    (fit.min(MAX_STEPS_BETWEEN_READS as f64) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_steps_are_read_after_every_step_and_fast_ones_every_few() {
        assert_eq!(steps_between_reads(5.0), 1);
        assert_eq!(steps_between_reads(3.0), 1);
        assert_eq!(steps_between_reads(1.0), 3);
        assert_eq!(steps_between_reads(0.5), 6);
        assert_eq!(steps_between_reads(0.01), MAX_STEPS_BETWEEN_READS);
        assert_eq!(steps_between_reads(f64::INFINITY), 1);
        // Not measured yet: every step.
        assert_eq!(steps_between_reads(0.0), 1);
        assert_eq!(steps_between_reads(f64::NAN), 1);
    }

    #[test]
    fn the_next_read_follows_the_agreed_pace_and_each_read_measures_this_process() {
        let mut poll = StopPoll::new(100);
        assert!(!poll.due(100));
        assert!(poll.due(101), "the first read comes after one step");
        assert_eq!(poll.seconds_per_step(), 0.0, "nothing measured before two reads");
        poll.read(101, 0.0);
        assert!(poll.due(102), "unmeasured: every step");
        std::thread::sleep(std::time::Duration::from_millis(20));
        poll.read(102, 0.0);
        assert!(poll.seconds_per_step() >= 0.02, "{}", poll.seconds_per_step());
        // The agreed pace: 0.5 s a step, so six steps fit.
        poll.read(102, 0.5);
        assert!(!poll.due(107));
        assert!(poll.due(108));
        // 12 s a step (an evaluation, or slower steps): read after every step.
        poll.read(108, 12.0);
        assert!(poll.due(109));
        // A read the loop makes early (a log point) restarts the count from there.
        poll.read(109, 0.1);
        assert!(!poll.due(118));
        assert!(poll.due(119));
    }
}
