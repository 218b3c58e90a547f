//! API tokens against the real binary (issue 17, "Tokens"): created with the user's password,
//! used with each of the three headers, listed without their secret, revoked, expired; a read
//! token cannot write; a token never outranks its user (rights cut when the user loses them)
//! nor outlives them (removed from the users file); only a digest is stored.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::Command;

const DELAY: &str = r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}"#;

fn basic(user_password: &str) -> String {
    use base64::Engine;
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

fn create(s: &Server, user: &str, body: Value) -> (u16, Value) {
    curl_headers(
        s,
        "POST",
        "/gantry/v1/tokens",
        &[basic(user).as_str()],
        Some(&body.to_string()),
    )
}

#[test]
fn tokens_work_with_each_header_and_never_outrank_or_outlive_their_user() {
    let s = start(&[]);
    let (code, made) = create(&s, "admin:admin", json!({"rights": "write", "ttl": 3600}));
    assert_eq!(code, 200, "{made}");
    let token = made["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("gt_"), "{made}");

    // Each header submits a job (write) and reads a query (read).
    for header in [
        format!("Authorization: Bearer {token}"),
        format!("X-AUTH-TOKEN: {token}"),
        format!("X-Api-Key: {token}"),
    ] {
        let (code, id) = curl_headers(&s, "POST", "/2/jobs", &[header.as_str()], Some(DELAY));
        assert_eq!(code, 200, "{header}: {id}");
        let (code, _) = curl_headers(
            &s,
            "GET",
            "/2/query/node?fields=name",
            &[header.as_str()],
            None,
        );
        assert_eq!(code, 200, "{header}");
    }
    // A wrong secret, an unknown id, garbage: 401.
    let forged = format!("{}x", &token[..token.len() - 1]);
    for bad in [forged.as_str(), "gt_000000000000_00", "nonsense"] {
        let (code, _) = curl_headers(
            &s,
            "POST",
            "/2/jobs",
            &[format!("X-Api-Key: {bad}").as_str()],
            Some(DELAY),
        );
        assert_eq!(code, 401, "{bad}");
    }

    // Listed for its user, without the secret; a token cannot manage tokens.
    let (code, list) = curl_headers(
        &s,
        "GET",
        "/gantry/v1/tokens",
        &[basic("admin:admin").as_str()],
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(
        !list.to_string().contains(&token[16..]),
        "no secret in {list}"
    );
    assert!(list[0]["last_used"].is_u64(), "{list}");
    let bearer = format!("Authorization: Bearer {token}");
    let (code, _) = curl_headers(
        &s,
        "POST",
        "/gantry/v1/tokens",
        &[bearer.as_str()],
        Some("{}"),
    );
    assert_eq!(code, 403);

    // A read token reads but cannot write; a read user cannot make a write token.
    let (_, read) = create(&s, "admin:admin", json!({"rights": "read"}));
    let read_header = format!("X-AUTH-TOKEN: {}", read["token"].as_str().unwrap());
    assert_eq!(
        curl_headers(
            &s,
            "GET",
            "/2/query/node?fields=name",
            &[read_header.as_str()],
            None
        )
        .0,
        200
    );
    assert_eq!(
        curl_headers(&s, "POST", "/2/jobs", &[read_header.as_str()], Some(DELAY)).0,
        403
    );
    assert_eq!(
        create(&s, "viewer:viewer", json!({"rights": "write"})).0,
        403
    );
    let (code, viewer) = create(&s, "viewer:viewer", json!({}));
    assert_eq!((code, &viewer["rights"]), (200, &json!("read")), "{viewer}");

    // Only a digest is stored: the secret is nowhere in the database files.
    let secret = token.rsplit('_').next().unwrap();
    for entry in walk(&s.dir.path().join("db")) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is in {}",
            entry.display()
        );
    }

    // The user loses write: the write token only reads. Then the user goes: the token too.
    let users = s.dir.path().join("users");
    std::fs::write(&users, "admin {cleartext}admin read\nviewer viewer read\n").unwrap();
    wait_until(|| curl_headers(&s, "POST", "/2/jobs", &[bearer.as_str()], Some(DELAY)).0 == 403);
    assert_eq!(
        curl_headers(
            &s,
            "GET",
            "/2/query/node?fields=name",
            &[bearer.as_str()],
            None
        )
        .0,
        200
    );
    std::fs::write(&users, "viewer viewer read\n").unwrap();
    wait_until(|| {
        curl_headers(
            &s,
            "GET",
            "/2/query/node?fields=name",
            &[bearer.as_str()],
            None,
        )
        .0 == 401
    });
    std::fs::write(&users, "admin {cleartext}admin write\nviewer viewer read\n").unwrap();
    wait_until(|| curl_headers(&s, "POST", "/2/jobs", &[bearer.as_str()], Some(DELAY)).0 == 200);

    // Revoked: refused at once, and after a restart.
    let id = made["id"].as_str().unwrap();
    let (code, _) = curl_headers(
        &s,
        "DELETE",
        &format!("/gantry/v1/tokens/{id}"),
        &[basic("viewer:viewer").as_str()],
        None,
    );
    assert_eq!(code, 404, "another user's token is not theirs to revoke");
    let (code, _) = curl_headers(
        &s,
        "DELETE",
        &format!("/gantry/v1/tokens/{id}"),
        &[basic("admin:admin").as_str()],
        None,
    );
    assert_eq!(code, 200);
    assert_eq!(
        curl_headers(&s, "POST", "/2/jobs", &[bearer.as_str()], Some(DELAY)).0,
        401
    );
    let s = restart_after_kill_9(s, &[]);
    assert_eq!(
        curl_headers(&s, "POST", "/2/jobs", &[bearer.as_str()], Some(DELAY)).0,
        401
    );
    // The read token, created before the restart, still works: tokens are durable.
    let (code, list) = curl_headers(
        &s,
        "GET",
        "/gantry/v1/tokens",
        &[basic("admin:admin").as_str()],
        None,
    );
    assert_eq!((code, list.as_array().unwrap().len()), (200, 1), "{list}");
}

#[test]
fn tokens_expire_and_bad_requests_are_refused_clearly() {
    let s = start(&[]);
    let (code, made) = create(&s, "admin:admin", json!({"ttl": 3}));
    assert_eq!(code, 200, "{made}");
    let header = format!("X-Api-Key: {}", made["token"].as_str().unwrap());
    assert_eq!(
        curl_headers(&s, "POST", "/2/jobs", &[header.as_str()], Some(DELAY)).0,
        200
    );
    wait_until(|| curl_headers(&s, "POST", "/2/jobs", &[header.as_str()], Some(DELAY)).0 == 401);

    for (body, text) in [
        (json!({"ttl": 0}), "Invalid ttl"),
        (json!({"ttl": "soon"}), "Invalid ttl"),
        (json!({"rights": "root"}), "Invalid rights"),
    ] {
        let (code, answer) = create(&s, "admin:admin", body);
        assert_eq!(code, 400, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(text),
            "{answer}"
        );
    }
    assert_eq!(
        curl_headers(&s, "GET", "/gantry/v1/tokens", &[], None).0,
        401
    );
}

fn wait_until(mut ok: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("condition not reached in 10 s");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn gantry_users_token_create_asks_the_running_server() {
    let s = start(&[]);
    let cli = |args: &[&str], data: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["users", "token", "create"])
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, token, err) = cli(&["admin", "--ttl", "600"], s.dir.path());
    assert!(ok && token.starts_with("gt_"), "{token} {err}");
    let header = format!("X-AUTH-TOKEN: {token}");
    assert_eq!(
        curl_headers(&s, "POST", "/2/jobs", &[header.as_str()], Some(DELAY)).0,
        200
    );
    let (ok, _, err) = cli(&["viewer", "--write"], s.dir.path());
    assert!(!ok && err.contains("viewer may not write"), "{err}");
    let (ok, _, err) = cli(&["nobody"], s.dir.path());
    assert!(!ok && err.contains("no user 'nobody'"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = cli(&["admin"], empty.path());
    assert!(!ok && err.contains("no gantry server answers"), "{err}");
}
