//! The official OpenSandbox Python SDK (1.1.1, from PyPI) against our server,
//! execd and egress: `tests/sdk_e2e.py` drives create, commands, files,
//! renew, pause/resume, list filters, egress policy and kill.
//!
//! The interpreter is `OPENSANDBOX_SDK_PYTHON`, else `target/sdk-venv`
//! (made by `scripts/setup.sh`); without one the test skips, unless
//! `LIFECYCLE_TESTS_REQUIRED=1` (CI), where it fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{can_run, Server, BASE_IMAGE, EGRESS_IMAGE, EXECD_IMAGE};

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("OPENSANDBOX_SDK_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/sdk-venv/bin/python");
    venv.exists().then_some(venv)
}

#[test]
fn official_python_sdk_end_to_end() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE, EGRESS_IMAGE]) {
        return;
    }
    let Some(py) = python() else {
        assert!(
            std::env::var("LIFECYCLE_TESTS_REQUIRED").as_deref() != Ok("1"),
            "no SDK interpreter (run scripts/setup.sh)"
        );
        eprintln!("SKIP: no Python with opensandbox 1.1.1 (run scripts/setup.sh)");
        return;
    };
    let s = Server::start_with("sdk", Some("e2e-key"), "");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_e2e.py");
    let out = Command::new(py)
        .arg(script)
        .arg(format!("127.0.0.1:{}", s.port))
        .arg(BASE_IMAGE)
        .arg("--egress")
        .env("OPENSANDBOX_DISABLE_METRICS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("SDK E2E PASSED"),
        "SDK end-to-end failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        s.containers().is_empty(),
        "left behind: {:?}",
        s.containers()
    );
}
