//! The run folder as a unit: one process owns it at a time (an OS file lock), it remembers the
//! experiment it trains (a resume with another one is refused with a per-key diff), and
//! `--fresh` starts over by moving it aside, never by deleting anything.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};

/// The lock file inside a run (or sweep) folder; it holds the owner's process id.
pub const LOCK_FILE: &str = "run.lock";

/// An exclusive `flock` on a folder's lock file. The kernel releases it when the descriptor
/// closes: on drop, at exit, and after `kill -9` too, so a lock can never be left stale.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

impl FolderLock {
    /// Takes the lock of `dir` (which must exist) or fails naming the process that holds it.
    /// `what` names the folder in messages ("run folder", "sweep folder").
    pub fn acquire(dir: &Path, what: &str) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's PID stays readable until we own the lock
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        // SAFETY: flock on a descriptor this File owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(error).with_context(|| format!("cannot lock {}", path.display()));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            bail!(
                "{what} {} is in use by another byol-run ({holder}, which holds {}): two processes in one \
                 folder would mix their checkpoints and logs. Wait for it to finish (or stop it), or use \
                 another folder (--run-dir, or run.name)",
                dir.display(),
                path.display()
            );
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

/// Creates the run folder and takes its lock, for the process that writes into it (`main`:
/// rank 0 of a data-parallel job, or the only process). The other processes of a job only read
/// it, after rank 0 has joined them, and take nothing.
pub fn take_ownership(run_dir: &Path, main: bool) -> anyhow::Result<Option<FolderLock>> {
    if !main {
        return Ok(None);
    }
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create run folder {}", run_dir.display()))?;
    FolderLock::acquire(run_dir, "run folder").map(Some)
}
