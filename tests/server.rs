//! The daemon around the resources: authentication rules, TLS certificates, connection limits,
//! the header-read timeout, body limits and graceful shutdown.

mod common;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn ha1_line(user: &str, password: &str, options: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["users", "hash", user, password, "--options", options])
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(line.starts_with(&format!("{user} {{HA1}}")), "{line}");
    line
}

fn with_users(content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), content).unwrap();
    dir
}

const WRITE_PATH: &str = "/2/redistribute-config";

#[test]
fn users_file_forms_and_access_rules() {
    let users = format!(
        "# comment line\n\
         \n\
         plain secret write\n\
         upper {{CLEARTEXT}}secret2 write\n\
         mixed {{ClearText}}secret3\n\
         {}\n\
         {}\n\
         broken {{HA1}}\n\
         reader reading\n\
         viewer {{cleartext}}v read\n",
        ha1_line("hashed", "pw1", "write"),
        ha1_line("lowerha", "pw2", "write").replace("{HA1}", "{ha1}"),
    );
    let s = start_in(with_users(&users), &[]);
    let put = |user: &str| curl_full(&s, "PUT", WRITE_PATH, Some(user), None);

    for user in ["plain:secret", "upper:secret2", "hashed:pw1", "lowerha:pw2"] {
        assert_eq!(put(user).0, 200, "{user} may write");
    }
    for user in ["plain:wrong", "nobody:secret", "hashed:HA1", "broken:"] {
        let (code, headers, body) = put(user);
        assert_eq!(code, 401, "{user}");
        assert!(
            headers.contains("www-authenticate: basic realm=\"ganeti remote api\""),
            "{headers}"
        );
        assert_eq!(body["code"], 401);
    }
    let (code, _, body) = put("mixed:secret3");
    assert_eq!(code, 403, "a user without 'write' cannot write");
    assert_eq!(body["code"], 403);
    assert_eq!(put("reader:reading").0, 403);

    // Reads are open to everybody; queries need the 'read' or 'write' option, as upstream.
    assert_eq!(curl(&s, "GET", "/2/info", None, None).0, 200);
    let query = |user| curl(&s, "GET", "/2/query/node?fields=name", user, None).0;
    assert_eq!(query(None), 401);
    assert_eq!(query(Some("viewer:v")), 200);
    assert_eq!(query(Some("plain:secret")), 200);
    assert_eq!(query(Some("mixed:secret3")), 403, "no options, no query");
}

#[test]
fn require_authentication_closes_reads() {
    let s = start_in(
        with_users("admin admin write\nviewer viewer\n"),
        &["--require-authentication"],
    );
    let (code, headers, _) = curl_full(&s, "GET", "/2/info", None, None);
    assert_eq!(code, 401);
    assert!(headers.contains("www-authenticate: basic"));
    assert_eq!(
        curl(&s, "GET", "/2/info", Some("viewer:viewer"), None).0,
        200
    );
    assert_eq!(curl(&s, "GET", "/2/info", Some("viewer:nope"), None).0, 401);
    assert_eq!(
        curl(&s, "PUT", WRITE_PATH, Some("viewer:viewer"), None).0,
        403
    );
}

#[test]
fn a_missing_users_file_means_no_users() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent-users");
    let s = start_in(dir, &["--users", missing.to_str().unwrap()]);
    assert_eq!(curl(&s, "GET", "/2/info", None, None).0, 200);
    assert_eq!(
        curl(&s, "PUT", WRITE_PATH, Some("admin:admin"), None).0,
        401
    );
}

fn certificate_fingerprint(base: &str) -> String {
    let hostport = base.trim_start_matches("https://");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {hostport} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        text.contains("Fingerprint="),
        "no certificate from {base}: {text}"
    );
    text
}

#[test]
fn tls_certificate_is_generated_once_and_can_be_given() {
    let s = start(&[]);
    assert!(s.base.starts_with("https://"));
    let first = certificate_fingerprint(&s.base);
    assert!(s.dir.path().join("rapi.pem").exists());
    let s = restart_after_kill_9(s, &[]);
    assert_eq!(
        certificate_fingerprint(&s.base),
        first,
        "the certificate is kept in the data dir"
    );

    // An explicit certificate: curl verifies it against itself as the CA.
    let other = tempfile::tempdir().unwrap();
    let (cert, key) = (other.path().join("c.pem"), other.path().join("k.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let given = start(&[
        "--ssl-cert",
        cert.to_str().unwrap(),
        "--ssl-key",
        key.to_str().unwrap(),
    ]);
    let out = Command::new("curl")
        .args(["-s", "--fail", "--cacert"])
        .arg(&cert)
        .arg(format!("{}/version", given.base))
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    let plain = start(&["--no-ssl"]);
    assert!(plain.base.starts_with("http://"));
    assert_eq!(curl(&plain, "GET", "/version", None, None), (200, json!(2)));
}

fn connect(base: &str) -> TcpStream {
    let addr = base.split("://").nth(1).unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection; answers how long that took.
fn time_until_closed(mut stream: TcpStream) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => continue,
        }
    }
}

#[test]
fn slow_or_excess_connections_cannot_pin_the_server() {
    let s = start(&[
        "--no-ssl",
        "--header-timeout",
        "1",
        "--max-connections",
        "2",
        "--max-connections-per-ip",
        "2",
    ]);
    // A half-sent request is dropped after the header timeout.
    let mut slow = connect(&s.base);
    slow.write_all(b"GET /2/info HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let waited = time_until_closed(slow);
    assert!(
        waited < Duration::from_secs(8),
        "half-sent headers were dropped (after {waited:?})"
    );

    // With both of this address's slots held, a third connection is closed at once; the slots
    // free up afterwards. (Idle connections from many addresses: tests/security.rs.)
    let a = connect(&s.base);
    let b = connect(&s.base);
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect(&s.base);
    let _ = third.write_all(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = String::new();
    let _ = third.read_to_string(&mut answer);
    assert!(
        answer.is_empty(),
        "an excess connection got an answer: {answer}"
    );
    drop((a, b));
    let served = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        curl(&s, "GET", "/version", None, None).0 == 200
    });
    assert!(served, "the server serves again once connections close");
}

#[test]
fn oversized_bodies_are_refused_chunked_or_not() {
    let s = start(&[]);
    let big = tempfile::NamedTempFile::new().unwrap();
    let mut body = String::from("{\"pad\": \"");
    body.push_str(&"x".repeat(5 * 1024 * 1024));
    body.push_str("\"}");
    std::fs::write(big.path(), body).unwrap();
    for chunked in [false, true] {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-k", "-o", "-", "-w", "\n%{http_code}", "-X", "PUT"])
            .args(["-u", "admin:admin", "-H", "Content-Type: application/json"]);
        if chunked {
            cmd.args(["-H", "Transfer-Encoding: chunked"]);
        }
        let out = cmd
            .arg("--data-binary")
            .arg(format!("@{}", big.path().display()))
            .arg(format!("{}/2/modify", s.base))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "413", "chunked={chunked}: {body}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["code"], 413);
    }
    // The refused requests created no job.
    assert_eq!(curl(&s, "GET", "/2/jobs", None, None).1, json!([]));
}

#[test]
fn sigterm_lets_running_jobs_finish() {
    let mut s = start(&[]);
    let id = delay_job(&s, 1.0, json!({}));
    let running = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        curl(&s, "GET", &format!("/2/jobs/{id}"), None, None).1["status"] == "running"
    });
    assert!(running);
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = s.child.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let s = start_in(dir, &[]);
    let (_, job) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
    assert_eq!(
        job["status"], "success",
        "the running job finished before exit: {job}"
    );
}

fn queue_cli(dir: &std::path::Path, action: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["queue", action, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn drain_flag_set_while_running_and_kept_across_restarts() {
    let s = start(&[]);
    let dir = s.dir.path().to_path_buf();
    assert!(queue_cli(&dir, "info").contains("is unset"));
    queue_cli(&dir, "drain");
    let body = r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}"#;
    let (code, answer) = curl(&s, "POST", "/2/jobs", Some("admin:admin"), Some(body));
    assert_eq!(code, 503);
    assert_eq!(answer["message"], "Job queue is drained, cannot submit");

    let s = restart_after_kill_9(s, &[]);
    assert!(queue_cli(&dir, "info").contains("is set"));
    let (code, _) = curl(&s, "POST", "/2/jobs", Some("admin:admin"), Some(body));
    assert_eq!(code, 503, "the flag survives a restart");
    queue_cli(&dir, "undrain");
    let (code, id) = curl(&s, "POST", "/2/jobs", Some("admin:admin"), Some(body));
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(&s, id.as_u64().unwrap())["status"], "success");
}
