//! `GET /metrics` and `GET /metrics/watch`: see [`crate::metrics`].

use http::{Response, StatusCode};

use super::body::Body;
use super::error::{json_response, ApiError};
use super::App;
use crate::metrics::MAX_WATCHES;
use crate::wire::json::to_go_json;

/// The figures now, as upstream's `Metrics`.
pub async fn get(app: &App) -> Result<Response<Body>, ApiError> {
    let m = app
        .metrics
        .current()
        .await
        .map_err(|e| ApiError::runtime(format!("error reading runtime metrics. {e}")))?;
    Ok(json_response(StatusCode::OK, to_go_json(&m)))
}

/// A record a second, until the client goes away; 503 `TOO_MANY_WATCHES`
/// beyond [`MAX_WATCHES`] streams.
pub fn watch(app: &App) -> Result<Response<Body>, ApiError> {
    let rx = app.metrics.watch().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_WATCHES",
            format!("too many metrics watches (at most {MAX_WATCHES})"),
        )
    })?;
    Ok(super::event_stream(rx))
}
