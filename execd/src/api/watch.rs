//! `GET /files/watch` (our extension): parses the query, starts a
//! [`crate::watch`] and answers with its event stream.
//!
//! Query: `path` (required; `$VAR`/`~` expanded), `recursive` (default
//! false), `pattern` (glob), `debounce_ms` (0..=10000, default 50), `queue`
//! (1..=16384, default 4096). At most `-max-watches` (`EXECD_MAX_WATCHES`, default 64)
//! watches run at once; beyond, 503 `TOO_MANY_WATCHES`.

use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::Body;
use super::error::ApiError;
use super::query::param;
use super::App;
use crate::files::path::expand_abs;
use crate::watch::{self, Options, WatchError};

/// Streams file-change events for the watched path.
pub fn stream(app: &App, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query();
    let raw = param(q, "path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::missing_query("path"))?;
    let path = expand_abs(&raw, &app.env).map_err(ApiError::from_file)?;
    let recursive = match param(q, "recursive").filter(|v| !v.is_empty()) {
        None => false,
        Some(v) => parse_bool(&v).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid query parameter 'recursive': {v:?} is not a boolean"
            ))
        })?,
    };
    let debounce = number(q, "debounce_ms", 50, 0, max_debounce_ms())?;
    let queue = number(
        q,
        "queue",
        watch::DEFAULT_QUEUE as u64,
        1,
        watch::MAX_QUEUE as u64,
    )?;
    let max_watches = app.cfg.max_watches;
    let opts = Options {
        path,
        recursive,
        pattern: param(q, "pattern").filter(|p| !p.is_empty()),
        debounce: Duration::from_millis(debounce),
        queue: usize::try_from(queue).unwrap_or(watch::MAX_QUEUE),
        max_watches,
    };
    let rx = watch::start(opts).map_err(|e| match e {
        WatchError::File(e) => ApiError::from_file(e),
        WatchError::Pattern(m) => ApiError::bad_request(m),
        WatchError::Busy(m) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "TOO_MANY_WATCHES", m)
        }
    })?;
    Ok(super::event_stream(rx))
}

fn max_debounce_ms() -> u64 {
    u64::try_from(watch::MAX_DEBOUNCE.as_millis()).unwrap_or(u64::MAX)
}

/// An integer parameter in `min..=max`, `default` when absent or empty.
fn number(q: Option<&str>, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    let Some(v) = param(q, name).filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "invalid query parameter '{name}': {v:?} is not an integer in {min}..={max}"
        ))),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_bools() {
        assert_eq!(number(Some("queue=8"), "queue", 1, 1, 10), Ok(8));
        assert_eq!(number(Some("x=1"), "queue", 5, 1, 10), Ok(5));
        assert_eq!(number(Some("queue="), "queue", 5, 1, 10), Ok(5));
        for bad in ["queue=0", "queue=11", "queue=-1", "queue=a"] {
            let e = number(Some(bad), "queue", 5, 1, 10).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("yes"), None);
    }
}
