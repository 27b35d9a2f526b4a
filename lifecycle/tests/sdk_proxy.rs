//! The official OpenSandbox Python SDK (1.1.1) with `use_server_proxy=True`:
//! `tests/sdk_proxy_e2e.py` creates a sandbox, runs a command and round-trips
//! files with every execd request going through the server proxy.
#![allow(clippy::unwrap_used)]

mod common;

use common::{can_run, run_sdk_script, Server, BASE_IMAGE, EXECD_IMAGE};

#[test]
fn official_python_sdk_through_the_server_proxy() {
    if !can_run(&[EXECD_IMAGE, BASE_IMAGE]) {
        return;
    }
    let s = Server::start_with("sdk-proxy", Some("e2e-key"), "");
    run_sdk_script(
        &s,
        "sdk_proxy_e2e.py",
        &[BASE_IMAGE],
        "SDK PROXY E2E PASSED",
    );
}
