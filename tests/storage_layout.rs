//! Data dirs of earlier storage layouts open with the current one.
//!
//! A data dir written by the first storage layout (finished and unfinished jobs in one tree;
//! `tests/fixtures/queue-layout-1.tar.gz`, made with the release before the change) opens with
//! the current one: every job keeps its state, the held job still waits for its filter rule and
//! runs once released, ids continue, and `check-db` sees the jobs in their new trees.

mod common;
use common::*;
use serde_json::Value;
use std::process::Command;

fn statuses(s: &Server) -> Vec<(u64, String)> {
    let (code, jobs) = curl(s, "GET", "/2/jobs?bulk=1", None, None);
    assert_eq!(code, 200);
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["id"].as_u64().unwrap(),
                j["status"].as_str().unwrap().into(),
            )
        })
        .collect()
}

/// A data dir from `tests/fixtures`, unpacked into a new temp dir.
fn unpack(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let untar = Command::new("tar")
        .args(["xzf", &path, "-C"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    dir
}

fn check_db(dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .arg("check-db")
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_first_layout_data_dir_is_migrated_and_keeps_every_job() {
    let dir = unpack("queue-layout-1.tar.gz");

    let s = start_in(dir, &["--no-ssl"]);
    let before: Vec<(u64, String)> = vec![
        (1, "error".into()),
        (2, "error".into()),
        (3, "error".into()),
        (4, "success".into()),
        (5, "queued".into()),
    ];
    assert_eq!(statuses(&s), before);
    let (_, one) = curl(&s, "GET", "/2/jobs/1", None, None);
    assert_eq!(
        one["opresult"][0][1][0],
        Value::from("Duration must be greater than zero")
    );

    // Job 5 waits for the stored PAUSE rule; deleting the rule runs it.
    let (_, rules) = curl(&s, "GET", "/2/filters", None, None);
    let uuid = rules[0]["uuid"].as_str().unwrap().to_string();
    let (code, _) = curl(
        &s,
        "DELETE",
        &format!("/2/filters/{uuid}"),
        Some("admin:admin"),
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(wait_job(&s, 5)["status"], "success");
    assert_eq!(delay_job(&s, 0.01, serde_json::json!({})), 6);
    wait_job(&s, 6);

    // The migration ran once; a restart after kill -9 sees the same jobs.
    let dir = kill_9(s);
    let report = check_db(dir.path());
    assert!(
        report.contains("0 unfinished, 6 finished and 0 archived jobs"),
        "{report}"
    );
    let s = start_in(dir, &["--no-ssl"]);
    let after = statuses(&s);
    assert_eq!(after.len(), 6);
    assert!(after.iter().all(|(_, st)| st == "success" || st == "error"));
}

/// A configuration written as one document with every instance inline (the layout before
/// `config_instances`; `tests/fixtures/config-layout-1.tar.gz`, made by the release before the
/// change) keeps every instance, and the first change moves them into their own records.
#[test]
fn a_single_document_configuration_is_split_without_losing_instances() {
    let dir = unpack("config-layout-1.tar.gz");
    let instances = |s: &Server| -> Vec<(String, String, Value)> {
        let (code, list) = curl(s, "GET", "/2/instances?bulk=1", Some("admin:admin"), None);
        assert_eq!(code, 200, "{list}");
        list.as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["name"].as_str().unwrap().to_string(),
                    i["admin_state"].as_str().unwrap().to_string(),
                    i["tags"].clone(),
                )
            })
            .collect()
    };
    let expected = vec![
        (
            "db1.example.com".to_string(),
            "up".to_string(),
            serde_json::json!(["role:db"]),
        ),
        (
            "web1.example.com".to_string(),
            "down".to_string(),
            serde_json::json!([]),
        ),
    ];
    let s = start_in(dir, &["--no-ssl"]);
    assert_eq!(instances(&s), expected);
    // One change (a tag on the cluster) is the first write: every instance moves then.
    let (code, id) = curl(&s, "PUT", "/2/tags?tag=migrated", Some("admin:admin"), None);
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let s = restart_after_kill_9(s, &["--no-ssl"]);
    assert_eq!(instances(&s), expected);
    // A change to one instance is kept across a restart, the other instance untouched.
    let (code, id) = curl(
        &s,
        "PUT",
        "/2/instances/web1.example.com/tags?tag=role:web",
        Some("admin:admin"),
        None,
    );
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
    let dir = kill_9(s);
    assert!(check_db(dir.path()).contains("2 instances"));
    let s = start_in(dir, &["--no-ssl"]);
    let after = instances(&s);
    assert_eq!(after[0], expected[0]);
    assert_eq!(after[1].2, serde_json::json!(["role:web"]));
}
