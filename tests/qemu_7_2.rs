//! Any QEMU from 7.2 on (issue 13): Debian bookworm's own QEMU 7.2 (unpacked beside the QEMU 10
//! the other tests use, by `tools/qemu-7.2`) runs gantry's VMs with its own versioned machine
//! type; the shipped OS boots on it and shuts down by ACPI.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;

#[test]
fn bookworms_qemu_7_2_boots_the_shipped_os_with_its_own_machine_type() {
    let Some(kernel) = guest_kernel() else {
        return;
    };
    let required = std::env::var("GANTRY_REQUIRE_QEMU").as_deref() == Ok("1");
    let qemu = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-7.2");
    if !qemu.join("bin/qemu-system-x86_64").exists() {
        let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tools/qemu-7.2"))
            .arg(&qemu)
            .output()
            .unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!required, "tools/qemu-7.2 failed: {why}");
            eprintln!("SKIPPED: tools/qemu-7.2 failed: {why}");
            return;
        }
    }
    let run = short_tempdir("g7");
    let _cleanup = KillVms(run.path().to_path_buf());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), "admin {cleartext}admin write\n").unwrap();
    // The 7.2 binary first on PATH; its modules from its own directory.
    let path = format!(
        "{}:{}",
        qemu.join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir.path())
        .args([
            "--hypervisor",
            "kvm",
            "--os-search-path",
            "./os",
            "--user-networking",
        ])
        .arg("--boot-dir")
        .arg(&kernel)
        .arg("--run-dir")
        .arg(run.path())
        .env("PATH", path)
        .env("QEMU_MODULE_DIR", qemu.join("modules"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().rsplit(' ').next().unwrap().to_string()
    };
    let s = Server {
        child,
        base,
        dir,
        netns: None,
    };
    boot_the_demo_os(&s, &kernel);
    let name = "old.example.com";
    job_ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": name, "name_check": false,
               "ip_check": false, "disk_template": "sharedfile", "disks": [{"size": 64}],
               "nics": [{"ip": "10.99.0.7"}], "os_type": "gantry-demo+default",
               "beparams": {"memory": 128}}),
    );
    // QEMU 7.2 runs it, with 7.2's machine type.
    let pids = qemu_pids(run.path());
    assert_eq!(pids.len(), 1);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pids[0])).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.starts_with(&qemu.join("bin/qemu-system-x86_64").display().to_string()),
        "{cmdline}"
    );
    assert!(cmdline.contains("-machine pc-i440fx-7.2 "), "{cmdline}");
    wait_console(
        &s,
        name,
        "gantry-guest: ready old.example.com eth0=10.99.0.7",
        1,
    );
    job_ok(
        &s,
        "PUT",
        &format!("/2/instances/{name}/shutdown"),
        json!({}),
    );
    wait_console(&s, name, "reboot: Power down", 1);
    job_ok(&s, "DELETE", &format!("/2/instances/{name}"), json!({}));
    assert!(qemu_pids(run.path()).is_empty());
}
