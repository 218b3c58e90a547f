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
    // It ran, or (killed while running) recovery ended it: either way it ended, once.
    let job = wait_job(&s, first.as_u64().unwrap());
    assert!(
        ["success", "error"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
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

/// The metrics page parsed by Prometheus's own Python parser: metric name (with its labels,
/// sorted, as `name{a="x",b="y"}`) → value.
fn scrape(s: &Server) -> std::collections::BTreeMap<String, f64> {
    let out = Command::new("curl")
        .args(["-s", "-k", "-u", "viewer:viewer"])
        .arg(format!("{}/metrics", s.base))
        .output()
        .unwrap();
    let parser = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
        print(sample.name + ("{" + labels + "}" if labels else ""), sample.value)
"#;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (python3-prometheus-client)");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "not valid OpenMetrics: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&parsed.stdout)
        .lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_count_idempotent_hits_conflicts_and_followers() {
    let s = start(&[]);
    let before = scrape(&s);
    assert_eq!(before["gantry_idempotent_hits_total"], 0.0);
    keyed(&s, "/2/jobs", "m", DELAY);
    keyed(&s, "/2/jobs", "m", DELAY);
    keyed(&s, "/2/jobs", "m", DELAY);
    keyed(
        &s,
        "/2/jobs",
        "m",
        r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.5}]}"#,
    );
    let mut follower = Command::new("curl")
        .args(["-s", "-k", "-N", "-o", "/dev/null"])
        .arg(format!("{}/gantry/v1/events?since=0", s.base))
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = scrape(&s);
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(after["gantry_idempotent_hits_total"], 2.0);
    assert_eq!(after["gantry_idempotent_conflicts_total"], 1.0);
    assert_eq!(after["gantry_jobs_submitted_total"], 1.0);
    assert_eq!(after["gantry_event_followers"], 1.0);
    assert!(after["gantry_events_published_total"] >= 4.0, "{after:?}");
    assert!(
        after["gantry_events_sent_total"] >= 4.0,
        "the follower got the backlog: {after:?}"
    );
    // Read access: no user, no metrics.
    assert_eq!(curl(&s, "GET", "/metrics", None, None).0, 401);
}

#[test]
fn metrics_count_finished_jobs_run_times_and_answers() {
    let s = start(&[]);
    for duration in [0.01, 0.01, 0.0] {
        let id = delay_job(&s, duration, json!({}));
        wait_job(&s, id);
    }
    // One refused request: no user.
    let (code, _) = curl(&s, "POST", "/2/jobs", None, Some(DELAY));
    assert_eq!(code, 401);
    let m = scrape(&s);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:#?}"))
    };
    let finished = |status: &str| {
        get(&format!(
            "gantry_jobs_finished_total{{opcode=\"OP_TEST_DELAY\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(finished("success"), 2.0);
    assert_eq!(finished("error"), 1.0);
    assert_eq!(
        get("gantry_job_run_seconds_count{opcode=\"OP_TEST_DELAY\"}"),
        3.0
    );
    assert!(get("gantry_job_run_seconds_sum{opcode=\"OP_TEST_DELAY\"}") >= 0.02);
    assert_eq!(get("gantry_jobs_unfinished"), 0.0);
    assert!(get("gantry_http_responses_total{code=\"200\"}") >= 6.0);
    assert_eq!(get("gantry_http_responses_total{code=\"401\"}"), 1.0);
}

#[test]
fn metrics_time_requests_by_route_flushes_lock_waits_and_count_instances() {
    let s = start(&["--fake-delay-ms", "100"]);
    let body = json!({"__version__": 1, "mode": "create", "name": "m1.example.com",
        "os": "debootstrap+default", "disk_template": "plain", "disks": [{"size": 1024}],
        "nics": [{}]});
    let created = job_ok(&s, "POST", "/2/instances", body);
    assert_eq!(created["status"], "success");
    // Two reboots of one instance: the second waits for the first's instance lock.
    let reboot = || {
        let (code, id) = curl(
            &s,
            "POST",
            "/2/instances/m1.example.com/reboot",
            Some("admin:admin"),
            Some("{}"),
        );
        assert_eq!(code, 200, "{id}");
        id.as_u64().unwrap()
    };
    let (first, second) = (reboot(), reboot());
    wait_job(&s, first);
    wait_job(&s, second);
    assert_eq!(curl(&s, "GET", "/no/such/path", None, None).0, 404);
    let pnode = curl(&s, "GET", "/2/instances/m1.example.com", None, None).1["pnode"]
        .as_str()
        .unwrap()
        .to_string();

    let m = scrape(&s);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:#?}"))
    };
    let requests = |method: &str, route: &str| {
        get(&format!(
            "gantry_http_request_seconds_count{{method=\"{method}\",route=\"{route}\"}}"
        ))
    };
    assert_eq!(requests("POST", "/2/instances"), 1.0);
    assert_eq!(requests("POST", "/2/instances/{instance_name}/reboot"), 2.0);
    assert!(requests("GET", "/2/jobs/{job_id}") >= 3.0);
    assert_eq!(requests("GET", "other"), 1.0);
    assert!(get("gantry_lock_wait_seconds_count{level=\"instance\"}") >= 1.0);
    assert!(get("gantry_lock_wait_seconds_sum{level=\"instance\"}") > 0.0);
    assert!(get("gantry_flush_seconds_count") >= 3.0);
    assert!(get("gantry_flush_batch_sum") >= get("gantry_flush_batch_count"));
    assert_eq!(
        get(&format!(
            "gantry_instances{{node=\"{pnode}\",state=\"running\"}}"
        )),
        1.0
    );
}
