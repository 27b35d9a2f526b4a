//! The execd binary: configuration, logging, runtime, listener.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context as _;
use execd::api::{serve, App};
use execd::command::env::Env;
use execd::config::{Config, ConfigError, USAGE};
use tracing::level_filters::LevelFilter;

fn main() {
    let cfg = match Config::parse(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(ConfigError::Help) => {
            print!("{USAGE}");
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("execd: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(cfg: &Config) -> anyhow::Result<()> {
    let level = match cfg.log_level {
        i64::MIN..=3 => LevelFilter::ERROR,
        4 => LevelFilter::WARN,
        5 | 6 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(false);
    match &cfg.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open log file {}", path.display()))?;
            builder.with_writer(std::sync::Mutex::new(file)).init();
        }
        None => builder.with_writer(std::io::stdout).init(),
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one: every running command
/// holds pipes, and every client a socket.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Listens with a deep accept queue, so that a burst of clients (an agent
/// firing a thousand commands) is queued rather than reset.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn run(cfg: Config) -> anyhow::Result<()> {
    init_logging(&cfg)?;
    raise_nofile();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .context("start the runtime")?;
    rt.block_on(async move {
        execd::process::reaper::start().context("start the child reaper")?;
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.port));
        let listener = listen(addr).with_context(|| format!("listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), %local, "execd listening");
        let base_env = Env::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        );
        let app = App::new(cfg, base_env);
        app.start_maintenance();
        app.warm_up();
        // As PID 1 (bootstrap's EXECD_INIT=1) the kernel ignores signals
        // without a handler: end on SIGTERM and SIGINT explicitly.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handle SIGINT")?;
        tokio::select! {
            () = serve(listener, app) => {}
            _ = term.recv() => tracing::info!("SIGTERM: exiting"),
            _ = int.recv() => tracing::info!("SIGINT: exiting"),
        }
        Ok(())
    })
}
