//! Test helpers: start the real `gantry` binary on a free port with a temp data dir, talk to it
//! with curl like a user would. Servers speak HTTPS with their self-signed certificate unless a
//! test passes `--no-ssl`.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

pub mod etcd;
pub mod netns;

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub struct Server {
    pub child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// The network namespace the server runs in (curl runs there too); None: this one.
    pub netns: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(dir, extra)
}

pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Server {
    let users = dir.path().join("users");
    if !users.exists() {
        std::fs::write(&users, "admin {cleartext}admin write\nviewer viewer read\n").unwrap();
    }
    let data = dir.path().to_path_buf();
    let (child, base) = spawn_gantry(&data, extra, Stdio::null());
    Server {
        child,
        base,
        dir,
        netns: None,
    }
}

/// Starts `gantry serve` inside network namespace `netns` (through `ip netns exec`, which execs,
/// so the child is gantry itself).
pub fn start_in_netns(netns: &str, dir: tempfile::TempDir, extra: &[&str]) -> Server {
    std::fs::write(
        dir.path().join("users"),
        "admin {cleartext}admin write\nviewer viewer read\n",
    )
    .unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .args(["serve", "--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry in a network namespace");
    let base = read_banner(&mut child);
    Server {
        child,
        base,
        dir,
        netns: Some(netns.to_string()),
    }
}

/// Starts `gantry serve` on a free port with `data` as its data dir and waits for its banner;
/// answers the process and its base URL.
pub fn spawn_gantry(
    data: &std::path::Path,
    extra: &[&str],
    stderr: impl Into<Stdio>,
) -> (Child, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gantry"));
    command
        .args(["serve", "--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(data)
        .args(extra);
    // GANTRY_TEST_STORE=etcd: the same tests on the etcd store, one master per server (its
    // prefix named after its data dir, so a restart on the same dir finds its cluster).
    let on_etcd = !extra.contains(&"--store") && etcd::shared_endpoints().is_some();
    if let Some(endpoints) = etcd::shared_endpoints().filter(|_| on_etcd) {
        command
            .args([
                "--store",
                "etcd",
                "--etcd-ttl",
                "2",
                "--etcd-endpoints",
                endpoints,
            ])
            .arg(format!("--etcd-prefix=/test{}", data.display()));
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn gantry");
    let base = read_banner(&mut child);
    if on_etcd {
        // A follower until it has won its election (at once: it is alone).
        let leads = (0..200).any(|_| {
            // A user of start_in's users file: with --require-authentication, who leads is not
            // told to strangers.
            let (_, answer) =
                curl_url(&base, "GET", "/gantry/v1/leader", Some("admin:admin"), None);
            let leads = answer["role"] == "leader" && answer["store"] == "etcd";
            if !leads {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            leads
        });
        if !leads {
            // Not left behind: it would go on waiting for a leadership (and its etcd) forever.
            let _ = child.kill();
            let _ = child.wait();
            panic!("{base} did not lead on etcd");
        }
    }
    (child, base)
}

/// The base URL from a starting server's first line ("... listening on URL").
pub fn read_banner(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("http"), "unexpected banner: {line}");
    base
}

/// Runs curl; returns (HTTP status, parsed JSON body).
pub fn curl(
    server: &Server,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (code, _, body) = curl_full(server, method, path, user, body);
    (code, body)
}

/// curl with request headers (`"Name: value"`) of the caller's choosing; answers (status, body).
pub fn curl_headers(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[&str],
    body: Option<&str>,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("{}{path}", s.base));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Like `curl`, plus the response headers as one lower-cased string.
pub fn curl_full(
    server: &Server,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&str>,
) -> (u16, String, Value) {
    curl_base(
        &server.base,
        server.netns.as_deref(),
        method,
        path,
        user,
        body,
    )
}

/// `curl` to a server by URL (one this test did not start, or one another thread holds).
pub fn curl_url(
    base: &str,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let (code, _, body) = curl_base(base, None, method, path, user, body);
    (code, body)
}

fn curl_base(
    base: &str,
    netns: Option<&str>,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: Option<&str>,
) -> (u16, String, Value) {
    let headers = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns, "curl"]);
            cmd
        }
        None => Command::new("curl"),
    };
    // -k: the server's certificate is self-signed; the CA bundle variables would not matter then.
    cmd.args(["-s", "-k", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    cmd.arg("-D").arg(headers.path());
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    cmd.arg(format!("{base}{path}"));
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        std::fs::read_to_string(headers.path())
            .unwrap_or_default()
            .to_lowercase(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// POSTs `body` to `path` as admin, which must answer a job id, and answers the finished job.
pub fn post_job(s: &Server, path: &str, body: &Value) -> Value {
    let (code, id) = curl(
        s,
        "POST",
        path,
        Some("admin:admin"),
        Some(&body.to_string()),
    );
    assert_eq!(code, 200, "{path}: {id}");
    wait_job(s, id.as_u64().unwrap())
}

/// Polls a job until it is finalized.
pub fn wait_job(server: &Server, id: u64) -> Value {
    for _ in 0..400 {
        let (_, job) = curl(server, "GET", &format!("/2/jobs/{id}"), None, None);
        if ["success", "error", "canceled"].contains(&job["status"].as_str().unwrap_or("")) {
            return job;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("job {id} did not finish");
}

/// Submits an OP_TEST_DELAY job through POST /2/jobs; `extra` adds opcode parameters.
pub fn delay_job(s: &Server, duration: f64, extra: serde_json::Value) -> u64 {
    let mut op = json!({"OP_ID": "OP_TEST_DELAY", "duration": duration});
    op.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (code, id) = curl(
        s,
        "POST",
        "/2/jobs",
        Some("admin:admin"),
        Some(&json!({"ops": [op]}).to_string()),
    );
    assert_eq!(code, 200, "{id}");
    id.as_u64().unwrap()
}

/// SIGKILLs the server and hands back its data dir, for a restart on the same data.
pub fn kill_9(mut s: Server) -> tempfile::TempDir {
    let _ = s.child.kill();
    let _ = s.child.wait();
    std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap())
}

/// SIGKILLs the server and starts a new one on the same data dir.
pub fn restart_after_kill_9(s: Server, extra: &[&str]) -> Server {
    start_in(kill_9(s), extra)
}

/// Whether `program` runs (`program version_arg` succeeds); with GANTRY_REQUIRE_QEMU=1 (CI,
/// which installs every tool) a missing one fails the test instead of skipping it.
pub fn have_tool(program: &str, version_arg: &str, install: &str) -> bool {
    let found = Command::new(program)
        .arg(version_arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("GANTRY_REQUIRE_QEMU").as_deref() != Ok("1"),
            "{program} is required (GANTRY_REQUIRE_QEMU=1) but not installed: {install}"
        );
        eprintln!("SKIPPED: {program} not installed; {install}");
    }
    found
}

/// Whether the etcd binary is here (Debian's etcd-server).
pub fn have_etcd() -> bool {
    have_tool("etcd", "--version", "apt-get install etcd-server")
}

/// Whether QEMU is installed.
pub fn have_qemu() -> bool {
    have_tool("qemu-system-x86_64", "--version", "run .ci/install-qemu")
}

/// Live (not zombie) QEMU processes whose command line mentions `run_dir`.
pub fn qemu_pids(run_dir: &std::path::Path) -> Vec<u32> {
    let needle = run_dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let text = String::from_utf8_lossy(&cmd).to_string();
            (text.contains("qemu-system") && text.contains(&needle) && !stat.contains(") Z "))
                .then_some(pid)
        })
        .collect()
}

/// SIGKILLs every QEMU of a run dir when dropped, so a failing test leaves no VM behind.
pub struct KillVms(pub std::path::PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        for pid in qemu_pids(&self.0) {
            kill_pid(pid);
        }
    }
}

pub fn kill_pid(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

/// Submits a job and answers it finished, asserting success.
pub fn job_ok(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (code, id) = curl(
        s,
        method,
        path,
        Some("admin:admin"),
        Some(&body.to_string()),
    );
    assert_eq!(code, 200, "{method} {path}: {id}");
    let job = wait_job(s, id.as_u64().unwrap());
    assert_eq!(job["status"], "success", "{method} {path}: {job}");
    job
}

/// A temp dir with a short path under /tmp: QEMU's unix sockets must stay under 108 bytes.
pub fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// The flags for a kvm cluster with the repository's OS definitions and the given run dir.
/// The OS path is relative, as the README has it (tests run from the package root).
pub fn kvm_args(run_dir: &std::path::Path) -> Vec<String> {
    [
        "--hypervisor",
        "kvm",
        // Two local nodes on this one host, to migrate between.
        "--nodes",
        "node1.example.com,node2.example.com",
        "--os-search-path",
        "./os",
        // No bridges on a test host: the networked tests are in qemu_network.rs.
        "--user-networking",
        "--run-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(std::iter::once(run_dir.display().to_string()))
    .collect()
}

pub fn start_kvm(run_dir: &std::path::Path) -> Server {
    let args = kvm_args(run_dir);
    start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Holds `per_addr` idle TCP connections from each of `addrs` source addresses (127.0.0.2…)
/// to `target`, reconnecting whenever the server closes one, until `stop` is set. Answers how
/// many connections it opened in all.
pub async fn idle_flood(
    target: std::net::SocketAddr,
    addrs: u8,
    per_addr: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncReadExt;
    let mut tasks = tokio::task::JoinSet::new();
    for a in 0..addrs {
        for _ in 0..per_addr {
            let stop = stop.clone();
            tasks.spawn(async move {
                let source = std::net::SocketAddr::from(([127, 0, 0, 2 + a], 0));
                let mut opened = 0;
                while !stop.load(Ordering::Relaxed) {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(source).unwrap();
                    let Ok(mut conn) = socket.connect(target).await else {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    };
                    opened += 1;
                    let mut buf = [0u8; 64];
                    // Never send a byte; wait for the server to give up on us, or for the end.
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(20),
                        conn.read(&mut buf),
                    )
                    .await;
                }
                opened
            });
        }
    }
    let mut total = 0;
    while let Some(n) = tasks.join_next().await {
        total += n.unwrap_or(0);
    }
    total
}

/// Runs `client` while `idle_flood` holds `addrs` x `per_addr` connections to `target`;
/// answers what `client` answered and how many connections the flood opened.
pub fn under_idle_flood<T>(
    target: std::net::SocketAddr,
    addrs: u8,
    per_addr: usize,
    client: impl FnOnce() -> T,
) -> (T, usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let flood = runtime.spawn(idle_flood(target, addrs, per_addr, stop.clone()));
    std::thread::sleep(std::time::Duration::from_secs(2));
    let answer = client();
    stop.store(true, Ordering::Relaxed);
    let opened = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(30), flood)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0)
    });
    (answer, opened)
}

/// Whether this test can run here: root (namespaces, taps), QEMU, and the guest kernel. With
/// GANTRY_REQUIRE_QEMU=1 (CI) a missing piece fails the test instead of skipping it.
pub fn guest_kernel() -> Option<std::path::PathBuf> {
    if !have_qemu() {
        return None;
    }
    let required = std::env::var("GANTRY_REQUIRE_QEMU").as_deref() == Ok("1");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root {
        assert!(!required, "this test needs root (network namespaces, taps)");
        eprintln!("SKIPPED: needs root");
        return None;
    }
    // Built once per target dir: a Debian cloud kernel and a busybox initrd (one test at a time).
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-kernel");
    if !dir.join("initrd.img").exists() {
        let out = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/os/gantry-demo/make-kernel"
        ))
        .arg(&dir)
        .output()
        .unwrap();
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!required, "make-kernel failed: {why}");
            eprintln!("SKIPPED: make-kernel failed: {why}");
            return None;
        }
    }
    Some(dir)
}

/// As the README does it: the cluster's kvm hvparams boot the demo OS with the kernel and initrd
/// of `guest_kernel()`.
pub fn boot_the_demo_os(s: &Server, kernel: &std::path::Path) {
    job_ok(
        s,
        "PUT",
        "/2/modify",
        json!({"hvparams": {"kvm": {"kernel_path": kernel.join("vmlinuz"),
               "initrd_path": kernel.join("initrd.img"), "root_path": "/dev/vda"}}}),
    );
}

/// What the guest printed on its serial console: kept next to its disks, across restarts.
pub fn console(s: &Server, name: &str) -> String {
    let log = s.dir.path().join("storage").join(name).join("console.log");
    std::fs::read_to_string(log).unwrap_or_default()
}

/// Waits until the guest's console shows `text` `times` times; answers the console.
pub fn wait_console(s: &Server, name: &str, text: &str, times: usize) -> String {
    for _ in 0..600 {
        let log = console(s, name);
        if log.matches(text).count() >= times {
            return log;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!(
        "{name}: '{text}' not seen {times} time(s) on the console:\n{}",
        console(s, name)
    );
}

/// Polls `check` every 50 ms until it holds; fails the test naming `what` after `timeout`.
pub fn until(what: &str, timeout: std::time::Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The `/metrics` page as text (read with the test users file's admin).
pub fn metrics_text(s: &Server) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-u",
            "admin:admin",
            &format!("{}/metrics", s.base),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
