//! `gantry backup` and `gantry restore` against the real binary: a backup taken while jobs run is
//! one instant of the queue and the configuration, and restores to a server that answers the
//! same jobs and config; a backup of a quiet server restores to identical answers.

mod common;
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

const ADMIN: Option<&str> = Some("admin:admin");

fn gantry(args: &[&str], data_dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn create_instance(s: &Server, name: &str) -> u64 {
    let body = json!({"__version__": 1, "mode": "create", "name": name, "disk_template": "plain",
        "disks": [{"size": 128}], "nics": [{}], "os": "debootstrap+default", "name_check": false,
        "ip_check": false});
    let (code, id) = curl(s, "POST", "/2/instances", ADMIN, Some(&body.to_string()));
    assert_eq!(code, 200, "{id}");
    id.as_u64().unwrap()
}

fn jobs(s: &Server) -> Vec<Value> {
    let (_, list) = curl(s, "GET", "/2/jobs?bulk=1", None, None);
    let mut list = list.as_array().cloned().unwrap_or_default();
    list.sort_by_key(|j| j["id"].as_u64());
    list
}

fn instance_names(s: &Server) -> Vec<String> {
    let (_, list) = curl(s, "GET", "/2/instances", None, None);
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn a_backup_taken_while_jobs_run_restores_one_consistent_instant() {
    let s = start(&["--fake-delay-ms", "20"]);
    let file = s.dir.path().join("../gantry-backup-test.tar.gz");
    let file = std::path::absolute(file).unwrap();
    let _ = std::fs::remove_file(&file);

    // Jobs keep arriving and running (creates change the config) while the backup is taken.
    let data = s.dir.path().to_path_buf();
    let before_backup = std::sync::Mutex::new(0.0);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            for n in 0..30 {
                create_instance(&s, &format!("busy{n}.example.com"));
                delay_job(&s, 0.05, json!({}));
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(400));
        *before_backup.lock().unwrap() = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let (ok, out) = gantry(&["backup", file.to_str().unwrap()], &data);
        assert!(ok, "{out}");
        assert!(out.contains("jobs") && out.contains("instances"), "{out}");
        load.join().unwrap();
    });
    let original = jobs(&s);
    let backup_began = *before_backup.lock().unwrap();

    let restored_dir = tempfile::tempdir().unwrap();
    let target = restored_dir.path().join("data");
    let (ok, out) = gantry(&["restore", file.to_str().unwrap()], &target);
    assert!(ok, "{out}");
    let restored = start_in(
        {
            // start_in wants a TempDir holding the data dir itself.
            let dir = tempfile::tempdir().unwrap();
            std::fs::remove_dir(dir.path()).unwrap();
            std::fs::rename(&target, dir.path()).unwrap();
            dir
        },
        &[],
    );
    let back = jobs(&restored);
    assert!(
        !back.is_empty() && back.len() < original.len(),
        "a mid-run instant: {} of {}",
        back.len(),
        original.len()
    );
    // No job missing below the newest one: ids 1..=n, each with the ops it was submitted with.
    for (n, job) in back.iter().enumerate() {
        assert_eq!(job["id"].as_u64(), Some(n as u64 + 1), "{job}");
        let same = &original[n];
        // (A job still queued at the instant runs again after the restore: its reason trail
        // and the defaults filled in at the start change, not what it does.)
        for key in ["OP_ID", "instance_name", "duration"] {
            assert_eq!(job["ops"][0][key], same["ops"][0][key], "job {}", n + 1);
        }
        // A job that ended before the backup began is exactly as the original ended it (the
        // others ran again on the restored server).
        let ended = job["end_ts"][0].as_f64().unwrap_or(f64::MAX)
            + job["end_ts"][1].as_f64().unwrap_or(0.0) / 1e6;
        if ended < backup_began {
            assert_eq!(job["opresult"], same["opresult"], "job {}", n + 1);
            assert_eq!(job["end_ts"], same["end_ts"], "job {}", n + 1);
        }
    }
    // The config and the queue are from the same instant: every instance has its create job,
    // and every create that succeeded has its instance.
    let names = instance_names(&restored);
    for job in &back {
        let op = &job["ops"][0];
        if op["OP_ID"] == "OP_INSTANCE_CREATE" && job["status"] == "success" {
            let name = op["instance_name"].as_str().unwrap();
            assert!(
                names.contains(&name.to_string()),
                "{name} created by job {}",
                job["id"]
            );
        }
    }
    for name in &names {
        assert!(
            back.iter()
                .any(|j| j["ops"][0]["instance_name"] == name.as_str()),
            "{name} without its create job"
        );
    }
    // The restored server is a working cluster with the same identity.
    assert_eq!(
        curl(&restored, "GET", "/2/info", None, None).1["uuid"],
        curl(&s, "GET", "/2/info", None, None).1["uuid"]
    );
    let id = delay_job(&restored, 0.01, json!({}));
    let job = wait_job(&restored, id);
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(
        id,
        back.len() as u64 + 1,
        "ids go on from the restored queue"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_quiet_server_restores_to_identical_answers_and_restore_never_overwrites() {
    let s = start(&[]);
    for n in 0..3 {
        let id = create_instance(&s, &format!("quiet{n}.example.com"));
        assert_eq!(wait_job(&s, id)["status"], "success");
    }
    let archive = tempfile::tempdir().unwrap();
    let file = archive.path().join("b.tar.gz");
    let (ok, out) = gantry(&["backup", file.to_str().unwrap()], s.dir.path());
    assert!(ok, "{out}");
    assert!(
        out.contains("4 jobs, 3 instances") || out.contains("3 jobs, 3 instances"),
        "{out}"
    );
    // It holds the cluster secret and keys: the owner's only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "backup mode {mode:o}");

    let answers = |srv: &Server| {
        [
            "/2/jobs?bulk=1",
            "/2/instances?bulk=1",
            "/2/nodes?bulk=1",
            "/2/info",
        ]
        .map(|p| curl(srv, "GET", p, None, None).1)
    };
    let before = answers(&s);
    // Restoring over a data dir with a database is refused, whatever the archive.
    let (ok, out) = gantry(&["restore", file.to_str().unwrap()], s.dir.path());
    assert!(!ok && out.contains("already holds a database"), "{out}");
    // A file that is not a backup is refused with its name.
    let junk = archive.path().join("junk.tar.gz");
    std::fs::write(&junk, b"not an archive").unwrap();
    let (ok, out) = gantry(
        &["restore", junk.to_str().unwrap()],
        &archive.path().join("j"),
    );
    assert!(!ok && out.contains("is not a gantry backup"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::remove_dir(dir.path()).unwrap();
    let (ok, out) = gantry(&["restore", file.to_str().unwrap()], dir.path());
    assert!(ok, "{out}");
    assert!(
        !dir.path().join("gantry.pid").exists(),
        "process files are not restored"
    );
    let restored = start_in(dir, &[]);
    assert_eq!(answers(&restored), before);

    // Without a running server, `gantry backup` opens the database itself.
    let stopped = kill_9(restored);
    let offline = archive.path().join("offline.tar.gz");
    let (ok, out) = gantry(&["backup", offline.to_str().unwrap()], stopped.path());
    assert!(ok, "{out}");
    assert!(offline.exists());
}
