//! The sandbox service: validation, create, get, list, delete, pause,
//! resume, renew, metadata and endpoints, and expiry timers that survive a
//! restart (expiries live in the store and in labels).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use crate::docker::{
    sidecar_name, DockerError, Driver, EgressSpec, Spec, View, EGRESS_PORT, EXECD_PORT, HTTP_PORT,
};
use crate::model::{
    format_time, from_millis, parse_time, to_millis, CreateSandboxRequest, CreateSandboxResponse,
    Endpoint, Expiration, ImageRef, ListSandboxesResponse, Pagination, Sandbox,
};
use crate::store::{SandboxRow, Store, StoreError, Transition};

/// Metadata keys under this prefix are refused, whatever the configured
/// label prefix (upstream reserves it).
pub const RESERVED_PREFIX: &str = "opensandbox.io/";
/// Shortest timeout a sandbox may be created with, in seconds.
pub const MIN_TIMEOUT: i64 = 60;
/// Largest page a list returns.
pub const MAX_PAGE_SIZE: usize = 200;

/// Why an operation failed; each variant is one kind of HTTP answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The request is invalid (400).
    #[error("{message}")]
    Invalid {
        /// Error code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The sandbox (or snapshot) does not exist (404).
    #[error("{message}")]
    NotFound {
        /// Error code.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// Wrong state for the operation (409).
    #[error("{message}")]
    Conflict {
        /// Error code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// The sandbox could not be created or started (500/503).
    #[error("{message}")]
    Start {
        /// Error code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// The Docker engine failed or is unreachable (503).
    #[error("docker: {0}")]
    Docker(DockerError),
    /// The store failed (500).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<DockerError> for LifecycleError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Image { .. } => Self::Start {
                code: "DOCKER::SANDBOX_IMAGE_PULL_FAILED",
                message: e.to_string(),
            },
            DockerError::Start(m) => Self::Start {
                code: "DOCKER::SANDBOX_START_FAILED",
                message: m,
            },
            DockerError::NotReady(m) => Self::Start {
                code: "DOCKER::SANDBOX_EXECD_START_FAILED",
                message: m,
            },
            other => Self::Docker(other),
        }
    }
}

fn invalid(code: &'static str, message: impl Into<String>) -> LifecycleError {
    LifecycleError::Invalid {
        code,
        message: message.into(),
    }
}

fn not_found(id: &str) -> LifecycleError {
    LifecycleError::NotFound {
        code: "DOCKER::SANDBOX_NOT_FOUND",
        message: format!("Sandbox {id} not found."),
    }
}

/// Service settings (from the configuration).
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Label prefix of our containers.
    pub label_prefix: String,
    /// Host put into endpoint answers.
    pub public_host: String,
    /// Largest timeout allowed, in seconds.
    pub max_timeout: Option<i64>,
    /// Environment every sandbox gets.
    pub sandbox_env: BTreeMap<String, String>,
    /// Egress mode given to sidecars (`dns` or `dns+nft`).
    pub egress_mode: String,
    /// Host (`host[:port]`) put into server-proxy endpoints (`server.eip`);
    /// the request's `Host` when unset.
    pub server_proxy_host: Option<String>,
}

/// Where the server proxy sends requests for one port of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    /// `host:port` to connect to.
    pub authority: String,
    /// Path put before the request's (`/proxy/{port}` through execd, or empty).
    pub path_prefix: String,
}

/// How a client asked for a server-proxy endpoint.
#[derive(Debug, Clone, Copy)]
pub struct ViaServer<'a> {
    /// The request's `Host`.
    pub host: &'a str,
    /// The mount prefix the client used (`/v1` or empty).
    pub prefix: &'a str,
}

/// The sandbox service.
#[derive(Debug)]
pub struct Service {
    pub(crate) driver: Driver,
    pub(crate) store: Arc<Store>,
    pub(crate) settings: ServiceSettings,
    /// Expiry timer generation per sandbox: a timer fires only if its
    /// generation is still current.
    timers: Mutex<HashMap<String, u64>>,
}

/// `GET /sandboxes` query.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// States to keep (any of them, case-insensitive).
    pub states: Vec<String>,
    /// Metadata pairs that must all match.
    pub metadata: Vec<(String, String)>,
    /// 1-based page.
    pub page: usize,
    /// Page size.
    pub page_size: usize,
}

impl Service {
    /// A service over `driver` and `store`.
    pub fn new(driver: Driver, store: Arc<Store>, settings: ServiceSettings) -> Arc<Self> {
        Arc::new(Self {
            driver,
            store,
            settings,
            timers: Mutex::new(HashMap::new()),
        })
    }

    fn label(&self, key: &str) -> String {
        format!("{}{key}", self.settings.label_prefix)
    }

    /// Creates a sandbox and answers once execd answers.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateSandboxRequest,
    ) -> Result<CreateSandboxResponse, LifecycleError> {
        let checked = self.validate(&req)?;
        let id = uuid::Uuid::new_v4().to_string();
        // Millisecond precision: what the store keeps, so answers agree.
        let created = from_millis(to_millis(SystemTime::now()));
        let expires = checked
            .timeout
            .map(|t| created + Duration::from_secs(u64::try_from(t).unwrap_or(0)));
        let mut labels: HashMap<String, String> = req
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(self.label("id"), id.clone());
        if let Some(snap) = &checked.snapshot_id {
            labels.insert(self.label("snapshot-id"), snap.clone());
        }
        match expires {
            Some(e) => labels.insert(self.label("expires-at"), format_time(e)),
            None => labels.insert(self.label("manual-cleanup"), "true".into()),
        };
        if let Some(p) = &req.platform {
            labels.insert(self.label("platform-os"), p.os.clone());
            labels.insert(self.label("platform-arch"), p.arch.clone());
        }
        let mut env: BTreeMap<String, String> = self.settings.sandbox_env.clone();
        for (k, v) in &req.env {
            if let Some(v) = v {
                env.insert(k.clone(), v.clone());
            }
        }
        env.insert("OPENSANDBOX_ID".into(), id.clone());
        let egress = req.network_policy.as_ref().map(|policy| {
            let token = format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            );
            EgressSpec {
                env: vec![
                    format!("OPENSANDBOX_EGRESS_RULES={policy}"),
                    format!("OPENSANDBOX_EGRESS_MODE={}", self.settings.egress_mode),
                    format!("OPENSANDBOX_EGRESS_TOKEN={token}"),
                    format!("OPENSANDBOX_EGRESS_SANDBOX_ID={id}"),
                ],
                token,
            }
        });
        if let Some(e) = &egress {
            labels.insert(self.label("egress-auth-token"), e.token.clone());
            labels.insert(self.label("egress-sidecar"), sidecar_name(&id));
        }
        let spec = Spec {
            id: id.clone(),
            image: checked.image.clone(),
            auth: checked.auth.clone(),
            cmd: checked.entrypoint.clone(),
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels,
            nano_cpus: checked.nano_cpus,
            memory: checked.memory,
            egress,
        };
        let span = tracing::info_span!("create", sandbox = %id, image = %spec.image);
        // Record first: a crash mid-create leaves a row the restart cleans up.
        let mut row = SandboxRow {
            id: id.clone(),
            container_id: String::new(),
            sidecar_id: spec.egress.as_ref().map(|_| sidecar_name(&id)),
            created_at_ms: to_millis(created),
            expires_at_ms: expires.map(to_millis),
            metadata: Some(req.metadata.clone()),
            deleted: false,
        };
        self.store.upsert_sandbox(&row)?;
        let view = match self.driver.create(&spec).instrument(span).await {
            Ok(v) => v,
            Err(e) => {
                let _ = self.store.remove_sandbox(&id);
                tracing::warn!(sandbox = %id, error = %e, "create failed");
                return Err(e.into());
            }
        };
        row.container_id = view.container_id;
        row.sidecar_id = view.sidecar;
        self.store.upsert_sandbox(&row)?;
        let at = format_time(created);
        let status = crate::model::SandboxStatus {
            state: "Running".into(),
            reason: Some("CONTAINER_RUNNING".into()),
            message: Some("Sandbox container started successfully.".into()),
            last_transition_at: Some(at.clone()),
        };
        self.store.add_transition(
            &id,
            &Transition {
                state: status.state.clone(),
                reason: status.reason.clone(),
                message: status.message.clone(),
                at_ms: row.created_at_ms,
            },
        )?;
        if let Some(e) = expires {
            self.schedule(&id, e);
        }
        tracing::info!(sandbox = %id, "sandbox created");
        Ok(CreateSandboxResponse {
            id,
            status,
            metadata: (!req.metadata.is_empty()).then(|| req.metadata.clone()),
            platform: req.platform.clone(),
            expires_at: expires.map(format_time),
            created_at: at,
            entrypoint: checked.entrypoint,
        })
    }

    fn validate(&self, req: &CreateSandboxRequest) -> Result<Checked, LifecycleError> {
        const P: &str = "SANDBOX::INVALID_PARAMETER";
        if req.extensions.contains_key("poolRef") {
            return Err(invalid(
                "SANDBOX::UNSUPPORTED_POOL_REF",
                "poolRef is not supported when runtime.type='docker'.",
            ));
        }
        if req.secure_access {
            return Err(invalid(
                P,
                "secureAccess is not supported when runtime.type='docker'.",
            ));
        }
        if req.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(invalid(
                "SANDBOX::API_NOT_SUPPORTED",
                "volumes are not supported by this server yet.",
            ));
        }
        if req
            .credential_proxy
            .as_ref()
            .and_then(|c| c.get("enabled"))
            .and_then(serde_json::Value::as_bool)
            == Some(true)
        {
            return Err(invalid(
                "SANDBOX::API_NOT_SUPPORTED",
                "credentialProxy is not supported by this server yet.",
            ));
        }
        // Exactly one source: an image, or a snapshot (see `snapshots`).
        let image = match (&req.image, &req.snapshot_id) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    P,
                    "exactly one of image and snapshotId is required.",
                ))
            }
            (None, Some(snap)) => self.restorable_image(snap)?,
            (Some(i), None) => Some(i.uri.trim().to_string())
                .filter(|u| !u.is_empty())
                .ok_or_else(|| invalid(P, "image.uri is required."))?,
        };
        let entrypoint = match req.entrypoint.as_deref() {
            None if req.snapshot_id.is_some() => {
                vec!["tail".into(), "-f".into(), "/dev/null".into()]
            }
            None | Some([]) => {
                return Err(invalid(
                    "DOCKER::INVALID_ENTRYPOINT",
                    "entrypoint must have at least one element.",
                ))
            }
            Some([one]) if one.contains(char::is_whitespace) => {
                split_words(one).filter(|w| !w.is_empty()).ok_or_else(|| {
                    invalid(
                        "DOCKER::INVALID_ENTRYPOINT",
                        format!("cannot split entrypoint {one:?}"),
                    )
                })?
            }
            Some(v) => v.to_vec(),
        };
        if let Some(p) = &req.platform {
            let os = p.os.to_ascii_lowercase();
            let arch = p.arch.to_ascii_lowercase();
            if os != "linux" || !matches!(arch.as_str(), "amd64" | "arm64") {
                return Err(invalid(
                    P,
                    format!("unsupported platform {os}/{arch}: linux/amd64 or linux/arm64"),
                ));
            }
        }
        let timeout = match req.timeout {
            None => None,
            Some(t) if t < MIN_TIMEOUT => {
                return Err(invalid(
                    P,
                    format!("timeout must be at least {MIN_TIMEOUT} seconds, got {t}."),
                ))
            }
            Some(t) => {
                if let Some(max) = self.settings.max_timeout {
                    if t > max {
                        return Err(invalid(
                            P,
                            format!("timeout {t} exceeds the maximum of {max} seconds."),
                        ));
                    }
                }
                Some(t)
            }
        };
        for (k, v) in &req.metadata {
            check_label(k, v, &self.settings.label_prefix)?;
        }
        for k in req.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(
                    P,
                    format!("invalid environment variable name {k:?}."),
                ));
            }
        }
        let limits = req.resource_limits.clone().unwrap_or_default();
        let mut nano_cpus = None;
        let mut memory = None;
        for (k, v) in &limits {
            match k.as_str() {
                "cpu" => {
                    nano_cpus =
                        Some(crate::docker::resources::cpu_nanos(v).map_err(|m| invalid(P, m))?)
                }
                "memory" => {
                    memory =
                        Some(crate::docker::resources::memory_bytes(v).map_err(|m| invalid(P, m))?)
                }
                "gpu" => {
                    return Err(invalid(
                        "SANDBOX::API_NOT_SUPPORTED",
                        "gpu limits are not supported by this server.",
                    ))
                }
                other => {
                    return Err(invalid(
                        P,
                        format!("unknown resource limit {other:?}: cpu or memory"),
                    ))
                }
            }
        }
        Ok(Checked {
            image,
            auth: req
                .image
                .as_ref()
                .and_then(|i| i.auth.as_ref())
                .map(|a| (a.username.clone(), a.password.clone())),
            entrypoint,
            timeout,
            nano_cpus,
            memory,
            snapshot_id: req.snapshot_id.clone(),
        })
    }

    async fn view(&self, id: &str) -> Result<View, LifecycleError> {
        self.driver.inspect(id).await?.ok_or_else(|| not_found(id))
    }

    fn sandbox(&self, v: &View) -> Result<Sandbox, LifecycleError> {
        let row = self.store.get_sandbox(&v.id)?;
        let metadata = match row.as_ref().and_then(|r| r.metadata.clone()) {
            Some(m) => m,
            None => v
                .labels
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with(&self.settings.label_prefix)
                        && !k.starts_with("org.opencontainers.image.")
                        && !k.starts_with("com.docker.")
                        && !k.starts_with("desktop.docker.")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let expires = self.expiry_of(v, row.as_ref());
        let platform = match (
            v.labels.get(&self.label("platform-os")),
            v.labels.get(&self.label("platform-arch")),
        ) {
            (Some(os), Some(arch)) => Some(crate::model::Platform {
                os: os.clone(),
                arch: arch.clone(),
            }),
            _ => None,
        };
        let snapshot_id = v.labels.get(&self.label("snapshot-id")).cloned();
        Ok(Sandbox {
            id: v.id.clone(),
            image: (!v.image.is_empty() && snapshot_id.is_none()).then(|| ImageRef {
                uri: v.image.clone(),
            }),
            snapshot_id,
            platform,
            status: v.status.clone(),
            metadata: (!metadata.is_empty()).then_some(metadata),
            entrypoint: v.cmd.clone(),
            expires_at: expires.map(format_time),
            created_at: format_time(v.created),
        })
    }

    /// The expiry in force: a renewal in the store wins over the label.
    fn expiry_of(&self, v: &View, row: Option<&SandboxRow>) -> Option<SystemTime> {
        if v.labels.contains_key(&self.label("manual-cleanup")) {
            return None;
        }
        row.and_then(|r| r.expires_at_ms)
            .map(from_millis)
            .or_else(|| {
                v.labels
                    .get(&self.label("expires-at"))
                    .and_then(|s| parse_time(s))
            })
    }

    /// `GET /sandboxes/{id}`.
    pub async fn get(&self, id: &str) -> Result<Sandbox, LifecycleError> {
        let v = self.view(id).await?;
        self.sandbox(&v)
    }

    /// `GET /sandboxes`.
    pub async fn list(&self, q: &ListQuery) -> Result<ListSandboxesResponse, LifecycleError> {
        let mut all = Vec::new();
        for v in self.driver.list().await? {
            let s = self.sandbox(&v)?;
            if !q.states.is_empty()
                && !q
                    .states
                    .iter()
                    .any(|st| st.eq_ignore_ascii_case(&s.status.state))
            {
                continue;
            }
            let md = s.metadata.clone().unwrap_or_default();
            if !q
                .metadata
                .iter()
                .all(|(k, val)| md.get(k).is_some_and(|x| x == val))
            {
                continue;
            }
            all.push((v.created, s));
        }
        all.sort_by_key(|(created, _)| std::cmp::Reverse(*created));
        let total = all.len();
        let total_pages = total.div_ceil(q.page_size);
        let items = all
            .into_iter()
            .skip((q.page - 1).saturating_mul(q.page_size))
            .take(q.page_size)
            .map(|(_, s)| s)
            .collect();
        Ok(ListSandboxesResponse {
            items,
            pagination: Pagination {
                page: q.page,
                page_size: q.page_size,
                total_items: total,
                total_pages,
                has_next_page: q.page < total_pages,
            },
        })
    }

    /// `DELETE /sandboxes/{id}`: gone when this returns.
    pub async fn delete(&self, id: &str) -> Result<(), LifecycleError> {
        let v = self.view(id).await?;
        self.remove(&v).await
    }

    async fn remove(&self, v: &View) -> Result<(), LifecycleError> {
        self.driver.remove(v).await?;
        self.cancel(&v.id);
        self.store.remove_sandbox(&v.id)?;
        tracing::info!(sandbox = %v.id, "sandbox removed");
        Ok(())
    }

    /// `POST /sandboxes/{id}/pause`.
    pub async fn pause(&self, id: &str) -> Result<(), LifecycleError> {
        let v = self.view(id).await?;
        if !v.running {
            return Err(LifecycleError::Conflict {
                code: "DOCKER::SANDBOX_NOT_RUNNING",
                message: format!("Sandbox {id} is not running (state {}).", v.status.state),
            });
        }
        self.driver.pause(&v).await?;
        self.transition(
            id,
            "Paused",
            "CONTAINER_PAUSED",
            "Sandbox container is paused.",
        );
        Ok(())
    }

    /// `POST /sandboxes/{id}/resume`.
    pub async fn resume(&self, id: &str) -> Result<(), LifecycleError> {
        let v = self.view(id).await?;
        if !v.paused {
            return Err(LifecycleError::Conflict {
                code: "DOCKER::SANDBOX_NOT_PAUSED",
                message: format!("Sandbox {id} is not paused (state {}).", v.status.state),
            });
        }
        self.driver.unpause(&v).await?;
        self.transition(
            id,
            "Running",
            "CONTAINER_RUNNING",
            "Sandbox container is running.",
        );
        Ok(())
    }

    fn transition(&self, id: &str, state: &str, reason: &str, message: &str) {
        let t = Transition {
            state: state.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            at_ms: to_millis(SystemTime::now()),
        };
        if let Err(e) = self.store.add_transition(id, &t) {
            tracing::warn!(sandbox = id, error = %e, "transition not recorded");
        }
    }

    /// `POST /sandboxes/{id}/renew-expiration`.
    pub async fn renew(
        self: &Arc<Self>,
        id: &str,
        raw: &str,
    ) -> Result<Expiration, LifecycleError> {
        let at = parse_time(raw).ok_or_else(|| {
            invalid(
                "DOCKER::INVALID_EXPIRATION",
                format!("expiresAt {raw:?} is not an RFC 3339 time."),
            )
        })?;
        if at <= SystemTime::now() {
            return Err(invalid(
                "DOCKER::INVALID_EXPIRATION",
                "expiresAt must be in the future.",
            ));
        }
        // Millisecond precision, as stored.
        let at = from_millis(to_millis(at));
        let v = self.view(id).await?;
        if v.labels.contains_key(&self.label("manual-cleanup")) {
            return Err(LifecycleError::Conflict {
                code: "DOCKER::INVALID_EXPIRATION",
                message: format!("Sandbox {id} has no expiry (manual cleanup)."),
            });
        }
        self.store.set_expiry(id, Some(to_millis(at)))?;
        self.schedule(id, at);
        Ok(Expiration {
            expires_at: format_time(at),
        })
    }

    /// `PATCH /sandboxes/{id}/metadata`: RFC 7396 merge patch.
    pub async fn patch_metadata(
        &self,
        id: &str,
        patch: BTreeMap<String, Option<String>>,
    ) -> Result<Sandbox, LifecycleError> {
        let v = self.view(id).await?;
        for (k, val) in &patch {
            check_label(k, val.as_deref().unwrap_or(""), &self.settings.label_prefix)?;
        }
        let mut md = self.sandbox(&v)?.metadata.unwrap_or_default();
        for (k, val) in patch {
            match val {
                Some(val) => md.insert(k, val),
                None => md.remove(&k),
            };
        }
        self.store.set_metadata(id, &md)?;
        self.sandbox(&v)
    }

    /// `GET /sandboxes/{id}/endpoints/{port}`; with `via_server`
    /// (`use_server_proxy=true`), the server proxy's
    /// `{host}{prefix}/sandboxes/{id}/proxy/{port}`, `host` being
    /// `server.eip` or else the request's.
    pub async fn endpoint(
        &self,
        id: &str,
        port: &str,
        via_server: Option<ViaServer<'_>>,
    ) -> Result<Endpoint, LifecycleError> {
        let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            invalid(
                "DOCKER::INVALID_PORT",
                format!("invalid port {port:?}: 1 to 65535"),
            )
        })?;
        let v = self.view(id).await?;
        let host = &self.settings.public_host;
        let endpoint = if let Some(via) = via_server {
            let base = self
                .settings
                .server_proxy_host
                .as_deref()
                .unwrap_or(via.host);
            format!("{base}{}/sandboxes/{id}/proxy/{port}", via.prefix)
        } else if self.driver.settings().network_mode == "host" && v.sidecar.is_none() {
            format!("{host}:{port}")
        } else {
            let via = if port == HTTP_PORT {
                HTTP_PORT
            } else {
                EXECD_PORT
            };
            let hp = v
                .host_ports
                .get(&via)
                .copied()
                .ok_or_else(|| LifecycleError::Start {
                    code: "DOCKER::NETWORK_MODE_ENDPOINT_UNAVAILABLE",
                    message: format!("Sandbox {id} has no published port for {via}."),
                })?;
            if port == HTTP_PORT {
                format!("{host}:{hp}")
            } else {
                format!("{host}:{hp}/proxy/{port}")
            }
        };
        let headers = (port == EGRESS_PORT)
            .then(|| v.labels.get(&self.label("egress-auth-token")))
            .flatten()
            .map(|t| BTreeMap::from([("OPENSANDBOX-EGRESS-AUTH".to_string(), t.clone())]));
        Ok(Endpoint { endpoint, headers })
    }

    /// Where the server proxy sends requests for `port` of sandbox `id`: the
    /// published execd port with `/proxy/{port}` (execd forwards inside the
    /// sandbox), the published port itself for 8080, `127.0.0.1:{port}` in
    /// host network mode. 409 when the sandbox is not running (a paused one
    /// would hold the request forever).
    pub async fn proxy_target(&self, id: &str, port: u16) -> Result<ProxyTarget, LifecycleError> {
        let v = self.view(id).await?;
        if !v.running {
            return Err(LifecycleError::Conflict {
                code: "DOCKER::SANDBOX_NOT_RUNNING",
                message: format!("Sandbox {id} is not running (state {}).", v.status.state),
            });
        }
        if self.driver.settings().network_mode == "host" && v.sidecar.is_none() {
            return Ok(ProxyTarget {
                authority: format!("127.0.0.1:{port}"),
                path_prefix: String::new(),
            });
        }
        let via = if port == HTTP_PORT {
            HTTP_PORT
        } else {
            EXECD_PORT
        };
        let hp = v
            .host_ports
            .get(&via)
            .copied()
            .ok_or_else(|| LifecycleError::Start {
                code: "DOCKER::NETWORK_MODE_ENDPOINT_UNAVAILABLE",
                message: format!("Sandbox {id} has no published port for {via}."),
            })?;
        // Ports published on every address are reached on loopback.
        let publish = &self.driver.settings().publish_host;
        let host = match publish.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => "127.0.0.1",
            _ => publish.as_str(),
        };
        Ok(ProxyTarget {
            authority: format!("{host}:{hp}"),
            path_prefix: if port == HTTP_PORT {
                String::new()
            } else {
                format!("/proxy/{port}")
            },
        })
    }

    /// The last lines of a sandbox's output.
    pub async fn logs(&self, id: &str, tail: usize) -> Result<String, LifecycleError> {
        let v = self.view(id).await?;
        Ok(self.driver.logs(&v, tail).await?)
    }

    /// Recorded state transitions of a sandbox, oldest first.
    pub async fn events(&self, id: &str) -> Result<Vec<Transition>, LifecycleError> {
        self.view(id).await?;
        Ok(self.store.transitions(id)?)
    }

    /// Finds every sandbox again after a start: restores expiry timers,
    /// removes sandboxes that expired while the server was down, forgets
    /// store rows whose container is gone and removes orphan sidecars.
    pub async fn restore(self: &Arc<Self>) -> Result<usize, LifecycleError> {
        let views = self.driver.list().await?;
        let now = SystemTime::now();
        let mut kept = 0;
        for v in &views {
            let row = self.store.get_sandbox(&v.id)?;
            match self.expiry_of(v, row.as_ref()) {
                Some(at) if at <= now => {
                    tracing::info!(sandbox = %v.id, "expired while the server was down");
                    self.remove(v).await?;
                    continue;
                }
                Some(at) => self.schedule(&v.id, at),
                None => {}
            }
            if row.is_none() {
                // Created by an older run that crashed before recording it.
                self.store.upsert_sandbox(&SandboxRow {
                    id: v.id.clone(),
                    container_id: v.container_id.clone(),
                    sidecar_id: v.sidecar.clone(),
                    created_at_ms: to_millis(v.created),
                    expires_at_ms: None,
                    metadata: None,
                    deleted: false,
                })?;
            }
            kept += 1;
        }
        for row in self.store.list_sandboxes()? {
            if !views.iter().any(|v| v.id == row.id) {
                self.store.remove_sandbox(&row.id)?;
                if let Some(sc) = &row.sidecar_id {
                    self.driver.remove_container(sc).await;
                }
            }
        }
        for sc in self.driver.orphan_sidecars().await? {
            self.driver.remove_container(&sc).await;
        }
        self.recover_snapshots().await?;
        Ok(kept)
    }

    fn cancel(&self, id: &str) {
        if let Ok(mut t) = self.timers.lock() {
            t.remove(id);
        }
    }

    /// Arms (or re-arms) the expiry timer of `id`.
    fn schedule(self: &Arc<Self>, id: &str, at: SystemTime) {
        let generation = {
            let Ok(mut t) = self.timers.lock() else {
                return;
            };
            let g = t.get(id).map_or(1, |g| g + 1);
            t.insert(id.to_string(), g);
            g
        };
        let svc = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            let current = svc.timers.lock().ok().and_then(|t| t.get(&id).copied());
            if current != Some(generation) {
                return; // renewed or deleted meanwhile
            }
            loop {
                match svc.expire(&id).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(sandbox = %id, error = %e, "expiry failed; retrying in 30 s");
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            }
        });
    }

    async fn expire(self: &Arc<Self>, id: &str) -> Result<(), LifecycleError> {
        let Some(v) = self.driver.inspect(id).await? else {
            self.cancel(id);
            self.store.remove_sandbox(id)?;
            return Ok(());
        };
        let row = self.store.get_sandbox(id)?;
        if let Some(at) = self.expiry_of(&v, row.as_ref()) {
            if at > SystemTime::now() {
                self.schedule(id, at);
                return Ok(());
            }
        }
        tracing::info!(sandbox = %id, "sandbox expired");
        self.remove(&v).await
    }
}

struct Checked {
    image: String,
    auth: Option<(String, String)>,
    entrypoint: Vec<String>,
    timeout: Option<i64>,
    nano_cpus: Option<i64>,
    memory: Option<i64>,
    snapshot_id: Option<String>,
}

/// Kubernetes label rules for metadata (which become container labels).
fn check_label(k: &str, v: &str, reserved: &str) -> Result<(), LifecycleError> {
    const C: &str = "SANDBOX::INVALID_METADATA_LABEL";
    let reserved = if k.starts_with(RESERVED_PREFIX) {
        RESERVED_PREFIX
    } else {
        reserved
    };
    if k.starts_with(reserved) {
        return Err(invalid(
            "INVALID_METADATA_LABEL",
            format!("metadata key {k:?} uses the reserved prefix {reserved:?}."),
        ));
    }
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let segment = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            && s.bytes().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.bytes().last().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if !segment(name, 63)
        || prefix.is_some_and(|p| {
            p.len() > 253
                || !p.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                })
        })
    {
        return Err(invalid(C, format!("invalid metadata key {k:?}.")));
    }
    if !v.is_empty() && !segment(v, 63) {
        return Err(invalid(
            C,
            format!("invalid metadata value {v:?} for key {k:?}."),
        ));
    }
    Ok(())
}

/// Splits a command line like `shlex.split`: whitespace-separated words,
/// single and double quotes, backslash escapes. `None` for an unclosed quote.
pub fn split_words(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        x => cur.push(x),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            x @ ('"' | '\\' | '$' | '`') => cur.push(x),
                            x => {
                                cur.push('\\');
                                cur.push(x);
                            }
                        },
                        x => cur.push(x),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_shlex() {
        assert_eq!(
            split_words(r#"python -c "print('a b')" x\ y"#).unwrap(),
            ["python", "-c", "print('a b')", "x y"]
        );
        assert_eq!(split_words("  a   b ").unwrap(), ["a", "b"]);
        assert_eq!(split_words("a 'b").map(|_| ()), None);
    }

    #[test]
    fn label_rules() {
        let p = "opensandbox.io/";
        assert!(check_label("team", "infra", p).is_ok());
        assert!(check_label("example.com/team", "a.b-c_d", p).is_ok());
        assert!(check_label("note", "", p).is_ok());
        assert!(check_label("opensandbox.io/id", "x", p).is_err());
        assert!(check_label("bad key", "x", p).is_err());
        assert!(check_label("k", "has space", p).is_err());
        assert!(check_label("k", &"a".repeat(64), p).is_err());
        assert!(check_label("-k", "v", p).is_err());
    }
}
