//! What an operator reads when something is wrong at start-up or on the command line: the path
//! or port and what to do, printed once; nothing created before the port is bound; logs without
//! colour codes in files, or as JSON lines.

mod common;
use common::*;
use std::process::{Command, Output, Stdio};

fn gantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_second_server_on_the_same_data_dir_names_the_first_one() {
    let s = start(&["--no-ssl"]);
    let data = s.dir.path().to_str().unwrap().to_string();
    let out = gantry(&["serve", "--no-ssl", "--port", "0", "--data-dir", &data]);
    assert!(!out.status.success());
    let text = stderr(&out);
    let pid = s.child.id().to_string();
    assert!(
        text.contains("another gantry process")
            && text.contains(&format!("(pid {pid})"))
            && text.contains(&data),
        "{text}"
    );
    assert_eq!(
        text.matches("another gantry process").count(),
        1,
        "said once: {text}"
    );
    assert!(!text.contains("WouldBlock"), "{text}");
}

#[test]
fn a_busy_port_is_reported_once_with_the_fix_and_nothing_is_created() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new-data");
    let out = gantry(&[
        "serve",
        "--port",
        &port,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("--port"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("in use")).count(),
        1,
        "{text}"
    );
    assert!(!data.exists(), "no cluster or certificate before the bind");
}

#[test]
fn a_data_dir_that_is_a_file_is_named() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let out = gantry(&["serve", "--no-ssl", "--port", "0", "--data-dir", path]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains(path) && text.contains("not a directory"),
        "{text}"
    );
}

#[test]
fn queue_commands_refuse_folders_that_are_not_data_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let out = gantry(&["queue", "drain", "--data-dir", path]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a gantry data dir"),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no flag file left in a stranger's folder"
    );
    let out = gantry(&["queue", "info", "--data-dir", "/nonexistent"]);
    assert!(!out.status.success());
}

#[test]
fn users_hash_prints_a_line_without_trailing_space() {
    let out = gantry(&["users", "hash", "jack", "secret"]);
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(line.starts_with("jack {HA1}"), "{line:?}");
    assert_eq!(line.trim_end_matches('\n'), line.trim_end(), "{line:?}");
}

#[test]
fn logs_have_no_colour_codes_in_files_and_can_be_json() {
    for (format, json) in [("text", false), ("json", true)] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("data/users"),
            "admin {cleartext}admin write\n",
        )
        .unwrap();
        let (mut child, base) = spawn_gantry(
            &dir.path().join("data"),
            &["--no-ssl", "--log-format", format],
            std::fs::File::create(&log).unwrap(),
        );
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-u", "admin:admin"])
            .arg(format!("{base}/2/info"))
            .status()
            .unwrap();
        assert!(status.success());
        // One job, to see its state changes logged.
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-u", "admin:admin", "-X", "POST"])
            .args(["-H", "Content-Type: application/json"])
            .args([
                "-d",
                r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}"#,
            ])
            .arg(format!("{base}/2/jobs"))
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..200 {
            let out = Command::new("curl")
                .args(["-s", &format!("{base}/2/jobs/1")])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("\"success\"") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        // The job's last line is written as it ends, which its answer does not wait for.
        for _ in 0..200 {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("job finished")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.is_empty());
        assert!(
            !text.contains('\u{1b}'),
            "ANSI codes in a log file: {text:?}"
        );
        if json {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
                assert!(v.get("level").is_some(), "{line}");
            }
            // One line per state change of the job, each naming it.
            for state in ["job queued", "job running", "job finished"] {
                let line = text
                    .lines()
                    .find(|l| l.contains(&format!("\"message\":\"{state}\"")))
                    .unwrap_or_else(|| panic!("no '{state}' line in {text}"));
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["fields"]["job"], "1", "{line}");
            }
            assert!(text.contains("\"opcode\":\"OP_TEST_DELAY\""), "{text}");
            assert!(text.contains("\"seconds\":"), "{text}");
        }
    }
}

/// `gantry users add` appends an {HA1} line the running server accepts within a second, with
/// comma-separated options, and refuses a user that is there already.
#[test]
fn users_add_appends_a_digest_line_the_server_accepts() {
    use std::io::Write;
    let s = start(&["--no-ssl"]);
    let users = s.dir.path().join("users");
    let add = |name: &str, password: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(["users", "add", name, "--write", "--read", "--file"])
            .arg(&users)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A refused add may exit before reading its input: a broken pipe is no failure here.
        let _ = writeln!(child.stdin.take().unwrap(), "{password}");
        child.wait_with_output().unwrap()
    };
    assert!(add("jack", "s3cret pass").status.success());
    let text = std::fs::read_to_string(&users).unwrap();
    let line = text.lines().last().unwrap();
    assert!(
        line.starts_with("jack {HA1}") && line.ends_with(" write,read"),
        "{line}"
    );
    assert!(
        !text.contains("s3cret"),
        "no clear-text password in the file"
    );
    let again = add("jack", "other");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("there already"));
    // The server reads the file again within a second.
    let mut code = 0;
    for _ in 0..40 {
        (code, _) = curl(
            &s,
            "PUT",
            "/2/tags?tag=by-jack",
            Some("jack:s3cret pass"),
            None,
        );
        if code == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(code, 200, "the new write user may submit");
}
