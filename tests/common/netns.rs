//! Network namespaces the tests make and delete: a host of their own for a server, a bridge
//! for its guests, or a small network of several hosts.

use std::process::{Command, Output};

/// A network namespace with its loopback up; deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let ns = Netns(format!("gantry-{tag}-{}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &ns.0])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add: {out:?}");
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `tool` inside the namespace.
    pub fn run(&self, tool: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0, tool])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ip ARGS` inside the namespace, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let out = self.run("ip", args);
        assert!(out.status.success(), "ip {args:?} in {}: {out:?}", self.0);
    }

    /// One ping from inside; the first ones may wait for ARP.
    pub fn ping(&self, ip: &str) -> bool {
        (0..10).any(|_| {
            self.run("ping", &["-c", "1", "-W", "1", ip])
                .status
                .success()
        })
    }

    /// Connects `other` to the bridge `bridge` of this namespace with a veth pair: `device` in
    /// `other` (with `address`, e.g. `10.77.0.1/24`), `port` on the bridge.
    pub fn plug(&self, bridge: &str, port: &str, other: &Netns, device: &str, address: &str) {
        let moving = format!("{port}-x");
        self.ip(&["link", "add", port, "type", "veth", "peer", "name", &moving]);
        self.ip(&["link", "set", &moving, "netns", &other.0]);
        self.ip(&["link", "set", port, "master", bridge]);
        self.ip(&["link", "set", port, "up"]);
        other.ip(&["link", "set", &moving, "name", device]);
        other.ip(&["addr", "add", address, "dev", device]);
        other.ip(&["link", "set", device, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
