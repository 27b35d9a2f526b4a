//! The one place where failures become HTTP responses: a status and a flat
//! `{"code","message"}` body, with upstream's codes and message formats.

use http::{header, HeaderValue, Response, StatusCode};
use nix::errno::Errno;
use serde::Serialize;

use super::body::Body;
use crate::command::CommandError;
use crate::files::FileError;
use crate::session::SessionError;
use crate::wire::json::to_go_json;

/// An error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `INVALID_REQUEST_BODY`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
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

    /// 400 `INVALID_REQUEST_BODY`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", message)
    }

    /// 400 `MISSING_QUERY` for a missing query parameter.
    pub fn missing_query(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MISSING_QUERY",
            format!("missing query parameter '{name}'"),
        )
    }

    /// 500 `RUNTIME_ERROR`.
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR", message)
    }

    /// The response.
    pub fn into_response(self) -> Response<Body> {
        let body = to_go_json(&ErrorBody {
            code: self.code,
            message: &self.message,
        });
        json_response(self.status, body)
    }

    /// Maps a `/command` failure (`context` prefixes runtime messages as upstream does).
    pub fn from_command(e: CommandError, context: &str) -> Self {
        match e {
            CommandError::Invalid(m) => {
                Self::bad_request(format!("invalid request, validation error {m}"))
            }
            CommandError::BadCwd(m) => Self::bad_request(m),
            CommandError::TooMany(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "RUNTIME_ERROR",
                e.to_string(),
            ),
            CommandError::NotFound(_) if context == "status" => {
                Self::new(StatusCode::NOT_FOUND, "INVALID_REQUEST_BODY", e.to_string())
            }
            CommandError::NotFound(_) | CommandError::NotBackground(_) if context == "logs" => {
                Self::bad_request(e.to_string())
            }
            CommandError::NotRunning(id) if context == "interrupt" => Self::runtime(format!(
                "error interruptting code context. command session {id} is not running"
            )),
            CommandError::NotFound(_) if context == "interrupt" => {
                Self::runtime("error interruptting code context. no such session")
            }
            other => Self::runtime(format!("error running commands {other}")),
        }
    }

    /// Maps a files failure: 400 for bad input, 404 for a missing path, 403
    /// `PERMISSION_DENIED`, 507 `NO_SPACE` for a full disk, 500 otherwise.
    pub fn from_file(e: FileError) -> Self {
        match e {
            FileError::BadPath(m) | FileError::Invalid(m) => Self::bad_request(m),
            FileError::NotFound(m) => Self::new(
                StatusCode::NOT_FOUND,
                "FILE_NOT_FOUND",
                format!("file not found. {m}"),
            ),
            FileError::Io { ref source, .. } => {
                let (status, code) = match source.raw_os_error().map(Errno::from_raw) {
                    Some(Errno::EACCES | Errno::EPERM | Errno::EROFS) => {
                        (StatusCode::FORBIDDEN, "PERMISSION_DENIED")
                    }
                    Some(Errno::ENOSPC | Errno::EDQUOT) => {
                        (StatusCode::INSUFFICIENT_STORAGE, "NO_SPACE")
                    }
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
                };
                Self::new(status, code, e.to_string())
            }
            FileError::Upload { code, message } => {
                Self::new(StatusCode::BAD_REQUEST, code, message)
            }
            FileError::Conflict(m) => Self::new(StatusCode::CONFLICT, "FILE_EXISTS", m),
            FileError::TooLarge(m) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "FILE_TOO_LARGE", m),
            FileError::Batch { total, failures } => {
                let message = FileError::batch_message(total, &failures);
                // The first failure decides status and code.
                match failures.into_iter().next() {
                    Some((_, first)) => {
                        let first = Self::from_file(first);
                        Self::new(first.status, first.code, message)
                    }
                    None => Self::runtime(message),
                }
            }
            other => Self::runtime(other.to_string()),
        }
    }

    /// Maps a session failure.
    pub fn from_session(e: SessionError, context: &str) -> Self {
        match e {
            SessionError::NotFound(_) if context == "delete" => {
                Self::new(StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND", e.to_string())
            }
            SessionError::NotFound(_) => {
                Self::runtime("error running in session. context not found")
            }
            SessionError::Invalid(m) => Self::bad_request(format!("invalid request. {m}")),
            SessionError::TooMany(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "RUNTIME_ERROR",
                e.to_string(),
            ),
            other if context == "create" => {
                Self::runtime(format!("error creating session. {other}"))
            }
            other => Self::runtime(format!("error running in session. {other}")),
        }
    }
}

/// A JSON response with Gin's content type.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Body::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn flat_body() {
        let r = ApiError::missing_query("id").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let b = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &b[..],
            br#"{"code":"MISSING_QUERY","message":"missing query parameter 'id'"}"#
        );
    }
}
