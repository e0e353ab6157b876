//! The run folder as a unit: one process owns it at a time (an OS file lock), it remembers the
//! experiment it trains (a resume with another one is refused with a per-key diff), and
//! `--fresh` starts over by moving it aside, never by deleting anything.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The lock file inside a run (or sweep) folder; it holds the owner's process id, and on a
/// second line a number drawn when the lock was taken: the processes of a data-parallel job
/// compare it to tell whether they all see the same folder (see [`owner_token`]).
pub const LOCK_FILE: &str = "run.lock";

/// The kind of folder a lock or a move is of: messages name it, and say where else to go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FolderKind {
    #[default]
    Run,
    /// A sweep's folder, `<output_dir>/<run.name>-sweep`.
    Sweep,
    /// A run folder inside a sweep's folder.
    Trial,
}

impl FolderKind {
    /// The other way out of a folder in use than waiting for its holder.
    pub fn elsewhere(self) -> &'static str {
        match self {
            FolderKind::Run => "use another folder (--run-dir, or run.name)",
            // A sweep has no --run-dir: its folder and its trials' follow from run.name.
            FolderKind::Sweep | FolderKind::Trial => "set another run.name (a new sweep folder)",
        }
    }
}

impl std::fmt::Display for FolderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FolderKind::Run => "run folder",
            FolderKind::Sweep => "sweep folder",
            FolderKind::Trial => "trial folder",
        })
    }
}

/// An exclusive `flock` on a folder's lock file. The kernel releases it when the descriptor
/// closes: on drop, at exit, and after `kill -9` too, so a lock can never be left stale.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    /// What the folder is to the user, as messages name it.
    kind: FolderKind,
    /// The folder as this lock's holder found it, where the holder made its lock file (and the
    /// folder, where it was not there or `--fresh` moved it aside): what
    /// [`FolderLock::remove_if_unused`] leaves it as again.
    found: Option<Found>,
    /// The run's checkpoints folder, locked too ([`FolderLock::claim_checkpoints`]).
    checkpoints: Option<File>,
}

impl FolderLock {
    /// Takes the lock of `dir` (which must exist) or fails naming the process that holds it.
    /// `what` names the folder in messages.
    pub fn acquire(dir: &Path, what: FolderKind) -> anyhow::Result<Self> {
        Self::acquire_after(dir, what, || Ok(()))
    }

    /// [`FolderLock::acquire`] of `dir`, created first if missing (again, should another
    /// byol-run move it aside before the lock is taken). A trial's folder is made by its sweep
    /// as it records the trial's parameters: one missing here was moved or removed (or its sweep
    /// folder was) while the sweep runs, and is not made again at the old path.
    pub fn create_and_acquire(dir: &Path, what: FolderKind) -> anyhow::Result<Self> {
        let existed = std::fs::symlink_metadata(dir).is_ok();
        let found = match existed {
            false => Some(Found {
                dir: dir.to_path_buf(),
                made: true,
                entries: BTreeSet::new(),
            }),
            true if std::fs::symlink_metadata(dir.join(LOCK_FILE)).is_err() => entry_names(dir).map(|entries| Found {
                dir: dir.to_path_buf(),
                made: false,
                entries,
            }),
            true => None,
        };
        let create = |dir: &Path| match what {
            FolderKind::Trial if std::fs::symlink_metadata(dir).is_err() => Err(std::io::ErrorKind::NotFound.into()),
            _ => std::fs::create_dir_all(dir),
        };
        let acquired = Self::acquire_after(dir, what, || match create(dir) {
            // Something there that is not a folder: a file, or a link to a missing folder.
            Err(e)
                if e.kind() == std::io::ErrorKind::AlreadyExists
                    && std::fs::symlink_metadata(dir).is_ok()
                    && !dir.is_dir() =>
            {
                bail!(
                    "cannot use {} as the {what}: it exists and is not a folder (a file, or a link to a missing \
                     folder); remove it or choose another folder",
                    dir.display()
                )
            }
            // There when created, gone when checked: moved aside meanwhile, and created again next.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && what == FolderKind::Trial => bail!(
                "the {what} {} is not there: it or its sweep folder was moved or removed while the sweep \
                 ran, and nothing is written at the old path; move it back and run the sweep again to go on",
                dir.display()
            ),
            created => created.with_context(|| format!("cannot create {what} {}", dir.display())),
        });
        let mut lock = acquired.inspect_err(|_| {
            // A folder made here and left empty (its lock file could not be written, and was
            // removed) is no run's: not left behind. One holding anything stays.
            if !existed {
                let _ = std::fs::remove_dir(dir);
            }
        })?;
        lock.found = found;
        Ok(lock)
    }

    /// Leaves the folder as this lock's holder found it, where it holds nothing else than it did
    /// but the lock file the holder made: a start refused before writing anything (no images, a
    /// batch larger than the data, a checkpoints link to nothing) leaves no empty run folder
    /// behind, nor a lock file in a folder that had none. A folder with anything new in it, or
    /// whose lock file was there before, is left as it is. Returns whether the folder, made by
    /// the holder, is gone.
    pub fn remove_if_unused(self) -> bool {
        let Some(found) = &self.found else { return false };
        let lock = found.dir.join(LOCK_FILE);
        let mut unused = found.entries.clone();
        unused.insert(LOCK_FILE.into());
        if entry_names(&found.dir).is_some_and(|now| now == unused) && self.is_at(&lock) {
            // While the lock is held: another start is refused meanwhile, or finds the folder gone.
            let _ = std::fs::remove_file(&lock);
            if found.made {
                return std::fs::remove_dir(&found.dir).is_ok();
            }
        }
        false
    }

    fn acquire_after(dir: &Path, what: FolderKind, prepare: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<Self> {
        // A folder moved aside (`--fresh`) before our open leaves no lock file to open, and one
        // moved between our open and our lock takes its lock file along: the lock we got is then
        // the old folder's. Either way the folder at the path is to be locked again.
        for _ in 0..8 {
            prepare()?;
            match Self::acquire_file(dir, what)? {
                Some(lock) if lock.is_at(&dir.join(LOCK_FILE)) => return Ok(lock),
                _ => continue,
            }
        }
        if !dir.is_dir() {
            bail!(
                "cannot lock {what} {}: it is gone (moved aside by another byol-run's --fresh?)",
                dir.display()
            );
        }
        bail!(
            "cannot lock {}: its lock file keeps being replaced (another byol-run moving the folder aside?)",
            dir.display()
        )
    }

    /// Fails when `dir`, the folder this lock was taken on, is no longer there: moved or
    /// renamed while its holder works in it (writes by path would start a new, unlocked folder
    /// at the old path). Names where the folder went, where it can tell.
    pub fn check_still_at(&self, dir: &Path) -> anyhow::Result<()> {
        match std::fs::metadata(dir.join(LOCK_FILE)) {
            Ok(there) if !self.is(&there) => self.moved_or_removed(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.moved_or_removed(dir),
            // The same file, or a file system that cannot say now (a network hiccup): nothing
            // shows a move.
            _ => Ok(()),
        }
    }

    /// The error of [`FolderLock::check_still_at`]: where the locked file is now tells a moved
    /// folder from a removed lock file.
    fn moved_or_removed(&self, dir: &Path) -> anyhow::Result<()> {
        let lock = std::fs::read_link(format!("/proc/self/fd/{}", self._file.as_raw_fd())).ok();
        let removed = lock
            .as_ref()
            .is_none_or(|l| l.to_string_lossy().ends_with(" (deleted)"));
        if removed && !dir.exists() {
            bail!(
                "the {} {} this process trains in was removed (by a clean-up, an rm?): stopping; nothing of \
                 it is left there to resume, and a new start there trains from step 0",
                self.kind,
                dir.display()
            );
        }
        if removed {
            bail!(
                "the lock file {} of the {} this process trains in was removed (by a clean-up?): stopping, as \
                 another byol-run could now start a second run there. Run again to resume from the newest \
                 checkpoint",
                dir.join(LOCK_FILE).display(),
                self.kind
            );
        }
        let now = lock
            .and_then(|lock| Some(lock.parent()?.to_path_buf()))
            .map_or(String::new(), |folder| format!(" (it is now {})", folder.display()));
        let resume = match self.kind {
            FolderKind::Run => "Resume the run where its folder is now (--run-dir)",
            FolderKind::Sweep => "Move it back to resume it with the sweep",
            // The trial's folder moves with its sweep's: the path above says which moved.
            FolderKind::Trial => {
                "Move it (or its sweep folder, if that is what moved) back to resume it with the sweep"
            }
        };
        bail!(
            "the {} {} was moved or replaced while this process trained in it{now}: stopping without \
             writing there, where another byol-run could start a second run. {resume}; it goes on from \
             its newest checkpoint",
            self.kind,
            dir.display()
        )
    }

    /// Whether the locked file is the one at `path` now.
    fn is_at(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|there| self.is(&there))
    }

    /// Whether `there` is the locked file (false when the locked file cannot be read).
    fn is(&self, there: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self._file
            .metadata()
            .is_ok_and(|locked| locked.dev() == there.dev() && locked.ino() == there.ino())
    }

    /// The lock of the lock file in `dir`; None when `dir` is not there to hold one.
    fn acquire_file(dir: &Path, what: FolderKind) -> anyhow::Result<Option<Self>> {
        let path = dir.join(LOCK_FILE);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's PID stays readable until we own the lock
            .open(&path);
        let mut file = match opened {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if matches!(e.kind(), ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem) => bail!(
                "cannot open the lock file {}: {e}; every start takes its {what}'s lock there, writing it: make \
                 {} and the lock file in it writable to this user (or copy the folder where it can be written, and \
                 run on the copy)",
                path.display(),
                dir.display()
            ),
            opened => opened.with_context(|| format!("cannot open the lock file {}", path.display()))?,
        };
        // A look by `in_use_by` holds the lock for an instant: waited out, not taken for a run.
        let mut tries = 0;
        while !try_flock(&file, libc::LOCK_EX).with_context(|| format!("cannot lock {}", path.display()))? {
            tries += 1;
            if tries < 20 {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            let holder = holder_of(&mut file);
            let another = what.elsewhere();
            let shared = match linked_elsewhere(&file) {
                true => format!(
                    " Its {LOCK_FILE} is also another folder's (one file under two names: a copy made with \
                     `cp -al` or `rsync --link-dest`), so that process may be training there: if this folder \
                     is free, remove {} and start again (a start makes a new one).",
                    path.display()
                ),
                false => String::new(),
            };
            bail!(
                "{what} {} is in use by another byol-run ({holder}, which holds {}): two processes in one \
                 folder would mix their checkpoints and logs. Wait for it to finish (or stop it), or \
                 {another}.{shared}",
                dir.display(),
                path.display()
            );
        }
        // A lock file that is also another folder's (a copy by hard links) would lock both
        // folders at once: this folder gets a file of its own, locked in its place.
        if linked_elsewhere(&file) {
            let tmp = dir.join(format!(".{LOCK_FILE}.tmp-{}", std::process::id()));
            File::create(&tmp)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .with_context(|| format!("cannot replace {}, a file shared with another folder", path.display()))?;
            return Self::acquire_file(dir, what);
        }
        let owner = format!("{}\n{}\n", std::process::id(), fresh_token());
        // Synced: the other nodes of a job read it from a network file system (owner_token).
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(owner.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| {
                // Removed while this process holds its lock: a start waiting for the lock then
                // finds another file at the path, and tries again.
                let _ = std::fs::remove_file(&path);
                let advice = match e.kind() {
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                        "; the file system is full: free some space there, or use another folder (--run-dir, or run.name)"
                    }
                    _ => "",
                };
                anyhow::anyhow!("cannot write {}: {e}{advice}", path.display())
            })?;
        Ok(Some(Self {
            _file: file,
            kind: what,
            found: None,
            checkpoints: None,
        }))
    }

    /// Claims `run_dir`'s checkpoints folder, where it has one, for the run this lock's holder
    /// trains. A checkpoints folder may be a link (to scratch space), and a run folder copied
    /// with `cp -r` then leads to the same checkpoints as the original: a run in either would
    /// prune the other's checkpoints and resume from them. So the real folder is locked while the
    /// run trains (a second run folder leading there is refused at once), and it records the run
    /// folder whose checkpoints it holds, by real path ([`CHECKPOINTS_OWNER_FILE`], written with
    /// each checkpoint): another run folder is refused while that one still leads there; one
    /// that moved, or keeps its checkpoints elsewhere now (a copy made with `cp -rL`), leaves
    /// them to this one. A link to nothing is refused here, before any step trains.
    fn claim_checkpoints(&mut self, run_dir: &Path) -> anyhow::Result<()> {
        if let Some(why) = dangling_checkpoints_link(run_dir) {
            bail!("{why}");
        }
        let Some(claim) = CheckpointsClaim::of(run_dir) else {
            return Ok(()); // none yet; the first checkpoint makes it
        };
        // One that cannot be opened cannot be listed either: the start's look for checkpoints
        // says so in its own words.
        let Ok(folder) = File::open(&claim.real) else {
            return Ok(());
        };
        // A file system without locks for a folder (NFS locks files opened for writing; Lustre
        // mounted without flock) leaves the record alone to tell.
        let locked = match try_flock(&folder, libc::LOCK_EX) {
            Ok(false) => bail!("{}", claim.refusal(run_dir, "where another byol-run trains now")),
            Ok(true) => true,
            Err(_) => false,
        };
        if claim.other.is_some() {
            bail!("{}", claim.refusal(run_dir, "which holds that run's checkpoints"));
        }
        // The record changes hands at the run's next checkpoint, once the start is accepted: a
        // start refused for its experiment leaves it naming the folder it names.
        self.checkpoints = locked.then_some(folder);
        Ok(())
    }
}

/// A folder as a holder of its lock found it, before making the lock file.
#[derive(Debug)]
struct Found {
    dir: PathBuf,
    /// Whether the holder made the folder itself.
    made: bool,
    /// The names in it then.
    entries: BTreeSet<std::ffi::OsString>,
}

/// The names of the entries of `dir`; None where it cannot be read.
fn entry_names(dir: &Path) -> Option<BTreeSet<std::ffi::OsString>> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>().ok()
}

/// A run folder's checkpoints folder as a start finds it: where it leads, and the other run
/// folder whose checkpoints it holds by its record, where there is one.
struct CheckpointsClaim {
    link: PathBuf,
    real: PathBuf,
    other: Option<OtherOwner>,
}

/// Another run folder that a checkpoints folder's record names.
enum OtherOwner {
    /// It still leads there.
    LeadsHere(PathBuf),
    /// It is not at its recorded path any more (another folder may be), and the folder claiming
    /// the checkpoints through a link is not that folder moved (another file system object): it
    /// may have moved elsewhere with its link, or been removed, which nothing here tells apart.
    Gone(PathBuf),
}

impl OtherOwner {
    /// How the record names it, for messages.
    fn described(&self) -> String {
        match self {
            OtherOwner::LeadsHere(path) => path.display().to_string(),
            OtherOwner::Gone(path) => format!(
                "{} (not at that path any more: moved, its checkpoints still leading here, or removed)",
                path.display()
            ),
        }
    }
}

/// A checkpoints folder's record: the real path of the run folder whose checkpoints it holds,
/// and that folder's [`FolderIdentity`] (records written before it was kept lack it).
struct OwnerRecord {
    path: PathBuf,
    identity: Option<FolderIdentity>,
}

/// What stays the same when a folder is moved or renamed on its file system and differs for a
/// copy: its inode number and its creation time where the file system keeps one (a folder made
/// after another was removed may get the same inode number), else its device and inode numbers
/// (a device number may change with a remount, or from one node to another on NFS: it is
/// compared only where there is no creation time; without one, a folder that got a removed
/// one's inode number passes for it).
#[derive(Debug, Clone, Copy)]
struct FolderIdentity {
    dev: u64,
    ino: u64,
    created_ns: Option<u128>,
}

impl FolderIdentity {
    fn of(dir: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(dir).ok()?;
        let created_ns = metadata
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .filter(|&ns| ns > 0);
        Some(Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            created_ns,
        })
    }

    fn parse(line: &str) -> Option<Self> {
        let mut numbers = line.split_whitespace();
        let (dev, ino) = (numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?);
        let created_ns = numbers.next().and_then(|n| n.parse().ok());
        Some(Self { dev, ino, created_ns })
    }

    fn line(&self) -> String {
        match self.created_ns {
            Some(ns) => format!("{} {} {ns}", self.dev, self.ino),
            None => format!("{} {}", self.dev, self.ino),
        }
    }

    /// Whether both are the same folder, as far as both tell.
    fn same_as(&self, other: &Self) -> bool {
        match (self.created_ns, other.created_ns) {
            (Some(a), Some(b)) => self.ino == other.ino && a == b,
            _ => self.dev == other.dev && self.ino == other.ino,
        }
    }
}

impl OwnerRecord {
    fn read(checkpoints: &Path) -> Option<Self> {
        use std::os::unix::ffi::OsStringExt;
        let bytes = std::fs::read(checkpoints.join(CHECKPOINTS_OWNER_FILE)).ok()?;
        let mut lines = bytes.split(|&b| b == b'\n');
        let path = PathBuf::from(std::ffi::OsString::from_vec(lines.next()?.to_vec()));
        let identity = lines
            .next()
            .and_then(|line| FolderIdentity::parse(std::str::from_utf8(line).ok()?));
        Some(Self { path, identity })
    }

    fn bytes(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let mut bytes = self.path.as_os_str().as_bytes().to_vec();
        bytes.push(b'\n');
        if let Some(identity) = self.identity {
            bytes.extend(format!("{}\n", identity.line()).into_bytes());
        }
        bytes
    }
}

impl CheckpointsClaim {
    /// None where `run_dir` has no checkpoints folder yet.
    fn of(run_dir: &Path) -> Option<Self> {
        let link = run_dir.join(CHECKPOINTS_DIR);
        let (real, own) = (std::fs::canonicalize(&link).ok()?, std::fs::canonicalize(run_dir).ok()?);
        if !real.is_dir() {
            return None;
        }
        let leads_here = |folder: &Path| std::fs::canonicalize(folder.join(CHECKPOINTS_DIR)).is_ok_and(|c| c == real);
        let is = |folder: &Path, id: &FolderIdentity| FolderIdentity::of(folder).is_some_and(|f| id.same_as(&f));
        let other = OwnerRecord::read(&real).and_then(|owner| match &owner.identity {
            // A record written before identities were kept: by path alone.
            None if owner.path != own && leads_here(&owner.path) => Some(OtherOwner::LeadsHere(owner.path)),
            None => None,
            // This folder, wherever it is now.
            Some(id) if is(&own, id) => None,
            // The recorded folder, where it was recorded: another run folder's checkpoints while
            // it leads here; left to this one where it keeps its checkpoints elsewhere now.
            Some(id) if is(&owner.path, id) => leads_here(&owner.path).then_some(OtherOwner::LeadsHere(owner.path)),
            // The recorded folder is not at its path (moved, or removed; another may be there):
            // checkpoints inside this folder are its own (copied with it), linked ones are not.
            Some(_) if real == own.join(CHECKPOINTS_DIR) => None,
            Some(_) => Some(OtherOwner::Gone(owner.path)),
        });
        Some(Self { link, real, other })
    }

    /// Why a start in `run_dir` is refused: its checkpoints folder is another's, `what` says how.
    fn refusal(&self, run_dir: &Path, what: &str) -> String {
        let other = self
            .other
            .as_ref()
            .map_or(String::new(), |o| format!(" of {}", o.described()));
        let gone = match &self.other {
            Some(OtherOwner::Gone(path)) => format!(
                " If {} was removed, or {} is where it went, remove {} and start again.",
                path.display(),
                run_dir.display(),
                self.real.join(CHECKPOINTS_OWNER_FILE).display()
            ),
            _ => String::new(),
        };
        format!(
            "{} leads to {}, the checkpoints folder{other}, {what}: two run folders in one checkpoints \
             folder would prune and resume each other's checkpoints (a checkpoints folder that is a link \
             is copied as a link by `cp -r`). Give {} a checkpoints folder of its own (replace the link \
             with a copy of the folder, or copy run folders with `cp -rL`), or train the other run folder.{gone}",
            self.link.display(),
            self.real.display(),
            run_dir.display()
        )
    }
}

/// Why a start in `run_dir` cannot keep checkpoints: its `checkpoints` is a link to nothing (a
/// scratch folder not made yet or gone, a relative link moved with its run folder). Said at the
/// start, before any step trains for checkpoints that cannot be written, and by `validate`.
pub fn dangling_checkpoints_link(run_dir: &Path) -> Option<String> {
    let link = run_dir.join(CHECKPOINTS_DIR);
    let target = std::fs::read_link(&link).ok()?;
    (!link.exists()).then(|| {
        format!(
            "{} is a link to {}, which is not there (a relative link leads from where the link is): make that \
             folder, or point the link at the run's checkpoints, or remove the link for a folder of its own",
            link.display(),
            target.display()
        )
    })
}

/// Why a start in `run_dir` would stop at its checkpoints folder, which this user may not write
/// into (permissions, a read-only file system), for `validate`, which only reads; None where it
/// may, or there is none yet.
pub fn unwritable_checkpoints(run_dir: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let checkpoints = run_dir.join(CHECKPOINTS_DIR);
    if !checkpoints.is_dir() {
        return None;
    }
    let path = std::ffi::CString::new(checkpoints.as_os_str().as_bytes()).ok()?;
    // SAFETY: a NUL-terminated path; access(2) only reads it.
    let writable = unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    (!writable).then(|| {
        format!(
            "cannot write into the checkpoints folder {}: {}. The run could save no checkpoint: make the folder \
             writable",
            checkpoints.display(),
            std::io::Error::last_os_error()
        )
    })
}

/// Why a start in `run_dir` would be refused because its checkpoints folder holds another run
/// folder's checkpoints by its record ([`FolderLock::claim_checkpoints`]), for `validate`, which
/// only reads; None where it would not.
pub fn checkpoints_of_another_run(run_dir: &Path) -> Option<String> {
    let claim = CheckpointsClaim::of(run_dir)?;
    claim
        .other
        .is_some()
        .then(|| claim.refusal(run_dir, "which holds that run's checkpoints"))
}

/// What a command that reads `run_dir`'s checkpoints (eval, export, embed, compare) warns of
/// where its checkpoints folder holds another run folder's checkpoints by its record (a `cp -r`
/// copy leads to the original's): what it reads is that run's. None where it does not.
pub fn checkpoints_read_from_another_run(run_dir: &Path) -> Option<String> {
    let claim = CheckpointsClaim::of(run_dir)?;
    let other = claim.other?;
    Some(format!(
        "{} leads to {}, the checkpoints folder of {} by its record: the checkpoints read are that run \
         folder's, which may not be what {} trained (a checkpoints folder that is a link is copied as a link by \
         `cp -r`)",
        claim.link.display(),
        claim.real.display(),
        other.described(),
        run_dir.display()
    ))
}

/// Records in the checkpoints folder `checkpoints` that it holds the checkpoints of the run
/// folder it is in (by real path and identity, [`OwnerRecord`]), where it does not say so
/// already: at each checkpoint a run saves, its start accepted.
pub fn record_checkpoints_owner(checkpoints: &Path) -> anyhow::Result<()> {
    let real =
        std::fs::canonicalize(checkpoints).with_context(|| format!("cannot resolve {}", checkpoints.display()))?;
    let own = checkpoints
        .parent()
        .map(|run_dir| {
            std::fs::canonicalize(if run_dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                run_dir
            })
        })
        .with_context(|| format!("{} is in no folder", checkpoints.display()))?
        .with_context(|| format!("cannot resolve the folder of {}", checkpoints.display()))?;
    let identity = FolderIdentity::of(&own);
    let bytes = OwnerRecord { path: own, identity }.bytes();
    let record = real.join(CHECKPOINTS_OWNER_FILE);
    if std::fs::read(&record).ok().as_deref() != Some(bytes.as_slice()) {
        let tmp = real.join(format!("{CHECKPOINTS_OWNER_FILE}.tmp-{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &record))
            .with_context(|| format!("cannot write {}", record.display()))?;
    }
    Ok(())
}

/// The file in a checkpoints folder naming the run folder whose checkpoints it holds, by its
/// real path ([`FolderLock::claim_checkpoints`]).
pub const CHECKPOINTS_OWNER_FILE: &str = ".run-folder";

/// Whether `file` has other names than its own (hard links).
fn linked_elsewhere(file: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| m.nlink() > 1)
}

/// Takes an `flock` of `kind` (`LOCK_EX`, `LOCK_SH`) on `file` without waiting: false when
/// another open file holds a conflicting one.
fn try_flock(file: &File, kind: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor this File owns.
    if unsafe { libc::flock(file.as_raw_fd(), kind | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        e => Err(e),
    }
}

/// The holder a lock file names (its first line, the holder's process id), in words.
fn holder_of(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match text.lines().next().unwrap_or("").trim() {
        "" => "another process".to_string(),
        pid => format!("process {pid}"),
    }
}

/// Whether a byol-run holds the lock of `dir` now (trains there), and who as its lock file
/// names it; None for a folder without a lock file or one no one holds. The lock is looked at
/// by taking it shared and dropping it at once (never created, never written): a start in that
/// instant waits it out.
pub fn in_use_by(dir: &Path) -> Option<String> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    match try_flock(&file, libc::LOCK_SH) {
        Ok(false) => Some(holder_of(&mut file)),
        // Free (closing the file drops the shared lock), or a file system without locks.
        _ => None,
    }
}

/// A number unlikely to repeat: this process's id and the time, through a randomly keyed hash.
fn fresh_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// The token the owner of `dir` wrote into its lock file when it took it; None when there is no
/// lock file, or one without a token. A process that reads another token than its job's rank 0
/// holds sees another folder at the same path (a node-local folder).
pub fn owner_token(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    text.lines().nth(1)?.trim().parse().ok()
}

/// Creates the run folder and takes its lock, for the process that writes into it (`main`:
/// rank 0 of a data-parallel job, or the only process); with `fresh`, an existing folder is
/// first moved aside, and where it went is returned. The other processes of a job only read
/// the folder, after rank 0 has joined them, and take nothing.
pub fn take_ownership(
    run_dir: &Path,
    kind: FolderKind,
    main: bool,
    fresh: bool,
) -> anyhow::Result<(Option<FolderLock>, Option<PathBuf>)> {
    if !main {
        return Ok((None, None));
    }
    check_can_hold_a_run(run_dir, kind)?;
    let sweep = sweep_of_trial(run_dir);
    let moved = match (fresh, &sweep) {
        (false, _) => None,
        // A trial's old attempt goes where its sweep keeps them, not among its trials.
        (true, Some(sweep)) => move_aside_into(run_dir, &sweep.join(crate::sweep::OLD_ATTEMPTS_DIR), kind)?,
        (true, None) => move_aside(run_dir, kind)?,
    };
    if let Some(old) = moved.as_ref().filter(|old| old.join(CHECKPOINTS_DIR).is_symlink()) {
        let target = std::fs::read_link(old.join(CHECKPOINTS_DIR)).unwrap_or_default();
        byol::eprint_line!(
            "note: the checkpoints of the run moved aside went through a link ({} -> {}); the new run keeps its \
             own in {} (make a link there before its first checkpoint to keep them elsewhere)",
            old.join(CHECKPOINTS_DIR).display(),
            target.display(),
            run_dir.join(CHECKPOINTS_DIR).display()
        );
    }
    let mut lock = FolderLock::create_and_acquire(run_dir, kind)?;
    if let Err(refused) = lock.claim_checkpoints(run_dir) {
        lock.remove_if_unused();
        return Err(refused);
    }
    if let (Some(old), Some(_)) = (&moved, &sweep) {
        // Still its sweep's trial: the record of its parameters stays.
        let record = crate::sweep::TRIAL_FILE;
        std::fs::copy(old.join(record), run_dir.join(record))
            .with_context(|| format!("cannot copy {record} from {} into {}", old.display(), run_dir.display()))?;
    }
    Ok((Some(lock), moved))
}

/// Where `--fresh` moves `run_dir` aside, in words: beside it, or a sweep's trial among its
/// sweep's old attempts.
fn moved_aside_to(run_dir: &Path) -> String {
    let name = run_dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    match (sweep_of_trial(run_dir), run_dir.parent()) {
        // Named as the run folder is (relative where it is).
        (Some(_), Some(sweep)) => format!(
            "{}/{name}.old-<time>",
            sweep.join(crate::sweep::OLD_ATTEMPTS_DIR).display()
        ),
        _ => format!("{}.old-<time>", run_dir.display()),
    }
}

/// The sweep folder whose trial `run_dir` is: the trial's record in it, in a sweep's folder.
fn sweep_of_trial(run_dir: &Path) -> Option<PathBuf> {
    if !run_dir.join(crate::sweep::TRIAL_FILE).is_file() {
        return None;
    }
    let sweep = std::path::absolute(run_dir).ok()?.parent()?.to_path_buf();
    is_sweep_folder(&sweep).then_some(sweep)
}

/// What a run writes into its folder (and a sweep into a trial's, before the run starts).
const RUN_ENTRIES: &[&str] = &[
    CONFIG_FILE,
    crate::train::state::FINGERPRINT_FILE,
    crate::train::SUMMARY_FILE,
    crate::train::curve::CURVE_FILE,
    crate::train::SKIPPED_FILE,
    CHECKPOINTS_DIR,
    crate::tensorboard::LOG_DIR,
    LOCK_FILE,
    crate::train::state::SOURCES_DIR,
    crate::sweep::TRIAL_FILE,
    crate::sweep::ERROR_FILE,
    crate::sweep::PREVIOUS_ERROR_FILE,
    crate::sweep::LOG_FILE,
];

/// Whether `dir` holds a run: its `config.toml` beside a record that only a run writes (the
/// `dataset.json` written before it, checkpoints, a summary). A `config.toml` alone is someone's
/// experiment file.
pub fn is_run_folder(dir: &Path) -> bool {
    let records = [
        crate::train::state::FINGERPRINT_FILE,
        CHECKPOINTS_DIR,
        crate::train::SUMMARY_FILE,
    ];
    dir.join(CONFIG_FILE).is_file() && records.iter().any(|r| dir.join(r).exists())
}

/// Refuses a folder that a start refuses whatever its flags: one inside another run's or a
/// sweep's folder, or one holding files that are not a run's.
pub fn check_can_hold_a_run(run_dir: &Path, kind: FolderKind) -> anyhow::Result<()> {
    check_not_inside_a_run(run_dir, kind)?;
    check_holds_a_run(run_dir, kind)
}

/// Refuses a run or sweep folder inside the folder of a run, or a run or sweep folder inside a
/// sweep's folder (where only its trials belong): `--fresh` on the outer folder would move the
/// inner one aside with it, unsaid, and the inner run's next start would begin again from step 0.
/// Every folder above `dir` counts, by its absolute path with `..` resolved and by its real path
/// (links followed), and is told by its records' contents: a `config.toml` beside a run's
/// `dataset.json` or checkpoints, or a trial's record; a sweep's folder by its lock beside a
/// trial, at any depth (`<sweep>/old-attempts/x` is carried away by the sweep's `--fresh` too),
/// save the one right above a trial.
pub fn check_not_inside_a_run(dir: &Path, kind: FolderKind) -> anyhow::Result<()> {
    // A trial's folder (one a sweep made, trained on its own to finish it) is a sweep's.
    let trial = kind == FolderKind::Trial || dir.join(crate::sweep::TRIAL_FILE).is_file();
    for (parent, outer) in folders_above(dir) {
        const MOVED_ASIDE: &str = "--fresh there would move this folder aside with it, and this folder's next \
                                   start would begin again from step 0";
        let (outer_kind, inner, why) = if holds_run_records(&outer) || outer.join(crate::sweep::TRIAL_FILE).is_file() {
            (FolderKind::Run.to_string(), "the run's own records", MOVED_ASIDE)
        } else if !(parent && trial) && is_sweep_folder(&outer) {
            (FolderKind::Sweep.to_string(), "its trials", MOVED_ASIDE)
        } else if is_checkpoints_folder(&outer) {
            // Reached through a link (scratch space), where the checks above see no run.
            let why = "its run deletes old checkpoints, with whatever they hold, as it prunes them";
            ("checkpoints folder".to_string(), "its run's checkpoints", why)
        } else {
            continue;
        };
        // Named from the working directory where it lies below it, as `dir` usually is.
        let cwd = std::env::current_dir().unwrap_or_default();
        let outer = match outer.strip_prefix(&cwd) {
            Ok(below) if !below.as_os_str().is_empty() => below.to_path_buf(),
            _ => outer,
        };
        // A run trained there before this was refused: moved out, it resumes.
        let way_out = match (holds_run_records(dir), kind) {
            (true, _) => format!(
                "Move it out (mv {} <a folder outside {}>) and train that folder's config.toml to resume it",
                dir.display(),
                outer.display()
            ),
            (false, FolderKind::Run) => "Choose a folder outside it (run.name, or --run-dir)".to_string(),
            (false, FolderKind::Sweep | FolderKind::Trial) => {
                "Set a run.name whose sweep folder is outside it".to_string()
            }
        };
        bail!(
            "{kind} {} is inside the {outer_kind} {}, which holds {inner} only: {why}. {way_out}",
            dir.display(),
            outer.display(),
        );
    }
    Ok(())
}

/// The folders above `dir`, nearest first, each with whether it is the one right above: by its
/// absolute path with `.` and `..` resolved, then by its real path where that differs (a link on
/// the way), each folder once.
fn folders_above(dir: &Path) -> Vec<(bool, PathBuf)> {
    let mut lexical = PathBuf::new();
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    for component in absolute.components() {
        match component {
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            std::path::Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    // The real path of the nearest part that exists, with the rest as given.
    let real = lexical.ancestors().find_map(|existing| {
        let real = std::fs::canonicalize(existing).ok()?;
        Some(real.join(lexical.strip_prefix(existing).ok()?))
    });
    let mut seen = std::collections::HashSet::new();
    let mut above = Vec::new();
    for path in std::iter::once(lexical).chain(real) {
        for (i, outer) in path.ancestors().skip(1).enumerate() {
            if seen.insert(outer.to_path_buf()) {
                above.push((i == 0, outer.to_path_buf()));
            }
        }
    }
    above
}

/// Whether `dir` is a run's checkpoints folder: the `checkpoints` of a folder holding a run's
/// records, or, wherever it is (a link's target in scratch space), one recording the run folder
/// whose checkpoints it holds ([`CHECKPOINTS_OWNER_FILE`]).
pub fn is_checkpoints_folder(dir: &Path) -> bool {
    let of_a_run = dir.file_name().is_some_and(|n| n == CHECKPOINTS_DIR) && dir.parent().is_some_and(holds_run_records);
    of_a_run || dir.join(CHECKPOINTS_OWNER_FILE).is_file()
}

/// Whether `dir` holds a run's records by their contents: its `config.toml` beside a
/// `dataset.json` that reads as a run's, or checkpoints a run wrote.
pub fn holds_run_records(dir: &Path) -> bool {
    let records_its_data = || matches!(crate::train::state::DatasetFingerprint::recorded(dir), Ok(Some(data)) if data.0.contains_key("train"));
    let holds_checkpoints = || checkpoints_entries(dir).is_ok_and(|(ours, _)| ours > 0);
    dir.join(CONFIG_FILE).is_file() && (records_its_data() || holds_checkpoints())
}

/// Whether `dir` is a sweep's folder: the sweep's lock file beside a folder that holds a trial's
/// record (a trial folder copied elsewhere, say into `runs/`, makes no sweep of the folder).
pub fn is_sweep_folder(dir: &Path) -> bool {
    dir.join(LOCK_FILE).is_file()
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.path().join(crate::sweep::TRIAL_FILE).is_file())
        })
}

/// Whether `name` is one of the entries a run writes into its folder.
pub fn is_run_entry(name: &str) -> bool {
    RUN_ENTRIES.contains(&name)
}

/// Refuses a folder that exists and holds anything but a run: data, a sweep's trials, someone's
/// files. A run would write its checkpoints and logs among them, and `--fresh` would move them
/// all aside. A folder with a run's records in it is a run folder (whatever else the user put
/// there); one holding only what a run writes before its first record (its lock, the copies of
/// its model's source files) is an empty one, and one holding what a run writes after (logs, a
/// summary) without the records is someone's. A `config.toml`
/// is a run's record only beside the `dataset.json` a run writes before it (or checkpoints, or
/// a sweep's trial record): else it is someone's experiment file, which a run would overwrite.
/// Records count by their contents: a `dataset.json` that does not read as a run's, or a
/// `checkpoints/` holding no checkpoint, is someone's.
/// Hidden files (`.gitkeep`, `.DS_Store`) and a mount point's `lost+found` are no one's files;
/// hidden folders (`.git`, `.venv`) are someone's.
fn check_holds_a_run(run_dir: &Path, kind: FolderKind) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        // Absent (it is created), or not a folder: the lock names that.
        return Ok(());
    };
    let names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| !is_no_ones(e))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let has = |name: &str| names.iter().any(|n| n == name);
    // A record counts by its contents, not its name: someone's `dataset.json`, or a
    // `checkpoints/` of another tool's files, does not make their folder a run's. (A
    // `checkpoints/` that cannot be listed is left for the resume to name.)
    let checkpoints = checkpoints_entries(run_dir);
    let fingerprint = crate::train::state::FINGERPRINT_FILE;
    let not_a_fingerprint = has(fingerprint)
        .then(|| match crate::train::state::DatasetFingerprint::recorded(run_dir) {
            Ok(Some(data)) if data.0.contains_key("train") => None,
            Ok(_) => Some("it records no training split".to_string()),
            Err(e) => Some(format!("{e:#}")),
        })
        .flatten();
    let holds_checkpoints = has(CHECKPOINTS_DIR) && checkpoints.as_ref().map_or(true, |(ours, _)| *ours > 0);
    let records_its_data = has(fingerprint) && not_a_fingerprint.is_none();
    if holds_checkpoints || records_its_data || has(crate::sweep::TRIAL_FILE) {
        return Ok(());
    }
    // With no record there, only what a start writes before its first record can be a run's:
    // another tool's `tensorboard/` or `summary.json` would be mixed with this run's, or replaced.
    let written_by_a_run = |name: &String| match name.as_str() {
        CHECKPOINTS_DIR => checkpoints.as_ref().is_ok_and(|(_, foreign)| foreign.is_empty()),
        name if name == fingerprint => not_a_fingerprint.is_none(),
        LOCK_FILE => true,
        crate::train::state::SOURCES_DIR => crate::train::state::holds_kept_sources_only(run_dir),
        name => name.ends_with(".partial"),
    };
    if names.iter().all(written_by_a_run) {
        return Ok(());
    }
    let mut foreign: Vec<String> = names
        .iter()
        .filter(|n| !written_by_a_run(n))
        .map(|n| match (n.as_str(), &checkpoints, &not_a_fingerprint) {
            (CHECKPOINTS_DIR, Ok((_, inside)), _) if !inside.is_empty() => {
                let inside: Vec<String> = inside.iter().map(|i| format!("{n}/{i}")).collect();
                inside.join(", ")
            }
            (name, _, Some(why)) if name == fingerprint => format!("{n} (not a run's record: {why})"),
            (crate::train::state::SOURCES_DIR, _, _) => format!("{n} (holding files that no run copied there)"),
            (name, _, _) if name != CONFIG_FILE && RUN_ENTRIES.contains(&name) => format!(
                "{n} (with no {fingerprint} or checkpoint beside it: another tool's, or a run's whose records are gone)"
            ),
            _ => n.clone(),
        })
        .collect();
    foreign.sort();
    let shown: Vec<&str> = foreign.iter().take(4).map(|n| n.as_str()).collect();
    let more = match foreign.len().saturating_sub(shown.len()) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    // (Told by its trials alone: the folder is refused either way.)
    let sweep = names
        .iter()
        .any(|n| run_dir.join(n).join(crate::sweep::TRIAL_FILE).is_file());
    let runs_in_it: Vec<String> = names
        .iter()
        .filter(|n| holds_run_records(&run_dir.join(n)))
        .map(|n| run_dir.join(n).display().to_string())
        .collect();
    let what = if sweep {
        "is a sweep's folder (each trial has its own run folder in it)".to_string()
    } else if let [first, rest @ ..] = runs_in_it.as_slice() {
        let others = match rest.len() {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        format!(
            "is a folder of runs, not a run: it holds the run folder {first}{others} (give that folder to resume it)"
        )
    } else {
        format!("exists and holds {}{more}, not a run", shown.join(", "))
    };
    let instead = match kind {
        FolderKind::Run => {
            "Choose a new or empty folder (--run-dir, or run.name), or the folder of an earlier run to resume it"
        }
        FolderKind::Sweep | FolderKind::Trial => "Move those files out, or set another run.name (a new sweep folder)",
    };
    bail!(
        "{kind} {} {what}: a run would write its checkpoints and logs among those files. {instead}",
        run_dir.display()
    )
}

/// The checkpoints folder of `run_dir`: how many of its entries a run wrote, and the first few
/// names of the others (hidden files aside: no one's). No folder there: none of either; one that
/// cannot be listed: an error.
fn checkpoints_entries(run_dir: &Path) -> std::io::Result<(usize, Vec<String>)> {
    let entries = match std::fs::read_dir(run_dir.join(CHECKPOINTS_DIR)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
        entries => entries?,
    };
    let (mut ours, mut foreign) = (0, Vec::new());
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::checkpoint::is_checkpoints_entry(&entry.path()) {
            ours += 1;
        } else if is_no_ones(&entry) {
            continue;
        } else if foreign.len() < 3 {
            let manifest = crate::checkpoint::MANIFEST_FILE;
            let why = match entry.path().join(manifest).exists() {
                false => format!("no {manifest}"),
                true => format!("its {manifest} is no checkpoint's"),
            };
            foreign.push(match name.starts_with("step-") && entry.path().is_dir() {
                true => format!("{name} ({why}: not a byol-rs checkpoint)"),
                false => name,
            });
        }
    }
    Ok((ours, foreign))
}

/// An entry that no one put there for its contents: a hidden file or a mount point's lost+found.
fn is_no_ones(entry: &std::fs::DirEntry) -> bool {
    let name = entry.file_name();
    let hidden_file = name.to_string_lossy().starts_with('.') && entry.file_type().is_ok_and(|t| t.is_file());
    hidden_file || name == "lost+found"
}

/// Keys that may differ between the experiment a run folder was trained with and the one that
/// resumes it: they say where the run lives, how it is watched, or how fast it goes, never what
/// it computes. `table.*` covers a whole table. Any other difference is refused unless named by
/// `--allow-change`.
pub const SAFE_TO_CHANGE: &[&str] = &[
    // Where the folder is; --run-dir may point at a moved one.
    "run.name",
    "run.output_dir",
    // Where it trains: a sweep resumes a trial on whichever device is free.
    "run.device",
    "run.threads",
    "dataset.workers",
    // What a bad image does: a run stopped by one ("error") has met none before, so going on
    // with "skip" trains as a run that skipped it from the start.
    "dataset.on_bad_image",
    "distributed.timeout_s",
    "distributed.backend",
    // What is watched and kept.
    "logging.*",
    "checkpoint.*",
    "eval.every_epochs",
    "eval.curve_points",
    "eval.before_training",
    "eval.batch_size",
    // The same update computed with fewer kernels, the same average with other collectives
    // (equal up to float rounding: fused Adam rounds differently from the per-tensor one).
    "optimizer.fused",
    "distributed.overlap_gradients",
    "distributed.bucket_mb",
];

/// Keys of [`SAFE_TO_CHANGE`] whose change makes the steps round differently (threads and
/// devices sum in another order, the fused update rounds otherwise): a run resumed with another
/// value goes on correctly, but no longer bit for bit as one trained throughout with either.
pub const CHANGES_ROUNDING: &[&str] = &["run.threads", "run.device", "optimizer.fused"];

/// One key whose value differs: `key: saved -> now`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub key: String,
    pub saved: Option<String>,
    pub now: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
        write!(f, "{}: {} -> {}", self.key, show(&self.saved), show(&self.now))
    }
}

fn matches(key: &str, pattern: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(table) => key.strip_prefix(table).is_some_and(|rest| rest.starts_with('.')),
        None => key == pattern,
    }
}

/// `KEY` given to `--allow-change` accepts that key, or every key of that table.
pub fn allowed(key: &str, allow: &[String]) -> bool {
    allow
        .iter()
        .any(|a| key == a || key.strip_prefix(a.as_str()).is_some_and(|rest| rest.starts_with('.')))
}

/// The warning for an `--allow-change` key that [`unknown_allowances`] found.
pub fn unknown_allowance_warning(key: &str) -> String {
    format!(
        "--allow-change {key} names no key of this experiment or of the run's saved one (misspelled?): it allows \
         nothing"
    )
}

/// The `--allow-change` keys in `allow` that name no key (and no table) of any of `experiments`
/// (resolved experiments' TOML): misspelled ones, which would allow nothing.
pub fn unknown_allowances(allow: &[String], experiments: &[&str]) -> Vec<String> {
    let keys: Vec<String> = experiments
        .iter()
        .filter_map(|text| toml::from_str::<toml::Table>(text).ok())
        .flat_map(|table| dotted_keys(&table).into_keys())
        .collect();
    allow
        .iter()
        .filter(|a| !keys.iter().any(|key| allowed(key, std::slice::from_ref(*a))))
        .cloned()
        .collect()
}

/// Dotted key -> value of every leaf of a table (arrays are leaves), sorted by key.
pub fn dotted_keys(table: &toml::Table) -> std::collections::BTreeMap<String, toml::Value> {
    fn flatten(table: &toml::Table, prefix: &str, out: &mut std::collections::BTreeMap<String, toml::Value>) {
        for (key, value) in table {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => flatten(inner, &key, out),
                leaf => {
                    out.insert(key, leaf.clone());
                }
            }
        }
    }
    let mut out = Default::default();
    flatten(table, "", &mut out);
    out
}

/// Every key whose value differs between two resolved experiments (TOML text), sorted; but
/// for `[augment]` keys whose change leaves the views as they were ([`same_views`]).
pub fn changes(saved: &str, now: &str) -> anyhow::Result<Vec<Change>> {
    let (saved_table, now_table): (toml::Table, toml::Table) = (toml::from_str(saved)?, toml::from_str(now)?);
    // Compared as text: `nan` is the same value on both sides.
    let text = |table: &toml::Table| -> std::collections::BTreeMap<String, String> {
        dotted_keys(table)
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    };
    let (saved, now) = (text(&saved_table), text(&now_table));
    let keys: std::collections::BTreeSet<&String> = saved.keys().chain(now.keys()).collect();
    let same_views = same_views(&saved_table, &now_table);
    Ok(keys
        .into_iter()
        .filter(|k| saved.get(*k) != now.get(*k))
        .filter(|k| !same_views(k))
        .map(|k| Change {
            key: k.clone(),
            saved: saved.get(k).cloned(),
            now: now.get(k).cloned(),
        })
        .collect())
}

/// Tells the `[augment]` keys whose change draws the same views, as the augmentation plugin
/// spells its values out ([`byol::AugmentSpec::spelled_out`]): every one where both tables'
/// views are the same (a preset's values written out, the preset then changed), else a key
/// whose value, put in either experiment alone, leaves that experiment's views as they were
/// (`view1.flip_p: (not set) -> 0.5` where the preset's is 0.5). A plugin that does not spell
/// out, or a table that does not parse, keeps every change.
fn same_views<'a>(saved: &'a toml::Table, now: &'a toml::Table) -> impl Fn(&str) -> bool + 'a {
    let spelled = |table: &toml::Table| spelled_out_augment(table).map(|t| t.to_string());
    let augment = |t: &toml::Table| t.get("augment").and_then(|a| a.as_table()).cloned();
    let (saved_augment, now_augment) = (augment(saved), augment(now));
    let (saved_views, now_views) = (
        saved_augment.as_ref().and_then(spelled),
        now_augment.as_ref().and_then(spelled),
    );
    let all_same = saved_views.is_some() && saved_views == now_views;
    // `key` (below `augment.`) set as `from` has it, in `into`: the same views as before?
    let leaves_as_is =
        move |into: &Option<toml::Table>, views: &Option<String>, from: &Option<toml::Table>, key: &str| {
            let (Some(into), Some(views)) = (into, views) else {
                return false;
            };
            let mut changed = into.clone();
            set_dotted(&mut changed, key, from.as_ref().and_then(|f| get_dotted(f, key)));
            spelled(&changed).as_ref() == Some(views)
        };
    move |key: &str| match key.strip_prefix("augment.") {
        None => false,
        Some(_) if all_same => true,
        Some(key) => {
            leaves_as_is(&saved_augment, &saved_views, &now_augment, key)
                && leaves_as_is(&now_augment, &now_views, &saved_augment, key)
        }
    }
}

/// An experiment's `[augment]` table as its plugin spells it out
/// ([`byol::AugmentSpec::spelled_out`]): every value the views are drawn with, the preset's
/// included. None where the plugin does not spell out, or the table does not parse.
pub fn spelled_out_augment(augment: &toml::Table) -> Option<toml::Table> {
    let spec: Box<dyn byol::AugmentSpec> = toml::Value::Table(augment.clone()).try_into().ok()?;
    match toml::Value::try_from(spec.spelled_out()?).ok()? {
        toml::Value::Table(table) => Some(table),
        _ => None,
    }
}

/// The value at a dotted key of a table (`view1.flip_p`).
fn get_dotted(table: &toml::Table, key: &str) -> Option<toml::Value> {
    match key.split_once('.') {
        None => table.get(key).cloned(),
        Some((head, rest)) => get_dotted(table.get(head)?.as_table()?, rest),
    }
}

/// Sets (or with `None` removes) the value at a dotted key of a table, making the tables on the
/// way.
fn set_dotted(table: &mut toml::Table, key: &str, value: Option<toml::Value>) {
    match (key.split_once('.'), value) {
        (None, Some(value)) => {
            table.insert(key.to_string(), value);
        }
        (None, None) => {
            table.remove(key);
        }
        (Some((head, rest)), value) => {
            let inner = table
                .entry(head)
                .or_insert_with(|| toml::Value::Table(Default::default()));
            if let Some(inner) = inner.as_table_mut() {
                set_dotted(inner, rest, value);
            }
        }
    }
}

/// A saved experiment with the keys this version added since filled in with their defaults, as
/// the experiment read now has them: a key the run folder's record lacks is not a change when
/// its default is what the run is asked to use. The record as it is when this version cannot
/// read it (a key since removed), so that the difference shows in the diff.
pub fn with_current_defaults(saved: &str) -> String {
    crate::experiment::Experiment::parse(saved, &[])
        .and_then(|experiment| experiment.to_toml())
        .unwrap_or_else(|_| saved.to_string())
}

fn is_safe(key: &str) -> bool {
    SAFE_TO_CHANGE.iter().any(|p| matches(key, p))
}

/// The differences between two resolved experiments that alter the run (not in
/// [`SAFE_TO_CHANGE`]).
pub fn unsafe_changes(saved: &str, now: &str) -> anyhow::Result<Vec<Change>> {
    Ok(changes(&with_current_defaults(saved), now)?
        .into_iter()
        .filter(|c| !is_safe(&c.key))
        .collect())
}

/// Checks that the experiment `now` may continue a run trained with `saved` (`source` says
/// where that came from: "checkpoint step-000000044", "config.toml"). Returns the differences
/// accepted by `allow` (`--allow-change`) or `also_safe` (keys the caller has checked, such as the
/// data's location when the data is the same), for the caller to report; keys in
/// [`SAFE_TO_CHANGE`] are ignored; anything else is an error with a per-key diff and the two ways out.
pub fn check_identity(
    run_dir: &Path,
    source: &str,
    saved: &str,
    now: &str,
    allow: &[String],
    also_safe: &[&str],
) -> anyhow::Result<Vec<Change>> {
    let changes = changes(&with_current_defaults(saved), now).with_context(|| {
        format!(
            "cannot read the experiment saved in {} ({source}); start over with --fresh",
            run_dir.display()
        )
    })?;
    let (accepted, refused): (Vec<Change>, Vec<Change>) = changes
        .into_iter()
        .filter(|c| !is_safe(&c.key))
        .partition(|c| allowed(&c.key, allow) || also_safe.iter().any(|k| matches(&c.key, k)));
    if refused.is_empty() {
        return Ok(accepted);
    }
    Err(OtherExperiment {
        run_dir: run_dir.to_path_buf(),
        source: source.to_string(),
        refused,
        cannot_continue: None,
    }
    .into())
}

/// The refusal to resume a run of another experiment ([`check_identity`]): the keys that differ
/// and are not allowed, and the way out.
#[derive(Debug)]
pub struct OtherExperiment {
    pub run_dir: PathBuf,
    /// Where the run's experiment was read (`the experiment saved with <checkpoint>`).
    pub source: String,
    pub refused: Vec<Change>,
    /// Why allowing the keys cannot continue the run, where it cannot (the weights it would go on
    /// from fit no network of this experiment, or it would be shorter than it has trained): the
    /// refusal then does not advise `--allow-change`.
    pub cannot_continue: Option<String>,
}

impl std::fmt::Display for OtherExperiment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let diff: Vec<String> = self.refused.iter().map(|c| format!("  {c}")).collect();
        write!(
            f,
            "{} holds a run of another experiment ({}); resuming it with this one would mix two \
             configurations in one run:\n{}\n",
            self.run_dir.display(),
            self.source,
            diff.join("\n"),
        )?;
        if let Some(why) = &self.cannot_continue {
            return write!(f, "allowing the changes (--allow-change) does not continue it: {why}");
        }
        let flags: Vec<String> = self
            .refused
            .iter()
            .map(|c| format!("--allow-change {}", c.key))
            .collect();
        write!(
            f,
            "To continue this run with the new values anyway, add {}; to start a new run, add --fresh (the old \
             folder is moved aside to {}, nothing is deleted). These keys may change on a resume \
             without either: {}",
            flags.join(" "),
            moved_aside_to(&self.run_dir),
            SAFE_TO_CHANGE.join(", ")
        )
    }
}

impl std::error::Error for OtherExperiment {}

/// The folder inside a run folder that holds its checkpoints (`step-*/`, `last`).
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// `config.toml`: the resolved experiment of the run, written once it is known to be the
/// folder's (fresh, or its checkpoint loaded).
pub const CONFIG_FILE: &str = "config.toml";

pub fn save_config(run_dir: &Path, config: &str) -> anyhow::Result<()> {
    replace_file(&run_dir.join(CONFIG_FILE), config.as_bytes())
}

/// Creates the folder `dir` in its parent, which must be there: not `create_dir_all`, so that a
/// run or sweep folder moved away while its process writes into it is not made again at its old
/// path, without its lock. A folder already there is fine.
pub fn create_dir_in_place(dir: &Path) -> anyhow::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            Err(e).with_context(|| format!("cannot create {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` through `<path>.partial`, synced and then renamed over it: a reader,
/// or a start after a crash or a full disk, finds the old file or the new one, never a cut one
/// (which would stop every later start of the run). The folder is synced too, so that the rename
/// itself survives a power loss.
pub fn replace_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    replace_file_with(path, |partial| {
        File::create(partial).and_then(|mut f| f.write_all(bytes))?;
        Ok(())
    })
}

/// [`replace_file`] for a writer that takes a path (tch's `write_npy`, `write_safetensors`):
/// `write` writes `<path>.partial`, which is then synced and renamed over `path`.
pub fn replace_file_with(path: &Path, write: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    replace_files_with(vec![(path, Some(Box::new(write)))])
}

/// What writes one of the files that [`replace_files_with`] replaces, given the path to write.
pub type FileWriter<'a> = Box<dyn FnOnce(&Path) -> anyhow::Result<()> + 'a>;

/// Files that belong together (embeddings and their names) replaced together: each writer writes
/// its `<path>.partial`, and only once every one is written and synced are they renamed over their
/// paths, so that a failure while writing (a full disk) leaves the old files as they were, and no
/// partial one. A path without a writer has no file in the new set: its old one is removed. The
/// first file is the set's: of several, its old version is removed before the others are put in
/// place and it is renamed last, so that wherever it is, the files beside it are its own (a kill
/// between two renames leaves it absent, never beside another set's files).
pub fn replace_files_with(files: Vec<(&Path, Option<FileWriter<'_>>)>) -> anyhow::Result<()> {
    let partials: Vec<PathBuf> = files.iter().map(|(path, _)| partial_path(path)).collect();
    let remove_partials = || {
        for partial in &partials {
            let _ = std::fs::remove_file(partial);
        }
    };
    let paths: Vec<&Path> = files.iter().map(|(path, _)| *path).collect();
    let mut written = vec![false; paths.len()];
    for (i, (path, write)) in files.into_iter().enumerate() {
        let Some(write) = write else { continue };
        let partial = &partials[i];
        write(partial)
            .and_then(|()| Ok(File::open(partial)?.sync_all()?))
            .inspect_err(|_| remove_partials())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written[i] = true;
    }
    let remove_old = |path: &Path| match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            remove_partials();
            Err(e).with_context(|| format!("cannot replace {}", path.display()))
        }
        _ => Ok(()),
    };
    if paths.len() > 1 {
        remove_old(paths[0])?;
    }
    for i in (1..paths.len()).chain([0]) {
        match written[i] {
            true => std::fs::rename(&partials[i], paths[i])
                .inspect_err(|_| remove_partials())
                .with_context(|| format!("cannot write {}", paths[i].display()))?,
            false => remove_old(paths[i])?,
        }
    }
    // The files are whole in place; only their renames may not yet survive a power loss.
    for path in paths {
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_dir(folder).with_context(|| {
            format!(
                "wrote {}, but cannot sync its folder {} to disk",
                path.display(),
                folder.display()
            )
        })?;
    }
    Ok(())
}

/// `<path>.partial`: where [`replace_file`] writes before the rename.
fn partial_path(path: &Path) -> PathBuf {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    PathBuf::from(partial)
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The saved experiment of a folder without checkpoints: its `config.toml`, when present.
pub fn saved_config(run_dir: &Path) -> Option<String> {
    std::fs::read_to_string(run_dir.join(CONFIG_FILE)).ok()
}

/// `--fresh`: moves an existing run folder aside to `<run>.old-<UTC time>` (after taking its
/// lock: a folder in use is never moved) and returns where it went; None when there was none.
pub fn move_aside(run_dir: &Path, what: FolderKind) -> anyhow::Result<Option<PathBuf>> {
    // `runs/x/` would otherwise be moved to `runs/x/.old-...`, inside itself.
    let run_dir: PathBuf = run_dir.components().collect();
    move_aside_to(&run_dir, &run_dir, what)
}

/// [`move_aside`] into the folder `into` (created), as `<into>/<run's name>.old-<UTC time>`.
pub fn move_aside_into(run_dir: &Path, into: &Path, what: FolderKind) -> anyhow::Result<Option<PathBuf>> {
    if !run_dir.exists() {
        return Ok(None);
    }
    std::fs::create_dir_all(into).with_context(|| format!("cannot create {}", into.display()))?;
    let name = run_dir.file_name().context("a run folder has a name")?;
    move_aside_to(run_dir, &into.join(name), what)
}

/// Moves `run_dir` to `<base>.old-<UTC time>` (`-1`, `-2`, ... after it when taken).
fn move_aside_to(run_dir: &Path, base: &Path, what: FolderKind) -> anyhow::Result<Option<PathBuf>> {
    if !run_dir.exists() {
        return Ok(None);
    }
    let _lock = FolderLock::acquire(run_dir, what)?;
    // The run folders inside (a sweep's trials) may be in use on their own, by a `byol-run
    // train` of one trial: such a process would go on writing into the new folder at its path.
    let mut _inner_locks = Vec::new();
    for inner in std::fs::read_dir(run_dir).with_context(|| format!("cannot list {}", run_dir.display()))? {
        let inner = inner
            .with_context(|| format!("cannot list {}", run_dir.display()))?
            .path();
        if inner.join(LOCK_FILE).is_file() {
            let kind = match what {
                FolderKind::Sweep => FolderKind::Trial,
                _ => FolderKind::Run,
            };
            _inner_locks.push(FolderLock::acquire(&inner, kind)?);
        }
    }
    let stamp = utc_stamp(std::time::SystemTime::now());
    let base = format!("{}.old-{stamp}", base.display());
    let target = (0..)
        .map(|n| match n {
            0 => PathBuf::from(&base),
            n => PathBuf::from(format!("{base}-{n}")),
        })
        .find(|p| !p.exists())
        .expect("some name is free");
    std::fs::rename(run_dir, &target)
        .with_context(|| format!("cannot move {} aside to {}", run_dir.display(), target.display()))?;
    Ok(Some(target))
}

/// `20250131-235959`, UTC.
fn utc_stamp(time: std::time::SystemTime) -> String {
    let secs = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_key_safe_to_change() {
        let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
        let paragraph = &readme[readme.find("These keys may change freely").expect("the README's list")..];
        let paragraph = &paragraph[..paragraph.find("\n\n").unwrap_or(paragraph.len())];
        for key in SAFE_TO_CHANGE {
            assert!(paragraph.contains(&format!("`{key}`")), "the README's list lacks {key}");
        }
    }

    /// Of files replaced together, the first is never left beside another set's others: here
    /// the second cannot be renamed into place (a folder holds its name), and the first, whose
    /// old version is gone, is not put in place either.
    #[test]
    fn the_first_of_files_replaced_together_is_never_beside_another_sets_files() {
        let tmp = tempfile::tempdir().unwrap();
        let (embeddings, names) = (tmp.path().join("e.npy"), tmp.path().join("e.npy.names.txt"));
        let write =
            |text: &'static str| -> FileWriter<'static> { Box::new(move |path| Ok(std::fs::write(path, text)?)) };
        replace_files_with(vec![
            (&embeddings, Some(write("old rows"))),
            (&names, Some(write("old names"))),
        ])
        .unwrap();
        std::fs::remove_file(&names).unwrap();
        std::fs::create_dir_all(names.join("in the way")).unwrap();
        let failed = replace_files_with(vec![
            (&embeddings, Some(write("new rows"))),
            (&names, Some(write("new names"))),
        ]);
        assert!(failed.is_err());
        assert!(!embeddings.exists(), "new rows beside no names of theirs");
        std::fs::remove_dir_all(&names).unwrap();
        replace_files_with(vec![
            (&embeddings, Some(write("new rows"))),
            (&names, Some(write("new names"))),
        ])
        .unwrap();
        assert_eq!(std::fs::read_to_string(&embeddings).unwrap(), "new rows");
        assert_eq!(std::fs::read_to_string(&names).unwrap(), "new names");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no partial file left: {left:?}");
    }

    /// Threads contend for one folder while half of them move it aside (`--fresh`) each time:
    /// whoever takes ownership must be its only owner. Each owner creates a marker in the folder
    /// (a run's file) with `create_new`, so a second owner of the same folder fails there. A lock
    /// taken on a lock file that a move carried away (opened before the move, locked after it)
    /// would be such a second owner.
    #[test]
    fn one_owner_at_a_time_while_the_folder_is_moved_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let (owned, busy) = (
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::atomic::AtomicUsize::new(0),
        );
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let (run, owned, busy) = (&run, &owned, &busy);
                scope.spawn(move || {
                    for _ in 0..600 {
                        match take_ownership(run, FolderKind::Run, true, thread % 2 == 0) {
                            Ok((Some(_lock), _)) => {
                                // A file only an owner writes, and one a run writes before its
                                // records (a record would have to read as one; a log beside no
                                // record is someone's).
                                let marker = run.join(format!("{CONFIG_FILE}.partial"));
                                std::fs::File::create_new(&marker)
                                    .unwrap_or_else(|e| panic!("a second owner of {}: {e}", run.display()));
                                std::fs::remove_file(&marker).unwrap();
                                owned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Ok((None, _)) => unreachable!("the main process always gets the lock"),
                            Err(e) => {
                                let e = format!("{e:#}");
                                assert!(
                                    ["in use by another byol-run", "keeps being replaced", "it is gone"]
                                        .iter()
                                        .any(|outcome| e.contains(outcome)),
                                    "{e}"
                                );
                                busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        // Both outcomes happened, so the threads did contend.
        assert!(owned.into_inner() > 0 && busy.into_inner() > 0);
    }

    #[test]
    fn a_replaced_file_is_whole_and_a_failed_replace_leaves_no_partial() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("summary.json");
        replace_file(&path, b"old").unwrap();
        replace_file(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        // A folder in the way of the rename: the error names the file, nothing is left behind.
        let blocked = tmp.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let e = format!("{:#}", replace_file(&blocked, b"x").unwrap_err());
        assert!(e.contains("cannot write") && e.contains("blocked"), "{e}");
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
    }

    #[test]
    fn a_run_folder_path_that_is_no_folder_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let link = tmp.path().join("runs-x");
        std::os::unix::fs::symlink(tmp.path().join("missing"), &link).unwrap();
        let e = format!(
            "{:#}",
            FolderLock::create_and_acquire(&link, FolderKind::Run).unwrap_err()
        );
        assert!(
            e.contains("runs-x as the run folder: it exists and is not a folder"),
            "{e}"
        );
    }

    /// Two run folders whose checkpoints lead to one folder (a link copied by `cp -r`): the
    /// second is refused while the first trains, afterwards while the first still leads there,
    /// and while the first is away from its recorded path (moved: it keeps them, known by its
    /// identity); once the first is given a copy of its own, or removed and its record with it,
    /// the other takes them.
    #[test]
    fn two_run_folders_never_share_a_checkpoints_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let (first, second) = (tmp.path().join("r1"), tmp.path().join("r2"));
        for run in [&first, &second] {
            std::fs::create_dir(run).unwrap();
            std::os::unix::fs::symlink(&scratch, run.join(CHECKPOINTS_DIR)).unwrap();
        }
        let take = |run: &Path| take_ownership(run, FolderKind::Run, true, false).map(|(lock, _)| lock);
        // The record changes hands at a run's checkpoint, once its start is accepted.
        let save = |run: &Path| record_checkpoints_owner(&run.join(CHECKPOINTS_DIR)).unwrap();
        let held = take(&first).unwrap();
        save(&first);
        let e = format!("{:#}", take(&second).unwrap_err());
        assert!(
            e.contains("r2/checkpoints leads to") && e.contains("where another byol-run trains now"),
            "{e}"
        );
        drop(held);
        // What validate says beforehand, reading only.
        let said = checkpoints_of_another_run(&second).unwrap_or_default();
        assert!(said.contains("r1, which holds that run's checkpoints"), "{said}");
        assert_eq!(checkpoints_of_another_run(&first), None);
        // What eval, export, embed and compare warn of, reading the second folder's checkpoints.
        let read = checkpoints_read_from_another_run(&second).unwrap_or_default();
        assert!(
            read.contains("r2/checkpoints leads to") && read.contains("r1 by its record: the checkpoints read are"),
            "{read}"
        );
        assert_eq!(checkpoints_read_from_another_run(&first), None);
        let e = format!("{:#}", take(&second).unwrap_err());
        assert!(
            e.contains("of ") && e.contains("r1, which holds that run's checkpoints"),
            "{e}"
        );
        assert!(e.contains("cp -rL"), "{e}");
        drop(take(&first).unwrap());

        // The first run folder moved: the checkpoints are still its own, known by the identity
        // the record keeps, and a copy cannot take them while it is away from the recorded path.
        let moved = tmp.path().join("r1-moved");
        std::fs::rename(&first, &moved).unwrap();
        let e = format!("{:#}", take(&second).unwrap_err());
        assert!(
            e.contains("r1 (not at that path any more: moved, its checkpoints still leading here, or removed)")
                && e.contains(".run-folder and start again"),
            "{e}"
        );
        let read = checkpoints_read_from_another_run(&second).unwrap_or_default();
        assert!(read.contains("r1 (not at that path any more"), "{read}");
        let taken = take(&moved).unwrap();
        save(&moved);
        drop(taken);
        let e = format!("{:#}", take(&second).unwrap_err());
        assert!(e.contains("r1-moved, which holds that run's checkpoints"), "{e}");
        // Given a copy of its own, a folder keeps it; the record in the copy names another.
        std::fs::remove_file(second.join(CHECKPOINTS_DIR)).unwrap();
        std::fs::create_dir(second.join(CHECKPOINTS_DIR)).unwrap();
        std::fs::copy(
            scratch.join(CHECKPOINTS_OWNER_FILE),
            second.join(CHECKPOINTS_DIR).join(CHECKPOINTS_OWNER_FILE),
        )
        .unwrap();
        drop(take(&second).unwrap());
        drop(take(&moved).unwrap());
        // The recorded folder removed: another folder leading there takes the checkpoints once
        // the record is removed, as the refusal says. (Made before the removal, so that it cannot
        // get the removed folder's inode number.)
        let third = tmp.path().join("r4");
        std::fs::create_dir(&third).unwrap();
        std::os::unix::fs::symlink(&scratch, third.join(CHECKPOINTS_DIR)).unwrap();
        std::fs::remove_dir_all(&moved).unwrap();
        assert!(take(&third).is_err());
        std::fs::remove_file(scratch.join(CHECKPOINTS_OWNER_FILE)).unwrap();
        drop(take(&third).unwrap());

        // A link to a folder that is not there: refused at the start, before any step.
        let dangling = tmp.path().join("r3");
        std::fs::create_dir(&dangling).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("gone"), dangling.join(CHECKPOINTS_DIR)).unwrap();
        let e = format!("{:#}", take(&dangling).unwrap_err());
        assert!(
            e.contains("r3/checkpoints is a link to") && e.contains("which is not there"),
            "{e}"
        );
        assert!(
            !dangling.join(LOCK_FILE).exists(),
            "the refused start left its lock file"
        );
    }

    /// A start refused before it writes anything leaves the folder as it found it: no folder
    /// where there was none, no lock file where there was none; a folder with anything new in
    /// it, or with a lock file before, keeps it.
    #[test]
    fn a_refused_start_leaves_the_folder_as_it_found_it() {
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("made");
        FolderLock::create_and_acquire(&made, FolderKind::Run)
            .unwrap()
            .remove_if_unused();
        assert!(!made.exists());

        let existing = tmp.path().join("existing");
        std::fs::create_dir(&existing).unwrap();
        std::fs::write(existing.join("notes.txt"), "mine").unwrap();
        FolderLock::create_and_acquire(&existing, FolderKind::Run)
            .unwrap()
            .remove_if_unused();
        assert!(!existing.join(LOCK_FILE).exists());
        assert!(existing.join("notes.txt").is_file());

        let lock = FolderLock::create_and_acquire(&existing, FolderKind::Run).unwrap();
        std::fs::write(existing.join(CONFIG_FILE), "written by the start").unwrap();
        lock.remove_if_unused();
        assert!(
            existing.join(LOCK_FILE).exists(),
            "a folder written into keeps its lock file"
        );

        std::fs::remove_file(existing.join(CONFIG_FILE)).unwrap();
        FolderLock::create_and_acquire(&existing, FolderKind::Run)
            .unwrap()
            .remove_if_unused();
        assert!(existing.join(LOCK_FILE).exists(), "a lock file there before stays");
    }

    /// A run folder moved away and a copy of it put at its old path (`mv r1 r1b; cp -r r1b r1`):
    /// the linked checkpoints stay the moved folder's, known by its identity, not the path's.
    #[test]
    fn a_copy_at_the_recorded_path_does_not_take_the_moved_folder_s_checkpoints() {
        let tmp = tempfile::tempdir().unwrap();
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let (original, moved) = (tmp.path().join("r1"), tmp.path().join("r1b"));
        std::fs::create_dir(&original).unwrap();
        std::os::unix::fs::symlink(&scratch, original.join(CHECKPOINTS_DIR)).unwrap();
        let take = |run: &Path| take_ownership(run, FolderKind::Run, true, false).map(|(lock, _)| lock);
        drop(take(&original).unwrap());
        record_checkpoints_owner(&original.join(CHECKPOINTS_DIR)).unwrap();
        std::fs::rename(&original, &moved).unwrap();
        std::fs::create_dir(&original).unwrap();
        std::os::unix::fs::symlink(&scratch, original.join(CHECKPOINTS_DIR)).unwrap();
        let e = format!("{:#}", take(&original).unwrap_err());
        assert!(e.contains("r1 (not at that path any more"), "{e}");
        drop(take(&moved).unwrap());
    }

    /// A run folder copied by hard links (`cp -al`) shares its lock file with the original: the
    /// first start in either gives its folder a lock file of its own, so that both folders train
    /// at once; while the shared one is locked, the refusal says it may be the other folder's.
    #[test]
    fn a_lock_file_shared_by_hard_links_is_made_the_folder_s_own() {
        let tmp = tempfile::tempdir().unwrap();
        let (original, copy) = (tmp.path().join("h1"), tmp.path().join("h2"));
        drop(FolderLock::create_and_acquire(&original, FolderKind::Run).unwrap());
        std::fs::create_dir(&copy).unwrap();
        std::fs::hard_link(original.join(LOCK_FILE), copy.join(LOCK_FILE)).unwrap();
        let held = FolderLock::acquire(&copy, FolderKind::Run).unwrap();
        let first = FolderLock::acquire(&original, FolderKind::Run).unwrap();
        drop((held, first));

        std::fs::remove_file(copy.join(LOCK_FILE)).unwrap();
        std::fs::hard_link(original.join(LOCK_FILE), copy.join(LOCK_FILE)).unwrap();
        let shared = File::open(original.join(LOCK_FILE)).unwrap();
        assert!(try_flock(&shared, libc::LOCK_EX).unwrap());
        let e = format!("{:#}", FolderLock::acquire(&copy, FolderKind::Run).unwrap_err());
        assert!(
            e.contains("is in use by another byol-run") && e.contains("cp -al"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_trial_folder_is_not_made_again() {
        let tmp = tempfile::tempdir().unwrap();
        let sweep = tmp.path().join("search-sweep");
        let trial = sweep.join("trial-001");
        for missing in [&sweep, &trial] {
            let e = format!(
                "{:#}",
                FolderLock::create_and_acquire(&trial, FolderKind::Trial).unwrap_err()
            );
            assert!(
                e.contains("trial-001 is not there: it or its sweep folder was moved"),
                "{e}"
            );
            assert!(!missing.exists(), "{} was made again", missing.display());
            std::fs::create_dir(missing).unwrap();
        }
        drop(FolderLock::create_and_acquire(&trial, FolderKind::Trial).unwrap());
        // A run folder's parents are made as needed.
        let run = tmp.path().join("runs/a/b");
        drop(FolderLock::create_and_acquire(&run, FolderKind::Run).unwrap());
        assert!(run.is_dir());
    }

    #[test]
    fn utc_stamps() {
        let at = |s: u64| utc_stamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "19700101-000000");
        assert_eq!(at(951_782_400), "20000229-000000");
        assert_eq!(at(1_767_225_599), "20251231-235959");
    }

    #[test]
    fn safe_keys_pass_allowed_keys_are_reported_others_refused() {
        let saved =
            "[run]\nthreads = 1\nseed = 0\n[optimizer]\ntype = \"lars\"\nlr = 0.5\n[logging]\nevery_steps = 4\n";
        let now = "[run]\nthreads = 2\nseed = 0\n[optimizer]\ntype = \"sgd\"\nlr = 0.5\n[logging]\nevery_steps = 8\n";
        let dir = Path::new("runs/x");
        let e = format!(
            "{:#}",
            check_identity(dir, "config.toml", saved, now, &[], &[]).unwrap_err()
        );
        assert!(e.contains("  optimizer.type: \"lars\" -> \"sgd\""), "{e}");
        assert!(!e.contains("threads:") && !e.contains("every_steps:"), "{e}");
        assert!(
            e.contains("--allow-change optimizer.type") && e.contains("--fresh"),
            "{e}"
        );
        let accepted = check_identity(dir, "config.toml", saved, now, &["optimizer".into()], &[]).unwrap();
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].to_string(), "optimizer.type: \"lars\" -> \"sgd\"");
        let removed = changes("[a]\nb = 1\n", "[a]\n").unwrap();
        assert_eq!(removed[0].to_string(), "a.b: 1 -> (not set)");
        assert!(!allowed("optimizer_x.lr", &["optimizer".into()]));
    }
}
