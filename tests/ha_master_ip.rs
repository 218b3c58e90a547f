//! The master IP moves with the leadership (issue 16's optional line, Ganeti's master IP):
//! three hosts as network namespaces on one bridge. The hub holds the bridge, etcd and the
//! client; hosts a and b each run a master whose `eth0` may carry the master IP. A client that
//! knows only the master IP follows the leader through a host's death, and a neighbour learns
//! the new holder's hardware address from its gratuitous ARP, not from a later probe.
#![cfg(feature = "etcd")]

mod common;
use common::etcd::EtcdCluster;
use common::have_etcd;
use common::netns::Netns;
use common::{have_tool, read_banner, until};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const VIP: &str = "10.77.0.50";

/// A master process, killed when dropped (a failing test leaves none behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A master on `host` (at `address`), which may carry the master IP on its `eth0`.
fn master(host: &Netns, name: &str, address: &str, etcd: &str, dir: &std::path::Path) -> Running {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &host.0])
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--no-ssl", "--bind", "0.0.0.0", "--port", "5080"])
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--store",
            "etcd",
            "--etcd-endpoints",
            etcd,
            "--etcd-ttl",
            "2",
        ])
        .args(["--master-name", name])
        .arg(format!("--advertise-url=http://{address}:5080"))
        .args([
            "--master-ip",
            &format!("{VIP}/24"),
            "--master-netdev",
            "eth0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    read_banner(&mut child);
    Running(child)
}

/// `/gantry/v1/leader` of the master at `address`, asked from the hub.
fn leader_seen_at(hub: &Netns, address: &str) -> Value {
    let out = hub.run(
        "curl",
        &[
            "-s",
            "-m",
            "3",
            &format!("http://{address}:5080/gantry/v1/leader"),
        ],
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn holds_vip(host: &Netns) -> bool {
    let out = host.run("ip", &["-o", "addr", "show", "dev", "eth0"]);
    String::from_utf8_lossy(&out.stdout).contains(&format!(" {VIP}/24 "))
}

fn mac(host: &Netns) -> String {
    let out = host.run("cat", &["/sys/class/net/eth0/address"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_master_ip_follows_the_leader() {
    if !have_etcd() || !have_tool("arping", "-V", "apt-get install iputils-arping") {
        return;
    }
    let hub = Netns::new("hub");
    hub.ip(&["link", "add", "br0", "type", "bridge"]);
    hub.ip(&["addr", "add", "10.77.0.254/24", "dev", "br0"]);
    hub.ip(&["link", "set", "br0", "up"]);
    let (a, b) = (Netns::new("host-a"), Netns::new("host-b"));
    hub.plug("br0", "pa", &a, "eth0", "10.77.0.1/24");
    hub.plug("br0", "pb", &b, "eth0", "10.77.0.2/24");
    let etcd = EtcdCluster::start_in(1, Some(&hub.0), "10.77.0.254");
    let endpoint = etcd.endpoints()[0].clone();
    let work = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // a leads and holds the master IP; a client that knows only that address reaches a.
    let on_a = master(&a, "a", "10.77.0.1", &endpoint, &dir("a"));
    until("a leads", Duration::from_secs(30), || {
        leader_seen_at(&hub, "10.77.0.1")["role"] == "leader"
    });
    until("a holds the master IP", Duration::from_secs(30), || {
        holds_vip(&a)
    });
    assert_eq!(leader_seen_at(&hub, VIP)["this"], "a");
    let mut on_b = master(&b, "b", "10.77.0.2", &endpoint, &dir("b"));
    until("b follows", Duration::from_secs(30), || {
        leader_seen_at(&hub, "10.77.0.2")["role"] == "follower"
    });
    assert!(!holds_vip(&b), "a follower does not hold the master IP");

    // Host a dies (its master killed, its link down): b leads, takes the master IP and
    // announces it, so the hub's neighbour entry names b's hardware address at once.
    drop(on_a);
    a.ip(&["link", "set", "eth0", "down"]);
    until("b holds the master IP", Duration::from_secs(30), || {
        holds_vip(&b)
    });
    let b_mac = mac(&b);
    until(
        "the hub learns b's address from the gratuitous ARP",
        Duration::from_secs(5),
        || {
            let out = hub.run("ip", &["neigh", "show", VIP]);
            String::from_utf8_lossy(&out.stdout).contains(&b_mac)
        },
    );
    let seen = leader_seen_at(&hub, VIP);
    assert_eq!(
        (&seen["this"], &seen["role"]),
        (&"b".into(), &"leader".into()),
        "{seen}"
    );

    // a's host comes back: the killed master left the address on eth0; a new master drops it
    // when it starts, before the link is up.
    assert!(holds_vip(&a), "the killed master's address is still on a");
    let on_a = master(&a, "a", "10.77.0.1", &endpoint, &dir("a"));
    until(
        "a drops the stale master IP",
        Duration::from_secs(30),
        || !holds_vip(&a),
    );
    a.ip(&["link", "set", "eth0", "up"]);
    until("a follows b", Duration::from_secs(30), || {
        leader_seen_at(&hub, "10.77.0.1")["leader"]["name"] == "b"
    });

    // b stops cleanly: it gives the address up, a leads and takes it.
    // SAFETY: a signal to a child this test started and still owns.
    unsafe { libc::kill(on_b.0.id() as i32, libc::SIGTERM) };
    let _ = on_b.0.wait();
    assert!(!holds_vip(&b), "a stopped master gives the master IP up");
    until(
        "a holds the master IP again",
        Duration::from_secs(30),
        || holds_vip(&a),
    );
    until("the master IP reaches a", Duration::from_secs(10), || {
        leader_seen_at(&hub, VIP)["this"] == "a"
    });

    // a's master dies on a live host: the address stays on a, which answers ARP for it, so b
    // leads but does not take it (two hosts would answer for one address)...
    let on_b = master(&b, "b", "10.77.0.2", &endpoint, &dir("b"));
    until("b follows a", Duration::from_secs(30), || {
        leader_seen_at(&hub, "10.77.0.2")["leader"]["name"] == "a"
    });
    drop(on_a);
    until("b leads", Duration::from_secs(30), || {
        leader_seen_at(&hub, "10.77.0.2")["role"] == "leader"
    });
    // Several of b's duplicate-address checks (one every 2 s).
    std::thread::sleep(Duration::from_secs(5));
    assert!(holds_vip(&a) && !holds_vip(&b), "b took an address a holds");
    // ...until a's `gantry master-ip drop` (systemd's ExecStopPost) removes it: b takes it.
    let vip = format!("{VIP}/24");
    // What systemd's ExecStopPost runs on a's host: its standard output.
    let drop_on_a = || {
        let args = [
            "master-ip",
            "drop",
            "--master-ip",
            &vip,
            "--master-netdev",
            "eth0",
        ];
        let out = a.run(env!("CARGO_BIN_EXE_gantry"), &args);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(drop_on_a().starts_with("dropped"));
    until("b takes the master IP", Duration::from_secs(30), || {
        holds_vip(&b)
    });
    until("the master IP reaches b", Duration::from_secs(10), || {
        leader_seen_at(&hub, VIP)["this"] == "b"
    });
    // Run again, as after a clean stop: nothing to drop, still a success.
    assert!(drop_on_a().contains("is not on eth0"));
    drop(on_b);
}
