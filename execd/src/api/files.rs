//! `/files/*` and `/directories*` handlers: parse the request, run the
//! filesystem work of [`crate::files`] on a blocking thread, and shape the
//! response as upstream does.

use std::collections::BTreeMap;

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Serialize;

use super::body::Body;
use super::error::{json_response, ApiError};
use super::query::{param, params};
use super::{empty_ok, read_json, App};
use crate::files::download::{self, RangeError};
use crate::files::info::Names;
use crate::files::ops::{self, Move, Replace};
use crate::files::path::{expand, expand_abs};
use crate::files::perms::Perms;
use crate::files::tree::{self, Found, Pattern, DEFAULT_LIMIT, MAX_LIMIT};
use crate::files::{upload, FileError};
use crate::wire::json::to_go_json;

/// Set (to `true`) when a listing or search stopped at its limit.
pub const TRUNCATED_HEADER: &str = "EXECD-RESULTS-TRUNCATED";

const PARSE_PREFIX: &str = "error parsing request, MAYBE invalid body format.";

type Reply = Result<Response<Body>, ApiError>;

/// Runs filesystem work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::runtime(format!("file task failed: {e}")))?
        .map_err(ApiError::from_file)
}

fn json_ok<T: Serialize + ?Sized>(v: &T) -> Response<Body> {
    json_response(StatusCode::OK, to_go_json(v))
}

fn query(req: &Request<Incoming>) -> Option<&str> {
    req.uri().query()
}

fn required(req: &Request<Incoming>, name: &str) -> Result<String, ApiError> {
    param(query(req), name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::missing_query(name))
}

/// A non-negative integer parameter, or `default` when absent.
fn number(req: &Request<Incoming>, name: &str, default: u64) -> Result<u64, ApiError> {
    match param(query(req), name) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid query parameter '{name}': {raw}"))),
    }
}

fn limit(req: &Request<Incoming>) -> Result<usize, ApiError> {
    let n = number(req, "limit", DEFAULT_LIMIT as u64)?;
    if n == 0 || n > MAX_LIMIT as u64 {
        return Err(ApiError::bad_request(format!(
            "invalid query parameter 'limit': {n} (1 to {MAX_LIMIT})"
        )));
    }
    Ok(usize::try_from(n).unwrap_or(MAX_LIMIT))
}

fn found(f: &Found) -> Response<Body> {
    let mut r = json_ok(&f.entries);
    if f.truncated {
        r.headers_mut()
            .insert(TRUNCATED_HEADER, HeaderValue::from_static("true"));
    }
    r
}

/// `GET /files/info?path=…`: metadata keyed by each path as given.
pub async fn info(app: &App, req: &Request<Incoming>) -> Reply {
    let paths: Vec<String> = params(query(req), "path").collect();
    let env = app.env.clone();
    let map = blocking(move || {
        let mut names = Names::default();
        let mut out = BTreeMap::new();
        for raw in paths {
            let path = expand_abs(&raw, &env)?;
            let meta = std::fs::symlink_metadata(&path)
                .map_err(|e| FileError::io(format!("error accessing file {raw}"), e))?;
            out.insert(raw, names.info(&path, &meta));
        }
        Ok(out)
    })
    .await?;
    Ok(json_ok(&map))
}

/// `DELETE /files?path=…`.
pub async fn delete_files(app: &App, req: &Request<Incoming>) -> Reply {
    let paths: Vec<String> = params(query(req), "path").collect();
    let env = app.env.clone();
    blocking(move || ops::delete_files(&paths, &env)).await?;
    Ok(empty_ok())
}

/// `DELETE /directories?path=…`.
pub async fn delete_dirs(app: &App, req: &Request<Incoming>) -> Reply {
    let paths: Vec<String> = params(query(req), "path").collect();
    let env = app.env.clone();
    blocking(move || ops::delete_dirs(&paths, &env)).await?;
    Ok(empty_ok())
}

/// `POST /files/mv`.
pub async fn mv(app: &App, req: Request<Incoming>) -> Reply {
    let moves: Vec<Move> = read_json(req, false, PARSE_PREFIX).await?;
    let env = app.env.clone();
    blocking(move || ops::move_all(&moves, &env)).await?;
    Ok(empty_ok())
}

/// `POST /files/permissions`.
pub async fn chmod(app: &App, req: Request<Incoming>) -> Reply {
    let items: BTreeMap<String, Perms> = read_json(req, false, PARSE_PREFIX).await?;
    let env = app.env.clone();
    blocking(move || ops::chmod_all(items, &env)).await?;
    Ok(empty_ok())
}

/// `POST /directories`.
pub async fn mkdir(app: &App, req: Request<Incoming>) -> Reply {
    let items: BTreeMap<String, Perms> = read_json(req, false, PARSE_PREFIX).await?;
    let env = app.env.clone();
    blocking(move || ops::mkdir_all(items, &env)).await?;
    Ok(empty_ok())
}

#[derive(Serialize)]
struct Replaced {
    #[serde(rename = "replacedCount")]
    replaced_count: usize,
}

/// `POST /files/replace?verbose=`.
pub async fn replace(app: &App, req: Request<Incoming>) -> Reply {
    let verbose = param(query(&req), "verbose").as_deref() == Some("true");
    let items: BTreeMap<String, Replace> = read_json(req, false, PARSE_PREFIX).await?;
    let env = app.env.clone();
    let counts = blocking(move || ops::replace_all(&items, &env)).await?;
    if !verbose {
        return Ok(empty_ok());
    }
    let out: BTreeMap<String, Replaced> = counts
        .into_iter()
        .map(|(k, n)| (k, Replaced { replaced_count: n }))
        .collect();
    Ok(json_ok(&out))
}

/// `GET /directories/list?path=&depth=&limit=`.
pub async fn list(app: &App, req: &Request<Incoming>) -> Reply {
    let raw = required(req, "path")?;
    let depth = number(req, "depth", 1)?;
    let limit = limit(req)?;
    let root = expand_abs(&raw, &app.env).map_err(ApiError::from_file)?;
    let f =
        blocking(move || tree::list(&root, usize::try_from(depth).unwrap_or(usize::MAX), limit))
            .await?;
    Ok(found(&f))
}

/// `GET /files/search?path=&pattern=&limit=`.
pub async fn search(app: &App, req: &Request<Incoming>) -> Reply {
    let raw = required(req, "path")?;
    let pattern = param(query(req), "pattern")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "**".into());
    let pattern = Pattern::new(&pattern).map_err(ApiError::from_file)?;
    let limit = limit(req)?;
    let root = expand_abs(&raw, &app.env).map_err(ApiError::from_file)?;
    let f = blocking(move || tree::search(&root, &pattern, limit)).await?;
    Ok(found(&f))
}

/// `POST /files/upload` (multipart/form-data).
pub async fn upload(app: &App, req: Request<Incoming>) -> Reply {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let boundary = multer::parse_boundary(&ct).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_FILE",
            format!("expected a multipart/form-data body with a boundary, got Content-Type {ct:?}"),
        )
    })?;
    let body = upload::OneChunkPerPoll::new(req.into_body().into_data_stream());
    let form = multer::Multipart::new(body, boundary);
    let n = upload::receive(form, &app.env, &app.cfg.tmp_dir)
        .await
        .map_err(ApiError::from_file)?;
    tracing::debug!(files = n, "upload written");
    Ok(empty_ok())
}

/// `GET /files/download?path=[&offset=&limit=]` with an optional `Range`.
pub async fn download(app: &App, req: &Request<Incoming>) -> Reply {
    let raw = required(req, "path")?;
    let q = query(req);
    let line_mode = param(q, "offset").is_some() || param(q, "limit").is_some();
    let range = req
        .headers()
        .get(header::RANGE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if line_mode && range.is_some() {
        return Err(ApiError::bad_request(
            "line-based reading (offset/limit) and byte range (Range header) are mutually exclusive",
        ));
    }
    let positive = |name: &str| -> Result<Option<u64>, ApiError> {
        match param(q, name) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(ApiError::bad_request(format!(
                    "invalid query parameter '{name}': {v}"
                ))),
            },
        }
    };
    let offset = positive("offset")?;
    let line_limit = positive("limit")?;
    let path = expand(&raw, &app.env).map_err(ApiError::from_file)?;
    let r = raw.clone();
    let (file, meta) = blocking(move || {
        let file = std::fs::File::open(&path)
            .map_err(|e| FileError::io(format!("error opening file {r}"), e))?;
        let meta = file
            .metadata()
            .map_err(|e| FileError::io(format!("error getting file stat info: {r}"), e))?;
        if meta.is_dir() {
            return Err(FileError::Invalid(format!("path is a directory: {r}")));
        }
        Ok((file, meta))
    })
    .await?;
    if line_mode {
        let mut resp = Response::new(Body::boxed(download::lines(
            file,
            offset.unwrap_or(1),
            line_limit,
        )));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(resp);
    }
    let size = meta.len();
    let (status, start, end) = match range.as_deref().map(|h| download::parse_range(h, size)) {
        None => (StatusCode::OK, 0, size),
        Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(Err(e)) => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "INVALID_RANGE",
                e.to_string(),
            )
            .into_response();
            if matches!(e, RangeError::Unsatisfiable { .. }) {
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    header_value(&format!("bytes */{size}")),
                );
            }
            return Ok(resp);
        }
    };
    let mut resp = Response::new(Body::boxed(download::bytes(file, start, end)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition(&raw)),
    );
    if let Ok(mtime) = meta.modified() {
        h.insert(
            header::LAST_MODIFIED,
            header_value(&crate::wire::time::http_date(mtime)),
        );
    }
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            header_value(&format!("bytes {start}-{}/{size}", end - 1)),
        );
    }
    Ok(resp)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Upstream's `Content-Disposition`: the base name, percent-encoded (Go's
/// `url.PathEscape`) with an RFC 5987 `filename*` when it is not plain ASCII.
pub fn content_disposition(path: &str) -> String {
    let base = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path);
    let plain = base
        .bytes()
        .all(|c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\');
    if plain {
        return format!("attachment; filename=\"{base}\"");
    }
    let mut enc = String::new();
    for c in base.bytes() {
        if c.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&c) {
            enc.push(char::from(c));
        } else {
            enc.push_str(&format!("%{c:02X}"));
        }
    }
    format!("attachment; filename=\"{enc}\"; filename*=UTF-8''{enc}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions() {
        assert_eq!(
            content_disposition("/a/report.txt"),
            "attachment; filename=\"report.txt\""
        );
        assert_eq!(
            content_disposition("/a/测试.txt"),
            "attachment; filename=\"%E6%B5%8B%E8%AF%95.txt\"; filename*=UTF-8''%E6%B5%8B%E8%AF%95.txt"
        );
        assert_eq!(
            content_disposition("a b\"c"),
            "attachment; filename=\"a%20b%22c\"; filename*=UTF-8''a%20b%22c"
        );
    }
}
