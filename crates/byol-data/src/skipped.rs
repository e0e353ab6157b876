//! Unreadable images left out under `dataset.on_bad_image = "skip"`: each one's reason kept, and
//! reported in warnings that name the first few and count the rest.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// How many skipped images a warning names; the others are counted.
const NAMED: usize = 3;

/// The unreadable images of a split met so far (index -> reason), shared by the loader's threads.
#[derive(Debug, Default)]
pub(crate) struct SkippedImages(Mutex<Seen>);

#[derive(Debug, Default)]
struct Seen {
    reasons: BTreeMap<usize, String>,
    /// How many of them a warning already counted.
    reported: usize,
}

impl SkippedImages {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that image `index` was left out because of `why` (the first reason stays).
    pub(crate) fn record(&self, index: usize, why: String) {
        self.seen().reasons.entry(index).or_insert(why);
    }

    /// The lowest-numbered unreadable image as `<name>: <why>`, named by `name`.
    pub(crate) fn first(&self, name: impl Fn(usize) -> String) -> Option<String> {
        let seen = self.seen();
        seen.reasons
            .iter()
            .next()
            .map(|(&i, why)| format!("{}: {why}", name(i)))
    }

    /// Every unreadable image met so far as `<name>: <why>`, in index order.
    pub(crate) fn all(&self, name: impl Fn(usize) -> String) -> Vec<String> {
        let seen = self.seen();
        seen.reasons
            .iter()
            .map(|(&i, why)| format!("{}: {why}", name(i)))
            .collect()
    }

    /// `skipped N unreadable <what> of <of> in <place> (a: why; b: why; c: why; and 2 more);
    /// <stop> to stop at the first one instead` when images were skipped since the last warning,
    /// else None; `stop` is how to stop (`set dataset.on_bad_image = "error"`), where there is a way.
    pub(crate) fn take_warning(
        &self,
        what: &str,
        of: usize,
        place: &str,
        stop: Option<&str>,
        name: impl Fn(usize) -> String,
    ) -> Option<String> {
        let mut seen = self.seen();
        let total = seen.reasons.len();
        if total == seen.reported {
            return None;
        }
        seen.reported = total;
        let named: Vec<String> = seen
            .reasons
            .iter()
            .take(NAMED)
            .map(|(&i, why)| format!("{}: {why}", name(i)))
            .collect();
        let more = match total.saturating_sub(NAMED) {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        let stop = stop.map_or(String::new(), |how| format!("; {how} to stop at the first one instead"));
        Some(format!(
            "skipped {total} unreadable {what} of {of} in {place} ({}{more}){stop}",
            named.join("; ")
        ))
    }
}
