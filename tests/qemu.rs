//! The QEMU building blocks against real QEMU (TCG, no guest OS): launch, QMP, disk resize and
//! hot-add, reset, the stop sequence, and launch failures. Skipped with a message when QEMU is not
//! installed, unless GANTRY_REQUIRE_QEMU=1 (CI sets it; `.ci/install-qemu` installs QEMU).

use gantry::backends::qemu::qmp::Qmp;
use gantry::backends::qemu::vm::{Vm, VmConfig, create_disk};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("GANTRY_REQUIRE_QEMU").as_deref() != Ok("1"),
            "{name} is required (GANTRY_REQUIRE_QEMU=1) but not installed"
        );
        eprintln!("SKIPPED: {name} not installed; run .ci/install-qemu");
    }
    found
}

fn config(dir: &Path, name: &str, disks: Vec<PathBuf>) -> VmConfig {
    VmConfig {
        name: name.into(),
        run_dir: dir.join(name),
        memory_mib: 64,
        vcpus: 1,
        disks,
        macs: vec!["aa:00:00:12:34:56".into()],
        net: Vec::new(),
        boot: None,
        console_log: None,
        accel: "tcg".into(),
        // The installed QEMU's own versioned type, as the server picks it.
        machine: gantry::backends::qemu::probe::probe(Path::new("qemu-system-x86_64"))
            .map(|p| p.machine)
            .unwrap_or_else(|e| panic!("probing QEMU: {e}")),
        incoming: None,
    }
}

fn alive(pid: u32) -> bool {
    // Our own child is reaped by Vm::stop, so /proc/<pid> disappears with it.
    Path::new(&format!("/proc/{pid}")).exists()
}

fn virtual_size(qemu_img: &Path, disk: &Path) -> u64 {
    let out = std::process::Command::new(qemu_img)
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_starts_grows_a_disk_hot_adds_one_and_stops_leaving_nothing() {
    let (Some(qemu), Some(qemu_img)) = (tool("qemu-system-x86_64"), tool("qemu-img")) else {
        return;
    };
    // Short paths: unix sockets must stay under 108 bytes.
    let dir = tempfile::Builder::new()
        .prefix("gq")
        .tempdir_in("/tmp")
        .unwrap();
    let disk0 = dir.path().join("d0.qcow2");
    create_disk(&qemu_img, &disk0, 64).await.unwrap();
    let vm = Vm::launch(&qemu, config(dir.path(), "vm1", vec![disk0.clone()]))
        .await
        .unwrap();
    let pid = vm.pid();
    assert!(alive(pid));
    assert_eq!(vm.status().await.unwrap(), "running");

    vm.resize_disk(0, 128 * 1024 * 1024).await.unwrap();
    assert_eq!(virtual_size(&qemu_img, &disk0), 128 * 1024 * 1024);

    let disk1 = dir.path().join("d1.qcow2");
    create_disk(&qemu_img, &disk1, 32).await.unwrap();
    vm.qmp
        .execute(
            "blockdev-add",
            json!({"driver": "file", "filename": disk1, "node-name": "disk1-file"}),
        )
        .await
        .unwrap();
    vm.qmp
        .execute(
            "blockdev-add",
            json!({"driver": "qcow2", "file": "disk1-file", "node-name": "disk1"}),
        )
        .await
        .unwrap();
    vm.qmp
        .execute(
            "device_add",
            json!({"driver": "virtio-blk-pci", "drive": "disk1", "id": "disk1"}),
        )
        .await
        .unwrap();
    let block = vm.qmp.execute("query-block", Value::Null).await.unwrap();
    assert_eq!(block.as_array().unwrap().len(), 2, "{block}");

    let mut events = vm.qmp.events();
    vm.qmp.execute("system_reset", Value::Null).await.unwrap();
    assert!(
        Qmp::wait_event(&mut events, |e| e.name == "RESET", Duration::from_secs(5))
            .await
            .is_some()
    );

    // No guest OS answers ACPI: the stop falls through to quit.
    let run_dir = vm.config.run_dir.clone();
    let clean = vm.stop(Duration::from_millis(300)).await.unwrap();
    assert!(!clean, "a VM without an OS does not power itself off");
    assert!(!alive(pid), "no QEMU process is left");
    assert!(!run_dir.join("qmp.sock").exists(), "QMP socket removed");
    assert!(!run_dir.join("pid").exists(), "pidfile removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_failures_carry_qemus_message_and_leave_no_process() {
    let Some(qemu) = tool("qemu-system-x86_64") else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("gq")
        .tempdir_in("/tmp")
        .unwrap();
    let missing = dir.path().join("missing.qcow2");
    let err = Vm::launch(&qemu, config(dir.path(), "bad", vec![missing]))
        .await
        .err()
        .expect("a missing disk fails the launch");
    let text = err.to_string();
    assert!(text.contains("QEMU exited at start"), "{text}");
    assert!(
        text.contains("missing.qcow2"),
        "QEMU's own error is kept: {text}"
    );

    let err = Vm::launch(
        Path::new("/nonexistent/qemu"),
        config(dir.path(), "x", vec![]),
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("cannot run"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qemu_that_never_answers_qmp_is_killed_with_a_clear_error() {
    // Stands in for a hung QEMU: it runs but never opens its QMP socket.
    let dir = tempfile::Builder::new()
        .prefix("gq")
        .tempdir_in("/tmp")
        .unwrap();
    let fake = dir.path().join("hung-qemu");
    // A sleep with an unusual duration, so the test can look for it afterwards.
    std::fs::write(&fake, "#!/bin/sh\necho starting >&2\nexec sleep 601.25\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Vm::launch(&fake, config(dir.path(), "hung", vec![]))
        .await
        .err()
        .expect("no QMP, no VM");
    let text = err.to_string();
    assert!(text.contains("did not answer on QMP"), "{text}");
    assert!(
        text.contains("starting"),
        "the process's own output is kept: {text}"
    );
    let left = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("601.25"))
            .unwrap_or(false)
    });
    assert!(!left, "the hung process was killed");
}
