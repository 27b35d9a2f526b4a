//! `opensandbox-lifecycle`: the Lifecycle API server on the local Docker
//! engine. Configuration: see `lifecycle::config` (`--config`, the TOML
//! file, `OPENSANDBOX_SERVER_API_KEY`, `OPENSANDBOX_INSECURE_SERVER`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lifecycle::api::{serve, App};
use lifecycle::config::{self, Config, ConfigError};
use lifecycle::docker::{Driver, Settings};
use lifecycle::service::{Service, ServiceSettings};
use lifecycle::store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match config::load(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(ConfigError::Help) => {
            print!("{}", config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("opensandbox-lifecycle: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opensandbox-lifecycle: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let store = Arc::new(
        Store::open(&cfg.store.path)
            .with_context(|| format!("open the store {}", cfg.store.path.display()))?,
    );
    let d = &cfg.docker;
    let driver = Driver::connect(Settings {
        label_prefix: d.label_prefix.clone(),
        execd_image: cfg.runtime.execd_image.clone(),
        egress_image: cfg.egress.image.clone(),
        publish_host: d.publish_host.to_string(),
        network_mode: d.network_mode.as_str().to_string(),
        drop_capabilities: d.drop_capabilities.clone(),
        no_new_privileges: d.no_new_privileges,
        pids_limit: d.pids_limit,
        apparmor_profile: d.apparmor_profile.clone(),
        seccomp_profile: d.seccomp_profile.clone(),
        egress_disable_ipv6: cfg.egress.disable_ipv6,
        ready_timeout: Duration::from_secs(cfg.egress.readiness_timeout_seconds.max(30)),
    })
    .await
    .context("connect to the Docker engine")?;
    let service = Service::new(
        driver,
        store,
        ServiceSettings {
            label_prefix: d.label_prefix.clone(),
            public_host: cfg
                .server
                .eip
                .clone()
                .unwrap_or_else(|| d.endpoint_host.clone()),
            max_timeout: cfg
                .server
                .max_sandbox_timeout_seconds
                .and_then(|t| i64::try_from(t).ok()),
            sandbox_env: d.sandbox_env.clone(),
            egress_mode: cfg.egress.mode.as_str().to_string(),
            server_proxy_host: cfg.server.eip.clone(),
        },
    );
    // Finding existing sandboxes needs the engine: retry in the background
    // while it is down, so that the API answers (503) meanwhile.
    let found = match service.restore().await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list existing sandboxes yet; retrying every 5 s");
            let svc = service.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    match svc.restore().await {
                        Ok(n) => {
                            tracing::info!(sandboxes = n, "existing sandboxes found");
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "restore still failing"),
                    }
                }
            });
            0
        }
    };
    let addr = cfg.server.bind_address();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("listen on {addr}"))?;
    tracing::info!(
        local = %listener.local_addr()?,
        sandboxes = found,
        auth = cfg.server.api_key.is_some(),
        "opensandbox-lifecycle listening"
    );
    let app = Arc::new(App {
        service,
        api_key: cfg.server.api_key.clone(),
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = serve(listener, app) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    // Sandboxes keep running; their expiries are restored on the next start.
    Ok(())
}
