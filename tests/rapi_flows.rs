//! End-to-end: the real binary over real HTTP with curl.

mod common;
use common::*;
use serde_json::json;

const ADMIN: Option<&str> = Some("admin:admin");

fn create_body(name: &str, template: &str) -> String {
    json!({"__version__": 1, "name": name, "os": "debootstrap+default", "disk_template": template,
           "disks": [{"size": 1024}], "nics": [{}], "mode": "create"})
    .to_string()
}

#[test]
fn instance_lifecycle_and_job_shapes() {
    let s = start(&[]);
    let (code, id) = curl(
        &s,
        "POST",
        "/2/instances?dry-run=1",
        ADMIN,
        Some(&create_body("web1.example.com", "drbd")),
    );
    assert_eq!(code, 200);
    assert!(id.is_u64(), "job ids are JSON integers: {id}");
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "success");
    assert_eq!(
        job["opresult"][0].as_array().unwrap().len(),
        2,
        "dry-run answers two node UUIDs"
    );
    let (_, list) = curl(&s, "GET", "/2/instances", None, None);
    assert_eq!(list, json!([]), "dry-run changed nothing");

    let (_, id) = curl(
        &s,
        "POST",
        "/2/instances?reason=because",
        ADMIN,
        Some(&create_body("web1.example.com", "drbd")),
    );
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "success", "{job}");
    let trail = job["ops"][0]["reason"].to_string();
    assert!(
        trail.contains("gnt:user")
            && trail.contains("because")
            && trail.contains("gnt:opcode:instance_create")
    );
    assert_eq!(job["received_ts"].as_array().unwrap().len(), 2);

    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_eq!(inst["status"], "running");
    assert_eq!(inst["oper_state"], true);
    let pnode = inst["pnode"].clone();

    for (method, path) in [
        ("POST", "/2/instances/web1/reboot?type=soft"),
        ("PUT", "/2/instances/web1/migrate"),
    ] {
        let (code, id) = curl(&s, method, path, ADMIN, Some("{}"));
        assert_eq!(code, 200, "{path}");
        assert_eq!(
            wait_job(&s, id.as_u64().unwrap())["status"],
            "success",
            "{path}"
        );
    }
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_ne!(inst["pnode"], pnode, "migration moved the primary");

    let (_, id) = curl(&s, "PUT", "/2/instances/web1/startup", ADMIN, None);
    assert_eq!(
        wait_job(&s, id.as_u64().unwrap())["status"],
        "success",
        "starting a running instance is fine"
    );

    let (_, id) = curl(&s, "PUT", "/2/instances/nosuch/shutdown", ADMIN, Some("{}"));
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(
        job["opresult"][0],
        json!([
            "OpPrereqError",
            ["Instance 'nosuch' not known", "unknown_entity"]
        ])
    );

    let (_, id) = curl(
        &s,
        "DELETE",
        "/2/instances/web1.example.com",
        ADMIN,
        Some("{}"),
    );
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let (code, body) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_eq!(code, 404);
    assert_eq!(body["code"], 404);
}

#[test]
fn errors_and_auth() {
    let s = start(&[]);
    let (code, body) = curl(&s, "POST", "/2/instances", ADMIN, Some(r#"{"name": "x"}"#));
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("version 0"));
    let (code, body) = curl(
        &s,
        "PUT",
        "/2/instances/x/startup",
        Some("viewer:viewer"),
        None,
    );
    assert_eq!((code, body["code"].clone()), (403, json!(403)));
    let (code, _) = curl(&s, "GET", "/2/info", Some("admin:wrong"), None);
    assert_eq!(code, 401);
    let (code, _) = curl(&s, "GET", "/2/info", None, None);
    assert_eq!(code, 200);
    let (code, _) = curl(&s, "PUT", "/2/instances/x/startup", None, None);
    assert_eq!(code, 401);
    let (code, body) = curl(
        &s,
        "POST",
        "/2/instances",
        ADMIN,
        Some(
            r#"{"__version__": 1, "name": "a", "bogus": 1, "disks": [], "nics": [], "mode": "create"}"#,
        ),
    );
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("doesn&#x27;t support the parameter &#x27;bogus&#x27;"),
        "{body}"
    );
    let (code, _) = curl(&s, "GET", "/2/nosuch", None, None);
    assert_eq!(code, 404);
    let (code, _) = curl(&s, "POST", "/2/info", ADMIN, Some("{}"));
    assert_eq!(code, 501);
    let (_, features) = curl(&s, "GET", "/2/features", None, None);
    assert!(
        features
            .as_array()
            .unwrap()
            .contains(&json!("instance-create-reqv1"))
    );
}

#[test]
fn cancel_dependencies_and_wait() {
    let s = start(&[]);
    // Two delays locking the master node serialize: the second waits and can be canceled.
    let first = delay_job(&s, 1.0, json!({"no_locks": false}));
    let second = delay_job(&s, 1.0, json!({"no_locks": false}));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, reply) = curl(&s, "DELETE", &format!("/2/jobs/{second}"), ADMIN, None);
    assert_eq!(reply, json!([true, "Job successfully cancelled"]));
    let (_, reply) = curl(&s, "DELETE", &format!("/2/jobs/{first}"), ADMIN, None);
    assert_eq!(reply[0], false, "a running job cannot be canceled: {reply}");
    assert_eq!(
        wait_job(&s, second)["opresult"][0],
        "Job canceled by request"
    );
    // A dependency on a canceled job cancels the dependent.
    let dep = delay_job(&s, 0.1, json!({"depends": [[second, ["success"]]]}));
    assert_eq!(wait_job(&s, dep)["status"], "canceled");
    // Wait answers at once for a finished job and 404 for an unknown one.
    let body =
        json!({"fields": ["status"], "previous_job_info": null, "previous_log_serial": null})
            .to_string();
    let (code, answer) = curl(
        &s,
        "GET",
        &format!("/2/jobs/{first}/wait"),
        ADMIN,
        Some(&body),
    );
    assert_eq!(code, 200);
    assert!(answer["job_info"].is_array());
    let (code, _) = curl(&s, "GET", "/2/jobs/9999/wait", ADMIN, Some(&body));
    assert_eq!(code, 404);
    let (_, shape) = curl(
        &s,
        "POST",
        "/2/jobs",
        ADMIN,
        Some(r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0}]}"#),
    );
    let job = wait_job(&s, shape.as_u64().unwrap());
    assert_eq!(
        job["opresult"][0],
        json!(["OpPrereqError", ["Duration must be greater than zero"]])
    );
}

#[test]
fn submitted_jobs_survive_kill_9() {
    let s = start(&[]);
    let ids: Vec<u64> = (0..20).map(|_| delay_job(&s, 5.0, json!({}))).collect();
    let s = restart_after_kill_9(s, &[]);
    for id in &ids {
        let (code, job) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
        assert_eq!(code, 200, "job {id} survived");
        let status = job["status"].as_str().unwrap();
        assert!(
            ["queued", "waiting", "running", "error", "success"].contains(&status),
            "{status}"
        );
        if status == "error" {
            assert_eq!(
                job["opresult"][0],
                json!(["OpExecError", ["Unclean master daemon shutdown"]])
            );
        }
    }
    let next = delay_job(&s, 0.1, json!({}));
    assert!(
        next > *ids.iter().max().unwrap(),
        "ids continue above the old ones"
    );
}

#[test]
fn groups_and_networks_accept_null_optionals() {
    let s = start(&[]);
    let body = r#"{"name": "rack2", "alloc_policy": null}"#;
    let (code, id) = curl(&s, "POST", "/2/groups", ADMIN, Some(body));
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let (_, groups) = curl(&s, "GET", "/2/groups", None, None);
    let names: Vec<&str> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["default", "rack2"], "sorted by name");
    let (_, bulk) = curl(&s, "GET", "/2/groups?bulk=1", None, None);
    assert_eq!(bulk[1]["alloc_policy"], "preferred");

    let body = r#"{"name": "lan", "network": "10.0.0.0/24", "gateway6": null, "tags": null}"#;
    let (_, id) = curl(&s, "POST", "/2/networks", ADMIN, Some(body));
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let (_, net) = curl(&s, "GET", "/2/networks/lan", None, None);
    assert_eq!(net["network"], "10.0.0.0/24");
    assert_eq!(net["free_count"], 254);
}

#[test]
fn users_file_changes_apply_without_restart() {
    let s = start(&[]);
    let users = s.dir.path().join("users");
    let (code, _) = curl(&s, "PUT", "/2/redistribute-config", Some("newbie:pw"), None);
    assert_eq!(code, 401);
    std::fs::write(
        &users,
        "admin {cleartext}admin write\nnewbie {CLEARTEXT}pw write\n",
    )
    .unwrap();
    let login = |user: &str| {
        (0..40).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            curl(&s, "PUT", "/2/redistribute-config", Some(user), None).0 == 200
        })
    };
    assert!(
        login("newbie:pw"),
        "a new user can log in within a few seconds"
    );
    std::fs::write(&users, "admin {cleartext}admin write\n").unwrap();
    let refused = (0..40).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        curl(&s, "PUT", "/2/redistribute-config", Some("newbie:pw"), None).0 == 401
    });
    assert!(refused, "a removed user is refused within a few seconds");
}

#[test]
fn wait_answers_null_when_nothing_changes() {
    let s = start(&["--wait-timeout", "1"]);
    let id = delay_job(&s, 5.0, json!({}));
    let fields = json!(["status"]);
    // Take the current state (once the delay runs), then ask again with it as "previous".
    let mut previous = serde_json::Value::Null;
    for _ in 0..50 {
        let body =
            json!({"fields": fields, "previous_job_info": null, "previous_log_serial": null});
        let (_, a) = curl(
            &s,
            "GET",
            &format!("/2/jobs/{id}/wait"),
            ADMIN,
            Some(&body.to_string()),
        );
        if a["job_info"] == json!(["running"]) {
            previous = a["job_info"].clone();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(previous, json!(["running"]));
    let body = json!({"fields": fields, "previous_job_info": previous, "previous_log_serial": 0});
    let (code, answer) = curl(
        &s,
        "GET",
        &format!("/2/jobs/{id}/wait"),
        ADMIN,
        Some(&body.to_string()),
    );
    assert_eq!((code, answer), (200, serde_json::Value::Null));
}
