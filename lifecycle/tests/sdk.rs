//! The official OpenSandbox Python SDK (1.1.1, from PyPI) against our server,
//! execd and egress: `tests/sdk_e2e.py` drives create, commands, files,
//! renew, pause/resume, list filters, egress policy and kill.
#![allow(clippy::unwrap_used)]

mod common;

use common::{can_run, run_sdk_script, Server, BASE_IMAGE, EGRESS_IMAGE, EXECD_IMAGE};

#[test]
fn official_python_sdk_end_to_end() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE, EGRESS_IMAGE]) {
        return;
    }
    let s = Server::start_with("sdk", Some("e2e-key"), "");
    run_sdk_script(
        &s,
        "sdk_e2e.py",
        &[BASE_IMAGE, "--egress"],
        "SDK E2E PASSED",
    );
}
