//! Ganeti's own tools against the real binary over HTTPS: the official RAPI client
//! (python3-ganeti-rapi) and the htools (ganeti-htools). `.ci/run` installs both.

mod common;
use common::*;
use serde_json::json;
use std::process::{Command, Output};

const ADMIN: Option<&str> = Some("admin:admin");

fn host_port(s: &Server) -> (String, String) {
    let hostport = s.base.trim_start_matches("https://");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    (host.to_string(), port.to_string())
}

/// Runs a tool without the CA-bundle variables some machines set: they would make a client
/// verify the self-signed certificate it was told not to verify.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap_or_else(|e| panic!("{program} is not installed ({e}); .ci/run installs it"))
}

/// Asserts success; answers stdout and stderr together (htools print tables to either).
fn output_ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed: {}\n{text}",
        out.status
    );
    text
}

#[test]
fn official_python_client_manages_an_instance() {
    let s = start(&[]);
    assert!(s.base.starts_with("https://"), "HTTPS is the default");
    let (host, port) = host_port(&s);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/official_client.py"
    );
    let out = run(
        "/usr/bin/python3",
        &[script, &host, &port, "admin", "admin"],
    );
    let text = output_ok(&out, "official client");
    assert!(text.contains("all steps passed"), "{text}");
    // What the client did is visible to everyone else too.
    let (_, jobs) = curl(&s, "GET", "/2/jobs?bulk=1", None, None);
    let ops: Vec<String> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["ops"][0]["OP_ID"].as_str().unwrap_or("").to_string())
        .collect();
    for op in [
        "OP_INSTANCE_CREATE",
        "OP_INSTANCE_REBOOT",
        "OP_INSTANCE_MIGRATE",
        "OP_INSTANCE_REMOVE",
    ] {
        assert!(ops.iter().any(|o| o == op), "{op} missing from {ops:?}");
    }
}

fn create(s: &Server, name: &str, template: &str, memory: u64) {
    let body = json!({"__version__": 1, "mode": "create", "name": name, "disk_template": template,
                      "disks": [{"size": 2048}], "nics": [{}], "os_type": "debootstrap+default",
                      "beparams": {"memory": memory}});
    let (code, id) = curl(s, "POST", "/2/instances", ADMIN, Some(&body.to_string()));
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(s, id.as_u64().unwrap())["status"], "success");
}

#[test]
fn htools_read_the_cluster() {
    let s = start(&[]);
    create(&s, "db1.example.com", "drbd", 1024);
    create(&s, "db2.example.com", "drbd", 1024);
    create(&s, "web1.example.com", "plain", 512);
    let (host, port) = host_port(&s);
    let master = format!("https://admin:admin@{host}:{port}");

    let hinfo = output_ok(&run("hinfo", &["-p", "-m", &master]), "hinfo");
    assert!(
        hinfo.contains("Loaded 3 nodes, 3 instances, 1 node group"),
        "{hinfo}"
    );
    for node in ["node1", "node2", "node3"] {
        assert!(hinfo.contains(node), "hinfo lists {node}: {hinfo}");
    }

    let hspace = output_ok(
        &run("hspace", &["--machine-readable", "-m", &master]),
        "hspace",
    );
    for line in [
        "HTS_CLUSTER_NODES=3",
        "HTS_INI_INST_CNT=3",
        // 1024 + 1024 + 512 MiB of instance memory.
        "HTS_INI_MEM_INST=2560",
    ] {
        assert!(hspace.lines().any(|l| l == line), "{line} in {hspace}");
    }

    let hcheck = output_ok(
        &run("hcheck", &["--machine-readable", "-m", &master]),
        "hcheck",
    );
    assert!(
        hcheck.contains("HCHECK_INIT_CLUSTER_OFFLINE_PRI=0"),
        "{hcheck}"
    );

    let hbal = output_ok(&run("hbal", &["-m", &master]), "hbal");
    assert!(hbal.contains("Loaded 3 nodes, 3 instances"), "{hbal}");
}
