//! Pools against the real binary (issue 17): a pool of two is filled by ordinary create jobs,
//! two checkouts answer at once with running instances, the pool refills, a request on an
//! empty pool waits (vmpooler's on-demand API) and is answered when an instance is ready; pool
//! state survives kill -9; a vmpooler client written from vmpooler's API document drives it.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn template() -> Value {
    json!({"__version__": 1, "os": "debootstrap+default", "disk_template": "plain",
        "disks": [{"size": 1024}], "nics": [], "beparams": {"maxmem": 256}})
}

fn make_pool(s: &Server, name: &str, size: u64) {
    let body = json!({"name": name, "size": size, "template": template()});
    let job = post_job(s, "/gantry/v1/pools", &body);
    assert_eq!(job["status"], "success", "{job}");
}

fn pool(s: &Server, name: &str) -> Value {
    curl(s, "GET", &format!("/gantry/v1/pools/{name}"), None, None).1
}

#[test]
fn a_pool_fills_hands_out_at_once_refills_and_answers_waiting_requests() {
    // Creating an instance takes a few backend calls of 300 ms each: refills are visible.
    let args = ["--fake-delay-ms", "300"];
    let s = start(&args);
    make_pool(&s, "ci", 2);
    until("the pool to fill", Duration::from_secs(30), || {
        pool(&s, "ci")["ready"] == 2
    });
    // The fill was ordinary create jobs, tagged as the pool's.
    let (_, jobs) = curl(&s, "GET", "/2/jobs?bulk=1", None, None);
    let creates = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["ops"][0]["OP_ID"] == "OP_INSTANCE_CREATE")
        .count();
    assert_eq!(creates, 2, "{jobs}");

    // Two checkouts: each answers with a running instance (no instance is created meanwhile).
    let mut hosts = vec![];
    for _ in 0..2 {
        let (code, got) = curl(&s, "POST", "/api/v1/vm/ci", Some("admin:admin"), None);
        assert_eq!(code, 200, "{got}");
        let host = got["ci"]["hostname"].as_str().unwrap().to_string();
        let (_, inst) = curl(&s, "GET", &format!("/2/instances/{host}"), None, None);
        assert_eq!(inst["status"], "running", "{inst}");
        assert!(
            inst["tags"]
                .as_array()
                .unwrap()
                .contains(&json!("gantry:user:admin")),
            "{inst}"
        );
        hosts.push(host);
    }
    assert_ne!(hosts[0], hosts[1]);
    let p = pool(&s, "ci");
    assert_eq!(
        (p["ready"].clone(), p["checked_out"].clone()),
        (json!(0), json!(2))
    );
    assert_eq!(p["checkouts"], 2);
    // Each checkout is leased for vmpooler's default 12 hours.
    let (_, lease) = curl(
        &s,
        "GET",
        &format!("/gantry/v1/leases/{}", hosts[0]),
        None,
        None,
    );
    let hours = (lease["end"].as_f64().unwrap() - lease["start"].as_f64().unwrap()) / 3600.0;
    assert!((hours - 12.0).abs() < 0.01, "{lease}");

    // The pool is empty now: an on-demand request waits (202) and is answered once an
    // instance is ready (200 with its hostname).
    let (code, req) = curl(
        &s,
        "POST",
        "/api/v1/ondemandvm",
        Some("admin:admin"),
        Some(r#"{"ci": "1"}"#),
    );
    assert_eq!(code, 201, "{req}");
    let id = req["request_id"].as_str().unwrap().to_string();
    let (code, waiting) = curl(&s, "GET", &format!("/api/v1/ondemandvm/{id}"), None, None);
    assert_eq!(code, 202, "{waiting}");
    assert_eq!(waiting["ready"], false, "{waiting}");
    let mut answered = Value::Null;
    until("the on-demand request", Duration::from_secs(30), || {
        let (code, got) = curl(&s, "GET", &format!("/api/v1/ondemandvm/{id}"), None, None);
        answered = got;
        code == 200
    });
    assert_eq!(answered["ready"], true, "{answered}");
    let granted = answered["ci"]["hostname"][0].as_str().unwrap().to_string();
    assert!(!hosts.contains(&granted), "{answered}");
    let (_, inst) = curl(&s, "GET", &format!("/2/instances/{granted}"), None, None);
    assert_eq!(inst["status"], "running", "{inst}");

    // And the pool refills to its size besides.
    until("the refill", Duration::from_secs(30), || {
        pool(&s, "ci")["ready"] == 2
    });
    let p = pool(&s, "ci");
    assert_eq!(p["checked_out"], 3, "{p}");

    // Returning a VM removes it through its lease's end (a job).
    let (code, _) = curl(
        &s,
        "DELETE",
        &format!("/api/v1/vm/{}", hosts[0]),
        Some("admin:admin"),
        None,
    );
    assert_eq!(code, 200);
    until("the returned VM's removal", Duration::from_secs(20), || {
        curl(&s, "GET", &format!("/2/instances/{}", hosts[0]), None, None).0 == 404
    });

    // Pool metrics.
    let metrics = metrics_text(&s);
    for line in [
        "gantry_pool_ready{pool=\"ci\"} 2",
        "gantry_pool_checked_out{pool=\"ci\"} 2",
        "gantry_pool_checkouts_total{pool=\"ci\"} 3",
        "gantry_lease_events_total{event=\"end\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(metrics.contains("gantry_pool_refill_seconds_count{pool=\"ci\"} "));

    // A resize is a job; at size 0 with nothing ready, a checkout is refused as vmpooler does.
    let (_, id) = curl(
        &s,
        "PUT",
        "/gantry/v1/pools/ci",
        Some("admin:admin"),
        Some(r#"{"size": 0}"#),
    );
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    for _ in 0..2 {
        let (code, _) = curl(&s, "POST", "/api/v1/vm/ci", Some("admin:admin"), None);
        assert_eq!(code, 200);
    }
    let (code, empty) = curl(&s, "POST", "/api/v1/vm/ci", Some("admin:admin"), None);
    assert_eq!((code, empty), (503, json!({"ok": false})));
    let (_, status) = curl(&s, "GET", "/api/v1/status", None, None);
    assert_eq!(status["capacity"]["total"], 0, "{status}");

    // Pool state and counters survive a kill -9.
    let before = pool(&s, "ci");
    let s = restart_after_kill_9(s, &args);
    let after = pool(&s, "ci");
    for key in ["size", "checkouts", "checked_out", "template", "lifetime"] {
        assert_eq!(before[key], after[key], "{key}: {before} vs {after}");
    }
}

#[test]
fn a_vmpooler_client_drives_gantry() {
    let s = start(&[]);
    make_pool(&s, "debian-12", 1);
    until("the pool to fill", Duration::from_secs(30), || {
        pool(&s, "debian-12")["ready"] == 1
    });
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/vmpooler_client.py"
    );
    let out = std::process::Command::new("python3")
        .args([script, &s.base, "admin", "admin", "debian-12"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("all steps passed"),
        "{text}"
    );
    // Every change the client made is a job in /2/jobs.
    let (_, jobs) = curl(&s, "GET", "/2/jobs?bulk=1", None, None);
    let ops: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["ops"][0]["OP_ID"].as_str().unwrap())
        .collect();
    for op in [
        "OP_GANTRY_POOL_CHECKOUT",
        "OP_GANTRY_LEASE_MODIFY",
        "OP_INSTANCE_SET_PARAMS",
        "OP_GANTRY_LEASE_EVENT",
    ] {
        assert!(ops.contains(&op), "{op} not in {ops:?}");
    }
}

#[test]
fn pool_definitions_are_checked_before_anything_is_stored() {
    let s = start(&[]);
    let post = |body: Value| {
        curl(
            &s,
            "POST",
            "/gantry/v1/pools",
            Some("admin:admin"),
            Some(&body.to_string()),
        )
    };
    // A template that is not a valid instance create body.
    let (_, id) = post(json!({"name": "bad", "size": 1, "template": {"disks": "many"}}));
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["opresult"][0][1][0]
            .as_str()
            .unwrap()
            .starts_with("Invalid pool template"),
        "{job}"
    );
    // A name that cannot start an instance name.
    let (_, id) = post(json!({"name": "Bad_Pool", "size": 1, "template": template()}));
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["opresult"][0][1][1], "wrong_input", "{job}");
    // Dry run: checked, not stored.
    let (_, id) = curl(
        &s,
        "POST",
        "/gantry/v1/pools?dry-run=1",
        Some("admin:admin"),
        Some(&json!({"name": "dry", "size": 1, "template": template()}).to_string()),
    );
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    assert_eq!(curl(&s, "GET", "/gantry/v1/pools/dry", None, None).0, 404);
    let (_, list) = curl(&s, "GET", "/gantry/v1/pools", None, None);
    assert_eq!(list, json!([]));
}

#[test]
fn the_vmpooler_face_keeps_out_readers_token_holders_and_absurd_input() {
    let s = start(&[]);
    make_pool(&s, "p", 1);
    until("the pool to fill", Duration::from_secs(30), || {
        pool(&s, "p")["ready"] == 1
    });
    // A read user may look, not check out.
    assert_eq!(
        curl(&s, "GET", "/api/v1/vm", Some("viewer:viewer"), None).0,
        200
    );
    assert_eq!(
        curl(&s, "POST", "/api/v1/vm/p", Some("viewer:viewer"), None).0,
        403
    );
    assert_eq!(curl(&s, "POST", "/api/v1/vm/p", None, None).0, 401);
    // Tokens are managed with a password, never with a token.
    let (_, made) = curl(&s, "POST", "/api/v1/token", Some("admin:admin"), None);
    let token = made["token"].as_str().unwrap().to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-k",
            "-X",
            "POST",
            "-H",
            &format!("X-AUTH-TOKEN: {token}"),
        ])
        .arg(format!("{}/api/v1/token", s.base))
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!({"ok": false})
    );
    // Absurd lifetimes, disk sizes and request counts are refused, nothing overflows.
    let (code, got) = curl(&s, "POST", "/api/v1/vm/p", Some("admin:admin"), None);
    assert_eq!(code, 200, "{got}");
    let host = got["p"]["hostname"].as_str().unwrap().to_string();
    let path = format!("/api/v1/vm/{host}");
    for body in [
        r#"{"lifetime": "18446744073709551615"}"#,
        r#"{"lifetime": 0}"#,
        r#"{"lifetime": -5}"#,
        r#"{"tags": "not a hash"}"#,
        r#"{"owner": "me"}"#,
        "[1, 2]",
    ] {
        let (code, answer) = curl(&s, "PUT", &path, Some("admin:admin"), Some(body));
        assert_eq!((code, answer), (400, json!({"ok": false})), "{body}");
    }
    for size in ["0", "100000", "-1", "8gb"] {
        let (code, _) = curl(
            &s,
            "POST",
            &format!("{path}/disk/{size}"),
            Some("admin:admin"),
            None,
        );
        assert_eq!(code, 400, "disk {size}");
    }
    let (code, _) = curl(
        &s,
        "POST",
        "/api/v1/ondemandvm",
        Some("admin:admin"),
        Some(r#"{"p": "100000"}"#),
    );
    assert_eq!(
        code, 403,
        "vmpooler answers a request over the maximum with 403"
    );
    let (_, id) = curl(
        &s,
        "PUT",
        "/gantry/v1/pools/p",
        Some("admin:admin"),
        Some(r#"{"size": 1000000}"#),
    );
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["opresult"][0][1][1], "wrong_input", "{job}");
    // The server is fine afterwards.
    assert_eq!(curl(&s, "GET", &path, None, None).0, 200);
    assert_eq!(pool(&s, "p")["size"], 1);
}
