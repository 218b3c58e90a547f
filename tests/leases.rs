//! Leases against the real binary (issue 17): a lease's window closes by itself through jobs the
//! engine submits, its before-end action first, each event exactly once even when the server is
//! killed at the event time; a capacity reservation refuses a conflicting create with Ganeti's
//! capacity error during its window and lets it through after.

mod common;
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

fn create_instance(s: &Server, name: &str, extra: Value) -> Value {
    let mut body = json!({"__version__": 1, "name": name, "mode": "create", "os": "debootstrap+default",
        "disk_template": "plain", "disks": [{"size": 1024}], "nics": [], "beparams": {"maxmem": 256}});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post_job(s, "/2/instances", &body)
}

/// Creates a lease (POST /gantry/v1/leases as admin) and answers its finished job.
fn create_lease(s: &Server, body: &Value) -> Value {
    post_job(s, "/gantry/v1/leases", body)
}

/// The jobs of lease `name`'s events: (job id, event, status).
fn lease_jobs(s: &Server, name: &str) -> Vec<(u64, String, String)> {
    let (_, jobs) = curl(s, "GET", "/2/jobs?bulk=1", None, None);
    jobs.as_array()
        .unwrap()
        .iter()
        .filter(|j| {
            j["ops"][0]["OP_ID"] == "OP_GANTRY_LEASE_EVENT" && j["ops"][0]["lease_name"] == name
        })
        .map(|j| {
            (
                j["id"].as_u64().unwrap(),
                j["ops"][0]["event"].as_str().unwrap().to_string(),
                j["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn metric(s: &Server, name: &str) -> f64 {
    metrics_text(s)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_lease_ends_by_itself_before_end_first_each_event_once_across_kill_9() {
    let s = start(&[]);
    let created = create_instance(&s, "web1", json!({}));
    assert_eq!(created["status"], "success", "{created}");
    // Lease events are held (a Ganeti job filter pauses them) so that the kill finds both
    // events submitted and neither recorded: the restarted engine must see them due again.
    let rule = json!({"priority": 1, "action": "PAUSE",
        "predicates": [["opcode", ["=", "OP_ID", "OP_GANTRY_LEASE_EVENT"]]]});
    let (code, uuid) = curl(
        &s,
        "POST",
        "/2/filters",
        Some("admin:admin"),
        Some(&rule.to_string()),
    );
    assert_eq!(code, 200, "{uuid}");
    let body = json!({"name": "night", "instances": ["web1"], "duration": 3,
        "before_end_seconds": 1, "before_end_action": "shutdown", "on_end": "remove"});
    let (code, id) = curl(
        &s,
        "POST",
        "/gantry/v1/leases",
        Some("admin:admin"),
        Some(&body.to_string()),
    );
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let (_, lease) = curl(&s, "GET", "/gantry/v1/leases/night", None, None);
    assert_eq!(lease["owner"], "admin");
    assert_eq!(lease["instances"], json!(["web1"]));

    until("both events' jobs", Duration::from_secs(20), || {
        lease_jobs(&s, "night").len() == 2
    });
    let before_kill = lease_jobs(&s, "night");
    let s = restart_after_kill_9(s, &[]);
    // The restarted engine finds both events due and unrecorded, and resubmits them under
    // their keys: it gets the jobs it had, not new ones.
    until(
        "the events resubmitted through their keys",
        Duration::from_secs(10),
        || metric(&s, "gantry_idempotent_hits") >= 2.0,
    );
    assert_eq!(lease_jobs(&s, "night"), before_kill);
    let (code, _) = curl(
        &s,
        "DELETE",
        &format!("/2/filters/{}", uuid.as_str().unwrap()),
        Some("admin:admin"),
        None,
    );
    assert_eq!(code, 200);

    until(
        "the lease's instance to go",
        Duration::from_secs(30),
        || {
            let (_, list) = curl(&s, "GET", "/2/instances", None, None);
            list.as_array().is_some_and(|l| l.is_empty())
        },
    );
    until("the lease to go", Duration::from_secs(10), || {
        curl(&s, "GET", "/gantry/v1/leases/night", None, None).0 == 404
    });
    // A few more ticks of the engine: nothing new may appear.
    std::thread::sleep(Duration::from_secs(2));
    let jobs = lease_jobs(&s, "night");
    assert_eq!(jobs.len(), 2, "{jobs:?} (before the kill: {before_kill:?})");
    let (before, end) = (&jobs[0], &jobs[1]);
    assert_eq!((before.1.as_str(), end.1.as_str()), ("before_end", "end"));
    assert_eq!(before.2, "success", "{jobs:?}");
    assert_eq!(end.2, "success", "{jobs:?}");
    // The before-end action ran before the end's.
    let job = |id: u64| curl(&s, "GET", &format!("/2/jobs/{id}"), None, None).1;
    let (b, e) = (job(before.0), job(end.0));
    assert_eq!(b["ops"][1]["OP_ID"], "OP_INSTANCE_SHUTDOWN", "{b}");
    assert_eq!(e["ops"][1]["OP_ID"], "OP_INSTANCE_REMOVE", "{e}");
    assert!(
        b["end_ts"][0].as_f64() <= e["start_ts"][0].as_f64(),
        "{b} {e}"
    );
    assert_eq!(e["ops"][0]["depends"][0][0], before.0, "{e}");
    // The events' jobs say who submitted them.
    assert_eq!(e["ops"][1]["reason"][0][0], "gantry:lease:night", "{e}");
}

#[test]
fn a_reservation_refuses_a_conflicting_create_during_its_window_only() {
    // One node with 2048 MiB (512 kept by the host): 1536 free.
    let s = start(&["--nodes", "node1.example.com", "--node-memory", "2048"]);
    let mfree = |s: &Server| {
        curl(s, "GET", "/2/nodes/node1.example.com", None, None).1["mfree"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(mfree(&s), 1536);
    let body = json!({"name": "batch", "duration": 6,
        "reservation": {"memory": 1024, "vcpus": 1, "disk": 2048}});
    let job = create_lease(&s, &body);
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(
        job["opresult"][0]["reservation"]["node"], "node1.example.com",
        "{job}"
    );
    // What htools read: the reservation is not free.
    assert_eq!(mfree(&s), 512);
    // A second reservation that would overlap it, even starting later, does not fit.
    let start = curl(&s, "GET", "/gantry/v1/leases/batch", None, None).1["start"]
        .as_f64()
        .unwrap();
    let body = json!({"name": "overlap", "start": start + 3.0, "duration": 60,
        "reservation": {"memory": 1024}});
    let job = create_lease(&s, &body);
    assert_eq!(job["opresult"][0][1][1], "insufficient_resources", "{job}");

    // Outside the lease: Ganeti's capacity error, by node and by the allocator.
    let refused = create_instance(
        &s,
        "outside1",
        json!({"pnode": "node1.example.com", "beparams": {"maxmem": 768}}),
    );
    assert_eq!(refused["status"], "error", "{refused}");
    let err = &refused["opresult"][0];
    assert_eq!(err[0], "OpPrereqError", "{err}");
    assert_eq!(err[1][1], "insufficient_resources", "{err}");
    assert!(
        err[1][0].as_str().unwrap().starts_with(
            "Not enough memory on node node1.example.com for starting instance outside1"
        ),
        "{err}"
    );
    let refused = create_instance(&s, "outside2", json!({"beparams": {"maxmem": 768}}));
    assert_eq!(refused["status"], "error", "{refused}");
    assert!(
        refused["opresult"][0][1][0]
            .as_str()
            .unwrap()
            .starts_with("Can't compute nodes using iallocator 'hail'"),
        "{refused}"
    );
    // Inside the lease: the reservation is its to use, and the instance joins the lease.
    let body = json!({"name": "inside", "mode": "create", "os": "debootstrap+default",
        "disk_template": "plain", "disks": [{"size": 1024}], "nics": [], "beparams": {"maxmem": 768}});
    let (code, id) = curl(
        &s,
        "POST",
        "/gantry/v1/leases/batch/instances",
        Some("admin:admin"),
        Some(&body.to_string()),
    );
    assert_eq!(code, 200, "{id}");
    let inside = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(inside["status"], "success", "{inside}");
    let (_, lease) = curl(&s, "GET", "/gantry/v1/leases/batch", None, None);
    assert_eq!(lease["instances"], json!(["inside"]));
    // Used by its own instance, the rest of the reservation is still held back.
    assert_eq!(mfree(&s), 1536 - 768 - (1024 - 768));

    // After the window (the lease removed its instance): the same create goes through.
    until("the lease's end", Duration::from_secs(20), || {
        curl(&s, "GET", "/gantry/v1/leases/batch", None, None).0 == 404
    });
    until("its instance's removal", Duration::from_secs(20), || {
        curl(&s, "GET", "/2/instances/inside", None, None).0 == 404
    });
    assert_eq!(mfree(&s), 1536);
    let accepted = create_instance(
        &s,
        "outside3",
        json!({"pnode": "node1.example.com", "beparams": {"maxmem": 768}}),
    );
    assert_eq!(accepted["status"], "success", "{accepted}");
}

#[test]
fn lease_changes_are_jobs_with_dry_run_and_clear_refusals() {
    let s = start(&[]);
    create_instance(&s, "db1", json!({}));
    let post = |path: &str, method: &str, body: Value| {
        curl(
            &s,
            method,
            path,
            Some("admin:admin"),
            Some(&body.to_string()),
        )
    };
    // Dry run: a job that checks and changes nothing.
    let (_, id) = post(
        "/gantry/v1/leases?dry-run=1",
        "POST",
        json!({"name": "dry", "duration": 60, "instances": ["db1"]}),
    );
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    assert_eq!(curl(&s, "GET", "/gantry/v1/leases/dry", None, None).0, 404);
    // Refusals in Ganeti's terms.
    let (_, id) = post(
        "/gantry/v1/leases",
        "POST",
        json!({"name": "bad", "duration": 60, "instances": ["nosuch"]}),
    );
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["opresult"][0][1][1], "unknown_entity", "{job}");
    let (code, err) = post(
        "/gantry/v1/leases",
        "POST",
        json!({"name": "bad", "duration": 60, "on_end": "explode"}),
    );
    assert_eq!(code, 400, "{err}");
    let (code, err) = post(
        "/gantry/v1/leases",
        "POST",
        json!({"name": "bad", "duration": 60, "owner": "someone-else"}),
    );
    assert_eq!(code, 400, "the owner is the caller: {err}");
    let (code, _) = curl(
        &s,
        "POST",
        "/gantry/v1/leases",
        Some("viewer:viewer"),
        Some(&json!({"name": "ro", "duration": 60}).to_string()),
    );
    assert_eq!(code, 403, "a read user cannot create leases");
    // Extend, then delete: both jobs.
    let (_, id) = post(
        "/gantry/v1/leases",
        "POST",
        json!({"name": "keep", "duration": 60, "instances": ["db1"]}),
    );
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let end = curl(&s, "GET", "/gantry/v1/leases/keep", None, None).1["end"]
        .as_f64()
        .unwrap();
    let (_, id) = post("/gantry/v1/leases/keep", "PUT", json!({"extend": 3600}));
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let (_, lease) = curl(&s, "GET", "/gantry/v1/leases/keep", None, None);
    assert!(
        (lease["end"].as_f64().unwrap() - (end + 3600.0)).abs() < 0.01,
        "{lease}"
    );
    let (_, id) = post("/gantry/v1/leases/keep", "DELETE", json!({}));
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    assert_eq!(curl(&s, "GET", "/gantry/v1/leases/keep", None, None).0, 404);
    // Deleting a lease runs none of its actions: the instance stays.
    assert_eq!(curl(&s, "GET", "/2/instances/db1", None, None).0, 200);
}
