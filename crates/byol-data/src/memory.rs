//! Whether data held in memory fits the machine: asked before the one allocation that would
//! otherwise abort the process ("memory allocation of N bytes failed") with nothing said.

use byol::DataError;

/// The memory this process may use, in bytes: the machine's (`MemTotal` of /proc/meminfo), or its
/// control group's limit where that is lower (a container's). None where neither can be read.
fn memory_limit() -> Option<u64> {
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // "max" (no limit) does not parse, and leaves the machine's.
    let group = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    match (machine, group) {
        (Some(m), Some(g)) => Some(m.min(g)),
        (m, g) => m.or(g),
    }
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Refuses to hold `bytes` (of `what`: "50000 images of 32x32 pixels") in memory when they are
/// more than this process may use, saying `fix`.
pub(crate) fn check_fits(bytes: u128, what: impl FnOnce() -> String, fix: &str) -> Result<(), DataError> {
    match memory_limit() {
        Some(limit) if bytes > limit as u128 => Err(DataError::Config(format!(
            "{} take {} in memory, more than the {} this process may use here (the machine's memory, or its \
             container's limit): {fix}",
            what(),
            gib(bytes),
            gib(limit as u128)
        ))),
        _ => Ok(()),
    }
}
