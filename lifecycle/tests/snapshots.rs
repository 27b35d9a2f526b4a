//! Snapshots against the machine's Docker engine, through HTTP: snapshot a
//! sandbox with a file written through execd, poll until Ready, list and
//! filter, restore a new sandbox and read the file back, delete (refused
//! while a sandbox uses the image), bad input, and recovery of rows left by
//! a crash. Every snapshot image goes to the server's own repository and is
//! removed on drop, even when a test fails.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    can_run, create_body, image_exists, images_of, run_command, start_for_snapshots, Server,
    BASE_IMAGE, EXECD_IMAGE,
};
use lifecycle::store::{SnapshotRow, Store};
use serde_json::{json, Value};

const IMAGES: &[&str] = &[EXECD_IMAGE, BASE_IMAGE];

/// Runs a shell command in sandbox `id`; returns its stdout (it must succeed).
async fn run(s: &Server, id: &str, cmd: &str) -> String {
    let (out, end) = run_command(&s.endpoint(id, 44772).await, cmd).await;
    assert_eq!(end, "complete", "{cmd:?} failed: {out}");
    out
}

/// Polls a snapshot until it leaves `Creating`.
async fn settled(s: &Server, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = s.call("GET", &format!("/v1/snapshots/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v["status"]["state"] != "Creating" {
            return v;
        }
        assert!(Instant::now() < deadline, "still Creating: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn list(s: &Server, query: &str) -> Value {
    let r = s.call("GET", &format!("/v1/snapshots{query}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// The body of a restore: no image, no entrypoint.
fn restore_body(snapshot_id: &str) -> Value {
    let mut b = create_body(json!({ "snapshotId": snapshot_id }));
    let o = b.as_object_mut().unwrap();
    o.remove("image");
    o.remove("entrypoint");
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_restore_list_and_delete() {
    if !can_run(IMAGES) {
        return;
    }
    let (_images, s) = start_for_snapshots("snap");
    let repo = s.snapshot_repository();

    // A manual-cleanup source with metadata, and a file written through execd.
    let src = s
        .create_sandbox(create_body(
            json!({"timeout": null, "metadata": {"team": "infra"}}),
        ))
        .await;
    let out = run(
        &s,
        &src,
        "echo hello-snapshot > /root/state.txt && cat /root/state.txt",
    )
    .await;
    assert_eq!(out.trim(), "hello-snapshot");

    // Create: 202, Creating, Location.
    let r = s
        .call(
            "POST",
            &format!("/v1/sandboxes/{src}/snapshots"),
            Some(json!({"name": "checkpoint"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let snap = r.json();
    let snap_id = snap["id"].as_str().unwrap().to_string();
    assert_eq!(
        uuid::Uuid::parse_str(&snap_id).unwrap().get_version_num(),
        4
    );
    assert_eq!(
        r.header("Location"),
        Some(format!("/v1/snapshots/{snap_id}").as_str())
    );
    assert_eq!(snap["sandboxId"], src.as_str());
    assert_eq!(snap["name"], "checkpoint");
    assert_eq!(snap["status"]["state"], "Creating");
    assert_eq!(snap["status"]["reason"], "snapshot_accepted");
    assert!(snap["createdAt"].as_str().unwrap().ends_with('Z'), "{snap}");

    let ready = settled(&s, &snap_id).await;
    assert_eq!(ready["status"]["state"], "Ready", "{ready}");
    assert_eq!(ready["status"]["reason"], "snapshot_runtime_ready");
    assert!(ready["status"]["lastTransitionAt"].as_str().is_some());
    assert_eq!(ready["createdAt"], snap["createdAt"]);

    // A second one (the commit pauses the source meanwhile, so after the
    // first), without a body: no name.
    let r = s
        .call("POST", &format!("/v1/sandboxes/{src}/snapshots"), None)
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let second = r.json();
    assert!(second.get("name").is_none(), "{second}");
    let second_id = second["id"].as_str().unwrap().to_string();
    assert_eq!(settled(&s, &second_id).await["status"]["state"], "Ready");
    assert!(image_exists(&format!("{repo}:{snap_id}")));
    // The source keeps running.
    assert_eq!(s.sandbox(&src).await["status"]["state"], "Running");

    // List: newest first, filters, pagination.
    let all = list(&s, "").await;
    assert_eq!(ids(&all), [second_id.clone(), snap_id.clone()]);
    assert_eq!(all["pagination"]["totalItems"], 2);
    let page = list(
        &s,
        &format!("?sandboxId={src}&state=ready&state=Failed&pageSize=1"),
    )
    .await;
    assert_eq!(
        page["pagination"],
        json!({"page": 1, "pageSize": 1, "totalItems": 2, "totalPages": 2, "hasNextPage": true})
    );
    assert_eq!(ids(&page), [second_id.as_str()]);
    let page2 = list(&s, &format!("?sandboxId={src}&pageSize=1&page=2")).await;
    assert_eq!(ids(&page2), [snap_id.as_str()]);
    assert_eq!(page2["pagination"]["hasNextPage"], false);
    let none = list(&s, "?sandboxId=someone-else").await;
    assert_eq!(
        none["pagination"],
        json!({"page": 1, "pageSize": 20, "totalItems": 0, "totalPages": 0, "hasNextPage": false})
    );
    assert_eq!(list(&s, "?state=Failed").await["items"], json!([]));
    assert_eq!(ids(&list(&s, "?name=checkpoint").await), [snap_id.as_str()]);
    assert_eq!(list(&s, "?name=other").await["items"], json!([]));
    assert_eq!(list(&s, "?page=9").await["items"], json!([]));
    s.call("GET", "/v1/snapshots?pageSize=201", None)
        .await
        .assert_error(400, "SANDBOX::INVALID_PARAMETER");
    let got = s
        .call("GET", &format!("/v1/snapshots/{snap_id}"), None)
        .await;
    assert_eq!(got.json(), ready);
    // Also under the root mount.
    assert_eq!(
        s.call("GET", &format!("/snapshots/{snap_id}"), None)
            .await
            .json(),
        ready
    );

    // Restore: default entrypoint, the file is there, snapshotId instead of
    // image, and nothing of the source's labels (metadata, manual cleanup).
    let r = s
        .call("POST", "/v1/sandboxes", Some(restore_body(&snap_id)))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let created = r.json();
    assert_eq!(created["entrypoint"], json!(["tail", "-f", "/dev/null"]));
    let restored = created["id"].as_str().unwrap().to_string();
    let got = s.sandbox(&restored).await;
    assert_eq!(got["snapshotId"], snap_id.as_str(), "{got}");
    assert!(got.get("image").is_none(), "{got}");
    assert!(got.get("metadata").is_none(), "{got}");
    assert!(got["expiresAt"].as_str().is_some(), "{got}");
    assert_eq!(got["status"]["state"], "Running");
    let c = s.inspect(&restored);
    assert_eq!(c["Config"]["Image"], format!("{repo}:{snap_id}"));
    assert_eq!(
        c["Config"]["Labels"][format!("{}snapshot-id", s.prefix)],
        snap_id.as_str()
    );
    let out = run(&s, &restored, "cat /root/state.txt; echo $OPENSANDBOX_ID").await;
    assert_eq!(out, format!("hello-snapshot\n{restored}\n"));
    let listed = s.call("GET", "/v1/sandboxes", None).await.json();
    let item = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == restored.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["snapshotId"], snap_id.as_str());
    assert!(item.get("image").is_none());
    // The source still shows its image and no snapshotId.
    let got = s.sandbox(&src).await;
    assert_eq!(got["image"]["uri"], common::BASE_IMAGE);
    assert!(got.get("snapshotId").is_none());
    assert_eq!(got["metadata"], json!({"team": "infra"}));

    // Delete while the restored sandbox uses the image: refused, still Ready.
    s.call("DELETE", &format!("/v1/snapshots/{snap_id}"), None)
        .await
        .assert_error(409, "SNAPSHOT::DELETE_CONFLICT");
    let got = s
        .call("GET", &format!("/v1/snapshots/{snap_id}"), None)
        .await;
    assert_eq!(got.json()["status"]["state"], "Ready");
    assert!(image_exists(&format!("{repo}:{snap_id}")));

    // Once the sandbox is gone: 204, image and row gone.
    let r = s
        .call("DELETE", &format!("/v1/sandboxes/{restored}"), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = s
        .call("DELETE", &format!("/v1/snapshots/{snap_id}"), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(!image_exists(&format!("{repo}:{snap_id}")));
    s.call("GET", &format!("/v1/snapshots/{snap_id}"), None)
        .await
        .assert_error(404, "SNAPSHOT::NOT_FOUND");
    s.call("POST", "/v1/sandboxes", Some(restore_body(&snap_id)))
        .await
        .assert_error(404, "SNAPSHOT::NOT_FOUND");

    // A snapshot outlives its sandbox.
    let r = s
        .call("DELETE", &format!("/v1/sandboxes/{src}"), None)
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(ids(&list(&s, "").await), [second_id.as_str()]);
    let r = s
        .call("DELETE", &format!("/snapshots/{second_id}"), None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(images_of(&repo).is_empty(), "{:?}", images_of(&repo));
    assert!(s.containers().is_empty(), "{:?}", s.containers());
}

fn row(id: &str, sandbox: &str, state: &str, image: Option<String>) -> SnapshotRow {
    SnapshotRow {
        id: id.into(),
        sandbox_id: sandbox.into(),
        name: None,
        state: state.into(),
        reason: Some("snapshot_accepted".into()),
        message: None,
        image,
        created_at_ms: 1_700_000_000_000,
        last_transition_ms: 1_700_000_000_000,
    }
}

fn tag(source: &str, target: &str) {
    let ok = Command::new("docker")
        .args(["tag", source, target])
        .status()
        .unwrap()
        .success();
    assert!(ok, "docker tag {source} {target}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_and_recovery_after_a_crash() {
    if !can_run(IMAGES) {
        return;
    }
    let (_images, mut s) = start_for_snapshots("snapbad");
    let repo = s.snapshot_repository();
    let unknown = "00000000-0000-4000-8000-000000000000";

    // Unknown ids.
    s.call("GET", &format!("/v1/snapshots/{unknown}"), None)
        .await
        .assert_error(404, "SNAPSHOT::NOT_FOUND");
    s.call("DELETE", &format!("/v1/snapshots/{unknown}"), None)
        .await
        .assert_error(404, "SNAPSHOT::NOT_FOUND");
    s.call("POST", &format!("/v1/sandboxes/{unknown}/snapshots"), None)
        .await
        .assert_error(404, "DOCKER::SANDBOX_NOT_FOUND");
    s.call("POST", "/v1/sandboxes", Some(restore_body(unknown)))
        .await
        .assert_error(404, "SNAPSHOT::NOT_FOUND");
    // Both sources, or none.
    s.call(
        "POST",
        "/v1/sandboxes",
        Some(create_body(json!({"snapshotId": unknown}))),
    )
    .await
    .assert_error(400, "SANDBOX::INVALID_PARAMETER");
    let mut neither = create_body(json!({}));
    neither.as_object_mut().unwrap().remove("image");
    s.call("POST", "/v1/sandboxes", Some(neither))
        .await
        .assert_error(400, "SANDBOX::INVALID_PARAMETER");

    // Bad bodies, and a paused source.
    let id = s.create_sandbox(create_body(json!({}))).await;
    let path = format!("/v1/sandboxes/{id}/snapshots");
    s.call("POST", &path, Some(json!({"name": ""})))
        .await
        .assert_error(400, "SANDBOX::INVALID_PARAMETER");
    s.call("POST", &path, Some(json!({"label": "x"})))
        .await
        .assert_error(400, "SANDBOX::INVALID_PARAMETER");
    assert_eq!(s.act(&id, "pause").await, 202);
    s.call("POST", &path, Some(json!({})))
        .await
        .assert_error(409, "SNAPSHOT::INVALID_SOURCE_STATE");
    assert_eq!(s.act(&id, "resume").await, 202);
    assert_eq!(list(&s, "").await["items"], json!([]));

    // A Creating row cannot be deleted (its commit is "in progress").
    let store_path = s.dir.join("store.db");
    let in_flight = uuid::Uuid::new_v4().to_string();
    Store::open(&store_path)
        .unwrap()
        .put_snapshot(&row(&in_flight, &id, "Creating", None))
        .unwrap();
    s.call("DELETE", &format!("/v1/snapshots/{in_flight}"), None)
        .await
        .assert_error(409, "SNAPSHOT::INVALID_STATE");
    s.call("POST", "/v1/sandboxes", Some(restore_body(&in_flight)))
        .await
        .assert_error(409, "SNAPSHOT::NOT_READY");

    // A crash: rows left Creating (image committed or not) and Deleting.
    s.stop();
    let (committed, lost, deleting) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    tag(BASE_IMAGE, &format!("{repo}:{committed}"));
    tag(BASE_IMAGE, &format!("{repo}:{deleting}"));
    {
        let store = Store::open(&store_path).unwrap();
        store
            .put_snapshot(&row(&committed, &id, "Creating", None))
            .unwrap();
        store
            .put_snapshot(&row(&lost, &id, "Creating", None))
            .unwrap();
        store
            .put_snapshot(&row(
                &deleting,
                &id,
                "Deleting",
                Some(format!("{repo}:{deleting}")),
            ))
            .unwrap();
    }
    s.restart();

    let got = s
        .call("GET", &format!("/v1/snapshots/{committed}"), None)
        .await
        .json();
    assert_eq!(got["status"]["state"], "Ready", "{got}");
    assert_eq!(got["status"]["reason"], "snapshot_recovery_ready");
    for failed in [&lost, &in_flight] {
        let got = s
            .call("GET", &format!("/v1/snapshots/{failed}"), None)
            .await
            .json();
        assert_eq!(got["status"]["state"], "Failed", "{got}");
        assert_eq!(got["status"]["reason"], "snapshot_recovery_missing_image");
    }
    s.call("GET", &format!("/v1/snapshots/{deleting}"), None)
        .await
        .assert_error(404, "SNAPSHOT::NOT_FOUND");
    assert!(!image_exists(&format!("{repo}:{deleting}")));
    assert!(image_exists(BASE_IMAGE), "only the tag was removed");

    // Failed: not restorable, deletable.
    s.call("POST", "/v1/sandboxes", Some(restore_body(&lost)))
        .await
        .assert_error(409, "SNAPSHOT::NOT_READY");
    for gone in [&lost, &in_flight, &committed] {
        let r = s
            .call("DELETE", &format!("/v1/snapshots/{gone}"), None)
            .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    assert!(images_of(&repo).is_empty(), "{:?}", images_of(&repo));
    assert!(image_exists(BASE_IMAGE));
    assert_eq!(list(&s, "").await["items"], json!([]));
}
