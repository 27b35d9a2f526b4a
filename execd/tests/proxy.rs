//! The reverse proxy `/proxy/{port}/{rest}`, against small backends started
//! by each test on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 backend on std threads.

/// A request head as the backend received it.
#[derive(Debug, Clone)]
struct Head {
    /// `GET /a/b?x=1 HTTP/1.1`.
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap()
    }
}

/// Reads a request head; None at the end of the connection.
fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Head {
        line: line.trim_end().to_string(),
        headers,
    })
}

/// Reads the request body (Content-Length or chunked), passing each piece to `sink`.
fn read_body(r: &mut impl BufRead, head: &Head, mut sink: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copy = |r: &mut dyn BufRead, mut left: u64, sink: &mut dyn FnMut(&[u8])| {
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = r.read(&mut buf[..want]).unwrap();
            assert!(n > 0, "body cut off");
            sink(&buf[..n]);
            left -= n as u64;
        }
    };
    if head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                // Trailer fields, then the blank line.
                loop {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        return;
                    }
                }
            }
            copy(r, size, &mut sink);
            line.clear();
            r.read_line(&mut line).unwrap(); // CRLF after the chunk
        }
    } else if let Some(len) = head.header("content-length") {
        copy(r, len.parse().unwrap(), &mut sink);
    }
}

/// A backend: `handler` gets each request head, the reader positioned at its
/// body (which the handler must consume) and the writer.
struct Backend {
    port: u16,
    /// Connections accepted so far.
    conns: Arc<AtomicUsize>,
}

type Handler = dyn Fn(Head, &mut BufReader<TcpStream>, &mut TcpStream) + Send + Sync;

impl Backend {
    fn start(
        handler: impl Fn(Head, &mut BufReader<TcpStream>, &mut TcpStream) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let counter = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut w) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(w.try_clone().unwrap());
                    while let Some(head) = read_head(&mut r) {
                        handler(head, &mut r, &mut w);
                    }
                });
            }
        });
        Self { port, conns }
    }

    /// A backend that reports every request (head and body) on the channel
    /// and answers `200 ok`.
    fn recording() -> (Self, mpsc::Receiver<(Head, Vec<u8>)>) {
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let b = Self::start(move |head, r, w| {
            let mut body = Vec::new();
            read_body(r, &head, |b| body.extend_from_slice(b));
            tx.lock().unwrap().send((head, body)).unwrap();
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        });
        (b, rx)
    }
}

fn recv<T>(rx: &mpsc::Receiver<T>) -> T {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("backend saw no request")
}

/// A port nothing listens on.
fn refused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------

#[test]
fn maps_path_and_query() {
    let e = Execd::start();
    let (b, rx) = Backend::recording();
    let p = b.port;
    for (path, want) in [
        (format!("/proxy/{p}/a/b?x=1"), "GET /a/b?x=1 HTTP/1.1"),
        (format!("/proxy/{p}"), "GET / HTTP/1.1"),
        (format!("/proxy/{p}/"), "GET / HTTP/1.1"),
        (format!("/proxy/{p}?q=2"), "GET /?q=2 HTTP/1.1"),
        (
            format!("/proxy/{p}//x/%2F?a=%20"),
            "GET //x/%2F?a=%20 HTTP/1.1",
        ),
    ] {
        let r = e.get(&path);
        assert_eq!((r.status, r.text().as_str()), (200, "ok"), "{path}");
        let (head, body) = recv(&rx);
        assert_eq!(head.line, want);
        assert!(body.is_empty());
    }
}

#[test]
fn forwards_method_and_bodies() {
    let e = Execd::start();
    let (b, rx) = Backend::recording();
    let p = b.port;

    let r = e
        .send(
            "POST",
            &format!("/proxy/{p}/upload"),
            &[],
            Some(b"{\"a\":1}"),
        )
        .full();
    assert_eq!(r.status, 200);
    let (head, body) = recv(&rx);
    assert_eq!(head.line, "POST /upload HTTP/1.1");
    assert_eq!(head.header("content-length"), Some("7"));
    assert_eq!(head.header("content-type"), Some("application/json"));
    assert_eq!(body, b"{\"a\":1}");

    for method in ["PUT", "DELETE", "PATCH", "OPTIONS"] {
        assert_eq!(
            e.send(method, &format!("/proxy/{p}/m"), &[], None)
                .full()
                .status,
            200
        );
        assert_eq!(recv(&rx).0.line, format!("{method} /m HTTP/1.1"));
    }

    // A chunked request body stays chunked.
    let mut s = e.connect();
    write!(
        s,
        "PUT /proxy/{p}/chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("\r\n\r\nok"), "{out}");
    let (head, body) = recv(&rx);
    assert_eq!(head.line, "PUT /chunked HTTP/1.1");
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-length"), None);
    assert_eq!(body, b"hello world");
}

#[test]
fn rewrites_forwarding_and_hop_by_hop_headers() {
    let e = Execd::start_with(&[], &[("EXECD_ACCESS_TOKEN", "s3cret")]);
    let (b, rx) = Backend::recording();
    let p = b.port;
    let r = e
        .send(
            "GET",
            &format!("/proxy/{p}/h"),
            &[
                ("X-Forwarded-For", "10.1.2.3, 10.0.0.1"),
                ("X-Real-IP", "10.9.9.9"),
                ("X-Forwarded-Host", "evil.example"),
                ("X-Forwarded-Proto", "https"),
                ("Connection", "X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authorization", "Basic eA=="),
                ("X-Custom", "kept"),
            ],
            None,
        )
        .full();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let (head, _) = recv(&rx);
    assert_eq!(head.header("x-forwarded-for"), Some("10.1.2.3"));
    assert_eq!(head.header("x-forwarded-proto"), Some("http"));
    assert_eq!(head.header("host"), Some(format!("127.0.0.1:{p}").as_str()));
    assert_eq!(head.header("x-custom"), Some("kept"));
    assert_eq!(head.header("x-real-ip"), Some("10.9.9.9"));
    for gone in [
        "x-forwarded-host",
        "x-execd-access-token",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
    ] {
        assert_eq!(head.header(gone), None, "{gone} forwarded: {head:?}");
    }
    // Only one Host, one X-Forwarded-For.
    let count = |n: &str| {
        head.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .count()
    };
    assert_eq!((count("host"), count("x-forwarded-for")), (1, 1));

    // Without X-Forwarded-For, X-Real-IP is the client.
    e.send(
        "GET",
        &format!("/proxy/{p}/"),
        &[("X-Real-IP", "10.9.9.9")],
        None,
    )
    .full();
    assert_eq!(recv(&rx).0.header("x-forwarded-for"), Some("10.9.9.9"));
    // The token check still guards the proxy.
    let r = e
        .send(
            "GET",
            &format!("/proxy/{p}/"),
            &[("X-EXECD-ACCESS-TOKEN", "no")],
            None,
        )
        .full();
    assert_eq!(r.status, 401);
    assert!(rx.try_recv().is_err());
}

#[test]
fn forwarded_for_falls_back_to_the_peer() {
    let e = Execd::start();
    let (b, rx) = Backend::recording();
    e.get(&format!("/proxy/{}/", b.port));
    assert_eq!(recv(&rx).0.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[test]
fn passes_status_headers_and_body_through() {
    let e = Execd::start();
    let b = Backend::start(|head, r, w| {
        read_body(r, &head, |_| {});
        w.write_all(
            b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nX-Backend: yes\r\n\
              Connection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\n\
              Content-Length: 20\r\n\r\n{\"error\":\"no vault\"}",
        )
        .unwrap();
    });
    let r = e.get(&format!("/proxy/{}/credential-vault/_active", b.port));
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), r#"{"error":"no vault"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-backend"), Some("yes"));
    assert_eq!(r.header("content-length"), Some("20"));
    assert_eq!(r.header("x-secret"), None);
    assert_eq!(r.header("keep-alive"), None);
}

#[test]
fn passes_head_lengths_and_trailers_through() {
    let e = Execd::start();
    let b = Backend::start(|head, r, w| {
        read_body(r, &head, |_| {});
        if head.method() == "HEAD" {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
                .unwrap();
        } else {
            let te = head.header("te").unwrap_or("none").to_string();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nTrailer: X-Sum\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {:x}\r\n{te}\r\n0\r\nX-Sum: 42\r\n\r\n",
                te.len()
            )
            .unwrap();
        }
    });
    let r = e.send("HEAD", &format!("/proxy/{}/", b.port), &[], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"));

    let mut s = e.connect();
    write!(
        s,
        "GET /proxy/{}/t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTE: trailers\r\n\r\n",
        b.port
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("\r\ntrailer: x-sum"),
        "{out}"
    );
    assert_eq!(
        body.to_ascii_lowercase(),
        "8\r\ntrailers\r\n0\r\nx-sum: 42\r\n\r\n"
    );
}

#[test]
fn reuses_backend_connections() {
    let e = Execd::start();
    let (b, rx) = Backend::recording();
    for i in 0..5 {
        let r = e.get(&format!("/proxy/{}/{i}", b.port));
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert_eq!(recv(&rx).0.line, format!("GET /{i} HTTP/1.1"));
    }
    assert_eq!(b.conns.load(Ordering::SeqCst), 1);
}

#[test]
fn streams_events_as_the_backend_sends_them() {
    let e = Execd::start();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let b = Backend::start(move |head, r, w| {
        read_body(r, &head, |_| {});
        w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        w.write_all(b"b\r\ndata: one\n\n\r\n").unwrap();
        // The second event only once the client has the first.
        let got = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
        let second: &[u8] = if got.is_ok() {
            b"b\r\ndata: two\n\n\r\n"
        } else {
            b"f\r\ndata: timeout\n\n\r\n"
        };
        w.write_all(second).unwrap();
        w.write_all(b"0\r\n\r\n").unwrap();
    });
    let resp = e.send("GET", &format!("/proxy/{}/events", b.port), &[], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("text/event-stream"));
    let mut body = resp.body;
    let mut read_event = || {
        let mut ev = Vec::new();
        let mut byte = [0u8; 1];
        while !ev.ends_with(b"\n\n") {
            if body.read(&mut byte).unwrap() == 0 {
                break;
            }
            ev.push(byte[0]);
        }
        String::from_utf8(ev).unwrap()
    };
    assert_eq!(read_event(), "data: one\n\n");
    go_tx.send(()).unwrap();
    assert_eq!(read_event(), "data: two\n\n");
    assert_eq!(read_event(), "");
}

#[test]
fn client_going_away_closes_the_backend_connection() {
    let e = Execd::start();
    let (gone_tx, gone_rx) = mpsc::channel::<()>();
    let gone_tx = std::sync::Mutex::new(gone_tx);
    let b = Backend::start(move |head, r, w| {
        read_body(r, &head, |_| {});
        w.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if w.write_all(b"5\r\nhello\r\n").is_err() {
                gone_tx.lock().unwrap().send(()).unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut resp = e.send("GET", &format!("/proxy/{}/forever", b.port), &[], None);
    assert_eq!(resp.status, 200);
    let mut buf = [0u8; 20];
    resp.body.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hellohellohellohello");
    drop(resp);
    gone_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("backend connection still open after the client left");
}

#[tokio::test]
#[allow(clippy::result_large_err)] // tungstenite's callback type
async fn tunnels_websockets() {
    let e = Execd::start_with(&[], &[("EXECD_ACCESS_TOKEN", "tok")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (path_tx, mut path_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
            path_tx.send(req.uri().to_string()).unwrap();
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, cb)
            .await
            .unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.unwrap();
            }
        }
    });

    let url = format!("ws://127.0.0.1:{}/proxy/{port}/ws?x=1", e.port);
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("X-EXECD-ACCESS-TOKEN", "tok".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(path_rx.recv().await.unwrap(), "/ws?x=1");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let bin = vec![0u8, 1, 2, 254, 255];
    ws.send(Message::binary(bin.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(bin));
    let big = "x".repeat(1 << 20);
    ws.send(Message::text(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(big));

    ws.close(None).await.unwrap();
    let mut closed = false;
    while let Some(msg) = ws.next().await {
        if let Ok(Message::Close(_)) = msg {
            closed = true;
        }
    }
    assert!(closed, "no close frame came back");
}

#[test]
fn reaches_execd_itself() {
    let e = Execd::start_with(&[], &[("EXECD_ACCESS_TOKEN", "tok")]);
    let own = e.port;
    let r = e.get(&format!("/proxy/{own}/ping"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());

    let ev = e
        .stream(
            &format!("/proxy/{own}/command"),
            &json!({"command": "echo hi"}),
        )
        .collect_all();
    assert_well_formed(&ev);
    assert_eq!(texts(&ev, "stdout"), ["hi"]);

    // Incrementally: the command waits for a file the test creates only once
    // it has seen the first line through the proxy.
    let flag = e.tmp.join("go");
    let cmd = format!(
        "echo first; for i in $(seq 200); do [ -e {0} ] && break; sleep 0.05; done; \
         [ -e {0} ] && echo second || echo timeout",
        flag.display()
    );
    let mut events = e.stream(&format!("/proxy/{own}/command"), &json!({"command": cmd}));
    let mut out = Vec::new();
    while let Some(ev) = events.next_event() {
        if ev["type"] == "stdout" {
            let text = ev["text"].as_str().unwrap().to_string();
            if text == "first" {
                std::fs::write(&flag, b"").unwrap();
            }
            out.push(text);
        }
    }
    assert_eq!(out, ["first", "second"]);
}

#[test]
fn empty_port_is_400_text() {
    let e = Execd::start();
    for path in ["/proxy/", "/proxy//x", "/proxy/?a=1"] {
        let r = e.get(path);
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.text(), "port is required\n");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }
    // Upstream's proxy only takes `/proxy/…`.
    let r = e.get("/proxy");
    assert_eq!((r.status, r.text().as_str()), (404, "404 page not found"));
}

#[test]
fn invalid_port_is_400_json() {
    let e = Execd::start();
    for raw in ["abc", "70000", "0", "-1", "80a"] {
        let r = e
            .send("POST", &format!("/proxy/{raw}/x"), &[], Some(b"{}"))
            .full();
        let msg = r.assert_error(400, "INVALID_REQUEST_BODY");
        assert_eq!(msg, format!("invalid port '{raw}'"));
    }
    let r = e.get("/proxy/abc/");
    assert_eq!(
        r.text(),
        r#"{"code":"INVALID_REQUEST_BODY","message":"invalid port 'abc'"}"#
    );
}

#[test]
fn unreachable_backend_is_502() {
    let e = Execd::start();
    let port = refused_port();
    let r = e.get(&format!("/proxy/{port}/x"));
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "Bad Gateway\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    // A backend that drops the connection without answering.
    let b = Backend::start(|_, _, w| {
        let _ = w.shutdown(std::net::Shutdown::Both);
    });
    let r = e.get(&format!("/proxy/{}/x", b.port));
    assert_eq!((r.status, r.text().as_str()), (502, "Bad Gateway\n"));
}

const BIG: u64 = 200 << 20;

#[test]
fn streams_large_bodies_both_ways() {
    let e = Execd::start();
    let b = Backend::start(|head, r, w| {
        if head.method() == "PUT" {
            let mut n = 0u64;
            read_body(r, &head, |b| n += b.len() as u64);
            let text = n.to_string();
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
            .unwrap();
        } else {
            read_body(r, &head, |_| {});
            write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {BIG}\r\n\r\n").unwrap();
            let chunk = vec![b'd'; 256 * 1024];
            let mut left = BIG;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if w.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    });
    // Warm up (the client pool), then measure the peak from here.
    assert_eq!(e.get(&format!("/proxy/{}/warm", b.port)).status, 200);
    let (_, hwm_before) = e.rss_kib();

    // Upload, chunked.
    let mut s = e.connect();
    write!(
        s,
        "PUT /proxy/{}/up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        b.port
    )
    .unwrap();
    let chunk = vec![b'u'; 256 * 1024];
    let mut left = BIG;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        write!(s, "{n:x}\r\n").unwrap();
        s.write_all(&chunk[..n]).unwrap();
        s.write_all(b"\r\n").unwrap();
        left -= n as u64;
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with(&format!("\r\n\r\n{BIG}")), "{out}");

    // Download.
    let resp = e.send("GET", &format!("/proxy/{}/down", b.port), &[], None);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-length"),
        Some(BIG.to_string().as_str())
    );
    let mut body = resp.body;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = body.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert!(buf[..k].iter().all(|&c| c == b'd'));
        n += k as u64;
    }
    assert_eq!(n, BIG);

    let (_, hwm_after) = e.rss_kib();
    let growth = hwm_after.saturating_sub(hwm_before);
    assert!(growth < 60 * 1024, "execd peak RSS grew by {growth} KiB");
}
