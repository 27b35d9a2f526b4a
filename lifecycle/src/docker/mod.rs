//! The Docker driver: images, the execd bundle, sandbox containers (and
//! their egress sidecars), their state, pause/resume and removal, over the
//! engine's API with `bollard` (version negotiated at connect).

pub mod bundle;
pub mod resources;
pub mod snapshot;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime};

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, ContainerInspectResponse, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, InspectContainerOptions,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use crate::model::{format_time, parse_time, SandboxStatus};

/// execd's port inside every sandbox.
pub const EXECD_PORT: u16 = 44772;
/// The conventional HTTP port published for the user's own service.
pub const HTTP_PORT: u16 = 8080;
/// The egress sidecar's API port.
pub const EGRESS_PORT: u16 = 18080;

/// Why a Docker operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The engine cannot be reached or answered with an unexpected error.
    #[error("docker engine unavailable: {0}")]
    Unavailable(String),
    /// The image is not present and could not be pulled.
    #[error("image {image} is not available: {reason}")]
    Image {
        /// The image reference.
        image: String,
        /// Why.
        reason: String,
    },
    /// The container does not exist.
    #[error("container {0} not found")]
    NotFound(String),
    /// The container is not in a state that allows the operation.
    #[error("{0}")]
    Conflict(String),
    /// Creating, preparing or starting a container failed.
    #[error("{0}")]
    Start(String),
    /// execd (or the egress sidecar) did not become ready.
    #[error("{0}")]
    NotReady(String),
}

fn engine(e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => DockerError::NotFound(message),
        BollardError::DockerResponseServerError {
            status_code: 409 | 304,
            message,
        } => DockerError::Conflict(message),
        other => DockerError::Unavailable(other.to_string()),
    }
}

/// Everything a sandbox container is created from.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Sandbox id.
    pub id: String,
    /// Image reference.
    pub image: String,
    /// Registry credentials for a pull, as `(user, password)`.
    pub auth: Option<(String, String)>,
    /// The user's argv (the container's `Cmd`; bootstrap.sh is the entrypoint).
    pub cmd: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Labels (user metadata and ours).
    pub labels: HashMap<String, String>,
    /// Nano-CPUs limit.
    pub nano_cpus: Option<i64>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// Egress sidecar to start first, sharing its network namespace.
    pub egress: Option<EgressSpec>,
}

/// The egress sidecar of a sandbox.
#[derive(Debug, Clone, Default)]
pub struct EgressSpec {
    /// `KEY=VALUE` pairs (rules, mode, token).
    pub env: Vec<String>,
    /// Token for its API (`OPENSANDBOX-EGRESS-AUTH`).
    pub token: String,
}

/// Driver settings (from the `[docker]`, `[runtime]` and `[egress]` sections).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Label prefix of our containers (`opensandbox.io/`).
    pub label_prefix: String,
    /// Image holding `/execd` and `/bootstrap.sh`.
    pub execd_image: String,
    /// Egress sidecar image.
    pub egress_image: String,
    /// Address sandbox ports are published on.
    pub publish_host: String,
    /// Docker network mode (`bridge`, `host`, or a network name).
    pub network_mode: String,
    /// Capabilities dropped from every sandbox.
    pub drop_capabilities: Vec<String>,
    /// `no-new-privileges`.
    pub no_new_privileges: bool,
    /// pids limit.
    pub pids_limit: Option<i64>,
    /// AppArmor profile.
    pub apparmor_profile: Option<String>,
    /// Seccomp profile.
    pub seccomp_profile: Option<String>,
    /// Disable IPv6 in the sidecar's namespace.
    pub egress_disable_ipv6: bool,
    /// How long to wait for execd and the sidecar.
    pub ready_timeout: Duration,
}

/// What a sandbox container looks like now.
#[derive(Debug, Clone)]
pub struct View {
    /// Sandbox id (from its label).
    pub id: String,
    /// Container id.
    pub container_id: String,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Status mapped from Docker's state.
    pub status: SandboxStatus,
    /// Whether the container runs and is not paused.
    pub running: bool,
    /// Whether it is paused.
    pub paused: bool,
    /// Creation time.
    pub created: SystemTime,
    /// Image reference it was created from.
    pub image: String,
    /// The user's argv.
    pub cmd: Vec<String>,
    /// Host ports of the sandbox's published ports (from its sidecar when it has one).
    pub host_ports: BTreeMap<u16, u16>,
    /// Egress sidecar container name, when it has one.
    pub sidecar: Option<String>,
}

/// The Docker driver.
#[derive(Debug)]
pub struct Driver {
    /// The engine client once connected (see [`Driver::docker`]).
    engine: std::sync::Mutex<Option<Docker>>,
    settings: Settings,
    bundle: OnceCell<bytes::Bytes>,
}

impl Driver {
    /// A driver for the engine at `DOCKER_HOST` or the local socket. It
    /// connects (and negotiates the API version) now if it can, else on
    /// first use: an engine that is down does not stop the server, every
    /// operation fails with [`DockerError::Unavailable`] until it answers.
    pub async fn connect(settings: Settings) -> Result<Self, DockerError> {
        let driver = Self {
            engine: std::sync::Mutex::new(None),
            settings,
            bundle: OnceCell::new(),
        };
        if let Err(e) = driver.docker().await {
            tracing::warn!(error = %e, "Docker engine not reachable; requests get 503 until it is");
        }
        Ok(driver)
    }

    /// The engine client, connecting on first use and after a failed connect.
    async fn docker(&self) -> Result<Docker, DockerError> {
        if let Some(d) = self.engine.lock().ok().and_then(|g| g.clone()) {
            return Ok(d);
        }
        let d = Docker::connect_with_defaults()
            .map_err(|e| DockerError::Unavailable(e.to_string()))?
            .negotiate_version()
            .await
            .map_err(|e| DockerError::Unavailable(e.to_string()))?;
        if let Ok(mut g) = self.engine.lock() {
            *g = Some(d.clone());
        }
        Ok(d)
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn label(&self, key: &str) -> String {
        format!("{}{key}", self.settings.label_prefix)
    }

    /// Makes sure `image` is present: never pulls a local image; pulls with
    /// `auth` otherwise.
    pub async fn ensure_image(
        &self,
        image: &str,
        auth: Option<&(String, String)>,
    ) -> Result<(), DockerError> {
        match self.docker().await?.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(engine(e)),
        }
        let opts = CreateImageOptionsBuilder::new().from_image(image).build();
        let creds = auth.map(|(u, p)| bollard::auth::DockerCredentials {
            username: Some(u.clone()),
            password: Some(p.clone()),
            ..Default::default()
        });
        let mut pull = self.docker().await?.create_image(Some(opts), None, creds);
        while let Some(step) = pull.next().await {
            step.map_err(|e| DockerError::Image {
                image: image.to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The tar placing execd and bootstrap.sh in `/opt/opensandbox`, read
    /// once from the execd image.
    async fn bundle(&self) -> Result<bytes::Bytes, DockerError> {
        self.bundle
            .get_or_try_init(|| async {
                let docker = self.docker().await?;
                bundle::from_image(&docker, &self.settings.execd_image).await
            })
            .await
            .cloned()
    }

    /// Creates, prepares and starts a sandbox (and its sidecar), then waits
    /// for execd. Anything created is removed again on failure.
    pub async fn create(&self, spec: &Spec) -> Result<View, DockerError> {
        self.ensure_image(&spec.image, spec.auth.as_ref()).await?;
        let bundle = self.bundle().await?;
        let sidecar = match &spec.egress {
            Some(e) => {
                let name = sidecar_name(&spec.id);
                if let Err(err) = self.start_sidecar(&name, spec, e).await {
                    self.remove_container(&name).await;
                    return Err(err);
                }
                Some(name)
            }
            None => None,
        };
        let name = container_name(&spec.id);
        let r = self
            .create_main(&name, spec, sidecar.as_deref(), bundle)
            .await;
        let view = match r {
            Ok(()) => self.inspect(&spec.id).await.and_then(|v| {
                v.ok_or_else(|| {
                    DockerError::Start(format!("container {name} vanished after start"))
                })
            }),
            Err(e) => Err(e),
        };
        let ready = match view {
            Ok(v) => self.wait_execd(&v).await.map(|()| v),
            Err(e) => Err(e),
        };
        if ready.is_err() {
            self.remove_container(&name).await;
            if let Some(s) = &sidecar {
                self.remove_container(s).await;
            }
        }
        ready
    }

    async fn start_sidecar(
        &self,
        name: &str,
        spec: &Spec,
        egress: &EgressSpec,
    ) -> Result<(), DockerError> {
        let s = &self.settings;
        self.ensure_image(&s.egress_image, None).await?;
        let mut labels = HashMap::new();
        labels.insert(self.label("egress-sidecar-for"), spec.id.clone());
        let ports = [EXECD_PORT, HTTP_PORT, EGRESS_PORT];
        let mut sysctls = HashMap::new();
        if s.egress_disable_ipv6 {
            for k in ["all", "default", "lo"] {
                sysctls.insert(format!("net.ipv6.conf.{k}.disable_ipv6"), "1".to_string());
            }
        }
        let body = ContainerCreateBody {
            image: Some(s.egress_image.clone()),
            env: Some(egress.env.clone()),
            labels: Some(labels),
            exposed_ports: Some(exposed(&ports)),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings(&ports, &s.publish_host)),
                cap_add: Some(vec!["NET_ADMIN".into()]),
                network_mode: Some(s.network_mode.clone()),
                sysctls: (!sysctls.is_empty()).then_some(sysctls),
                ..Default::default()
            }),
            ..Default::default()
        };
        let docker = self.docker().await?;
        create_named(&docker, name, body, "egress sidecar").await?;
        start_named(&docker, name, "egress sidecar").await?;
        let info = self
            .docker()
            .await?
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(engine)?;
        let port = host_ports(&info)
            .get(&EGRESS_PORT)
            .copied()
            .ok_or_else(|| DockerError::Start("egress sidecar has no published API port".into()))?;
        let deadline = Instant::now() + s.ready_timeout;
        let headers = [("OPENSANDBOX-EGRESS-AUTH", egress.token.as_str())];
        while Instant::now() < deadline {
            if http_ok(&s.publish_host, port, "/healthz", &headers).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(DockerError::NotReady(format!(
            "egress sidecar did not answer /healthz within {:?}",
            s.ready_timeout
        )))
    }

    async fn create_main(
        &self,
        name: &str,
        spec: &Spec,
        sidecar: Option<&str>,
        bundle: bytes::Bytes,
    ) -> Result<(), DockerError> {
        let s = &self.settings;
        let mut security = Vec::new();
        if s.no_new_privileges {
            security.push("no-new-privileges:true".to_string());
        }
        if let Some(p) = &s.apparmor_profile {
            security.push(format!("apparmor={p}"));
        }
        if let Some(p) = &s.seccomp_profile {
            security.push(format!("seccomp={p}"));
        }
        let mut drop = s.drop_capabilities.clone();
        for cap in ["NET_ADMIN", "NET_RAW"] {
            if !drop.iter().any(|c| c.eq_ignore_ascii_case(cap)) {
                drop.push(cap.into());
            }
        }
        let ports = [EXECD_PORT, HTTP_PORT];
        let (network_mode, exposed_ports, port_bindings) = match sidecar {
            Some(sc) => (format!("container:{sc}"), None, None),
            None if s.network_mode == "host" => ("host".to_string(), None, None),
            None => (
                s.network_mode.clone(),
                Some(exposed(&ports)),
                Some(bindings(&ports, &s.publish_host)),
            ),
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: Some(vec!["/opt/opensandbox/bootstrap.sh".into()]),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports,
            host_config: Some(HostConfig {
                port_bindings,
                network_mode: Some(network_mode),
                cap_drop: Some(drop),
                security_opt: Some(security),
                pids_limit: s.pids_limit,
                nano_cpus: spec.nano_cpus,
                memory: spec.memory,
                init: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        create_named(&self.docker().await?, name, body, "container").await?;
        let upload = bollard::query_parameters::UploadToContainerOptionsBuilder::new()
            .path("/")
            .build();
        self.docker()
            .await?
            .upload_to_container(name, Some(upload), bollard::body_full(bundle))
            .await
            .map_err(|e| DockerError::Start(format!("install execd into the container: {e}")))?;
        start_named(&self.docker().await?, name, "container").await
    }

    /// Waits until execd answers `/ping` through its published port.
    async fn wait_execd(&self, v: &View) -> Result<(), DockerError> {
        let s = &self.settings;
        if !v.running {
            return Err(DockerError::NotReady(format!(
                "sandbox stopped before execd answered: {}",
                v.status.message.clone().unwrap_or_default()
            )));
        }
        let (host, port) = if s.network_mode == "host" && v.sidecar.is_none() {
            ("127.0.0.1".to_string(), EXECD_PORT)
        } else {
            let port = v.host_ports.get(&EXECD_PORT).copied().ok_or_else(|| {
                DockerError::Start("the sandbox has no published execd port".into())
            })?;
            (s.publish_host.clone(), port)
        };
        let deadline = Instant::now() + s.ready_timeout;
        let mut pause = Duration::from_millis(5);
        while Instant::now() < deadline {
            if http_ok(&host, port, "/ping", &[]).await {
                return Ok(());
            }
            // A user command that ends at once takes the container with it.
            if let Ok(Some(now)) = self.inspect(&v.id).await {
                if !now.running {
                    return Err(DockerError::NotReady(format!(
                        "sandbox stopped before execd answered: {}",
                        now.status.message.unwrap_or_default()
                    )));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Err(DockerError::NotReady(format!(
            "execd did not answer /ping within {:?}",
            s.ready_timeout
        )))
    }

    /// The sandbox with this id, if its container exists.
    pub async fn inspect(&self, id: &str) -> Result<Option<View>, DockerError> {
        match self
            .docker()
            .await?
            .inspect_container(&container_name(id), None::<InspectContainerOptions>)
            .await
        {
            Ok(info) => Ok(self.view(info).await),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(engine(e)),
        }
    }

    /// Containers (any state) carrying our label `key`.
    async fn labelled(
        &self,
        key: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_string(), vec![self.label(key)]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker()
            .await?
            .list_containers(Some(opts))
            .await
            .map_err(engine)
    }

    /// Every sandbox container (any state).
    pub async fn list(&self) -> Result<Vec<View>, DockerError> {
        let summaries = self.labelled("id").await?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            // One that vanished in between is skipped.
            if let Ok(info) = self
                .docker()
                .await?
                .inspect_container(&id, None::<InspectContainerOptions>)
                .await
            {
                if let Some(v) = self.view(info).await {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    /// Egress sidecars whose sandbox container is gone.
    pub async fn orphan_sidecars(&self) -> Result<Vec<String>, DockerError> {
        let summaries = self.labelled("egress-sidecar-for").await?;
        let mut out = Vec::new();
        for s in summaries {
            let owner = s
                .labels
                .as_ref()
                .and_then(|l| l.get(&self.label("egress-sidecar-for")))
                .cloned()
                .unwrap_or_default();
            if self.inspect(&owner).await?.is_none() {
                if let Some(id) = s.id {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    async fn view(&self, info: ContainerInspectResponse) -> Option<View> {
        let mut labels: HashMap<String, String> = info
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        // Blanked by a snapshot commit (see `snapshot`): not ours.
        labels.retain(|k, v| !(v.is_empty() && k.starts_with(&self.settings.label_prefix)));
        let id = labels.get(&self.label("id"))?.clone();
        let created = info
            .created
            .as_deref()
            .and_then(parse_time)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let state = info.state.clone().unwrap_or_default();
        let finished = state
            .finished_at
            .as_deref()
            .filter(|f| !f.starts_with("0001-"))
            .and_then(parse_time);
        let status = state::status_of(&state, format_time(finished.unwrap_or(created)));
        let sidecar = labels.get(&self.label("egress-sidecar")).cloned();
        let host_ports = match &sidecar {
            Some(name) => match self
                .docker()
                .await
                .ok()?
                .inspect_container(name, None::<InspectContainerOptions>)
                .await
            {
                Ok(sc) => host_ports(&sc),
                Err(_) => BTreeMap::new(),
            },
            None => host_ports(&info),
        };
        let config = info.config.unwrap_or_default();
        Some(View {
            id,
            container_id: info.id.unwrap_or_default(),
            running: state.running == Some(true) && state.paused != Some(true),
            paused: state.paused == Some(true),
            labels,
            status,
            created,
            image: config.image.unwrap_or_default(),
            cmd: config.cmd.unwrap_or_default(),
            host_ports,
            sidecar,
        })
    }

    /// Removes a sandbox's container and sidecar (killing them first).
    pub async fn remove(&self, v: &View) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self
            .docker()
            .await?
            .remove_container(&v.container_id, Some(opts))
            .await
        {
            Ok(()) => {}
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(engine(e)),
        }
        if let Some(sc) = &v.sidecar {
            self.remove_container(sc).await;
        }
        Ok(())
    }

    /// Removes a container by name or id, ignoring errors (cleanup paths).
    pub async fn remove_container(&self, name: &str) {
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        let Ok(docker) = self.docker().await else {
            return;
        };
        if let Err(e) = docker.remove_container(name, Some(opts)).await {
            tracing::debug!(container = name, error = %e, "cleanup remove failed");
        }
    }

    /// `docker pause` of the sandbox (and its sidecar).
    pub async fn pause(&self, v: &View) -> Result<(), DockerError> {
        self.docker()
            .await?
            .pause_container(&v.container_id)
            .await
            .map_err(engine)?;
        if let Some(sc) = &v.sidecar {
            if let Err(e) = self.docker().await?.pause_container(sc).await {
                // Roll back: a half-paused sandbox is worse than none.
                let _ = self
                    .docker()
                    .await?
                    .unpause_container(&v.container_id)
                    .await;
                return Err(engine(e));
            }
        }
        Ok(())
    }

    /// `docker unpause` of the sandbox (and its sidecar).
    pub async fn unpause(&self, v: &View) -> Result<(), DockerError> {
        if let Some(sc) = &v.sidecar {
            self.docker()
                .await?
                .unpause_container(sc)
                .await
                .map_err(engine)?;
        }
        self.docker()
            .await?
            .unpause_container(&v.container_id)
            .await
            .map_err(engine)
    }

    /// The last `tail` lines of the container's output.
    pub async fn logs(&self, v: &View, tail: usize) -> Result<String, DockerError> {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&tail.to_string())
            .build();
        let mut out = String::new();
        let docker = self.docker().await?;
        let mut s = docker.logs(&v.container_id, Some(opts));
        while let Some(chunk) = s.next().await {
            out.push_str(&chunk.map_err(engine)?.to_string());
        }
        Ok(out)
    }
}

/// The container name of sandbox `id`.
pub fn container_name(id: &str) -> String {
    format!("sandbox-{id}")
}

/// The container name of sandbox `id`'s egress sidecar.
pub fn sidecar_name(id: &str) -> String {
    format!("sandbox-egress-{id}")
}

fn exposed(ports: &[u16]) -> HashMap<String, HashMap<(), ()>> {
    ports
        .iter()
        .map(|p| (format!("{p}/tcp"), HashMap::new()))
        .collect()
}

/// Publishes each port on `host` with a host port Docker picks (no race
/// between choosing a free port and binding it).
fn bindings(ports: &[u16], host: &str) -> HashMap<String, Option<Vec<PortBinding>>> {
    ports
        .iter()
        .map(|p| {
            (
                format!("{p}/tcp"),
                Some(vec![PortBinding {
                    host_ip: Some(host.to_string()),
                    host_port: Some(String::new()),
                }]),
            )
        })
        .collect()
}

/// Container port → host port, from a started container.
fn host_ports(info: &ContainerInspectResponse) -> BTreeMap<u16, u16> {
    let mut out = BTreeMap::new();
    let ports = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref());
    for (k, v) in ports.into_iter().flatten() {
        let Some(cport) = k.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let hport = v
            .iter()
            .flatten()
            .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()));
        if let Some(h) = hport {
            out.insert(cport, h);
        }
    }
    out
}

/// Whether `GET path` on `host:port` answers 2xx within a second.
async fn http_ok(host: &str, port: u16, path: &str, headers: &[(&str, &str)]) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, format!("{host}:{port}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status().is_success())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Creates the container `name` from `body` (`what` names it in the error).
pub(crate) async fn create_named(
    docker: &Docker,
    name: &str,
    body: ContainerCreateBody,
    what: &str,
) -> Result<(), DockerError> {
    let opts = CreateContainerOptionsBuilder::new().name(name).build();
    docker
        .create_container(Some(opts), body)
        .await
        .map(|_| ())
        .map_err(|e| DockerError::Start(format!("create {what}: {e}")))
}

/// Starts the container `name` (`what` names it in the error).
async fn start_named(docker: &Docker, name: &str, what: &str) -> Result<(), DockerError> {
    docker
        .start_container(
            name,
            None::<bollard::query_parameters::StartContainerOptions>,
        )
        .await
        .map_err(|e| DockerError::Start(format!("start {what}: {e}")))
}
