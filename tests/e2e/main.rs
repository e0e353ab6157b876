//! End-to-end tests: the real `byol-run` binary on real TOML files, in a temporary folder,
//! checking exit code and output together.

mod bad_input;
mod cli;
mod compare;
mod distributed;
mod embed;
mod gpu_script;
mod learning;
mod loader_crops;
mod portable_run;
mod precision;
mod quickstart;
mod reference;
mod resume;
mod run_folder;
mod run_folder_commands;
mod sweep;
mod sweep_prune;
mod tensorboard;
mod unlabelled;
mod validation;
mod webdataset;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// The tiny experiment most tests train (a CIFAR-stem ResNet-18 of width 4 on synthetic images).
pub(crate) use byol_testkit::fixtures::TINY_EXPERIMENT as TINY;

/// Held by the tests whose training runs take minutes and every core (the quickstart, the CIFAR
/// learning check): two of them at once on a small machine oversubscribe libtorch's OpenMP
/// threads, whose spin-waiting then slows both several times over. Short tests run beside them.
pub fn one_long_training_run_at_a_time() -> MutexGuard<'static, ()> {
    static LONG_RUN: Mutex<()> = Mutex::new(());
    LONG_RUN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The repository root (experiments/ lives there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// `byol-run`, to be started in `cwd` with a clean environment (no LD_LIBRARY_PATH: the binary
/// must find libtorch through its RUNPATH).
///
/// Idle OpenMP threads sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`). Two tests train at
/// once, and on a small machine each process's spinning threads take the cores the other one
/// needs: on 2 cores the quickstart beside a stream of tiny runs took 169 s spinning and 86 s
/// sleeping, while the tiny runs got 1.4 times as far. The policy changes no result: it is only
/// how a thread waits for work.
pub fn byol_run_command(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_byol-run"));
    command
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("OMP_WAIT_POLICY", "PASSIVE");
    // As started from a terminal, whatever started the tests: a harness run in the background of
    // a non-interactive shell has SIGINT ignored, which byol-run, as any Unix program, would keep.
    // SAFETY: signal(2) is async-signal-safe, as code between fork and exec must be.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::signal(libc::SIGTERM, libc::SIG_DFL);
            Ok(())
        });
    }
    command
}

/// [`byol_run_command`], started with `signal` ignored (as a non-interactive shell starts a
/// background job with SIGINT ignored).
pub fn byol_run_ignoring(cwd: &Path, signal: libc::c_int) -> Command {
    let mut command = byol_run_command(cwd);
    // SAFETY: signal(2) is async-signal-safe; this runs after byol_run_command's reset.
    unsafe {
        command.pre_exec(move || {
            libc::signal(signal, libc::SIG_IGN);
            Ok(())
        });
    }
    command
}

/// Runs `byol-run args...` in `cwd` ([`byol_run_command`]'s environment).
pub fn byol_run(cwd: &Path, args: &[&str]) -> Output {
    byol_run_with_env(cwd, args, &[])
}

/// [`byol_run`] with extra environment variables.
pub fn byol_run_with_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    byol_run_command(cwd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run byol-run")
}

/// Holds the lock of the run folder `dir` as a byol-run training there does (this process's id
/// in the lock file), until the file is dropped.
pub fn hold_lock(dir: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let lock = dir.join("run.lock");
    std::fs::write(&lock, format!("{}\n", std::process::id())).unwrap();
    let file = std::fs::File::open(&lock).unwrap();
    // SAFETY: flock on a descriptor the File owns.
    assert_eq!(
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    file
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `per_class` random 20x24 PNGs (`0.png`, ...) in each class folder `<dir>/<class>`; written again
/// over those of an earlier call, with new pixels.
pub fn random_pngs(dir: &Path, classes: &[&str], per_class: usize) {
    for class in classes {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..per_class {
            let image = tch::Tensor::randint(255, [3, 20, 24], (tch::Kind::Uint8, tch::Device::Cpu));
            tch::vision::image::save(&image, folder.join(format!("{i}.png"))).unwrap();
        }
    }
}
