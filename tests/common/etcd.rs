//! A 3-member etcd cluster on loopback ports with temp dirs (Debian's `etcd-server`), started
//! and stopped by the tests, and a TCP proxy a test can cut to partition one client from it.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

/// A port for an etcd member to listen on, free when picked and below the kernel's ephemeral
/// range: a port from that range (what `bind(:0)` gives) could be taken before etcd binds it
/// by any outgoing connection, say a member dialling a peer that is not up yet, which once
/// left a test's cluster unhealthy. Never the same port twice in one test process.
fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, span) = (ephemeral / 3, ephemeral - ephemeral / 3);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let random = RandomState::new();
    (0u64..)
        .map(|n| low + (random.hash_one(n) % u64::from(span)) as u16)
        .find(|port| !given.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .inspect(|port| given.push(*port))
        .expect("a free port below the ephemeral range")
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    peer_url: String,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

pub struct EtcdCluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
    initial: String,
    /// The network namespace the members run in (none: this test's own).
    netns: Option<String>,
}

/// Where a member's messages go (beside its data dir, appended across restarts): shown when a
/// cluster does not become healthy.
fn log_file(dir: &std::path::Path) -> Stdio {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("log"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// `tool`, run inside `netns` when there is one.
fn in_netns(netns: Option<&str>, tool: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, tool]);
            command
        }
        None => Command::new(tool),
    }
}

impl EtcdCluster {
    pub fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_in(n, None, "127.0.0.1")
    }

    /// `n` members listening on `ip` inside network namespace `netns`.
    pub fn start_in(n: usize, netns: Option<&str>, ip: &str) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://{ip}:{}", free_port()),
                peer_url: format!("http://{ip}:{}", free_port()),
                dir: dir.path().join(format!("m{i}")),
                child: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            _dir: dir,
            initial,
            netns: netns.map(str::to_string),
        };
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster.wait_healthy();
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// (Re)starts member `i` on its data dir.
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial.clone();
        let netns = self.netns.clone();
        let m = &mut self.members[i];
        let state = if m.dir.exists() { "existing" } else { "new" };
        let mut command = in_netns(netns.as_deref(), "etcd");
        command
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.dir)
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "gantry-test"])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log_file(&m.dir));
        // Killed with the thread that started it, even when the test process dies by a signal.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("etcd starts (apt-get install etcd-server)");
        m.child = Some(child);
    }

    /// SIGKILLs member `i`.
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every running member answers healthy.
    pub fn wait_healthy(&self) {
        for _ in 0..200 {
            let ok = self.members.iter().filter(|m| m.child.is_some()).all(|m| {
                in_netns(self.netns.as_deref(), "curl")
                    .args(["-sf", &format!("{}/health", m.client_url)])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("true"))
            });
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for m in &self.members {
            let log = std::fs::read_to_string(m.dir.with_extension("log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!("=== etcd {} ({})", m.name, m.client_url);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        panic!("etcd cluster did not become healthy");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }
}

/// A TCP proxy to one address; `cut(true)` drops every connection through it and refuses new
/// ones (a partition), `cut(false)` heals it.
pub struct Proxy {
    pub url: String,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (cut, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() {
                    continue;
                }
                let mut cut = rx.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { url, cut }
    }

    pub fn cut(&self, on: bool) {
        let _ = self.cut.send(on);
    }
}

/// `GANTRY_TEST_STORE=etcd`: one etcd member for every server this test process starts (each
/// under a prefix of its own), started on first use by a thread that lives as long as the
/// process (the member dies with it). None with the default store.
pub fn shared_endpoints() -> Option<&'static str> {
    static ENDPOINTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if std::env::var("GANTRY_TEST_STORE").as_deref() != Ok("etcd") {
        return None;
    }
    let endpoints = ENDPOINTS.get_or_init(|| {
        // Without etcd the start fails saying what to install.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = EtcdCluster::start(1);
            tx.send(cluster.endpoints().join(",")).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap()
    });
    Some(endpoints)
}
