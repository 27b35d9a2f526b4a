//! The policy API on port 18080: `/healthz`, `/policy` (GET, POST/PUT,
//! PATCH, DELETE) as upstream, plus our `GET /policy/explain?target=` and
//! `GET /events`. Errors are `{"code","message"}`; a rejected change leaves
//! the policy in force untouched.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::{Config, Mode};
use crate::policy::matcher::Decision;
use crate::policy::{parse_rules, parse_target, Action, Policy, PolicyError, Target};
use crate::state::State;

/// Largest request body (a policy of 100,000 rules fits).
pub const MAX_BODY: usize = 16 << 20;

/// What the API serves.
#[derive(Debug)]
pub struct Api {
    state: Arc<State>,
    mode: Mode,
    token: Option<crate::config::Token>,
    max_rules: usize,
}

type Resp = Response<Full<Bytes>>;

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Resp {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Resp {
    json(status, &ErrorBody { code, message })
}

fn policy_error(e: &PolicyError, prefix: &str) -> Resp {
    match e {
        PolicyError::TooMany { .. } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "TOO_MANY_RULES",
            &e.to_string(),
        ),
        _ => error(
            StatusCode::BAD_REQUEST,
            "INVALID_POLICY",
            &format!("{prefix}: {e}"),
        ),
    }
}

#[derive(Serialize)]
struct Status<'a> {
    status: &'a str,
    mode: &'a str,
    #[serde(rename = "enforcementMode")]
    enforcement_mode: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<crate::policy::PolicyWire<'a>>,
}

impl Api {
    /// The API over `state`.
    pub fn new(state: Arc<State>, cfg: &Config) -> Arc<Self> {
        Arc::new(Self {
            state,
            mode: cfg.mode,
            token: cfg.token.clone(),
            max_rules: cfg.max_rules,
        })
    }

    /// Serves HTTP/1.1 on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let api = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.route(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = req
            .headers()
            .get("OPENSANDBOX-EGRESS-AUTH")
            .map_or(&b""[..], HeaderValue::as_bytes);
        let want = token.expose().as_bytes();
        bool::from(given.ct_eq(want))
    }

    async fn route(&self, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_string();
        if path == "/healthz" {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return r;
        }
        if !matches!(path.as_str(), "/policy" | "/policy/explain" | "/events") {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", "404 page not found");
        }
        if !self.authorized(&req) {
            return error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "unauthorized");
        }
        let method = req.method().clone();
        match (path.as_str(), &method) {
            ("/policy", &Method::GET) => self.get_policy(),
            ("/policy", m) if m == Method::POST || m == Method::PUT => match read_body(req).await {
                Ok(b) => self.replace(&b).await,
                Err(r) => r,
            },
            ("/policy", &Method::PATCH) => match read_body(req).await {
                Ok(b) => self.patch(&b).await,
                Err(r) => r,
            },
            ("/policy", &Method::DELETE) => match read_body(req).await {
                Ok(b) => self.delete(&b).await,
                Err(r) => r,
            },
            ("/policy/explain", &Method::GET) => self.explain(req.uri().query()),
            ("/events", &Method::GET) => json(StatusCode::OK, &self.state.events.snapshot()),
            _ => {
                let mut r = error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "METHOD_NOT_ALLOWED",
                    "method not allowed",
                );
                r.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static(if path == "/policy" {
                        "GET, POST, PUT, PATCH, DELETE"
                    } else {
                        "GET"
                    }),
                );
                r
            }
        }
    }

    fn status(&self, policy: &Policy, reason: Option<&str>, with_policy: bool) -> Resp {
        json(
            StatusCode::OK,
            &Status {
                status: "ok",
                mode: policy.mode(),
                enforcement_mode: self.mode.as_str(),
                reason,
                policy: with_policy.then(|| policy.wire()),
            },
        )
    }

    fn get_policy(&self) -> Resp {
        self.status(&self.state.user_policy(), None, true)
    }

    fn commit(&self, policy: Policy, reason: Option<&str>) -> Resp {
        if let Err(e) = policy.check_limit(self.max_rules) {
            return policy_error(&e, "invalid policy");
        }
        let started = std::time::Instant::now();
        let policy = std::sync::Arc::new(policy);
        match self.state.install(std::sync::Arc::clone(&policy)) {
            Ok(()) => {
                tracing::info!(
                    rules = policy.egress.len(),
                    mode = policy.mode(),
                    took_us = started.elapsed().as_micros(),
                    "policy applied"
                );
                self.status(&policy, reason, false)
            }
            Err(e @ crate::state::InstallError::Firewall(_)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "FIREWALL_FAILED",
                &e.to_string(),
            ),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "PERSIST_FAILED",
                &e.to_string(),
            ),
        }
    }

    async fn replace(&self, body: &[u8]) -> Resp {
        let reset = body.iter().all(u8::is_ascii_whitespace);
        let policy = match Policy::parse(body) {
            Ok(p) => p,
            Err(e) => return policy_error(&e, "invalid policy"),
        };
        let _w = self.state.writer.lock().await;
        self.commit(policy, reset.then_some("policy reset to default deny-all"))
    }

    async fn patch(&self, body: &[u8]) -> Resp {
        let rules = match parse_json(body).and_then(|v| parse_rules(&v).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_POLICY",
                    &format!("invalid patch rules: {e}"),
                )
            }
        };
        let _w = self.state.writer.lock().await;
        match self.state.user_policy().patched(rules) {
            Ok(p) => self.commit(p, None),
            Err(e) => policy_error(&e, "invalid patch rules"),
        }
    }

    async fn delete(&self, body: &[u8]) -> Resp {
        let targets: Vec<String> = match parse_json(body)
            .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_POLICY",
                    &format!("invalid delete targets: {e}"),
                )
            }
        };
        let _w = self.state.writer.lock().await;
        let current = self.state.user_policy();
        match current.without(&targets) {
            Err(e) => policy_error(&e, "invalid delete targets"),
            Ok((_, 0)) => self.status(&current, Some("no matching targets found"), false),
            Ok((p, _)) => self.commit(p, None),
        }
    }

    fn explain(&self, query: Option<&str>) -> Resp {
        let target = query
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("target="))
            .map(percent_decode)
            .unwrap_or_default();
        let m = self.state.matcher();
        let mut seen = None;
        let (kind, mut d) = match parse_target(&target) {
            Ok(Target::Domain(name)) => ("domain", m.decide_name(&name)),
            Ok(Target::Ip(ip)) => {
                seen = self
                    .state
                    .firewall()
                    .seen(ip)
                    .filter(|s| s.expires_in.is_some());
                ("ip", m.decide_ip(ip))
            }
            Ok(Target::Wildcard(_) | Target::Cidr(..)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_TARGET",
                    "explain takes one domain name or one IP address",
                )
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_TARGET",
                    &format!("invalid target {target:?}: {e}"),
                )
            }
        };
        // The kernel's order: address deny rules, then addresses learned
        // from allowed answers, then denied names' addresses, then address
        // allow rules, then the default.
        let seen = seen.filter(|_| !(d.action == Action::Deny && d.rule.is_some()));
        if let Some(s) = &seen {
            d = Decision {
                action: if s.denied {
                    Action::Deny
                } else {
                    Action::Allow
                },
                rule: None,
                target: None,
            };
        }
        let reason = match (&d.target, kind, &seen) {
            (_, _, Some(s)) => format!(
                "an address of {} {:?}, from its DNS answer, for {} s more",
                if s.denied {
                    "the denied name"
                } else {
                    "the allowed name"
                },
                s.name,
                s.expires_in.map_or(0, |t| t.as_secs())
            ),
            (Some(t), "domain", _) => format!("first matching rule in list order: {t:?}"),
            (Some(t), _, _) => {
                format!("address rule {t:?} (deny rules are checked before allow rules)")
            }
            (None, _, _) => format!(
                "no rule matches: defaultAction {}",
                m.policy().default_action.as_str()
            ),
        };
        json(
            StatusCode::OK,
            &serde_json::json!({
                "target": target,
                "kind": kind,
                "action": d.action.as_str(),
                "rule": d.rule.map(|i| serde_json::json!({"index": i, "action": m.policy().egress[i].action.as_str(), "target": m.policy().egress[i].target})),
                "reason": reason,
                "answer": seen.map(|s| serde_json::json!({"domain": s.name, "denied": s.denied, "expiresInSeconds": s.expires_in.map_or(0, |t| t.as_secs())})),
                "enforcementMode": self.mode.as_str(),
                "note": if kind == "ip" && self.mode == Mode::Dns { Some("address rules are enforced only in dns+nft mode") } else { None },
            }),
        )
    }
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty body".into());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            &format!("request body exceeds {MAX_BODY} bytes"),
        )),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            "INVALID_POLICY",
            &format!("failed to read body: {e}"),
        )),
    }
}

/// Decodes `%XX` escapes (invalid ones stay as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
