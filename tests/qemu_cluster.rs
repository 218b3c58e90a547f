//! gantry on the kvm hypervisor, over RAPI, against real QEMU (TCG, no guest kernel): an instance
//! installed by the shipped OS definition (os/gantry-demo), started, rebooted, grown, given a
//! disk, migrated, shut down, reinstalled, re-adopted after a kill -9 of gantry, and removed
//! without leftovers. Skipped without QEMU unless GANTRY_REQUIRE_QEMU=1 (CI sets it).

mod common;
use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const ADMIN: Option<&str> = Some("admin:admin");
const NAME: &str = "vm1.example.com";

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    job_ok(s, method, path, body)
}

/// An action on the test instance (`/2/instances/<NAME>/<action>`).
fn act(s: &Server, method: &str, action: &str, body: Value) -> Value {
    job_ok(s, method, &format!("/2/instances/{NAME}/{action}"), body)
}

fn instance(s: &Server) -> Value {
    curl(s, "GET", &format!("/2/instances/{NAME}"), None, None).1
}

/// Disk `n`'s file: named by the disk's UUID under the instance's storage dir.
fn disk_file(s: &Server, instance: &str, n: usize) -> PathBuf {
    let (_, inst) = curl(s, "GET", &format!("/2/instances/{instance}"), None, None);
    let (_, q) = curl(
        s,
        "GET",
        "/2/query/instance?fields=name,disk.uuids",
        ADMIN,
        None,
    );
    let uuid = q["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row[0][1] == instance)
        .map(|row| row[1][1][n].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{instance} not found: {inst}"));
    s.dir
        .path()
        .join("storage")
        .join(instance)
        .join(format!("disk-{uuid}.img"))
}

fn label(disk: &Path) -> String {
    let out = std::process::Command::new("e2label")
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn an_instance_lives_its_whole_life_on_real_qemu() {
    if !have_qemu() {
        return;
    }
    let run = short_tempdir("gr");
    let run_root = run.path().to_path_buf();
    let _cleanup = KillVms(run_root.clone());
    let s = start_kvm(&run_root);
    let storage: PathBuf = s.dir.path().join("storage").join(NAME);

    let (_, os) = curl(&s, "GET", "/2/os", None, None);
    assert!(
        os.as_array()
            .unwrap()
            .contains(&json!("gantry-demo+default")),
        "{os}"
    );
    let (_, info) = curl(&s, "GET", "/2/info", None, None);
    assert_eq!(info["default_hypervisor"], "kvm");
    // A real host reports its own sizes: no fake hypervisor parameters on its nodes.
    let (_, node) = curl(&s, "GET", "/2/nodes/node1.example.com", None, None);
    let ndparams = node["ndparams"].as_object().expect("ndparams");
    assert!(
        ndparams.keys().all(|k| !k.starts_with("fake_")),
        "{ndparams:?}"
    );

    // Create: disks, the OS create script (its output in the job log), start.
    let job = ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create",
        "name": NAME, "disk_template": "sharedfile", "disks": [{"size": 64}], "nics": [{}],
        "os_type": "gantry-demo+default", "beparams": {"memory": 128}}),
    );
    let log = job["oplog"][0].to_string();
    assert!(
        log.contains("gantry-demo: formatting"),
        "OS output in the job log: {log}"
    );
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME, "a real ext4 image");
    assert_eq!(qemu_pids(&run_root).len(), 1, "one QEMU runs the instance");
    let inst = instance(&s);
    assert_eq!(
        (inst["status"].clone(), inst["oper_state"].clone()),
        (json!("running"), json!(true))
    );

    let (code, console) = curl(
        &s,
        "GET",
        &format!("/2/instances/{NAME}/console"),
        ADMIN,
        None,
    );
    assert_eq!(code, 200, "{console}");
    assert_eq!(console["kind"], "ssh");
    let connect = console["command"][2].as_str().unwrap().to_string();
    let socket = connect.trim_start_matches("UNIX-CONNECT:");
    assert!(
        Path::new(socket).exists(),
        "the serial console socket exists: {socket}"
    );

    // Reboot: soft keeps the process, hard makes a new one.
    let pid = qemu_pids(&run_root)[0];
    act(&s, "POST", "reboot?type=soft", json!({}));
    assert_eq!(qemu_pids(&run_root), vec![pid]);
    act(&s, "POST", "reboot?type=hard", json!({}));
    let pids = qemu_pids(&run_root);
    assert!(
        pids.len() == 1 && pids[0] != pid,
        "hard reboot: a new process {pids:?}"
    );

    // Disks: grow the running one (block_resize), hot-add another.
    // A 128 MiB disk is below the default instance policy's minimum, as upstream checks on grow.
    act(
        &s,
        "POST",
        "disk/0/grow",
        json!({"amount": 64, "ignore_ipolicy": true}),
    );
    assert_eq!(
        std::fs::metadata(disk_file(&s, NAME, 0)).unwrap().len(),
        128 << 20
    );
    act(
        &s,
        "PUT",
        "modify",
        json!({"disks": [["add", {"size": 32}]]}),
    );
    assert_eq!(
        std::fs::metadata(disk_file(&s, NAME, 1)).unwrap().len(),
        32 << 20
    );

    // Live migration to another node: a new QEMU there, the old one gone.
    let before = (instance(&s)["pnode"].clone(), qemu_pids(&run_root));
    act(&s, "PUT", "migrate", json!({"mode": "live"}));
    let after = (instance(&s)["pnode"].clone(), qemu_pids(&run_root));
    assert_ne!(before.0, after.0, "the primary node changed");
    assert!(
        after.1.len() == 1 && after.1 != before.1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(instance(&s)["oper_state"], true);

    // Failover: a restart on the other node (shut down, then started there).
    let node = instance(&s)["pnode"].as_str().unwrap().to_string();
    let other = if node == "node1.example.com" {
        "node2.example.com"
    } else {
        "node1.example.com"
    };
    act(
        &s,
        "PUT",
        "failover",
        json!({"target_node": other, "shutdown_timeout": 1}),
    );
    assert_eq!(instance(&s)["pnode"], other);
    assert_eq!(
        instance(&s)["oper_state"],
        true,
        "running again after the failover"
    );
    let after = (instance(&s)["pnode"].clone(), qemu_pids(&run_root));
    assert_eq!(after.1.len(), 1);

    // Kill -9 gantry: the VM keeps running and the next gantry adopts it.
    let pid = after.1[0];
    let args = kvm_args(&run_root);
    let s = restart_after_kill_9(s, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        qemu_pids(&run_root),
        vec![pid],
        "the VM survived gantry's death"
    );
    assert_eq!(
        instance(&s)["oper_state"],
        true,
        "re-adopted and reported running"
    );

    // A VM that dies is noticed.
    kill_pid(pid);
    wait_for("the dead VM to be reported", || {
        instance(&s)["status"] == "ERROR_down"
    });
    act(&s, "PUT", "startup", json!({}));

    // Shut down (no guest OS answers ACPI, so after the timeout it is stopped hard), reinstall.
    act(&s, "PUT", "shutdown", json!({"timeout": 1}));
    assert!(qemu_pids(&run_root).is_empty());
    assert_eq!(instance(&s)["oper_state"], false);
    std::process::Command::new("e2label")
        .arg(disk_file(&s, NAME, 0))
        .arg("scratched")
        .status()
        .unwrap();
    act(&s, "POST", "reinstall", json!({"start": false}));
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME, "reinstalled");

    // Rename runs the OS rename script (the demo OS relabels the filesystem), and back.
    act(
        &s,
        "PUT",
        "rename",
        json!({"new_name": "vm2.example.com", "name_check": false, "ip_check": false}),
    );
    assert_eq!(
        label(&disk_file(&s, "vm2.example.com", 0)),
        "vm2.example.com"
    );
    ok(
        &s,
        "PUT",
        "/2/instances/vm2.example.com/rename",
        json!({"new_name": NAME, "name_check": false, "ip_check": false}),
    );
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME);

    // Export (OS export script per disk), then a new instance imported from it.
    act(
        &s,
        "PUT",
        "export",
        json!({"mode": "local", "destination": "node1.example.com"}),
    );
    let export = s.dir.path().join("storage").join(".export").join(NAME);
    assert!(
        export.join("disk0.dump").exists(),
        "the export holds the disk dump"
    );
    let imported = ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "import",
        "name": "copy.example.com", "disk_template": "sharedfile", "disks": [{"size": 128}, {"size": 32}],
        "nics": [], "os_type": "gantry-demo+default", "src_node": "node1.example.com",
        "src_path": NAME, "start": false}),
    );
    assert_eq!(
        label(&disk_file(&s, "copy.example.com", 0)),
        NAME,
        "imported content: {}",
        imported["oplog"]
    );
    ok(
        &s,
        "DELETE",
        "/2/instances/copy.example.com",
        json!({"shutdown_timeout": 1}),
    );
    ok(
        &s,
        "POST",
        "/2/jobs",
        json!({"ops": [{"OP_ID": "OP_BACKUP_REMOVE", "instance_name": NAME}]}),
    );
    assert!(!export.exists(), "the export is removed");

    // Remove the second disk while stopped: its file goes, the first keeps its content.
    let second = disk_file(&s, NAME, 1);
    act(&s, "PUT", "modify", json!({"disks": [["remove", 1, {}]]}));
    assert!(!second.exists(), "the removed disk's file is gone");
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME);

    // Remove: no process, no socket, no disk, no run dir.
    act(&s, "PUT", "startup", json!({}));
    // No guest OS answers ACPI: a short shutdown timeout instead of the default 120 s.
    ok(
        &s,
        "DELETE",
        &format!("/2/instances/{NAME}"),
        json!({"shutdown_timeout": 1}),
    );
    assert!(qemu_pids(&run_root).is_empty());
    assert!(!storage.exists(), "disk files removed");
    let left: Vec<_> = std::fs::read_dir(&run_root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "run files left: {left:?}");
}

#[test]
fn a_failing_qemu_operation_fails_the_job_clearly_and_leaves_no_process() {
    if !have_qemu() {
        return;
    }
    let run = short_tempdir("gr");
    let _cleanup = KillVms(run.path().to_path_buf());
    let s = start_kvm(run.path());
    ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": NAME,
        "disk_template": "sharedfile", "disks": [{"size": 16}], "nics": [], "start": false,
        "os_type": "gantry-demo+default"}),
    );
    // Break the disk path under the instance, then start it.
    let disk = disk_file(&s, NAME, 0);
    std::fs::remove_file(&disk).unwrap();
    let (_, id) = curl(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/startup"),
        ADMIN,
        Some("{}"),
    );
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "error", "{job}");
    let message = job["opresult"][0].to_string();
    assert!(
        message.contains("OpExecError")
            && message.contains(&*disk.file_name().unwrap().to_string_lossy()),
        "{message}"
    );
    assert!(qemu_pids(run.path()).is_empty(), "no orphan QEMU");
    // A failing OS script fails the reinstall with its output.
    let (_, id) = curl(
        &s,
        "POST",
        &format!("/2/instances/{NAME}/reinstall"),
        ADMIN,
        Some(r#"{"start": false}"#),
    );
    let job = wait_job(&s, id.as_u64().unwrap());
    assert_eq!(job["status"], "error");
    assert!(
        job["opresult"].to_string().contains("create script failed"),
        "{job}"
    );
}

#[test]
fn an_os_installed_while_running_is_usable_at_once() {
    if !have_qemu() {
        return;
    }
    let run = short_tempdir("gr");
    let _cleanup = KillVms(run.path().to_path_buf());
    let search = tempfile::tempdir().unwrap();
    let s = start(&[
        "--hypervisor",
        "kvm",
        "--os-search-path",
        search.path().to_str().unwrap(),
        "--user-networking",
        "--run-dir",
        run.path().to_str().unwrap(),
    ]);
    assert_eq!(curl(&s, "GET", "/2/os", None, None).1, json!([]));
    // Install an OS definition (a copy of the demo one) into the search path.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("os/gantry-demo");
    let late = search.path().join("late");
    std::fs::create_dir(&late).unwrap();
    for entry in std::fs::read_dir(&demo).unwrap().flatten() {
        std::fs::copy(entry.path(), late.join(entry.file_name())).unwrap();
    }
    let (_, os) = curl(&s, "GET", "/2/os", None, None);
    assert_eq!(os, json!(["late+default", "late+small-inodes"]));
    ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": NAME, "disk_template": "sharedfile",
               "disks": [{"size": 16}], "nics": [], "os_type": "late+small-inodes", "start": false}),
    );
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME);

    // OS parameters reach the script as OSP_*; unknown ones are refused like the node would.
    // A "late" OS instance with these OS parameters; answers the finished create job.
    let create = |name: &str, osparams: Value| {
        let body = json!({"__version__": 1, "mode": "create", "name": name,
               "disk_template": "sharedfile", "disks": [{"size": 16}], "nics": [],
               "os_type": "late+default", "osparams": osparams, "start": false});
        let (_, id) = curl(&s, "POST", "/2/instances", ADMIN, Some(&body.to_string()));
        wait_job(&s, id.as_u64().unwrap())
    };
    assert_eq!(
        create("p.example.com", json!({"label": "from-osparams"}))["status"],
        "success"
    );
    assert_eq!(label(&disk_file(&s, "p.example.com", 0)), "from-osparams");
    let job = create("q.example.com", json!({"colour": "blue"}));
    assert_eq!(
        job["opresult"][0],
        json!([
            "OpExecError",
            [format!(
                "OS Parameters validation failed on node {}: Unknown parameters: colour",
                instance_node(&s)
            )]
        ]),
        "{job}"
    );
    // The OS's own verify script judges the values.
    let job = create("r.example.com", json!({"fs": "xfs"}));
    let error = job["opresult"][0].to_string();
    assert!(
        error.contains("OS Parameters validation failed") && error.contains("invalid fs 'xfs'"),
        "{job}"
    );
    assert_eq!(
        create("e2.example.com", json!({"fs": "ext2"}))["status"],
        "success"
    );
    assert_eq!(label(&disk_file(&s, "e2.example.com", 0)), "e2.example.com");
}

/// The cluster's single node (a kvm cluster's default node is this host).
fn instance_node(s: &Server) -> String {
    let (_, nodes) = curl(s, "GET", "/2/nodes", None, None);
    nodes[0]["id"].as_str().unwrap().to_string()
}

/// A QEMU older than the oldest supported one is refused at start-up, naming its path and
/// version (a stand-in script plays QEMU 7.1 here).
#[test]
fn a_too_old_qemu_is_refused_at_start_up() {
    use std::os::unix::fs::PermissionsExt;
    let bin = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "qemu-system-x86_64",
            "QEMU emulator version 7.1.0 (Debian 1:7.1+dfsg-2)",
        ),
        ("qemu-img", "qemu-img version 7.1.0"),
    ] {
        let path = bin.path().join(name);
        std::fs::write(&path, format!("#!/bin/sh\necho '{text}'\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "serve",
            "--port",
            "0",
            "--no-ssl",
            "--hypervisor",
            "kvm",
            "--data-dir",
        ])
        .arg(data.path())
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is QEMU 7.1; gantry needs QEMU 7.2 or newer")
            && stderr.contains(&bin.path().display().to_string()),
        "{stderr}"
    );
}
