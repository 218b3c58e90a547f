//! Idempotency keys: a retried submission never creates a second job, across a SIGKILL too.

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;

/// POSTs with an `Idempotency-Key`; answers (HTTP code, body).
fn keyed(s: &Server, path: &str, key: &str, body: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-k", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-u", "admin:admin", "-H", "Content-Type: application/json"])
        .args([
            "-H",
            &format!("Idempotency-Key: {key}"),
            "--data-binary",
            body,
        ])
        .arg(format!("{}{}", s.base, path))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn job_count(s: &Server) -> usize {
    curl(s, "GET", "/2/jobs", None, None)
        .1
        .as_array()
        .unwrap()
        .len()
}

const DELAY: &str = r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}"#;

#[test]
fn a_retry_after_a_crash_gets_the_same_job() {
    let s = start(&[]);
    let (code, first) = keyed(&s, "/2/groups", "create-g1", r#"{"name": "g1"}"#);
    assert_eq!(code, 200, "{first}");
    // The answer came back; the server dies before the client could be sure of it.
    let s = restart_after_kill_9(s, &[]);
    let (code, again) = keyed(&s, "/2/groups", "create-g1", r#"{"name": "g1"}"#);
    assert_eq!(
        (code, &again),
        (200, &first),
        "the retry answers the first job"
    );
    assert_eq!(job_count(&s), 1, "one job, not two");
    assert_eq!(wait_job(&s, first.as_u64().unwrap())["status"], "success");
}

#[test]
fn concurrent_retries_of_one_key_make_one_job() {
    let s = start(&[]);
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..32)
            .map(|_| scope.spawn(|| keyed(&s, "/2/jobs", "same-key", DELAY)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 200);
    assert_eq!(job_count(&s), 1);
}

#[test]
fn a_key_reused_for_another_request_is_refused() {
    let s = start(&[]);
    assert_eq!(keyed(&s, "/2/jobs", "k", DELAY).0, 200);
    let other = r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.02}]}"#;
    let (code, body) = keyed(&s, "/2/jobs", "k", other);
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("k&#x27; was already used"),
        "{body}"
    );
    assert_eq!(body["code"], 422);
    // The same key on another path is another request too.
    assert_eq!(keyed(&s, "/2/groups", "k", r#"{"name": "g"}"#).0, 422);
    assert_eq!(job_count(&s), 1);
    // Keys belong to their user: another user's identical key is another key.
    std::fs::write(
        s.dir.path().join("users"),
        "admin {cleartext}admin write\nother other write\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-u",
            "other:other",
            "-H",
            "Idempotency-Key: k",
            "-X",
            "POST",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            DELAY,
        ])
        .arg(format!("{}/2/jobs", s.base))
        .output()
        .unwrap();
    let id: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(id.as_u64().is_some_and(|n| n > 1), "{id}");
    // A malformed key is a 400 before anything is submitted.
    let jobs = job_count(&s);
    assert_eq!(keyed(&s, "/2/jobs", &"x".repeat(300), DELAY).0, 400);
    assert_eq!(job_count(&s), jobs);
}

#[test]
fn keys_expire_and_dry_runs_are_not_remembered() {
    let s = start(&["--idempotency-ttl", "1", "--archive-interval", "1"]);
    let body = r#"{"name": "g1"}"#;
    let (_, dry) = keyed(&s, "/2/groups?dry-run=1", "g1", body);
    let (_, real) = keyed(&s, "/2/groups", "g1", body);
    assert_ne!(dry, real, "the dry run's key was not kept");
    assert_eq!(keyed(&s, "/2/groups", "g1", body).1, real);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (_, later) = keyed(&s, "/2/groups", "g1", body);
    assert!(
        later.as_u64() > real.as_u64(),
        "an expired key creates a new job: {later}"
    );
}

#[test]
fn the_official_client_ignores_keys_and_nothing_changes_for_it() {
    let s = start(&[]);
    let (code, id) = curl(&s, "POST", "/2/jobs", Some("admin:admin"), Some(DELAY));
    let (code2, id2) = curl(&s, "POST", "/2/jobs", Some("admin:admin"), Some(DELAY));
    assert_eq!((code, code2), (200, 200));
    assert_ne!(id, id2, "without a key every submission is a job");
    assert_eq!(json!(job_count(&s)), json!(2));
}
