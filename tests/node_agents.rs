//! Two node agents on 127.0.0.1 (different ports and run dirs, one shared storage dir) standing
//! in for two hosts: nodes join by address, an instance runs on one, live-migrates to the other
//! (the destination QEMU runs, the source is gone), and agents refuse strangers. Skipped without
//! QEMU unless GANTRY_REQUIRE_QEMU=1.

mod common;
use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const ADMIN: Option<&str> = Some("admin:admin");
const NAME: &str = "vm1.example.com";

/// The tests of this file run one at a time: the flood test measures answers within a deadline,
/// and a live migration next to it would take the CPU it measures.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Agent {
    child: Child,
    url: String,
    run_dir: PathBuf,
    _dir: tempfile::TempDir,
    storage: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(KillVms(self.run_dir.clone()));
    }
}

/// Starts `gantry agent` with the given cluster files (copied into its own dir).
fn agent(cluster_files: &Path, storage: &Path) -> Agent {
    let dir = short_tempdir("ga");
    for f in ["cluster.pem", "cluster.key", "cluster.secret"] {
        std::fs::copy(cluster_files.join(f), dir.path().join(f)).unwrap();
    }
    let run_dir = dir.path().join("r");
    let (child, url) = spawn_agent(dir.path(), storage, &run_dir, "127.0.0.1:0");
    Agent {
        child,
        url,
        run_dir,
        _dir: dir,
        storage: storage.to_path_buf(),
    }
}

fn spawn_agent(dir: &Path, storage: &Path, run_dir: &Path, listen: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["agent", "--listen", listen, "--cluster-dir"])
        .arg(dir)
        .arg("--storage-dir")
        .arg(storage)
        .arg("--run-dir")
        .arg(run_dir)
        .args([
            "--os-search-path",
            concat!(env!("CARGO_MANIFEST_DIR"), "/os"),
            "--user-networking",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(url.starts_with("https://"), "agent banner: {line}");
    (child, url)
}

impl Agent {
    /// SIGKILLs the agent (its VMs keep running) and starts it again on the same port.
    fn kill_9_and_restart(&mut self) {
        self.kill_9();
        self.restart();
    }

    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn restart(&mut self) {
        let listen = self.url.trim_start_matches("https://").to_string();
        let (child, url) = spawn_agent(self._dir.path(), &self.storage, &self.run_dir, &listen);
        self.child = child;
        assert_eq!(url, self.url);
    }
}

fn job(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (code, id) = curl(s, method, path, ADMIN, Some(&body.to_string()));
    assert_eq!(code, 200, "{method} {path}: {id}");
    wait_job(s, id.as_u64().unwrap())
}

fn ok(s: &Server, method: &str, path: &str, body: Value) {
    job_ok(s, method, path, body);
}

fn add_node(s: &Server, name: &str, url: &str) -> Value {
    job(
        s,
        "POST",
        "/2/jobs",
        json!({"ops": [{"OP_ID": "OP_NODE_ADD", "node_name": name, "primary_ip": "127.0.0.1",
                        "ndparams": {"agent_address": url}}]}),
    )
}

#[test]
fn live_migration_between_two_node_agents() {
    let _serial = one_at_a_time();
    if !have_qemu() {
        return;
    }
    let run = short_tempdir("gr");
    let master = start_kvm(run.path());
    let data = master.dir.path().to_path_buf();
    let storage = data.join("storage");
    let (mut a, b) = (agent(&data, &storage), agent(&data, &storage));

    assert_eq!(
        add_node(&master, "hosta.example.com", &a.url)["status"],
        "success"
    );
    assert_eq!(
        add_node(&master, "hostb.example.com", &b.url)["status"],
        "success"
    );
    let (_, node) = curl(&master, "GET", "/2/nodes/hosta.example.com", None, None);
    assert!(
        node["mtotal"].as_u64().unwrap() > 0,
        "the agent reports its host: {node}"
    );

    ok(
        &master,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": NAME,
        "disk_template": "sharedfile", "disks": [{"size": 32}], "nics": [{}],
        "os_type": "gantry-demo+default", "pnode": "hosta.example.com"}),
    );
    let on_a = qemu_pids(&a.run_dir);
    assert_eq!(on_a.len(), 1, "the VM runs under agent A");
    assert!(qemu_pids(&b.run_dir).is_empty());

    ok(
        &master,
        "PUT",
        &format!("/2/instances/{NAME}/migrate"),
        json!({"mode": "live", "target_node": "hostb.example.com"}),
    );
    let (_, inst) = curl(&master, "GET", &format!("/2/instances/{NAME}"), None, None);
    assert_eq!(inst["pnode"], "hostb.example.com");
    assert_eq!(inst["oper_state"], true, "the destination QEMU runs");
    assert_eq!(
        qemu_pids(&b.run_dir).len(),
        1,
        "the VM now runs under agent B"
    );
    assert!(qemu_pids(&a.run_dir).is_empty(), "the source QEMU is gone");
    // Every call to an agent is timed, by agent and call.
    let metrics = std::process::Command::new("curl")
        .args(["-s", "-k", "-u", "admin:admin"])
        .arg(format!("{}/metrics", master.base))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).to_string();
    for call in ["start", "send_migration"] {
        let line = format!(
            "gantry_agent_call_seconds_count{{agent=\"{}\",call=\"{call}\"}}",
            a.url
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let (_, console) = curl(
        &master,
        "GET",
        &format!("/2/instances/{NAME}/console"),
        ADMIN,
        None,
    );
    assert_eq!(console["host"], "hostb.example.com");

    // And back, non-live this time.
    ok(
        &master,
        "PUT",
        &format!("/2/instances/{NAME}/migrate"),
        json!({"mode": "non-live", "target_node": "hosta.example.com"}),
    );
    let source = qemu_pids(&a.run_dir);
    assert_eq!(source.len(), 1);
    assert!(qemu_pids(&b.run_dir).is_empty());

    // The agent dies and comes back: it re-adopts the VM, which ran on meanwhile.
    a.kill_9_and_restart();
    assert_eq!(qemu_pids(&a.run_dir), source, "the VM survived its agent");
    let (_, inst) = curl(&master, "GET", &format!("/2/instances/{NAME}"), None, None);
    assert_eq!(
        inst["oper_state"], true,
        "reported running through the new agent"
    );

    // While its agent is down the instance is ERROR_nodedown, not "crashed", and a job that
    // needs the node says which agent did not answer and why.
    a.kill_9();
    let (_, inst) = curl(&master, "GET", &format!("/2/instances/{NAME}"), None, None);
    assert_eq!(inst["status"], "ERROR_nodedown", "{inst}");
    assert_eq!(
        inst["oper_state"],
        Value::Null,
        "no live data from a node that is down"
    );
    let failed = job(
        &master,
        "POST",
        &format!("/2/instances/{NAME}/reboot"),
        json!({}),
    );
    assert_eq!(failed["status"], "error", "{failed}");
    let why = failed["opresult"].to_string().to_lowercase();
    assert!(
        why.contains("connection refused") && why.contains(&a.url.to_lowercase()),
        "{why}"
    );
    assert_eq!(
        qemu_pids(&a.run_dir),
        source,
        "the VM ran on without its agent"
    );
    a.restart();
    let (_, inst) = curl(&master, "GET", &format!("/2/instances/{NAME}"), None, None);
    assert_eq!(inst["status"], "running", "{inst}");

    // A migration that cannot happen (agent B is gone) fails cleanly: the source runs on.
    let b_run_dir = b.run_dir.clone();
    drop(b);
    let failed = job(
        &master,
        "PUT",
        &format!("/2/instances/{NAME}/migrate"),
        json!({"mode": "live", "target_node": "hostb.example.com"}),
    );
    assert_eq!(failed["status"], "error", "{failed}");
    assert_eq!(qemu_pids(&a.run_dir), source, "the source VM is untouched");
    assert!(qemu_pids(&b_run_dir).is_empty(), "no half-started target");
    let (_, inst) = curl(&master, "GET", &format!("/2/instances/{NAME}"), None, None);
    assert_eq!(inst["pnode"], "hosta.example.com");
    assert_eq!(inst["oper_state"], true);

    ok(
        &master,
        "DELETE",
        &format!("/2/instances/{NAME}"),
        json!({"shutdown_timeout": 1}),
    );
    assert!(qemu_pids(&a.run_dir).is_empty());
    assert!(!storage.join(NAME).exists(), "disks removed");
}

#[test]
fn agents_and_master_refuse_strangers() {
    let _serial = one_at_a_time();
    if !have_qemu() {
        return;
    }
    let run = short_tempdir("gr");
    let master = start_kvm(run.path());
    let data = master.dir.path().to_path_buf();

    // An agent with another cluster's secret: the master's requests are refused.
    let wrong_secret = tempfile::tempdir().unwrap();
    for f in ["cluster.pem", "cluster.key"] {
        std::fs::copy(data.join(f), wrong_secret.path().join(f)).unwrap();
    }
    std::fs::write(
        wrong_secret.path().join("cluster.secret"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let stranger = agent(wrong_secret.path(), &data.join("storage"));
    let refused = add_node(&master, "hostx.example.com", &stranger.url);
    assert_eq!(refused["status"], "error");
    assert_eq!(
        refused["opresult"][0][1][1], "environment_error",
        "{refused}"
    );
    assert!(
        refused["opresult"]
            .to_string()
            .contains("refused the cluster secret"),
        "{refused}"
    );

    // An agent with another certificate: the master does not talk to it at all.
    let other = tempfile::tempdir().unwrap();
    let other_master = tempfile::tempdir().unwrap();
    let _ = gantry::http::tls::cluster_credentials(other_master.path(), true).unwrap();
    for f in ["cluster.pem", "cluster.key"] {
        std::fs::copy(other_master.path().join(f), other.path().join(f)).unwrap();
    }
    std::fs::copy(
        data.join("cluster.secret"),
        other.path().join("cluster.secret"),
    )
    .unwrap();
    let impostor = agent(other.path(), &data.join("storage"));
    let refused = add_node(&master, "hosty.example.com", &impostor.url);
    assert_eq!(refused["status"], "error", "{refused}");
    let (code, _) = curl(&master, "GET", "/2/nodes/hosty.example.com", None, None);
    assert_eq!(code, 404, "a refused node does not join");

    // Requests without the secret never reach the backend.
    let out = Command::new("curl")
        .args([
            "-sk",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{\"call\": \"node_info\", \"node\": \"x\"}",
        ])
        .arg(format!("{}/agent/v2/call", stranger.url))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refused"),
        "{answer}"
    );
}

/// An agent with fresh cluster credentials; answers it, the cluster secret, and the dirs to keep.
fn lone_agent() -> (Agent, String, [tempfile::TempDir; 2]) {
    let master = tempfile::tempdir().unwrap();
    let creds = gantry::http::tls::cluster_credentials(master.path(), true).unwrap();
    let storage = tempfile::tempdir().unwrap();
    let a = agent(master.path(), storage.path());
    (a, creds.secret, [master, storage])
}

/// Posts a signed agent call; answers (HTTP status, body).
fn post_signed(url: &str, headers: &(String, String, String), body: &str) -> (String, Value) {
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "2",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", "Content-Type: application/json"])
        .args(["-H", &format!("x-gantry-timestamp: {}", headers.0)])
        .args(["-H", &format!("x-gantry-nonce: {}", headers.1)])
        .args(["-H", &format!("x-gantry-signature: {}", headers.2)])
        .args(["--data-binary", body])
        .arg(format!("{url}/agent/v2/call"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        code.to_string(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn agents_refuse_replayed_requests() {
    let _serial = one_at_a_time();
    if !have_qemu() {
        return;
    }
    let (a, secret, _dirs) = lone_agent();
    let body = r#"{"call": "node_info", "node": "nosuch.example.com"}"#;
    let signed = gantry::backends::protocol::auth::sign(&secret, body.as_bytes());
    let (code, first) = post_signed(&a.url, &signed, body);
    assert_eq!(code, "200", "a fresh signed request is served: {first}");
    let (code, again) = post_signed(&a.url, &signed, body);
    assert_eq!(code, "401", "{again}");
    assert!(again.to_string().contains("replayed"), "{again}");
    // The same signature on another body is refused too.
    let other = r#"{"call": "powercycle", "node": "nosuch.example.com"}"#;
    let (code, forged) = post_signed(&a.url, &signed, other);
    assert_eq!(code, "401", "{forged}");
}

#[test]
fn idle_connections_cannot_starve_an_agent() {
    let _serial = one_at_a_time();
    if !have_qemu() {
        return;
    }
    let (a, secret, _dirs) = lone_agent();
    let target: std::net::SocketAddr = a.url.trim_start_matches("https://").parse().unwrap();
    let body = r#"{"call": "node_info", "node": "nosuch.example.com"}"#;
    let tries = 20;
    // 400 half-open connections from 8 addresses: more than the agent's 256 slots.
    let (answered, opened) = under_idle_flood(target, 8, 50, || {
        (0..tries)
            .filter(|_| {
                let signed = gantry::backends::protocol::auth::sign(&secret, body.as_bytes());
                post_signed(&a.url, &signed, body).0 == "200"
            })
            .count()
    });
    assert!(opened >= 400, "the flood opened only {opened} connections");
    assert!(
        answered * 100 >= tries * 95,
        "the agent answered {answered} of {tries} signed requests under the flood"
    );
}
