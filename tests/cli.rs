//! The command-line client against a real gantry over HTTPS: what an admin types, with the exit
//! codes and JSON a script relies on.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::{Command, Output};

struct Cli<'a> {
    server: &'a Server,
    ca: String,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .args(["--ca-cert", &self.ca])
            .env("GANTRY_URL", &self.server.base)
            .env("GANTRY_USER", "admin")
            .env("GANTRY_PASSWORD", "admin")
            .output()
            .unwrap()
    }

    /// Runs and expects exit code `code`; answers stdout.
    fn expect(&self, code: i32, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "gantry {args:?}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.expect(0, args)).expect("JSON output")
    }
}

#[test]
fn an_admin_runs_an_instance_through_its_life_from_the_shell() {
    let s = start(&[]);
    let cli = Cli {
        server: &s,
        ca: s.dir.path().join("rapi.pem").display().to_string(),
    };
    let add = [
        "instance",
        "add",
        "web1.example.com",
        "-t",
        "drbd",
        "-o",
        "debootstrap+default",
        "--disk",
        "0:size=1G",
        "--net",
        "0",
        "-n",
        "node1.example.com:node2.example.com",
        "-B",
        "memory=256",
        "--no-name-check",
    ];
    // A dry run checks and creates nothing.
    let mut dry = add.to_vec();
    dry.push("--dry-run");
    let log = cli.expect(0, &dry);
    assert!(log.contains("dry-run mode requested"), "{log}");
    assert_eq!(cli.json(&["instance", "list", "--json"]), json!([]));

    // For real, with the job's log printed as it runs.
    let log = cli.expect(0, &add);
    assert!(log.contains("* creating instance disks..."), "{log}");
    let listed = cli.json(&["instance", "list", "-o", "name,status,pnode", "--json"]);
    assert_eq!(
        listed,
        json!([{"name": "web1.example.com", "status": "running", "pnode": "node1.example.com"}])
    );
    let table = cli.expect(0, &["instance", "list", "-o", "name,pnode", "--no-headers"]);
    assert_eq!(table.trim(), "web1.example.com  node1.example.com");

    cli.expect(0, &["instance", "reboot", "web1.example.com"]);
    cli.expect(0, &["instance", "migrate", "web1.example.com"]);
    let inst = cli.json(&["instance", "info", "web1.example.com", "--json"]);
    assert_eq!(inst["pnode"], "node2.example.com", "migrated: {inst}");

    // Jobs: the list, and one job in detail.
    let jobs = cli.json(&["job", "list", "--json"]);
    assert!(jobs.as_array().unwrap().len() >= 4, "{jobs}");
    let first = cli.json(&["job", "info", "1", "--json"]);
    assert_eq!(first["status"], "success");

    // A held job is canceled from the shell; following it then reports "canceled" (exit 5).
    let (code, _) = curl(
        &s,
        "POST",
        "/2/filters",
        Some("admin:admin"),
        Some(r#"{"action": "PAUSE"}"#),
    );
    assert_eq!(code, 200);
    let id = cli.expect(0, &["instance", "reboot", "web1.example.com", "--submit"]);
    let id = id.trim();
    assert!(
        id.parse::<u64>().is_ok(),
        "--submit prints the job id: {id}"
    );
    cli.expect(0, &["job", "cancel", id]);
    cli.expect(5, &["job", "watch", id]);
    let (_, rules) = curl(&s, "GET", "/2/filters", None, None);
    let uuid = rules[0]["uuid"].as_str().unwrap();
    curl(
        &s,
        "DELETE",
        &format!("/2/filters/{uuid}"),
        Some("admin:admin"),
        None,
    );

    // Failures have their own exit codes: a failed job 4, a refused request 3, no server 1.
    cli.expect(4, &["instance", "startup", "nosuch.example.com"]);
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["job", "list", "--ca-cert", &cli.ca])
        .env("GANTRY_URL", &s.base)
        .env("GANTRY_USER", "admin")
        .env("GANTRY_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HTTP 401"));
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["job", "list", "--url", "https://127.0.0.1:1", "--insecure"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Connection refused"));
    // Without a trusted certificate the message says how to trust it.
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["job", "list", "--url", &s.base])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca-cert"));

    cli.expect(0, &["instance", "remove", "web1.example.com"]);
    assert_eq!(cli.json(&["instance", "list", "--json"]), json!([]));
}

/// `gantry job watch` in a terminal (a tmux pane): the log lines appear while the job still
/// runs, then its final status.
#[test]
fn job_watch_shows_the_log_live_in_a_terminal() {
    let s = start(&[]);
    let ca = s.dir.path().join("rapi.pem").display().to_string();
    // Three iterations of half a second, one log line each.
    let id = delay_job(&s, 0.5, json!({"repeat": 3}));
    let session = format!("gantry-watch-{}", std::process::id());
    let command = format!(
        "GANTRY_URL={} GANTRY_USER=admin GANTRY_PASSWORD=admin {} job watch {id} --ca-cert {ca}; \
         echo EXIT=$?; sleep 60",
        s.base,
        env!("CARGO_BIN_EXE_gantry")
    );
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .output()
            .expect("tmux runs (apt-get install tmux)")
    };
    assert!(
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            "160",
            "-y",
            "40",
            &command
        ])
        .status
        .success()
    );
    let screen = || {
        String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", &session]).stdout).into_owned()
    };
    let mut seen_live = false;
    let mut last = String::new();
    for _ in 0..400 {
        last = screen();
        let (_, job) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
        if last.contains("Test delay iteration 0/2") && job["status"] == "running" {
            seen_live = true;
        }
        if last.contains("EXIT=") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    tmux(&["kill-session", "-t", &session]);
    assert!(seen_live, "no log line while the job ran:\n{last}");
    assert!(last.contains("Test delay iteration 2/2"), "{last}");
    assert!(
        last.contains(&format!("Job {id}: success")) && last.contains("EXIT=0"),
        "{last}"
    );
}

/// `gantry login` shows the certificate's fingerprint, saves the server (0600, no password),
/// and pins the certificate: later commands need no URL or CA, and a server presenting another
/// certificate under that URL is refused with the reason.
#[test]
fn login_trusts_on_first_use_and_notices_a_changed_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let s = start(&[]);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("gantry.json");
    let gantry = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .env("GANTRY_CONFIG", &config)
            .env("GANTRY_PASSWORD", "admin")
            .env_remove("GANTRY_URL")
            .output()
            .unwrap()
    };
    let expected = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(s.dir.path().join("rapi.pem"))
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&expected.stdout);
    let expected = expected.trim().rsplit('=').next().unwrap().to_string();

    // Without a terminal the fingerprint is shown and nothing is saved unless --yes.
    let out = gantry(&["login", &s.base, "--user", "admin"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&expected));
    assert!(!config.exists());
    let out = gantry(&["login", &s.base, "--user", "admin", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("SHA256:{expected}")));
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(
        saved.contains("\"admin\"") && !saved.contains("password"),
        "{saved}"
    );

    // From now on: no URL, no user, no CA on the command line.
    let out = gantry(&["job", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // Another server (another certificate) behind the saved URL is refused.
    let other = start(&[]);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&s.base, &other.base);
    std::fs::write(&config, text).unwrap();
    let out = gantry(&["job", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("certificate changed") && err.contains("gantry login"),
        "{err}"
    );
}

#[test]
fn groups_networks_filters_nodes_and_the_cluster_from_the_shell() {
    let s = start(&[]);
    let cli = Cli {
        server: &s,
        ca: s.dir.path().join("rapi.pem").display().to_string(),
    };
    cli.expect(0, &["group", "add", "rack2"]);
    cli.expect(0, &["group", "rename", "rack2", "rack3"]);
    let groups = cli.json(&["group", "list", "-o", "name", "--json"]);
    assert!(
        groups
            .as_array()
            .unwrap()
            .contains(&json!({"name": "rack3"})),
        "{groups}"
    );
    cli.expect(0, &["group", "remove", "rack3"]);

    cli.expect(
        0,
        &[
            "network",
            "add",
            "net1",
            "--network",
            "192.0.2.0/28",
            "--gateway",
            "192.0.2.1",
        ],
    );
    let nets = cli.json(&["network", "list", "-o", "name,network", "--json"]);
    assert_eq!(nets, json!([{"name": "net1", "network": "192.0.2.0/28"}]));
    cli.expect(0, &["network", "remove", "net1"]);

    let uuid = cli.expect(
        0,
        &[
            "filter",
            "add",
            "--action",
            "REJECT",
            "--predicate",
            r#"["opcode", ["=", "OP_ID", "OP_TEST_DELAY"]]"#,
        ],
    );
    let rules = cli.json(&["filter", "list", "--json"]);
    assert_eq!(rules[0]["uuid"], uuid.trim(), "{rules}");
    cli.expect(0, &["filter", "delete", uuid.trim()]);
    assert_eq!(cli.json(&["filter", "list", "--json"]), json!([]));

    // /2/info is served from a cache per configuration: read it before and after a change.
    assert_eq!(
        cli.json(&["cluster", "info", "--json"])["max_running_jobs"],
        20
    );
    cli.expect(0, &["cluster", "modify", "max_running_jobs=30"]);
    assert_eq!(
        cli.json(&["cluster", "info", "--json"])["max_running_jobs"],
        30
    );
    cli.expect(
        0,
        &[
            "cluster",
            "tags",
            "add",
            "env:test",
            "--reason",
            "trying tags",
        ],
    );
    assert_eq!(cli.expect(0, &["cluster", "tags"]).trim(), "env:test");

    cli.expect(
        0,
        &["node", "modify", "node3.example.com", "--drained", "yes"],
    );
    let node = cli.json(&["node", "info", "node3.example.com", "--json"]);
    assert_eq!(node["drained"], true, "{node}");
    cli.expect(0, &["node", "role", "node3.example.com", "regular"]);

    cli.expect(
        0,
        &[
            "instance",
            "add",
            "db1.example.com",
            "-t",
            "drbd",
            "-o",
            "debootstrap+default",
            "--disk",
            "0:size=512M",
            "-n",
            "node1.example.com:node2.example.com",
            "--no-name-check",
        ],
    );
    cli.expect(
        0,
        &["instance", "modify", "db1.example.com", "-B", "memory=512"],
    );
    cli.expect(
        0,
        &["instance", "grow-disk", "db1.example.com", "0", "512M"],
    );
    cli.expect(0, &["instance", "failover", "db1.example.com"]);
    // Ganeti renames stopped instances only.
    cli.expect(0, &["instance", "shutdown", "db1.example.com"]);
    cli.expect(
        0,
        &[
            "instance",
            "rename",
            "db1.example.com",
            "db2.example.com",
            "--no-name-check",
        ],
    );
    let inst = cli.json(&["instance", "info", "db2.example.com", "--json"]);
    assert_eq!(inst["pnode"], "node2.example.com", "{inst}");
    assert_eq!(inst["disk.sizes"], json!([1024]), "{inst}");
    assert_eq!(inst["beparams"]["maxmem"], 512, "{inst}");
}

/// Credentials from a netrc file (`$NETRC`, as `~/.netrc`) for the server's host.
#[test]
fn credentials_come_from_netrc() {
    let s = start(&[]);
    let ca = s.dir.path().join("rapi.pem").display().to_string();
    let netrc = s.dir.path().join("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login admin password admin\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args([
            "cluster",
            "tags",
            "add",
            "from-netrc",
            "--url",
            &s.base,
            "--ca-cert",
            &ca,
        ])
        .env("NETRC", &netrc)
        .env_remove("GANTRY_USER")
        .env_remove("GANTRY_PASSWORD")
        .env("GANTRY_CONFIG", s.dir.path().join("no-login.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, tags) = curl(&s, "GET", "/2/tags", None, None);
    assert_eq!(tags, json!(["from-netrc"]));
}

/// `gantry lease`, `gantry pool` and `gantry token`: gantry's own resources from the shell.
#[test]
fn leases_pools_and_tokens_from_the_shell() {
    let s = start(&[]);
    let cli = Cli {
        server: &s,
        ca: s.dir.path().join("rapi.pem").display().to_string(),
    };
    // A pool from a template file; it fills by itself.
    let template = s.dir.path().join("ci.json");
    std::fs::write(
        &template,
        json!({"__version__": 1, "os": "debootstrap+default", "disk_template": "plain",
               "disks": [{"size": 1024}], "nics": []})
        .to_string(),
    )
    .unwrap();
    let path = template.display().to_string();
    cli.expect(
        0,
        &[
            "pool",
            "create",
            "ci",
            "--size",
            "1",
            "--template",
            &path,
            "--lifetime",
            "2h",
        ],
    );
    let mut pools = Value::Null;
    for _ in 0..200 {
        pools = cli.json(&["pool", "list", "--json"]);
        if pools[0]["ready"] == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(pools[0]["ready"], 1, "{pools}");
    let out = cli.expect(0, &["pool", "checkout", "ci"]);
    let host = out.lines().last().unwrap().trim().to_string();
    assert!(host.starts_with("ci-"), "{out}");
    // The checkout's lease, listed, extended by an hour (2h lifetime + 1h).
    let leases = cli.json(&["lease", "list", "--json", "-o", "name,pool,start,end"]);
    assert_eq!(leases[0]["name"], json!(host), "{leases}");
    let span = |l: &Value| l["end"].as_f64().unwrap() - l["start"].as_f64().unwrap();
    assert!((span(&leases[0]) - 7200.0).abs() < 1.0, "{leases}");
    cli.expect(0, &["lease", "extend", &host, "--by", "1h"]);
    let leases = cli.json(&["lease", "list", "--json", "-o", "name,start,end"]);
    assert!((span(&leases[0]) - 10800.0).abs() < 1.0, "{leases}");
    // A lease of its own with a reservation; a bad one is a usage error (exit 2).
    cli.expect(
        0,
        &[
            "lease",
            "create",
            "night",
            "--for",
            "8h",
            "--reserve",
            "memory=1G,vcpus=1",
        ],
    );
    let night = cli.json(&["lease", "show", "night", "--json"]);
    assert_eq!(night["reservation"]["memory"], 1024, "{night}");
    cli.expect(2, &["lease", "create", "bad", "--for", "soon"]);
    cli.expect(
        2,
        &[
            "lease",
            "create",
            "bad",
            "--for",
            "1h",
            "--reserve",
            "ram=1G",
        ],
    );
    cli.expect(0, &["lease", "remove", "night"]);
    // Returning the instance removes it.
    cli.expect(0, &["pool", "return", &host]);
    let mut gone = false;
    for _ in 0..200 {
        if curl(&s, "GET", &format!("/2/instances/{host}"), None, None).0 == 404 {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gone, "{host} was not removed");
    cli.expect(0, &["pool", "resize", "ci", "0"]);
    assert_eq!(cli.json(&["pool", "show", "ci", "--json"])["size"], 0);
    // Tokens: created (printed once), listed without the secret, usable, revoked.
    let token = cli.expect(0, &["token", "create", "--ttl", "1h", "--read"]);
    let token = token.trim();
    assert!(token.starts_with("gt_"), "{token}");
    let list = cli.json(&["token", "list", "--json"]);
    assert_eq!(list[0]["rights"], "read", "{list}");
    assert!(!list.to_string().contains(token));
    let id = list[0]["id"].as_str().unwrap().to_string();
    let with_token = |t: &str| {
        Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {t}")])
            .arg(format!("{}/metrics", s.base))
            .output()
            .unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&with_token(token).stdout), "200");
    cli.expect(0, &["token", "revoke", &id]);
    assert_eq!(cli.json(&["token", "list", "--json"]), json!([]));
    assert_eq!(String::from_utf8_lossy(&with_token(token).stdout), "401");
    cli.expect(0, &["pool", "remove", "ci"]);
}
