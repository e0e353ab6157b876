//! Provisioning failures give one clear message and exit 1, without touching the real venv.

use std::process::Command;

fn xtask(envs: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("setup")
        .envs(envs.iter().copied())
        .output()
        .expect("run xtask");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn missing_python_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let (code, text) = xtask(&[
        ("BYOL_RS_VENV", venv.to_str().unwrap()),
        ("BYOL_RS_PYTHON", "/nonexistent/python3"),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("error: cannot run '/nonexistent/python3'") && text.contains("needs python3"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(!venv.exists(), "nothing was created");
}

#[test]
fn pip_failure_is_explained() {
    // A real venv and a real pip, pointed at an index that refuses connections.
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let (code, text) = xtask(&[
        ("BYOL_RS_VENV", venv.to_str().unwrap()),
        ("PIP_INDEX_URL", "http://127.0.0.1:9/simple"),
        ("PIP_FIND_LINKS", ""),
        ("PIP_NO_CACHE_DIR", "1"),
        ("PIP_RETRIES", "0"),
        ("PIP_TIMEOUT", "2"),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("error: pip could not install the libtorch requirements"),
        "{text}"
    );
    assert!(text.contains("cargo xtask setup"), "says how to retry: {text}");
    assert!(
        !venv.join("byol-rs-ready.txt").exists(),
        "a failed install is never marked ready"
    );
}
