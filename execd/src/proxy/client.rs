//! The backend client: one process-wide pool of HTTP/1.1 connections to
//! `127.0.0.1`, keyed by port.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Time allowed to connect to a backend. There is no overall timeout: event
/// streams and tunnels live as long as both ends want.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle pooled connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per port, at most.
const MAX_IDLE_PER_PORT: usize = 32;

/// The pooled client that forwards requests (their bodies streamed as is).
pub(super) type Backend = Client<HttpConnector, Incoming>;

/// The process-wide client, built on first use.
pub(super) fn get() -> &'static Backend {
    static CLIENT: OnceLock<Backend> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_PORT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // The caller sets Host itself.
            .set_host(false)
            .build(connector)
    })
}

/// Ports execd's own API listens on, registered by `api::serve`.
static OWN_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// Records that execd's API listens on `port`.
pub fn register_own_port(port: u16) {
    if let Ok(mut ports) = OWN_PORTS.lock() {
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
}

/// Whether `port` is one execd itself listens on. The official SDK reaches
/// execd through `/proxy/{execd port}/…`, so requests to it keep the access
/// token that execd's own check requires.
pub(super) fn is_own_port(port: u16) -> bool {
    OWN_PORTS.lock().is_ok_and(|p| p.contains(&port))
}
