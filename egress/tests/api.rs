//! The policy API against the real binary.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn default_policy_is_deny_all_with_empty_egress() {
    let e = egress(&[]);
    let (s, v) = e.json("GET", "/policy", None);
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"status":"ok","mode":"deny_all","enforcementMode":"dns","policy":{"egress":[],"defaultAction":"deny"}})
    );
    let (_, raw) = e.request("GET", "/policy", None);
    assert!(raw.starts_with(r#"{"status":"ok","mode":"deny_all","enforcementMode":"dns","policy":{"egress":[],"defaultAction":"deny"}}"#), "{raw}");
    assert_eq!(e.request("GET", "/healthz", None), (200, "ok".to_string()));
}

#[test]
fn initial_rules_from_env_and_replace() {
    let e = egress(&[
        (
            "OPENSANDBOX_EGRESS_RULES",
            r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"pypi.org"}]}"#,
        ),
        ("OPENSANDBOX_EGRESS_MODE", "dns"),
    ]);
    let (_, v) = e.json("GET", "/policy", None);
    assert_eq!(v["mode"], "enforcing");
    assert_eq!(
        v["policy"]["egress"],
        json!([{"action":"allow","target":"pypi.org"}])
    );
    let (s, v) = e.json("POST", "/policy", Some(r#"{"defaultAction":"allow"}"#));
    assert_eq!(
        (s, v),
        (
            200,
            json!({"status":"ok","mode":"allow_all","enforcementMode":"dns"})
        )
    );
    let (s, v) = e.json("PUT", "/policy", Some(""));
    assert_eq!(s, 200);
    assert_eq!(v["mode"], "deny_all");
    assert_eq!(v["reason"], "policy reset to default deny-all");
}

#[test]
fn patch_merges_first_wins_and_delete_removes() {
    let e = egress(&[]);
    let base = r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"a.com"},{"action":"allow","target":"b.com"}]}"#;
    assert_eq!(e.json("POST", "/policy", Some(base)).0, 200);
    let patch = r#"[{"action":"deny","target":"B.com"},{"action":"allow","target":"b.com"},{"action":"allow","target":"*.c.com"}]"#;
    let (s, v) = e.json("PATCH", "/policy", Some(patch));
    assert_eq!((s, &v["mode"]), (200, &json!("enforcing")));
    let (_, v) = e.json("GET", "/policy", None);
    assert_eq!(
        v["policy"]["egress"],
        json!([{"action":"deny","target":"B.com"},{"action":"allow","target":"*.c.com"},{"action":"allow","target":"a.com"}])
    );
    let (s, v) = e.json("DELETE", "/policy", Some(r#"["b.COM", "nope"]"#));
    assert_eq!(s, 200);
    assert!(v.get("reason").is_none());
    let (_, v) = e.json("GET", "/policy", None);
    assert_eq!(
        v["policy"]["egress"],
        json!([{"action":"allow","target":"*.c.com"},{"action":"allow","target":"a.com"}])
    );
    let (s, v) = e.json("DELETE", "/policy", Some(r#"["nothing.here"]"#));
    assert_eq!(
        (s, v["reason"].as_str()),
        (200, Some("no matching targets found"))
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let e = egress(&[("OPENSANDBOX_EGRESS_MAX_RULES", "100")]);
    let good = r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"keep.me"}]}"#;
    assert_eq!(e.json("POST", "/policy", Some(good)).0, 200);
    let before = e.json("GET", "/policy", None).1;
    let long_name = format!("{}.com", "a".repeat(64));
    let bad_posts = [
        ("{", "invalid policy"),
        (r#"{"defaultAction":"block"}"#, "unsupported defaultAction"),
        (r#"{"egress":[{"target":"x.com"}]}"#, "unsupported action"),
        (
            r#"{"egress":[{"action":"maybe","target":"x.com"}]}"#,
            "unsupported action",
        ),
        (
            r#"{"egress":[{"action":"allow","target":"10.0.0.0/33"}]}"#,
            "invalid target",
        ),
        (
            r#"{"egress":[{"action":"allow","target":"a.*.com"}]}"#,
            "wildcard",
        ),
        (r#"{"egress":[{"action":"allow","target":""}]}"#, "empty"),
        (r#"{"egress":"all"}"#, "expected an array"),
    ];
    for (body, want) in bad_posts {
        let msg = assert_error(
            &e.json("POST", "/policy", Some(body)),
            400,
            "INVALID_POLICY",
        );
        assert!(msg.contains(want), "{body}: {msg}");
    }
    let body = json!({"egress": [{"action": "allow", "target": long_name}]}).to_string();
    assert_error(
        &e.json("POST", "/policy", Some(&body)),
        400,
        "INVALID_POLICY",
    );
    assert_error(&e.json("PATCH", "/policy", Some("")), 400, "INVALID_POLICY");
    assert_error(
        &e.json("PATCH", "/policy", Some("[]")),
        400,
        "INVALID_POLICY",
    );
    assert_error(
        &e.json(
            "PATCH",
            "/policy",
            Some(r#"[{"action":"allow","target":"x.com"},{"target":"y.com"}]"#),
        ),
        400,
        "INVALID_POLICY",
    );
    assert_error(
        &e.json("DELETE", "/policy", Some("[]")),
        400,
        "INVALID_POLICY",
    );
    assert_error(
        &e.json("DELETE", "/policy", Some(r#"{"target":"x"}"#)),
        400,
        "INVALID_POLICY",
    );
    // Too many rules: 413, and nothing half-applied.
    let many: Vec<_> = (0..101)
        .map(|i| json!({"action":"allow","target":format!("h{i}.example")}))
        .collect();
    let msg = assert_error(
        &e.json("PATCH", "/policy", Some(&json!(many).to_string())),
        413,
        "TOO_MANY_RULES",
    );
    assert!(msg.contains("exceeds limit 100"), "{msg}");
    assert_eq!(e.json("GET", "/policy", None).1, before);
    assert_error(&e.json("POST", "/nope", None), 404, "NOT_FOUND");
    assert_error(
        &e.json("OPTIONS", "/policy", None),
        405,
        "METHOD_NOT_ALLOWED",
    );
}

#[test]
fn hundred_thousand_rules_apply_atomically() {
    let e = egress(&[("OPENSANDBOX_EGRESS_MAX_RULES", "0")]);
    let rules: Vec<_> = (0..100_000)
        .map(|i| json!({"action":"allow","target":format!("h{i}.example")}))
        .collect();
    let body = json!({"defaultAction":"deny","egress":rules}).to_string();
    let (s, v) = e.json("POST", "/policy", Some(&body));
    assert_eq!((s, &v["mode"]), (200, &json!("enforcing")));
    let (_, v) = e.json("GET", "/policy", None);
    assert_eq!(v["policy"]["egress"].as_array().unwrap().len(), 100_000);
}

#[test]
fn auth_token_guards_everything_but_healthz() {
    let mut e = egress(&[("OPENSANDBOX_EGRESS_TOKEN", "sekret")]);
    let token = e.token.take();
    assert_error(&e.json("GET", "/policy", None), 401, "UNAUTHORIZED");
    assert_error(&e.json("GET", "/events", None), 401, "UNAUTHORIZED");
    assert_eq!(e.request("GET", "/healthz", None).0, 200);
    e.token = Some("sekreT".into());
    assert_error(&e.json("GET", "/policy", None), 401, "UNAUTHORIZED");
    e.token = token;
    assert_eq!(e.json("GET", "/policy", None).0, 200);
}

#[test]
fn explain_says_which_rule_decides() {
    let e = egress(&[(
        "OPENSANDBOX_EGRESS_RULES",
        r#"{"defaultAction":"deny","egress":[{"action":"allow","target":"*.example.com"},{"action":"deny","target":"api.example.com"},{"action":"deny","target":"10.1.0.0/16"},{"action":"allow","target":"10.0.0.0/8"}]}"#,
    )]);
    let (s, v) = e.json("GET", "/policy/explain?target=api.example.com", None);
    assert_eq!(s, 200);
    assert_eq!(v["action"], "allow");
    assert_eq!(v["kind"], "domain");
    assert_eq!(
        v["rule"],
        json!({"index":0,"action":"allow","target":"*.example.com"})
    );
    let (_, v) = e.json("GET", "/policy/explain?target=example.com", None);
    assert_eq!(
        (v["action"].as_str(), v["rule"].is_null()),
        (Some("deny"), true)
    );
    let (_, v) = e.json("GET", "/policy/explain?target=10.1.2.3", None);
    assert_eq!(v["rule"]["target"], "10.1.0.0/16");
    assert_eq!(v["action"], "deny");
    let (_, v) = e.json("GET", "/policy/explain?target=10.2.2.3", None);
    assert_eq!(v["action"], "allow");
    assert_error(
        &e.json("GET", "/policy/explain?target=a%20b", None),
        400,
        "INVALID_TARGET",
    );
    assert_error(
        &e.json("GET", "/policy/explain", None),
        400,
        "INVALID_TARGET",
    );
}

#[test]
fn policy_file_survives_restart_and_bad_env_rules_are_fatal() {
    let dir = std::env::temp_dir().join(format!("egress-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.json");
    let file_s = file.to_str().unwrap().to_string();
    {
        let e = egress(&[("OPENSANDBOX_EGRESS_POLICY_FILE", &file_s)]);
        assert_eq!(
            e.json(
                "PATCH",
                "/policy",
                Some(r#"[{"action":"allow","target":"kept.example"}]"#)
            )
            .0,
            200
        );
    }
    let e = egress(&[
        ("OPENSANDBOX_EGRESS_POLICY_FILE", &file_s),
        ("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"allow"}"#),
    ]);
    let (_, v) = e.json("GET", "/policy", None);
    assert_eq!(
        v["policy"],
        json!({"egress":[{"action":"allow","target":"kept.example"}],"defaultAction":"deny"})
    );
    drop(e);
    let _ = std::fs::remove_dir_all(&dir);
    let err = start_fails(&[("OPENSANDBOX_EGRESS_RULES", r#"{"defaultAction":"nope"}"#)]);
    assert!(err.contains("unsupported defaultAction"), "{err}");
}

#[test]
fn logs_go_where_opensandbox_log_output_says() {
    let dir = std::env::temp_dir().join(format!("egress-logs-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("egress.log");
    let outputs = format!("stdout,{}", file.display());
    {
        let e = egress(&[("OPENSANDBOX_LOG_OUTPUT", &outputs)]);
        let rule = r#"[{"action":"allow","target":"logged.example"}]"#;
        assert_eq!(e.request("PATCH", "/policy", Some(rule)).0, 200);
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("egress listening"), "{text}");
    assert!(text.contains("policy applied"), "{text}");
    // A destination that cannot be opened stops egress at start, named.
    let missing = dir.join("missing/dir/e.log");
    let err = start_fails(&[("OPENSANDBOX_LOG_OUTPUT", missing.to_str().unwrap())]);
    assert!(
        err.contains("OPENSANDBOX_LOG_OUTPUT") && err.contains("missing/dir/e.log"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
