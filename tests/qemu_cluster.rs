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

fn have_qemu() -> bool {
    let found = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("GANTRY_REQUIRE_QEMU").as_deref() != Ok("1"),
            "QEMU is required (GANTRY_REQUIRE_QEMU=1) but not installed"
        );
        eprintln!("SKIPPED: qemu-system-x86_64 not installed; run .ci/install-qemu");
    }
    found
}

/// PIDs of QEMU processes running this instance (by its -name argument).
fn qemu_pids(run_root: &Path) -> Vec<u32> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie =
            std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if text.contains(&format!("-name {NAME} "))
            && text.contains(&*run_root.to_string_lossy())
            && !zombie
        {
            pids.push(pid);
        }
    }
    pids
}

/// Kills this test's QEMUs however the test ends, so a failure leaves no VM behind.
struct KillVms(PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        for pid in qemu_pids(&self.0) {
            unsafe_kill(pid);
        }
    }
}

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
    let (code, id) = curl(s, method, path, ADMIN, Some(&body.to_string()));
    assert_eq!(code, 200, "{method} {path}: {id}");
    let job = wait_job(s, id.as_u64().unwrap());
    assert_eq!(job["status"], "success", "{method} {path}: {job}");
    job
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
    let run = tempfile::Builder::new()
        .prefix("gr")
        .tempdir_in("/tmp")
        .unwrap();
    let run_root = run.path().to_path_buf();
    let _cleanup = KillVms(run_root.clone());
    let os_path = concat!(env!("CARGO_MANIFEST_DIR"), "/os");
    let args = [
        "--hypervisor",
        "kvm",
        "--os-search-path",
        os_path,
        "--run-dir",
        run_root.to_str().unwrap(),
    ];
    let s = start(&args);
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
    ok(
        &s,
        "POST",
        &format!("/2/instances/{NAME}/reboot?type=soft"),
        json!({}),
    );
    assert_eq!(qemu_pids(&run_root), vec![pid]);
    ok(
        &s,
        "POST",
        &format!("/2/instances/{NAME}/reboot?type=hard"),
        json!({}),
    );
    let pids = qemu_pids(&run_root);
    assert!(
        pids.len() == 1 && pids[0] != pid,
        "hard reboot: a new process {pids:?}"
    );

    // Disks: grow the running one (block_resize), hot-add another.
    ok(
        &s,
        "POST",
        &format!("/2/instances/{NAME}/disk/0/grow"),
        json!({"amount": 64}),
    );
    assert_eq!(
        std::fs::metadata(disk_file(&s, NAME, 0)).unwrap().len(),
        128 << 20
    );
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/modify"),
        json!({"disks": [["add", {"size": 32}]]}),
    );
    assert_eq!(
        std::fs::metadata(disk_file(&s, NAME, 1)).unwrap().len(),
        32 << 20
    );

    // Live migration to another node: a new QEMU there, the old one gone.
    let before = (instance(&s)["pnode"].clone(), qemu_pids(&run_root));
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/migrate"),
        json!({"mode": "live"}),
    );
    let after = (instance(&s)["pnode"].clone(), qemu_pids(&run_root));
    assert_ne!(before.0, after.0, "the primary node changed");
    assert!(
        after.1.len() == 1 && after.1 != before.1,
        "{before:?} -> {after:?}"
    );
    assert_eq!(instance(&s)["oper_state"], true);

    // Kill -9 gantry: the VM keeps running and the next gantry adopts it.
    let pid = after.1[0];
    let s = restart_after_kill_9(s, &args);
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
    unsafe_kill(pid);
    wait_for("the dead VM to be reported", || {
        instance(&s)["status"] == "ERROR_down"
    });
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/startup"),
        json!({}),
    );

    // Shut down (no guest OS answers ACPI, so after the timeout it is stopped hard), reinstall.
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/shutdown"),
        json!({"timeout": 1}),
    );
    assert!(qemu_pids(&run_root).is_empty());
    assert_eq!(instance(&s)["oper_state"], false);
    std::process::Command::new("e2label")
        .arg(disk_file(&s, NAME, 0))
        .arg("scratched")
        .status()
        .unwrap();
    ok(
        &s,
        "POST",
        &format!("/2/instances/{NAME}/reinstall"),
        json!({"start": false}),
    );
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME, "reinstalled");

    // Rename runs the OS rename script (the demo OS relabels the filesystem), and back.
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/rename"),
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
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/export"),
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
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/modify"),
        json!({"disks": [["remove", 1, {}]]}),
    );
    assert!(!second.exists(), "the removed disk's file is gone");
    assert_eq!(label(&disk_file(&s, NAME, 0)), NAME);

    // Remove: no process, no socket, no disk, no run dir.
    ok(
        &s,
        "PUT",
        &format!("/2/instances/{NAME}/startup"),
        json!({}),
    );
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
    let run = tempfile::Builder::new()
        .prefix("gr")
        .tempdir_in("/tmp")
        .unwrap();
    let _cleanup = KillVms(run.path().to_path_buf());
    let os_path = concat!(env!("CARGO_MANIFEST_DIR"), "/os");
    let args = [
        "--hypervisor",
        "kvm",
        "--os-search-path",
        os_path,
        "--run-dir",
        run.path().to_str().unwrap(),
    ];
    let s = start(&args);
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

fn unsafe_kill(pid: u32) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}
