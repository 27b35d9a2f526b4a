//! Files and directories over HTTP against the real binary: every route,
//! upstream's wire details, and the bad-input cases.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{scratch, Execd, Full};
use serde_json::{json, Value};

/// Percent-encodes a query value.
fn q(s: impl AsRef<str>) -> String {
    let mut out = String::new();
    for b in s.as_ref().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn p(path: &Path) -> String {
    q(path.to_str().unwrap())
}

const BOUNDARY: &str = "opensandbox_0123456789abcdef_1700000000";

/// One multipart part.
enum Part<'a> {
    /// A metadata part as the SDKs send it (`filename="metadata"`).
    Meta(Value),
    /// A metadata part without a filename (a plain form field).
    MetaField(Value),
    /// A file part.
    File(&'a [u8]),
    /// Any part, raw.
    Raw(&'a str, &'a [u8]),
}

fn multipart(parts: &[Part]) -> Vec<u8> {
    let mut b = Vec::new();
    for part in parts {
        b.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Meta(v) => {
                b.extend_from_slice(b"Content-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\nContent-Type: application/json\r\n\r\n");
                b.extend_from_slice(v.to_string().as_bytes());
            }
            Part::MetaField(v) => {
                b.extend_from_slice(b"Content-Disposition: form-data; name=\"metadata\"\r\n\r\n");
                b.extend_from_slice(v.to_string().as_bytes());
            }
            Part::File(data) => {
                b.extend_from_slice(b"Content-Disposition: form-data; name=\"file\"; filename=\"f.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n");
                b.extend_from_slice(data);
            }
            Part::Raw(head, data) => {
                b.extend_from_slice(head.as_bytes());
                b.extend_from_slice(b"\r\n\r\n");
                b.extend_from_slice(data);
            }
        }
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    b
}

fn upload(e: &Execd, body: &[u8]) -> Full {
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    e.send_raw("POST", "/files/upload", &[("Content-Type", &ct)], body)
        .full()
}

fn meta(path: &Path) -> Value {
    json!({"path": path.to_str().unwrap(), "owner": null, "group": null, "mode": 644})
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    fs::metadata("/proc/self").unwrap().uid()
}

// ---------------------------------------------------------------- info

#[test]
fn info_reports_upstream_fields_in_order() {
    let e = Execd::start();
    let d = scratch("info");
    let f = d.join("a.txt");
    fs::write(&f, "hello").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    symlink(&f, d.join("link")).unwrap();
    let r = e.get(&format!(
        "/files/info?path={}&path={}",
        p(&f),
        p(&d.join("link"))
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    // Field order as upstream's struct.
    let body = text.split(&format!("\"{}\":", f.display())).nth(1).unwrap();
    let keys = [
        "path",
        "type",
        "size",
        "modified_at",
        "created_at",
        "owner",
        "group",
        "mode",
    ];
    let mut at = 0;
    for k in keys {
        let pos = body.find(&format!("\"{k}\":")).unwrap();
        assert!(pos >= at, "{k} out of order in {body}");
        at = pos;
    }
    let v = r.json();
    let a = &v[f.to_str().unwrap()];
    assert_eq!(a["path"], f.to_str().unwrap());
    assert_eq!(a["type"], "file");
    assert_eq!(a["size"], 5);
    assert_eq!(a["mode"], 644);
    assert!(a["owner"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(a["modified_at"].as_str().unwrap().ends_with('Z'));
    let l = &v[d.join("link").to_str().unwrap()];
    assert_eq!(l["type"], "symlink");
    assert_eq!(e.get("/files/info").json(), json!({}));
}

#[test]
fn info_errors_and_expansion() {
    let d = scratch("infoexp");
    fs::write(d.join("x"), "1").unwrap();
    let home = d.to_str().unwrap();
    let e = Execd::start_with(&[], &[("HOME", home), ("SUBDIR", "x")]);
    let r = e.get(&format!("/files/info?path={}", q("~/$SUBDIR")));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["~/$SUBDIR"]["path"], d.join("x").to_str().unwrap());
    let msg = e
        .get(&format!("/files/info?path={}", p(&d.join("missing"))))
        .assert_error(404, "FILE_NOT_FOUND");
    assert!(msg.contains("missing"), "{msg}");
    let msg = e
        .get(&format!("/files/info?path={}", q("/tmp/$NOPE_A/${NOPE_B}")))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(msg.contains("NOPE_A,NOPE_B"), "{msg}");
    e.get("/files/info?path=%2Ftmp%2Fa%00b")
        .assert_error(400, "INVALID_REQUEST_BODY");
}

// ---------------------------------------------------------------- list

fn tree() -> std::path::PathBuf {
    let d = scratch("tree");
    fs::create_dir_all(d.join("alpha/deep")).unwrap();
    fs::write(d.join("alpha/x.txt"), "x").unwrap();
    fs::write(d.join("alpha/y.txt"), "y").unwrap();
    fs::write(d.join("alpha/deep/z.txt"), "z").unwrap();
    fs::write(d.join("bravo.txt"), "b").unwrap();
    fs::write(d.join("charlie.txt"), "c").unwrap();
    symlink(d.join("alpha"), d.join("link")).unwrap();
    d
}

fn paths(v: &Value, root: &Path) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .strip_prefix(&format!("{}/", root.display()))
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn list_is_lexical_preorder_to_depth() {
    let e = Execd::start();
    let d = tree();
    let r = e.get(&format!("/directories/list?path={}", p(&d)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        paths(&r.json(), &d),
        ["alpha", "bravo.txt", "charlie.txt", "link"]
    );
    let r = e.get(&format!("/directories/list?path={}&depth=2", p(&d)));
    assert_eq!(
        paths(&r.json(), &d),
        [
            "alpha",
            "alpha/deep",
            "alpha/x.txt",
            "alpha/y.txt",
            "bravo.txt",
            "charlie.txt",
            "link"
        ]
    );
    let v = r.json();
    assert_eq!(v[0]["type"], "directory");
    assert_eq!(v[6]["type"], "symlink");
    assert!(r.header("EXECD-RESULTS-TRUNCATED").is_none());
    assert_eq!(
        e.get(&format!("/directories/list?path={}&depth=0", p(&d)))
            .json(),
        json!([])
    );
    let r = e.get(&format!("/directories/list?path={}&depth=9&limit=3", p(&d)));
    assert_eq!(
        paths(&r.json(), &d),
        ["alpha", "alpha/deep", "alpha/deep/z.txt"]
    );
    assert_eq!(r.header("EXECD-RESULTS-TRUNCATED"), Some("true"));
}

#[test]
fn list_bad_input() {
    let e = Execd::start();
    let d = tree();
    e.get("/directories/list")
        .assert_error(400, "MISSING_QUERY");
    let m = e
        .get(&format!("/directories/list?path={}", p(&d.join("link"))))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("symbolic link"), "{m}");
    let m = e
        .get(&format!(
            "/directories/list?path={}",
            p(&d.join("bravo.txt"))
        ))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("not a directory"), "{m}");
    e.get(&format!("/directories/list?path={}", p(&d.join("nope"))))
        .assert_error(404, "FILE_NOT_FOUND");
    for depth in ["abc", "-1", "1.5"] {
        let m = e
            .get(&format!("/directories/list?path={}&depth={depth}", p(&d)))
            .assert_error(400, "INVALID_REQUEST_BODY");
        assert_eq!(m, format!("invalid query parameter 'depth': {depth}"));
    }
    e.get(&format!("/directories/list?path={}&limit=0", p(&d)))
        .assert_error(400, "INVALID_REQUEST_BODY");
}

// ---------------------------------------------------------------- search

/// The relative paths a search of `d` for `pattern` returns, and the response.
fn search(e: &Execd, d: &Path, pattern: &str, extra: &str) -> (Vec<String>, Full) {
    let r = e.get(&format!(
        "/files/search?path={}&pattern={}{extra}",
        p(d),
        q(pattern)
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    (paths(&r.json(), d), r)
}

#[test]
fn search_matches_basenames_and_relative_paths() {
    let e = Execd::start();
    let d = tree();
    let (found, r) = search(&e, &d, "*.txt", "");
    let txt = [
        "alpha/deep/z.txt",
        "alpha/x.txt",
        "alpha/y.txt",
        "bravo.txt",
        "charlie.txt",
    ];
    assert_eq!(found, txt);
    assert_eq!(r.json()[3]["type"], "file");
    // Directories are never returned; the link is an entry, not followed.
    let (found, _) = search(&e, &d, "", "");
    assert_eq!(found[..5], txt);
    assert_eq!(found[5..], ["link"]);
    let cases: [(&str, &[&str]); 3] = [
        ("alpha/*.txt", &["alpha/x.txt", "alpha/y.txt"]),
        ("**/deep/*", &["alpha/deep/z.txt"]),
        ("{bravo,charlie}.txt", &["bravo.txt", "charlie.txt"]),
    ];
    for (pattern, want) in cases {
        assert_eq!(search(&e, &d, pattern, "").0, want, "{pattern}");
    }
    let (found, r) = search(&e, &d, "*.txt", "&limit=2");
    assert_eq!(found, txt[..2]);
    assert_eq!(r.header("EXECD-RESULTS-TRUNCATED"), Some("true"));
}

#[test]
fn search_survives_link_loops_and_reports_bad_input() {
    let e = Execd::start();
    let d = scratch("loop");
    fs::create_dir_all(d.join("a/b")).unwrap();
    symlink(d.join("a"), d.join("a/b/up")).unwrap();
    symlink("self", d.join("self")).unwrap();
    fs::write(d.join("a/b/f.py"), "").unwrap();
    assert_eq!(search(&e, &d, "**", "").0, ["a/b/f.py", "a/b/up", "self"]);
    let m = e
        .get(&format!(
            "/files/search?path={}&pattern={}",
            p(&d),
            q("[abc")
        ))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("invalid pattern"), "{m}");
    e.get("/files/search?pattern=x")
        .assert_error(400, "MISSING_QUERY");
    e.get(&format!("/files/search?path={}", p(&d.join("nope"))))
        .assert_error(404, "FILE_NOT_FOUND");
}

#[test]
fn search_and_list_skip_unreadable_directories() {
    if !is_root() {
        eprintln!("SKIP search_and_list_skip_unreadable_directories: needs root to run execd as another user");
        return;
    }
    let d = scratch("unreadable");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(d.join("open")).unwrap();
    fs::create_dir_all(d.join("shut/inner")).unwrap();
    fs::write(d.join("open/a.txt"), "").unwrap();
    fs::write(d.join("shut/inner/b.txt"), "").unwrap();
    fs::write(d.join("z.txt"), "").unwrap();
    fs::set_permissions(d.join("shut"), fs::Permissions::from_mode(0o700)).unwrap();
    let e = Execd::start_as(65534, 65534);
    let r = e.get(&format!(
        "/files/search?path={}&pattern={}",
        p(&d),
        q("*.txt")
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(paths(&r.json(), &d), ["open/a.txt", "z.txt"]);
    let r = e.get(&format!("/directories/list?path={}&depth=3", p(&d)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        paths(&r.json(), &d),
        ["open", "open/a.txt", "shut", "z.txt"]
    );
    // Reading or writing where the user may not: 403 with a clear message.
    let m = e
        .get(&format!(
            "/files/download?path={}",
            p(&d.join("shut/inner/b.txt"))
        ))
        .assert_error(403, "PERMISSION_DENIED");
    assert!(m.contains("Permission denied"), "{m}");
    let body = multipart(&[Part::Meta(meta(&d.join("shut/new.txt"))), Part::File(b"x")]);
    upload(&e, &body).assert_error(403, "PERMISSION_DENIED");
    let body = multipart(&[Part::Meta(meta(&d.join("denied.txt"))), Part::File(b"x")]);
    upload(&e, &body).assert_error(403, "PERMISSION_DENIED");
}

// ---------------------------------------------------------------- batch edits

#[test]
fn delete_files_is_idempotent_and_refuses_directories() {
    let e = Execd::start();
    let d = scratch("del");
    fs::write(d.join("a"), "a").unwrap();
    fs::write(d.join("target"), "t").unwrap();
    symlink(d.join("target"), d.join("link")).unwrap();
    fs::create_dir(d.join("dir")).unwrap();
    let r = e.delete(&format!(
        "/files?path={}&path={}&path={}",
        p(&d.join("a")),
        p(&d.join("link")),
        p(&d.join("never"))
    ));
    assert_eq!((r.status, r.text()), (200, String::new()));
    assert_eq!(names(&d), ["dir", "target"]);
    // A batch with a bad item still applies the others and names the failure.
    fs::write(d.join("b"), "b").unwrap();
    let m = e
        .delete(&format!(
            "/files?path={}&path={}",
            p(&d.join("dir")),
            p(&d.join("b"))
        ))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.starts_with("1 of 2 items failed"), "{m}");
    assert!(m.contains("path is a directory"), "{m}");
    assert_eq!(names(&d), ["dir", "target"]);
}

#[test]
fn move_creates_parents_never_overwrites_and_crosses_filesystems() {
    let e = Execd::start();
    let d = scratch("mv");
    fs::write(d.join("a"), "A").unwrap();
    fs::write(d.join("b"), "B").unwrap();
    let body = json!([{"src": d.join("a"), "dest": d.join("x/y/a2")}]);
    let r = e.post("/files/mv", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fs::read_to_string(d.join("x/y/a2")).unwrap(), "A");
    let r = e.post(
        "/files/mv",
        &json!([{"src": d.join("b"), "dest": d.join("x/y/a2")}]),
    );
    let m = r.assert_error(409, "FILE_EXISTS");
    assert!(m.contains("already exists"), "{m}");
    assert_eq!(fs::read_to_string(d.join("x/y/a2")).unwrap(), "A");
    assert_eq!(fs::read_to_string(d.join("b")).unwrap(), "B");
    e.post(
        "/files/mv",
        &json!([{"src": d.join("gone"), "dest": d.join("z")}]),
    )
    .assert_error(404, "FILE_NOT_FOUND");
    e.post_raw("/files/mv", b"{not json")
        .assert_error(400, "INVALID_REQUEST_BODY");
    // Across filesystems (/dev/shm is a tmpfs), a file is copied.
    let shm = Path::new("/dev/shm");
    if fs::metadata(shm).map(|m| m.dev()).ok() != Some(fs::metadata(&d).unwrap().dev()) {
        let src = shm.join(format!("execd-mv-{}", std::process::id()));
        fs::write(&src, "cross").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o640)).unwrap();
        let r = e.post("/files/mv", &json!([{"src": src, "dest": d.join("cross")}]));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(fs::read_to_string(d.join("cross")).unwrap(), "cross");
        assert_eq!(mode(&d.join("cross")), 0o640);
        assert!(!src.exists());
        assert!(!names(&d).iter().any(|n| n.ends_with(".tmp")));
    } else {
        eprintln!("SKIP cross-filesystem move: /dev/shm is on the same filesystem");
    }
}

#[test]
fn permissions_apply_modes_and_names_sorted_with_per_path_failures() {
    let e = Execd::start();
    let d = scratch("chmod");
    fs::write(d.join("a"), "").unwrap();
    fs::write(d.join("b"), "").unwrap();
    let mut body = json!({});
    body[d.join("a").to_str().unwrap()] = json!({"mode": 600});
    body[d.join("b").to_str().unwrap()] = json!({"mode": 4755, "owner": null, "group": null});
    let r = e.post("/files/permissions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mode(&d.join("a")), 0o600);
    assert_eq!(mode(&d.join("b")), 0o4755);
    if is_root() {
        let mut body = json!({});
        body[d.join("a").to_str().unwrap()] = json!({"owner": "nobody", "group": "nogroup"});
        let r = e.post("/files/permissions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        let info = e
            .get(&format!("/files/info?path={}", p(&d.join("a"))))
            .json();
        let a = &info[d.join("a").to_str().unwrap()];
        assert_eq!(
            (a["owner"].as_str(), a["group"].as_str()),
            (Some("nobody"), Some("nogroup"))
        );
    }
    let mut body = json!({});
    body[d.join("a").to_str().unwrap()] = json!({"mode": 789});
    let m = e
        .post("/files/permissions", &body)
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("invalid mode 789"), "{m}");
    // One bad path does not stop the others.
    let mut body = json!({});
    body[d.join("missing").to_str().unwrap()] = json!({"mode": 600});
    body[d.join("b").to_str().unwrap()] = json!({"mode": 700, "owner": "no-such-user-x"});
    body[d.join("a").to_str().unwrap()] = json!({"mode": 640});
    let m = e
        .post("/files/permissions", &body)
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.starts_with("2 of 3 items failed"), "{m}");
    assert!(m.contains("unknown user 'no-such-user-x'"), "{m}");
    assert_eq!(mode(&d.join("a")), 0o640);
    assert_eq!(mode(&d.join("b")), 0o4755);
}

#[test]
fn directories_create_with_mode_keep_existing_and_remove_recursively() {
    let e = Execd::start();
    let d = scratch("dirs");
    fs::create_dir(d.join("old")).unwrap();
    fs::set_permissions(d.join("old"), fs::Permissions::from_mode(0o711)).unwrap();
    fs::write(d.join("file"), "").unwrap();
    let mut body = json!({});
    body[d.join("new/a/b").to_str().unwrap()] = json!({"mode": 700, "owner": null, "group": null});
    body[d.join("old").to_str().unwrap()] = json!({"mode": 755});
    body[d.join("six").to_str().unwrap()] = json!({"mode": 644});
    let r = e.post("/directories", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mode(&d.join("new/a/b")), 0o700);
    assert_eq!(mode(&d.join("old")), 0o711);
    assert_eq!(mode(&d.join("six")), 0o644);
    let mut body = json!({});
    body[d.join("file").to_str().unwrap()] = json!({"mode": 755});
    e.post("/directories", &body)
        .assert_error(409, "FILE_EXISTS");
    fs::write(d.join("new/a/b/f"), "x").unwrap();
    symlink(d.join("old"), d.join("new/link")).unwrap();
    let r = e.delete(&format!(
        "/directories?path={}&path={}&path={}",
        p(&d.join("new")),
        p(&d.join("file")),
        p(&d.join("never"))
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(names(&d), ["old", "six"]);
}

#[test]
fn replace_counts_keeps_mode_and_validates_first() {
    let d = scratch("replace");
    let e = Execd::start_with(&[], &[("HOME", d.to_str().unwrap())]);
    let a = d.join("a.txt");
    let b = d.join("b.txt");
    fs::write(&a, "hello world").unwrap();
    fs::set_permissions(&a, fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(&b, "aaaa aa").unwrap();
    symlink(&b, d.join("blink")).unwrap();
    let body = json!({"~/a.txt": {"old": "world", "new": "universe"}, "~/blink": {"old": "aa", "new": "b"}});
    let r = e.post("/files/replace?verbose=true", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"~/a.txt": {"replacedCount": 1}, "~/blink": {"replacedCount": 3}})
    );
    assert_eq!(fs::read_to_string(&a).unwrap(), "hello universe");
    assert_eq!(mode(&a), 0o640);
    assert_eq!(fs::read_to_string(&b).unwrap(), "bb b");
    assert!(fs::symlink_metadata(d.join("blink"))
        .unwrap()
        .file_type()
        .is_symlink());
    let r = e.post(
        "/files/replace",
        &json!({"~/a.txt": {"old": "zzz", "new": "y"}}),
    );
    assert_eq!((r.status, r.text()), (200, String::new()));
    // An empty `old` anywhere rejects the whole batch before anything changes.
    let m = e
        .post(
            "/files/replace",
            &json!({"~/a.txt": {"old": "hello", "new": "bye"}, "~/b.txt": {"old": "", "new": "x"}}),
        )
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert_eq!(m, "old content must not be empty");
    assert_eq!(fs::read_to_string(&a).unwrap(), "hello universe");
    e.post(
        "/files/replace",
        &json!({"~/nope": {"old": "a", "new": "b"}}),
    )
    .assert_error(404, "FILE_NOT_FOUND");
    assert_eq!(names(&d), ["a.txt", "b.txt", "blink"]);
}

// ---------------------------------------------------------------- upload

#[test]
fn upload_as_the_sdk_sends_it() {
    let e = Execd::start();
    let d = scratch("up");
    let body = multipart(&[
        Part::Meta(meta(&d.join("one.txt"))),
        Part::File(b"first"),
        Part::Meta(json!({"path": d.join("sub/dir/two.bin").to_str().unwrap(), "mode": 600})),
        Part::File(&[0u8, 1, 2, 255]),
    ]);
    let r = upload(&e, &body);
    assert_eq!((r.status, r.text()), (200, String::new()));
    assert_eq!(fs::read(d.join("one.txt")).unwrap(), b"first");
    assert_eq!(mode(&d.join("one.txt")), 0o644);
    assert_eq!(fs::read(d.join("sub/dir/two.bin")).unwrap(), [0, 1, 2, 255]);
    assert_eq!(mode(&d.join("sub/dir/two.bin")), 0o600);
    // Chunked request body, as the Python SDK sends in direct mode.
    let mut s = e.connect();
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    let head = e.head(
        "POST",
        "/files/upload",
        &[("Content-Type", &ct), ("Transfer-Encoding", "chunked")],
        None,
    );
    s.write_all(head.as_bytes()).unwrap();
    let body = multipart(&[
        Part::Meta(meta(&d.join("one.txt"))),
        Part::File(b"rewritten"),
    ]);
    for chunk in body.chunks(7) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        s.write_all(chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = common::Response::read(s).full();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fs::read(d.join("one.txt")).unwrap(), b"rewritten");
    assert_eq!(names(&d), ["one.txt", "sub"]);
}

#[test]
fn upload_accepts_field_metadata_file_first_and_keeps_existing_mode() {
    let e = Execd::start();
    let d = scratch("up2");
    fs::write(d.join("keep"), "old").unwrap();
    fs::set_permissions(d.join("keep"), fs::Permissions::from_mode(0o604)).unwrap();
    let body = multipart(&[
        Part::File(b"file first"),
        Part::MetaField(json!({"path": d.join("late").to_str().unwrap()})),
        Part::MetaField(json!({"path": d.join("keep").to_str().unwrap(), "mode": 0})),
        Part::File(b"new"),
    ]);
    let r = upload(&e, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fs::read_to_string(d.join("late")).unwrap(), "file first");
    assert_eq!(fs::read_to_string(d.join("keep")).unwrap(), "new");
    assert_eq!(mode(&d.join("keep")), 0o604);
    assert_eq!(names(&d), ["keep", "late"]);
    assert!(
        names(&e.tmp).iter().all(|n| !n.ends_with(".tmp")),
        "{:?}",
        names(&e.tmp)
    );
}

#[test]
fn upload_bad_input_gets_clear_errors_and_writes_nothing() {
    let e = Execd::start();
    let d = scratch("upbad");
    fs::write(d.join("existing"), "original").unwrap();
    fs::create_dir(d.join("adir")).unwrap();
    let target = d.join("existing");
    let cases: Vec<(Vec<u8>, u16, &str, &str)> = vec![
        (
            multipart(&[]),
            400,
            "INVALID_FILE",
            "multipart form is empty",
        ),
        (
            multipart(&[Part::File(b"x")]),
            400,
            "INVALID_FILE_METADATA",
            "metadata file is missing",
        ),
        (
            multipart(&[Part::Meta(meta(&target))]),
            400,
            "INVALID_FILE_CONTENT",
            "file is missing",
        ),
        (
            multipart(&[
                Part::Meta(meta(&target)),
                Part::Meta(meta(&target)),
                Part::File(b"x"),
            ]),
            400,
            "INVALID_FILE",
            "metadata and file count mismatch: 2 vs 1",
        ),
        (
            multipart(&[
                Part::Raw(
                    "Content-Disposition: form-data; name=\"metadata\"; filename=\"m\"",
                    b"{oops",
                ),
                Part::File(b"x"),
            ]),
            400,
            "INVALID_FILE_METADATA",
            "invalid metadata format.",
        ),
        (
            multipart(&[Part::Meta(json!({"path": ""})), Part::File(b"x")]),
            400,
            "INVALID_FILE_METADATA",
            "metadata path is empty",
        ),
        (
            multipart(&[
                Part::Meta(json!({"path": "/tmp/$UNDEFINED_X/f"})),
                Part::File(b"x"),
            ]),
            400,
            "INVALID_FILE_METADATA",
            "UNDEFINED_X",
        ),
        (
            multipart(&[
                Part::Meta(json!({"path": target, "mode": 999})),
                Part::File(b"x"),
            ]),
            400,
            "INVALID_REQUEST_BODY",
            "invalid mode 999",
        ),
        (
            multipart(&[Part::Meta(meta(&d.join("adir"))), Part::File(b"x")]),
            409,
            "FILE_EXISTS",
            "target is a directory",
        ),
        // The second file fails: the first is not written either.
        (
            multipart(&[
                Part::Meta(meta(&target)),
                Part::File(b"changed"),
                Part::Meta(meta(&d.join("adir"))),
                Part::File(b"x"),
            ]),
            409,
            "FILE_EXISTS",
            "target is a directory",
        ),
        (
            b"--nope\r\nthis is not multipart".to_vec(),
            400,
            "INVALID_FILE",
            "malformed multipart body",
        ),
    ];
    for (body, status, code, text) in cases {
        let r = upload(&e, &body);
        let m = r.assert_error(status, code);
        assert!(m.contains(text), "{m:?} should contain {text:?}");
    }
    let r = e
        .send_raw(
            "POST",
            "/files/upload",
            &[("Content-Type", "application/json")],
            b"{}",
        )
        .full();
    let m = r.assert_error(400, "INVALID_FILE");
    assert!(m.contains("multipart/form-data"), "{m}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "original");
    assert_eq!(names(&d), ["adir", "existing"]);
    assert!(names(&e.tmp).iter().all(|n| !n.ends_with(".tmp")));
}

#[test]
fn cut_off_upload_leaves_no_file() {
    let e = Execd::start();
    let d = scratch("upcut");
    fs::write(d.join("kept"), "original").unwrap();
    for target in ["new", "kept"] {
        let body = multipart(&[
            Part::Meta(meta(&d.join(target))),
            Part::File(&vec![7u8; 1 << 20]),
        ]);
        let mut s = e.connect();
        let ct = format!("multipart/form-data; boundary={BOUNDARY}");
        s.write_all(
            e.head(
                "POST",
                "/files/upload",
                &[("Content-Type", &ct)],
                Some(body.len()),
            )
            .as_bytes(),
        )
        .unwrap();
        // Send half, then vanish.
        s.write_all(&body[..body.len() / 2]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(s);
    }
    // Give execd a moment to notice and clean up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while names(&d) != ["kept"] && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(names(&d), ["kept"]);
    assert_eq!(fs::read_to_string(d.join("kept")).unwrap(), "original");
    // And execd still serves.
    assert_eq!(e.get("/ping").status, 200);
}

// ---------------------------------------------------------------- download

#[test]
fn download_bytes_and_ranges() {
    let e = Execd::start();
    let d = scratch("down");
    let f = d.join("data.bin");
    let data: Vec<u8> = (0..20u8).collect();
    fs::write(&f, &data).unwrap();
    let url = format!("/files/download?path={}", p(&f));
    let r = e.get(&url);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("Content-Length"), Some("20"));
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"data.bin\"")
    );
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert!(r
        .header("Last-Modified")
        .is_some_and(|v| v.ends_with(" GMT")));
    let range = |h: &str| e.send("GET", &url, &[("Range", h)], None).full();
    for (h, want, cr) in [
        ("bytes=0-9", &data[0..10], "bytes 0-9/20"),
        ("bytes=-5", &data[15..], "bytes 15-19/20"),
        ("bytes=18-", &data[18..], "bytes 18-19/20"),
        ("bytes=5-1000", &data[5..], "bytes 5-19/20"),
        ("bytes=30-40, 2-3", &data[2..4], "bytes 2-3/20"),
    ] {
        let r = range(h);
        assert_eq!(r.status, 206, "{h}");
        assert_eq!(r.body, want, "{h}");
        assert_eq!(r.header("Content-Range"), Some(cr), "{h}");
        assert_eq!(
            r.header("Content-Length"),
            Some(want.len().to_string().as_str()),
            "{h}"
        );
    }
    for h in ["bytes=20-", "bytes=-0", "bytes=100-200"] {
        let r = range(h);
        let m = r.assert_error(416, "INVALID_RANGE");
        assert!(m.contains("not satisfiable"), "{m}");
        assert_eq!(r.header("Content-Range"), Some("bytes */20"), "{h}");
    }
    for h in [
        "bytes=abc",
        "bytes=5-2",
        "lines=1-2",
        "bytes=-1-2",
        "bytes=99999999999999999999999-",
    ] {
        let m = range(h).assert_error(416, "INVALID_RANGE");
        assert!(m.contains("invalid Range header"), "{m}");
    }
}

#[test]
fn download_lines_and_bad_input() {
    let e = Execd::start();
    let d = scratch("lines");
    let f = d.join("l.txt");
    fs::write(&f, "line1\nline2\r\nline3\nline4\nline5\n").unwrap();
    let get = |extra: &str| e.get(&format!("/files/download?path={}{extra}", p(&f)));
    let r = get("&offset=2&limit=2");
    assert_eq!((r.status, r.text().as_str()), (200, "line2\nline3"));
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(get("&offset=4").text(), "line4\nline5");
    assert_eq!(get("&limit=2").text(), "line1\nline2");
    assert_eq!(get("&offset=9").text(), "");
    assert_eq!(get("&offset=5&limit=9").text(), "line5");
    for bad in ["&offset=0", "&offset=-1", "&limit=abc", "&limit=0"] {
        let m = get(bad).assert_error(400, "INVALID_REQUEST_BODY");
        assert!(m.starts_with("invalid query parameter"), "{m}");
    }
    let m = e
        .send(
            "GET",
            &format!("/files/download?path={}&offset=1", p(&f)),
            &[("Range", "bytes=0-1")],
            None,
        )
        .full()
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("mutually exclusive"), "{m}");
    e.get("/files/download").assert_error(400, "MISSING_QUERY");
    e.get(&format!("/files/download?path={}", p(&d.join("nope"))))
        .assert_error(404, "FILE_NOT_FOUND");
    let m = e
        .get(&format!("/files/download?path={}", p(&d)))
        .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(m.contains("is a directory"), "{m}");
    let r = e.get(&format!(
        "/files/download?path={}",
        p(&d.join("测试 file.txt"))
    ));
    r.assert_error(404, "FILE_NOT_FOUND");
    fs::write(d.join("测试.txt"), "x").unwrap();
    let r = e.get(&format!("/files/download?path={}", p(&d.join("测试.txt"))));
    assert_eq!(
        r.header("Content-Disposition"),
        Some("attachment; filename=\"%E6%B5%8B%E8%AF%95.txt\"; filename*=UTF-8''%E6%B5%8B%E8%AF%95.txt")
    );
}

// ---------------------------------------------------------------- big, full, read-only

/// Streams `len` bytes of a sparse file (zeros with markers) through an
/// upload and back through a download, comparing every byte, with execd's
/// peak RSS bounded.
#[test]
fn multi_gigabyte_sparse_round_trip_with_flat_rss() {
    const LEN: u64 = (2 << 30) + 4097;
    let d = scratch("big");
    let src = d.join("sparse.src");
    {
        let f = fs::File::create(&src).unwrap();
        f.set_len(LEN).unwrap();
        for at in [0, 1 << 30, LEN - 5] {
            use std::os::unix::fs::FileExt;
            f.write_at(b"MARK!", at).unwrap();
        }
    }
    let e = Execd::start();
    let (rss0, _) = e.rss_kib();
    let dest = d.join("uploaded.bin");
    let head_part = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n\r\n{}\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n",
        meta(&dest)
    );
    let tail = format!("\r\n--{BOUNDARY}--\r\n");
    let total = head_part.len() as u64 + LEN + tail.len() as u64;
    let mut s = e.connect();
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    s.write_all(
        e.head("POST", "/files/upload", &[("Content-Type", &ct)], None)
            .as_bytes()
            .strip_suffix(b"\r\n")
            .unwrap(),
    )
    .unwrap();
    s.write_all(format!("Content-Length: {total}\r\n\r\n{head_part}").as_bytes())
        .unwrap();
    std::io::copy(&mut fs::File::open(&src).unwrap(), &mut s).unwrap();
    s.write_all(tail.as_bytes()).unwrap();
    let r = common::Response::read(s).full();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fs::metadata(&dest).unwrap().len(), LEN);
    assert!(same_content(
        fs::File::open(&src).unwrap(),
        fs::File::open(&dest).unwrap()
    ));
    // Download it back and compare on the fly.
    let r = e.send(
        "GET",
        &format!("/files/download?path={}", p(&dest)),
        &[],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some(LEN.to_string().as_str()));
    assert!(same_content(fs::File::open(&src).unwrap(), r.body));
    let (_, hwm) = e.rss_kib();
    assert!(
        hwm < rss0 + 64 * 1024,
        "peak RSS {hwm} KiB (start {rss0} KiB)"
    );
    fs::remove_dir_all(&d).unwrap();
}

fn same_content(mut a: impl Read, mut b: impl Read) -> bool {
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut a, &mut ba);
        let m = read_full(&mut b, &mut bb);
        if n != m || ba[..n] != bb[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(tag: &str, opts: &str) -> Option<Self> {
        if !is_root() {
            eprintln!("SKIP {tag}: needs root to mount a tmpfs");
            return None;
        }
        let dir = scratch(tag);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount tmpfs on {}", dir.display());
        Some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn full_disk_and_read_only_targets_get_clear_errors() {
    let Some(full) = Tmpfs::mount("fullfs", "size=1m") else {
        return;
    };
    let e = Execd::start();
    let body = multipart(&[
        Part::Meta(meta(&full.0.join("big"))),
        Part::File(&vec![1u8; 3 << 20]),
    ]);
    let m = upload(&e, &body).assert_error(507, "NO_SPACE");
    assert!(m.contains("No space left"), "{m}");
    assert!(names(&full.0).is_empty(), "{:?}", names(&full.0));
    let Some(ro) = Tmpfs::mount("rofs", "size=1m,ro") else {
        return;
    };
    let body = multipart(&[Part::Meta(meta(&ro.0.join("f"))), Part::File(b"x")]);
    let m = upload(&e, &body).assert_error(403, "PERMISSION_DENIED");
    assert!(m.contains("Read-only"), "{m}");
    let mut perms = json!({});
    perms[ro.0.join("sub").to_str().unwrap()] = json!({"mode": 755});
    e.post("/directories", &perms)
        .assert_error(403, "PERMISSION_DENIED");
}
