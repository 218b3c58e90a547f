//! Attacks against the real binary (doc/security.md): each test reproduces one and asserts the
//! safe outcome.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::Command;

const ADMIN: Option<&str> = Some("admin:admin");

/// Submits raw opcodes as a write user and waits for the job.
fn run_ops(s: &Server, ops: Value) -> Value {
    let (code, id) = curl(
        s,
        "POST",
        "/2/jobs",
        ADMIN,
        Some(&json!({"ops": ops}).to_string()),
    );
    assert_eq!(code, 200, "{id}");
    wait_job(s, id.as_u64().unwrap())
}

fn error_message(job: &Value) -> String {
    job["opresult"][0][1][0]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn backup_remove_cannot_delete_directories_outside_the_export_area() {
    if !have_qemu() {
        return;
    }
    let run = short_tempdir("gsec");
    let _vms = KillVms(run.path().to_path_buf());
    let s = start_kvm(run.path());
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "x").unwrap();
    // One `../` from the export area is the storage root; two is the data dir.
    let inside = s.dir.path().join("x");
    std::fs::create_dir(&inside).unwrap();
    for name in [
        victim.display().to_string(),
        "../../x".into(),
        "..".into(),
        ".".into(),
    ] {
        let job = run_ops(
            &s,
            json!([{"OP_ID": "OP_BACKUP_REMOVE", "instance_name": name}]),
        );
        assert_eq!(job["status"], "error", "{name}: {job}");
        assert!(error_message(&job).contains("Invalid hostname"), "{job}");
    }
    assert!(
        victim.join("keep").exists(),
        "a directory outside was removed"
    );
    assert!(inside.exists(), "a directory in the data dir was removed");
    assert!(s.dir.path().join("storage").exists());
    let (code, _) = curl(&s, "GET", "/2/info", None, None);
    assert_eq!(code, 200, "the database is still there");
}

#[test]
fn a_mac_cannot_smuggle_qemu_arguments() {
    let s = start(&[]);
    let create = json!({"__version__": 1, "name": "web1.example.com", "os": "debootstrap+default",
        "disk_template": "plain", "disks": [{"size": 128}], "nics": [{}], "mode": "create"});
    job_ok(&s, "POST", "/2/instances", create.clone());
    let evil = "52:54:00:12:34:56,romfile=/etc/shadow";
    let (code, id) = curl(
        &s,
        "PUT",
        "/2/instances/web1.example.com/modify",
        ADMIN,
        Some(&json!({"nics": [["modify", 0, {"mac": evil}]]}).to_string()),
    );
    assert_eq!(code, 200, "{id}");
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        error_message(&job).contains("Invalid MAC address specified"),
        "{job}"
    );
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert!(
        !inst["nic.macs"][0].as_str().unwrap().contains("romfile"),
        "{inst}"
    );
    // The same MAC on a second instance is refused as upstream does.
    let mac = inst["nic.macs"][0].as_str().unwrap().to_string();
    let mut second = create;
    second["name"] = json!("web2.example.com");
    second["nics"] = json!([{"mac": mac}]);
    let (_, id) = curl(&s, "POST", "/2/instances", ADMIN, Some(&second.to_string()));
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        error_message(&job).contains(&format!("MAC address {mac} already in use in cluster")),
        "{job}"
    );
}

#[test]
fn agent_addresses_must_be_https_wherever_they_are_set() {
    let s = start(&[]);
    let (_, nodes) = curl(&s, "GET", "/2/nodes", None, None);
    let node = nodes[0]["id"].as_str().unwrap().to_string();
    let job = run_ops(
        &s,
        json!([{"OP_ID": "OP_NODE_SET_PARAMS", "node_name": node,
                "ndparams": {"agent_address": "http://198.51.100.7:1811"}}]),
    );
    assert_eq!(job["status"], "error", "{job}");
    assert!(error_message(&job).contains("https://"), "{job}");
    let (_, info) = curl(&s, "GET", &format!("/2/nodes/{node}"), None, None);
    assert!(
        !info.to_string().contains("198.51.100.7"),
        "the address was stored: {info}"
    );
}

#[test]
fn a_huge_delay_cannot_wedge_the_queue() {
    let s = start(&[]);
    for duration in [1e300, 1e20] {
        let job = run_ops(
            &s,
            json!([{"OP_ID": "OP_TEST_DELAY", "duration": duration}]),
        );
        assert_eq!(job["status"], "error", "{job}");
        assert!(
            error_message(&job).contains("Invalid sleep duration"),
            "{job}"
        );
    }
    let id = delay_job(&s, 0.01, json!({}));
    assert_eq!(
        wait_job(&s, id)["status"],
        "success",
        "the queue still runs jobs"
    );
}

#[test]
fn malformed_query_strings_and_paths_do_not_panic() {
    let s = start(&[]);
    // Raw bytes, sent as they are (curl would not), through a plain TCP socket via curl's
    // --path-as-is and a URL with a lone '%' before a multi-byte character.
    for path in [
        "/2/info?a=%a\u{e9}",
        "/2/info?%=%%&&=&%zz",
        "/2/instances/%e9%a",
        "/2/jobs/%ff%fe?bulk=%c3",
    ] {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--path-as-is",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("{}{}", s.base, path))
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            ["200", "400", "404"].contains(&code.as_str()),
            "{path}: answered {code}"
        );
    }
    let (code, _) = curl(&s, "GET", "/2/info", None, None);
    assert_eq!(code, 200, "the server is alive");
}

#[test]
fn secret_os_parameters_are_never_shown_or_stored() {
    let s = start(&[]);
    let create = json!({"__version__": 1, "name": "web1.example.com", "os": "debootstrap+default",
        "disk_template": "plain", "disks": [{"size": 128}], "nics": [{}], "mode": "create",
        "osparams_private": {"label": "private-kiwi"},
        "osparams_secret": {"password": "secret-hunter2"}});
    let job = job_ok(&s, "POST", "/2/instances", create);
    let id = job["id"].as_u64().unwrap();
    let mut answers = vec![job.clone()];
    answers.push(curl(&s, "GET", &format!("/2/jobs/{id}"), None, None).1);
    answers.push(curl(&s, "GET", "/2/jobs?bulk=1", None, None).1);
    answers.push(
        curl(
            &s,
            "GET",
            "/2/query/job?fields=id,ops,oplog",
            Some("viewer:viewer"),
            None,
        )
        .1,
    );
    for answer in &answers {
        let text = answer.to_string();
        assert!(!text.contains("hunter2"), "secret shown: {text}");
        assert!(
            !text.contains("private-kiwi"),
            "private value shown: {text}"
        );
    }
    assert_eq!(
        job["ops"][0]["osparams_secret"]["password"], "<redacted>",
        "the key stays, the value goes: {job}"
    );
    // Nor on disk: no file of the data dir holds the secret.
    let grep = Command::new("grep")
        .args(["-r", "-l", "secret-hunter2"])
        .arg(s.dir.path())
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "secret stored in {}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

#[test]
fn users_file_pitfalls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-order mark before the first user, a duplicate, and an empty password.
    std::fs::write(
        dir.path().join("users"),
        "\u{feff}admin {cleartext}admin write\nadmin other write\nnopass {cleartext} write\n",
    )
    .unwrap();
    let s = start_in(dir, &[]);
    let ping = |user: &str| {
        curl(
            &s,
            "PUT",
            "/2/query/node",
            Some(user),
            Some("{\"fields\": [\"name\"]}"),
        )
        .0
    };
    assert_eq!(ping("admin:admin"), 200, "the first user survives a BOM");
    assert_eq!(
        ping("admin:other"),
        401,
        "a second line does not replace the first"
    );
    assert_eq!(ping("nopass:"), 401, "an empty password grants nothing");
    // Replaced by a file of the same size and modification time (cp -p, rsync -t).
    let users = s.dir.path().join("users");
    let before = std::fs::metadata(&users).unwrap();
    let same_size = "admin {cleartext}ADMIN write\nadmin other write\nnopass {cleartext} write\n";
    assert_eq!(same_size.len(), before.len() as usize - 3, "BOM is 3 bytes");
    let same_size = format!("{same_size}   ");
    std::fs::write(&users, same_size).unwrap();
    let mtime = before.modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&users)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if ping("admin:admin") == 401 {
            refused = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        refused,
        "the old password still works after the file changed"
    );
    assert_eq!(ping("admin:ADMIN"), 200);
}

#[test]
fn keys_secrets_and_the_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let s = start(&[]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.dir.path().join("rapi.key")), 0o600);
    assert_eq!(mode(&s.dir.path().join("db")), 0o700);
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("new-data-dir");
    let (mut child, _) = spawn_gantry(&data, &[], std::process::Stdio::null());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode(&data), 0o700, "a new data dir is its owner's only");
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                dir_size(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[test]
fn a_chatty_job_cannot_fill_the_disk() {
    let s = start(&[]);
    let before = dir_size(s.dir.path());
    // 12,000 log lines: each used to rewrite the whole job record (8,000 grew 1 MB to 2.4 GB).
    let id = delay_job(&s, 0.00001, json!({"repeat": 12000}));
    let job = wait_job(&s, id);
    assert_eq!(job["status"], "success", "{}", job["status"]);
    let log = job["oplog"][0].as_array().unwrap();
    assert_eq!(
        log.len(),
        10_001,
        "capped at 10,000 entries plus the marker"
    );
    assert!(
        log.last().unwrap()[3]
            .as_str()
            .unwrap()
            .contains("log truncated"),
        "{}",
        log.last().unwrap()
    );
    let serials: Vec<u64> = log.iter().map(|e| e[0].as_u64().unwrap()).collect();
    assert!(
        serials.windows(2).all(|w| w[1] == w[0] + 1),
        "serials are consecutive"
    );
    let grown = dir_size(s.dir.path()).saturating_sub(before);
    assert!(grown < 64 << 20, "the data dir grew by {grown} bytes");
    // The log survives a restart, read back from its own records.
    let s = restart_after_kill_9(s, &[]);
    let (_, again) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
    assert_eq!(again["oplog"][0].as_array().unwrap().len(), 10_001);
}

/// A small tmpfs, unmounted on drop: a disk that can really fill up.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs needs root (as CI and the dev machines run)"
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &std::path::Path) {
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k", "status=none"])
        .arg(format!("of={}", path.display()))
        .status();
}

#[test]
fn a_full_disk_never_acknowledges_a_job_it_loses_and_service_returns() {
    let disk = SmallDisk::new("96m");
    let s = start_in(tempfile::tempdir_in(disk.0.path()).unwrap(), &["--no-ssl"]);
    let filler = disk.0.path().join("filler");
    fill(&filler);
    let mut acked = vec![];
    let mut refused = 0;
    for _ in 0..200 {
        let (code, body) = curl(
            &s,
            "POST",
            "/2/jobs",
            ADMIN,
            Some(r#"{"ops": [{"OP_ID": "OP_TAGS_SET", "kind": "cluster", "tags": ["full"]}]}"#),
        );
        match code {
            200 => acked.push(body.as_u64().unwrap()),
            _ => {
                assert!(body["message"].is_string(), "a Ganeti error body: {body}");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "a full disk refused nothing ({} acked)",
        acked.len()
    );
    // Space returns: submissions succeed again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut back = false;
    for _ in 0..50 {
        let (code, body) = curl(
            &s,
            "POST",
            "/2/jobs",
            ADMIN,
            Some(r#"{"ops": [{"OP_ID": "OP_TAGS_GET", "kind": "cluster"}]}"#),
        );
        if code == 200 {
            acked.push(body.as_u64().unwrap());
            back = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(back, "service did not come back when space returned");
    // Every acknowledged job survives a kill -9.
    let s = restart_after_kill_9(s, &["--no-ssl"]);
    for id in acked {
        let (code, job) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
        assert_eq!(code, 200, "acknowledged job {id} was lost: {job}");
    }
}

#[test]
fn a_damaged_database_is_reported_not_panicked_on() {
    let s = start(&["--no-ssl"]);
    let id = delay_job(&s, 0.01, json!({}));
    wait_job(&s, id);
    let dir = kill_9(s);
    let check = |dir: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["check-db", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let healthy = check(dir.path());
    assert!(healthy.status.success());
    assert!(
        String::from_utf8_lossy(&healthy.stdout)
            .contains("0 unfinished, 1 finished and 0 archived jobs"),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    // Overwrite 8 bytes of sled's own header.
    let conf = dir.path().join("db").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    bytes[..8].copy_from_slice(b"XXXXXXXX");
    std::fs::write(&conf, bytes).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--no-ssl", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("is damaged") && stderr.contains("check-db"),
        "{stderr}"
    );
    let damaged = check(dir.path());
    assert!(!damaged.status.success());
    assert!(String::from_utf8_lossy(&damaged.stderr).contains("is damaged"));
}

/// The peak resident memory of `pid` since the last `reset_peak` (Linux's VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn queries_over_the_archive_do_not_load_it_into_memory() {
    let s = start(&["--archive-age", "0", "--archive-interval", "1"]);
    // 300 archived jobs with 400 log lines each.
    let ids: Vec<u64> = (0..300)
        .map(|_| delay_job(&s, 0.00001, json!({"repeat": 400})))
        .collect();
    wait_job(&s, *ids.last().unwrap());
    let archived = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (_, job) = curl(&s, "GET", &format!("/2/jobs/{}", ids[299]), None, None);
        let (_, list) = curl(&s, "GET", "/2/jobs", None, None);
        job["status"] == "success" && list.as_array().is_some_and(Vec::is_empty)
    });
    assert!(archived, "the jobs were not archived");
    let pid = s.child.id();
    let current = |field: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    // Reset the peak to what is resident now (writing 5 to clear_refs, Linux >= 4.0).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = current("VmRSS:");
    // Six concurrent reads by a read-only user, as in the report.
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let base = s.base.clone();
            std::thread::spawn(move || {
                Command::new("curl")
                    .args(["-sk", "-u", "viewer:viewer"])
                    .arg(format!("{base}/2/query/job?fields=id,status,archived"))
                    .output()
                    .unwrap()
                    .stdout
            })
        })
        .collect();
    for h in handles {
        let body: Value = serde_json::from_slice(&h.join().unwrap()).unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 300);
    }
    let grown = peak_rss_kib(pid).saturating_sub(before);
    eprintln!("peak RSS grew by {grown} KiB");
    // Decoding every job with its log (as before) peaked at several times this.
    assert!(
        grown < 12 * 1024,
        "peak RSS grew by {grown} KiB for six small answers"
    );
}
