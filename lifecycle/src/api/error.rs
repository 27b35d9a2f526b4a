//! The one place where failures become HTTP answers: a status and a flat
//! `{"code","message"}` body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use crate::docker::DockerError;
use crate::service::LifecycleError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `DOCKER::SANDBOX_NOT_FOUND`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({"code": self.code, "message": self.message});
        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let message = e.to_string();
        match e {
            LifecycleError::Invalid { code, .. } => {
                Self::new(StatusCode::BAD_REQUEST, code, message)
            }
            LifecycleError::NotFound { code, .. } => {
                Self::new(StatusCode::NOT_FOUND, code, message)
            }
            LifecycleError::Conflict { code, .. } => Self::new(StatusCode::CONFLICT, code, message),
            LifecycleError::Start { code, .. } => {
                let status = if code == "DOCKER::SANDBOX_EXECD_START_FAILED" {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                Self::new(status, code, message)
            }
            LifecycleError::Docker(DockerError::NotFound(_)) => {
                Self::new(StatusCode::NOT_FOUND, "DOCKER::SANDBOX_NOT_FOUND", message)
            }
            LifecycleError::Docker(DockerError::Conflict(_)) => {
                Self::new(StatusCode::CONFLICT, "DOCKER::SANDBOX_CONFLICT", message)
            }
            LifecycleError::Docker(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "DOCKER::INITIALIZATION_ERROR",
                message,
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SANDBOX::INTERNAL_ERROR",
                message,
            ),
        }
    }
}
