//! The backend of a `/proxy/{port}/{rest}` request.

use http::Uri;

/// Where a proxied request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The local port.
    pub port: u16,
    /// `http://127.0.0.1:{port}/{rest}?{query}`.
    pub uri: Uri,
}

/// Why a request path names no backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TargetError {
    /// `/proxy` alone: not a proxy path at all (upstream only takes `/proxy/…`).
    NotFound,
    /// `/proxy/` or `/proxy//…`.
    MissingPort,
    /// The port segment is not a number in `1..=65535`; holds it as given.
    InvalidPort(String),
    /// The backend URI could not be built.
    BadPath(String),
}

impl Target {
    /// Takes the port and the backend path from `uri`, whose path is `/proxy`
    /// or starts with `/proxy/`. `/proxy/P` and `/proxy/P/` both go to `/`;
    /// the rest of the path and the query are kept as sent (still encoded).
    pub fn parse(uri: &Uri) -> Result<Self, TargetError> {
        let Some(rest) = uri.path().strip_prefix("/proxy/") else {
            return Err(TargetError::NotFound);
        };
        let (raw_port, tail) = rest.split_once('/').unwrap_or((rest, ""));
        if raw_port.is_empty() {
            return Err(TargetError::MissingPort);
        }
        let port = raw_port
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| raw_port.parse::<u16>().ok())
            .flatten()
            .filter(|&p| p != 0)
            .ok_or_else(|| TargetError::InvalidPort(raw_port.to_string()))?;
        let query = match uri.query() {
            Some(q) if !q.is_empty() => format!("?{q}"),
            _ => String::new(),
        };
        let uri = format!("http://127.0.0.1:{port}/{tail}{query}")
            .parse::<Uri>()
            .map_err(|e| TargetError::BadPath(e.to_string()))?;
        Ok(Self { port, uri })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<(u16, String), TargetError> {
        Target::parse(&s.parse().unwrap()).map(|t| (t.port, t.uri.to_string()))
    }

    #[test]
    fn maps_port_path_and_query() {
        let ok = |p: u16, u: &str| Ok((p, u.to_string()));
        assert_eq!(
            parse("/proxy/8080/a/b?x=1"),
            ok(8080, "http://127.0.0.1:8080/a/b?x=1")
        );
        assert_eq!(parse("/proxy/8080"), ok(8080, "http://127.0.0.1:8080/"));
        assert_eq!(parse("/proxy/8080/"), ok(8080, "http://127.0.0.1:8080/"));
        assert_eq!(parse("/proxy/8080?q"), ok(8080, "http://127.0.0.1:8080/?q"));
        assert_eq!(parse("/proxy/1//x"), ok(1, "http://127.0.0.1:1//x"));
        assert_eq!(
            parse("/proxy/65535/a%2Fb"),
            ok(65535, "http://127.0.0.1:65535/a%2Fb")
        );
    }

    #[test]
    fn rejects_missing_and_invalid_ports() {
        assert_eq!(parse("/proxy"), Err(TargetError::NotFound));
        assert_eq!(parse("/proxy/"), Err(TargetError::MissingPort));
        assert_eq!(parse("/proxy//x"), Err(TargetError::MissingPort));
        for bad in [
            "abc",
            "0",
            "70000",
            "65536",
            "+80",
            "-1",
            "99999999999999999999",
        ] {
            assert_eq!(
                parse(&format!("/proxy/{bad}/x")),
                Err(TargetError::InvalidPort(bad.to_string()))
            );
        }
    }
}
