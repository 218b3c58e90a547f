//! Real guests on real networks (issue 13): gantry runs inside a network namespace this test
//! makes, with a bridge in it; VMs boot the shipped OS (`os/gantry-demo`) through the kernel
//! and initrd `os/gantry-demo/make-kernel` builds, with static IPs from their NIC parameters.
//! Checked from both sides: the host pings the VMs (bridged and routed), one VM pings another
//! (typed on its serial console), an ACPI shutdown ends the guest by itself, a soft reboot shows
//! a second ready line, a restarted gantry keeps the taps, and removal leaves no tap behind.

mod common;
use common::netns::Netns;
use common::*;
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ADMIN: Option<&str> = Some("admin:admin");
const BRIDGE: &str = "gtbr0";

/// A network namespace with a bridge (10.99.0.1/24) in it.
fn bridged(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&["link", "add", BRIDGE, "type", "bridge"]);
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", BRIDGE]);
    ns.ip(&["link", "set", BRIDGE, "up"]);
    ns
}

/// The guests' taps in the namespace.
fn taps(ns: &Netns) -> Vec<String> {
    let out = ns.run("ip", &["-br", "link"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(['@', ' ']).next())
        .filter(|name| name.starts_with("gt") && *name != BRIDGE)
        .map(str::to_string)
        .collect()
}

fn run_dir_of(run_root: &Path, name: &str) -> PathBuf {
    run_root.join(gantry::backends::qemu::short_id(name))
}

/// Types a line on the guest's serial console.
fn type_line(run_root: &Path, name: &str, line: &str) {
    let socket = run_dir_of(run_root, name).join("serial.sock");
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
}

/// Creates (and starts) an instance of the demo OS; the boot hvparams are the cluster's.
fn create(s: &Server, name: &str, nic: Value) -> Value {
    job_ok(
        s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": name, "name_check": false,
               "ip_check": false, "disk_template": "sharedfile", "disks": [{"size": 64}],
               "nics": [nic], "os_type": "gantry-demo+default", "beparams": {"memory": 128}}),
    )
}

#[test]
fn guests_boot_the_shipped_os_and_are_reachable_bridged_and_routed() {
    let Some(kernel) = guest_kernel() else {
        return;
    };
    let ns = bridged("net");
    let run = short_tempdir("gn");
    let run_root = run.path().to_path_buf();
    let _cleanup = KillVms(run_root.clone());
    let args = [
        "--hypervisor",
        "kvm",
        // Two local nodes: the VMs migrate between them, taps and routes along.
        "--nodes",
        "node1.example.com,node2.example.com",
        "--os-search-path",
        "./os",
        "--boot-dir",
        kernel.to_str().unwrap(),
        "--run-dir",
        run_root.to_str().unwrap(),
    ];
    let s = start_in_netns(&ns.0, tempfile::tempdir().unwrap(), &args);

    boot_the_demo_os(&s, &kernel);
    let (a, b, r) = ("vm-a.example.com", "vm-b.example.com", "vm-r.example.com");
    create(
        &s,
        a,
        json!({"mode": "bridged", "link": BRIDGE, "ip": "10.99.0.11"}),
    );
    create(
        &s,
        b,
        json!({"mode": "bridged", "link": BRIDGE, "ip": "10.99.0.12"}),
    );
    create(&s, r, json!({"mode": "routed", "ip": "10.99.1.5"}));
    wait_console(
        &s,
        a,
        "gantry-guest: ready vm-a.example.com eth0=10.99.0.11",
        1,
    );
    wait_console(
        &s,
        b,
        "gantry-guest: ready vm-b.example.com eth0=10.99.0.12",
        1,
    );
    wait_console(
        &s,
        r,
        "gantry-guest: ready vm-r.example.com eth0=10.99.1.5",
        1,
    );

    // The host side of the bridge reaches both bridged guests; the routed one through its route.
    assert!(ns.ping("10.99.0.11"), "{}", console(&s, a));
    assert!(ns.ping("10.99.0.12"), "{}", console(&s, b));
    let route = ns.run("ip", &["route", "show", "10.99.1.5"]);
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    assert!(
        route.contains("dev gt"),
        "a host route through the tap: {route}"
    );
    assert!(ns.ping("10.99.1.5"), "{}", console(&s, r));

    // Guest to guest over the bridge, typed on a's console. The marker is computed by the
    // guest's shell, so the echoed command line cannot match it.
    type_line(
        &run_root,
        a,
        "ping -c 1 -W 2 10.99.0.12 >/dev/null && echo PEER-$((40+2))-OK",
    );
    wait_console(&s, a, "PEER-42-OK", 1);

    // A restarted gantry (kill -9) keeps the VMs and re-attaches their taps: undo the
    // attachments while it is down (b's tap off the bridge, r's host route gone), so only the
    // re-attachment at start-up can bring them back.
    let s = {
        let dir = kill_9(s);
        let tap =
            |name: &str| gantry::backends::qemu::net::tap_name(&run_dir_of(&run_root, name), 0);
        assert!(
            ns.run("ip", &["link", "set", "dev", &tap(b), "nomaster"])
                .status
                .success()
        );
        assert!(
            ns.run("ip", &["route", "del", "10.99.1.5"])
                .status
                .success()
        );
        assert!(!ns.ping("10.99.1.5"), "the route is really gone");
        start_in_netns(&ns.0, dir, &args)
    };
    let listed = curl(&s, "GET", "/2/instances?bulk=1", None, None).1;
    for inst in listed.as_array().unwrap() {
        assert_eq!(inst["status"], "running", "{inst}");
    }
    assert!(ns.ping("10.99.0.12"));
    assert!(ns.ping("10.99.1.5"));

    // A live migration moves the routed VM's host route to the target's tap, and the bridged
    // VM's port on the bridge: both answer from their new node.
    for (name, ip) in [(r, "10.99.1.5"), (b, "10.99.0.12")] {
        let route_before = ns.run("ip", &["route", "show", "10.99.1.5"]).stdout;
        let (_, inst) = curl(&s, "GET", &format!("/2/instances/{name}"), None, None);
        let target = if inst["pnode"] == "node1.example.com" {
            "node2.example.com"
        } else {
            "node1.example.com"
        };
        job_ok(
            &s,
            "PUT",
            &format!("/2/instances/{name}/migrate"),
            json!({"mode": "live", "target_node": target}),
        );
        let (_, inst) = curl(&s, "GET", &format!("/2/instances/{name}"), None, None);
        assert_eq!(inst["pnode"], target);
        assert!(ns.ping(ip), "{name} after migrating: {}", console(&s, name));
        if name == r {
            let route_after = ns.run("ip", &["route", "show", "10.99.1.5"]).stdout;
            assert_ne!(
                route_before, route_after,
                "the route follows the VM to its new tap"
            );
        }
    }
    assert_eq!(
        taps(&ns).len(),
        3,
        "one tap per VM, the sources' gone: {:?}",
        taps(&ns)
    );

    // A soft reboot resets the guest, which comes up again on the same console.
    job_ok(
        &s,
        "POST",
        &format!("/2/instances/{a}/reboot?type=soft"),
        json!({}),
    );
    wait_console(&s, a, "gantry-guest: ready vm-a.example.com", 2);

    // A shutdown is the guest's own: acpid sees the power button and powers off.
    job_ok(&s, "PUT", &format!("/2/instances/{b}/shutdown"), json!({}));
    let log = wait_console(&s, b, "gantry-guest: power button, shutting down", 1);
    assert!(log.contains("reboot: Power down"), "{log}");

    for name in [a, b, r] {
        job_ok(&s, "DELETE", &format!("/2/instances/{name}"), json!({}));
    }
    assert_eq!(taps(&ns), Vec::<String>::new(), "no tap left");
    let route = ns.run("ip", &["route", "show", "10.99.1.5"]);
    assert!(route.stdout.is_empty(), "no route left: {route:?}");
}

#[test]
fn a_missing_bridge_or_a_kernel_outside_the_boot_dirs_is_refused_clearly() {
    let Some(kernel) = guest_kernel() else {
        return;
    };
    let ns = bridged("refuse");
    let run = short_tempdir("gm");
    let _cleanup = KillVms(run.path().to_path_buf());
    let s = start_in_netns(
        &ns.0,
        tempfile::tempdir().unwrap(),
        &[
            "--hypervisor",
            "kvm",
            "--os-search-path",
            "./os",
            "--boot-dir",
            kernel.to_str().unwrap(),
            "--run-dir",
            run.path().to_str().unwrap(),
        ],
    );
    let failed_create = |name: &str, nic: Value, hvparams: Value| {
        let body = json!({"__version__": 1, "mode": "create", "name": name, "name_check": false,
               "ip_check": false, "disk_template": "sharedfile", "disks": [{"size": 16}],
               "nics": [nic], "os_type": "gantry-demo+default", "hvparams": hvparams});
        let (_, id) = curl(&s, "POST", "/2/instances", ADMIN, Some(&body.to_string()));
        let job = wait_job(&s, id.as_u64().unwrap());
        assert_eq!(job["status"], "error", "{job}");
        job["opresult"].to_string()
    };
    let boot = json!({"kernel_path": kernel.join("vmlinuz"), "root_path": "/dev/vda"});
    let error = failed_create(
        "nobridge.example.com",
        json!({"mode": "bridged", "link": "nosuchbr"}),
        boot,
    );
    assert!(
        error.contains("bridge 'nosuchbr' does not exist"),
        "{error}"
    );
    // A write user cannot hand a host file to a guest as its kernel or initrd.
    let error = failed_create(
        "shadow.example.com",
        json!({"mode": "bridged", "link": BRIDGE}),
        json!({"kernel_path": kernel.join("vmlinuz"), "initrd_path": "/etc/shadow"}),
    );
    assert!(
        error.contains("initrd_path '/etc/shadow' is not a file in this host's boot directories"),
        "{error}"
    );
    let error = failed_create(
        "dotdot.example.com",
        json!({"mode": "bridged", "link": BRIDGE}),
        json!({"kernel_path": format!(
            "{}/{}etc/passwd",
            kernel.display(),
            "../".repeat(kernel.components().count())
        )}),
    );
    assert!(
        error.contains("is not a file in this host's boot directories"),
        "{error}"
    );
    // Routed NICs need an address, as in Ganeti.
    let body = json!({"__version__": 1, "mode": "create", "name": "noip.example.com",
           "name_check": false, "ip_check": false, "disk_template": "sharedfile",
           "disks": [{"size": 16}], "nics": [{"mode": "routed"}], "os_type": "gantry-demo+default"});
    let (_, id) = curl(&s, "POST", "/2/instances", ADMIN, Some(&body.to_string()));
    let job = wait_job(&s, id.as_u64().unwrap());
    assert!(
        job["opresult"]
            .to_string()
            .contains("Routed nic mode requires an ip address if not attached to a network"),
        "{job}"
    );
    assert_eq!(
        taps(&ns),
        Vec::<String>::new(),
        "no tap left by the failures"
    );
}
