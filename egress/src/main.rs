//! The egress binary.

use std::sync::Arc;

/// jemalloc on musl builds (see Cargo.toml): musl's own allocator made the
/// DNS path twice as expensive.
#[cfg(target_env = "musl")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use anyhow::Context as _;
use egress::api::Api;
use egress::config::{Config, Mode};
use egress::dns::Proxy;
use egress::nft::own::Own;
use egress::nft::ruleset::{DohBlock, Options};
use egress::nft::{Firewall, Nft, NoFirewall};
use egress::policy::always::Always;
use egress::state::{initial_policy, State};
use tracing::level_filters::LevelFilter;

fn main() {
    if let Err(e) = run() {
        eprintln!("egress: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let cfg = Config::from_env(|k| std::env::var(k).ok())?;
    let level = match cfg.log_level.to_ascii_lowercase().as_str() {
        "debug" => LevelFilter::DEBUG,
        "warn" | "warning" => LevelFilter::WARN,
        "error" | "fatal" => LevelFilter::ERROR,
        _ => LevelFilter::INFO,
    };
    let logs = egress::logs::Tee::open(&cfg.log_outputs).context("OPENSANDBOX_LOG_OUTPUT")?;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(logs))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async move {
        let policy = initial_policy(cfg.policy_file.as_deref(), cfg.rules.as_deref())
            .map_err(anyhow::Error::msg)?;
        let upstreams = cfg.resolvers();
        let filter = cfg.mode == Mode::DnsNft;
        let firewall: Box<dyn Firewall> = if filter || cfg.redirect {
            let mut extra_allow: Vec<std::net::IpAddr> = vec![std::net::Ipv4Addr::LOCALHOST.into()];
            extra_allow.extend(upstreams.iter().map(std::net::SocketAddr::ip));
            extra_allow.extend(cfg.nameserver_exempt.iter().copied());
            let own = match egress::nft::cgroup::own() {
                Some((level, id)) => Some(Own::Cgroup { level, id }),
                None if cfg.redirect => {
                    // No cgroup v2 of its own (a Docker host on cgroup v1, or
                    // the root cgroup): egress's sockets carry a random mark
                    // (upstream's carried 0x1) and a dedicated owner uid. To
                    // pass, a sandbox process must set marks, guess this one
                    // and take that uid, one guess per lockout (the ruleset's
                    // tripwire); a cgroup could not be forged at all.
                    tracing::warn!(
                        uid = cfg.socket_uid,
                        "no cgroup v2 of its own: egress's sockets are told apart by a random socket mark \
                         and their owner uid; the sandbox must not run as that uid nor hold CAP_SETUID \
                         together with CAP_NET_RAW or CAP_NET_ADMIN"
                    );
                    Some(egress::nft::own::use_mark(cfg.socket_uid))
                }
                None => None,
            };
            Box::new(
                Nft::new(Options {
                    filter,
                    redirect_port: cfg.redirect.then_some(cfg.dns_addr.port()),
                    extra_allow,
                    own,
                    // Every mode with rules in the kernel reports what they drop.
                    log_group: Some(egress::nft::nflog::GROUP),
                    exempt: cfg.nameserver_exempt.clone(),
                    doh: match (cfg.block_doh_443, cfg.doh_blocklist.is_empty()) {
                        (false, _) => DohBlock::Off,
                        (true, true) => DohBlock::All,
                        (true, false) => DohBlock::Listed(cfg.doh_blocklist.clone()),
                    },
                })
                .context("open nftables netlink")?,
            )
        } else {
            Box::new(NoFirewall)
        };
        let always = Always::load(&cfg.rules_dir).map_err(anyhow::Error::msg).context("always rules")?;
        let webhook = cfg
            .deny_webhook
            .as_deref()
            .map(egress::webhook::parse_url)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("OPENSANDBOX_EGRESS_DENY_WEBHOOK")?;
        let state = Arc::new(State::new(policy, always, cfg.events_max, cfg.policy_file.clone(), firewall));
        if let Some(target) = webhook {
            let tls = egress::webhook::tls_config(cfg.deny_webhook_ca.as_deref())
                .map_err(anyhow::Error::msg)
                .context("OPENSANDBOX_EGRESS_DENY_WEBHOOK_CA")?;
            state.events.set_webhook(egress::webhook::start(target, cfg.sandbox_id.clone(), tls));
        }
        // Order matters: the proxy listens before DNS is redirected to it, and
        // the policy is in the kernel before the API (and /healthz) answers.
        let log_skip = egress::policy::always::load_log_skip(&cfg.rules_dir)
            .map_err(anyhow::Error::msg)
            .context("log_skip.always")?;
        let proxy = Proxy::new(state.clone(), upstreams.clone(), cfg.dns_upstream_timeout, log_skip).await;
        let dns = proxy
            .serve(cfg.dns_addr)
            .await
            .with_context(|| format!("dns proxy on {}", cfg.dns_addr))?;
        proxy.probe_upstreams(cfg.dns_probe.clone(), cfg.dns_probe_interval);
        if filter || cfg.redirect {
            // Refused connections become events (before the rules exist, so none is missed).
            let st = state.clone();
            if let Err(e) = egress::nft::nflog::listen(move |r| {
                let mut domain = None;
                let rule = match r.prefix.as_str() {
                    "deny" => st.matcher().decide_ip(r.ip).target.unwrap_or_else(|| "deny".into()),
                    "dyn_deny" => {
                        // An address of a denied name, reached without asking egress.
                        domain = st.firewall().seen(r.ip).filter(|s| s.denied).map(|s| s.name);
                        domain
                            .as_deref()
                            .and_then(|d| st.matcher().decide_name(d).target)
                            .unwrap_or_else(|| "denied name".into())
                    }
                    "default" => {
                        // Often an address an allowed name gave, used after its answer expired.
                        domain = st.firewall().seen(r.ip).map(|s| s.name);
                        "defaultAction".into()
                    }
                    "dot" => "DNS over TLS (port 853)".into(),
                    "dns_guard" => "DNS around the proxy".into(),
                    "doh" => "port 443 blocked against DNS over HTTPS".into(),
                    egress::nft::ruleset::FORGED_PREFIX => {
                        tracing::warn!(
                            ip = %r.ip,
                            port = r.port,
                            lockout_ms = egress::nft::ruleset::OWN_LOCKOUT_MS,
                            "a sandbox process used egress's socket uid with a wrong mark: egress's uid is locked out"
                        );
                        "egress's socket uid with a wrong mark (a search for the mark): locked out".into()
                    }
                    other => other.into(),
                };
                st.events.connect_refused(r.ip, r.port, domain, rule);
            }) {
                tracing::warn!(error = %e, "refused connections will not be reported as events");
            }
        }
        state.enforce().context("apply the initial policy")?;
        if let Some(url) = &cfg.metrics_endpoint {
            let mut attrs = cfg.metrics_attrs.clone();
            if !cfg.sandbox_id.is_empty() {
                attrs.insert(0, ("sandbox_id".into(), cfg.sandbox_id.clone()));
            }
            let tls = egress::webhook::tls_config(None).map_err(anyhow::Error::msg)?;
            // Metrics are not enforcement: a bad endpoint is reported, not fatal.
            match egress::metrics::start(url, attrs, cfg.metrics_interval, tls) {
                Ok(()) => tracing::info!(%url, "exporting metrics"),
                Err(e) => tracing::warn!(%url, error = %e, "metrics endpoint unusable; not exporting"),
            }
        }
        {
            // Keep denied names' addresses blocked (default-allow policies):
            // after every change, and every 30 s for changed answers.
            let (proxy, st) = (proxy.clone(), state.clone());
            tokio::spawn(async move {
                loop {
                    proxy.block_denied_names().await;
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), st.changed.notified()).await;
                }
            });
        }
        {
            let st = state.clone();
            let (dir, every) = (cfg.rules_dir.clone(), cfg.rules_reload);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _w = st.writer.lock().await;
                    st.reload_always(&dir);
                }
            });
        }
        let listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("listen on {}", cfg.http_addr))?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            http = %listener.local_addr()?,
            %dns,
            mode = cfg.mode.as_str(),
            ?upstreams,
            "egress listening"
        );
        // As PID 1 in its container the kernel ignores signals without a
        // handler (a pod would wait out its grace period): end on SIGTERM and
        // SIGINT. The rules stay in the kernel (fail closed) until the next
        // egress replaces them; upstream deleted them here.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
        tokio::select! {
            () = Api::new(state, &cfg).serve(listener) => {}
            _ = term.recv() => tracing::info!("SIGTERM: exiting; the rules stay in force"),
            _ = int.recv() => tracing::info!("SIGINT: exiting; the rules stay in force"),
        }
        Ok(())
    })
}
