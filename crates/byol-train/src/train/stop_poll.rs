//! When a data-parallel run reads its processes' stop requests.
//!
//! Every step's gradient all-reduce carries each process's stop request, but reading the result
//! on the host waits for the device, so the processes read it only every few steps, all at the
//! same ones (a process that stopped alone would leave the others waiting in the next
//! all-reduce). torchrun kills workers that have not stopped 30 s after it passed a signal on,
//! so the reads are spaced by time, not by a fixed count of steps: each read also carries the
//! processes' mean seconds since their last read, and from it every process computes the same
//! next read.

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
    /// When this process last read (or started).
    last_read: Instant,
    /// Steps done at which the next read is due.
    next_read_at: u64,
}

impl StopPoll {
    /// For a run starting with `steps_done` steps done: the first read comes after one step,
    /// which measures how long steps take.
    pub fn new(steps_done: u64) -> Self {
        StopPoll {
            last_read_at: steps_done,
            last_read: Instant::now(),
            next_read_at: steps_done + 1,
        }
    }

    /// This process's share of the agreement: seconds since its last read.
    pub fn seconds_since_read(&self) -> f64 {
        self.last_read.elapsed().as_secs_f64()
    }

    /// Whether the read is due after `steps_done` steps, by the spacing alone (the loop also
    /// reads wherever it waits for the device anyway).
    pub fn due(&self, steps_done: u64) -> bool {
        steps_done >= self.next_read_at
    }

    /// Records a read after `steps_done` steps that found the processes' mean `seconds` since
    /// their previous read: the next read comes after as many steps as fit in
    /// [`READ_EVERY_S`] at the pace measured, between 1 and [`MAX_STEPS_BETWEEN_READS`]. Every
    /// process reads the same figures, so all compute the same next read.
    pub fn read(&mut self, steps_done: u64, seconds: f64) {
        let steps = steps_done.saturating_sub(self.last_read_at).max(1);
        self.last_read_at = steps_done;
        self.last_read = Instant::now();
        self.next_read_at = steps_done + steps_between_reads(seconds / steps as f64);
    }
}

/// How many steps of `seconds_per_step` fit in [`READ_EVERY_S`], between 1 and
/// [`MAX_STEPS_BETWEEN_READS`].
pub fn steps_between_reads(seconds_per_step: f64) -> u64 {
    if seconds_per_step.is_nan() || seconds_per_step <= 0.0 {
        return MAX_STEPS_BETWEEN_READS;
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
        assert_eq!(steps_between_reads(0.0), MAX_STEPS_BETWEEN_READS);
        assert_eq!(steps_between_reads(f64::NAN), MAX_STEPS_BETWEEN_READS);
        assert_eq!(steps_between_reads(f64::INFINITY), 1);
    }

    #[test]
    fn the_next_read_follows_the_pace_of_the_steps_since_the_last() {
        let mut poll = StopPoll::new(100);
        assert!(!poll.due(100));
        assert!(poll.due(101), "the first read comes after one step");
        // One step took 0.5 s: six more fit in the spacing.
        poll.read(101, 0.5);
        assert!(!poll.due(106));
        assert!(poll.due(107));
        // Six steps took 12 s (an evaluation, or slower steps): read after every step.
        poll.read(107, 12.0);
        assert!(poll.due(108));
        // A read the loop makes early (a log point) restarts the count from there.
        poll.read(108, 0.1);
        assert!(!poll.due(117));
        assert!(poll.due(118));
    }
}
