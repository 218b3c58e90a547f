//! A property-driven fuzzer against the real server (fixed seed, bounded counts, so CI runs the
//! same requests every time): raw HTTP requests with odd paths, query strings, headers and JSON
//! bodies, and every opcode of the catalog with values of the wrong type, extreme and
//! non-finite numbers, huge strings and lists. The server must never panic, never answer 500,
//! and every job must end.

mod common;
use common::spawn_gantry;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// Kills the server when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server under test, with its stderr kept to look for panics afterwards.
fn start_logged(dir: &tempfile::TempDir) -> (Killed, String) {
    std::fs::write(
        dir.path().join("users"),
        "admin {cleartext}admin write\nviewer viewer read\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let users = dir.path().join("users");
    let extra = [
        "--no-ssl",
        "--users",
        users.to_str().unwrap(),
        "--queue-limit",
        "100000",
    ];
    let (child, base) = spawn_gantry(&dir.path().join("data"), &extra, log);
    (Killed(child), base)
}

/// Posts `{"ops": [...]}` to /2/jobs as the write user over a raw connection.
fn post_jobs_raw(addr: &str, body: &str) -> u16 {
    let req = format!(
        "POST /2/jobs HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Basic YWRtaW46YWRtaW4=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send_raw(addr, req.as_bytes())
}

/// Sends raw bytes as one request; answers the status code (0: no valid HTTP answer).
fn send_raw(addr: &str, request: &[u8]) -> u16 {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return 0;
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A refused body (413) may close the connection before all of it is sent: read anyway.
    let _ = conn.write_all(request);
    let mut answer = vec![];
    let _ = conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn json_value() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(1e308),
            Just(-1e308),
            Just(1e20),
            Just(-0.5),
            Just(1e-300),
            any::<f64>()
        ]
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number,
        "[a-zA-Z0-9:/._+ -]{0,20}".prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
        Just(json!("x".repeat(200_000))),
        Just(json!("../../etc/passwd")),
        Just(json!("/etc")),
        Just(json!("52:54:00:12:34:56,romfile=/etc/shadow")),
        Just(json!("300.1.1.1")),
        Just(json!("1e20G")),
        Just(json!(vec![0; 5000])),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every opcode id and its parameter names, from the table in the repository.
fn catalog() -> Vec<(String, Vec<String>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/opcodes/opcodes.json");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    table["opcodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            let params = op["params"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            (op["id"].as_str().unwrap().to_string(), params)
        })
        .collect()
}

/// An opcode with some of its parameters (and one made-up one) set to random values.
fn opcode(catalog: Vec<(String, Vec<String>)>) -> impl Strategy<Value = Value> {
    (
        0..catalog.len(),
        prop::collection::vec(json_value(), 12),
        any::<u16>(),
    )
        .prop_map(move |(n, values, mask)| {
            let (id, params) = &catalog[n];
            let mut op = serde_json::Map::new();
            op.insert("OP_ID".into(), json!(id));
            for (i, (name, value)) in params.iter().zip(values.iter().cycle()).enumerate() {
                if mask & (1 << (i % 16)) != 0 {
                    op.insert(name.clone(), value.clone());
                }
            }
            // A job must end within the test: real delays are kept short (extreme ones stay, to
            // be refused).
            if id == "OP_TEST_DELAY"
                && let Some(d) = op.get("duration").and_then(Value::as_f64)
                && d > 0.05
                && d < 1e9
            {
                op.insert("duration".into(), json!(0.05));
            }
            Value::Object(op)
        })
}

const PATHS: &[&str] = &[
    "/2/info",
    "/2/jobs",
    "/2/jobs/{}",
    "/2/jobs/{}/wait",
    "/2/instances",
    "/2/instances/{}",
    "/2/instances/{}/modify",
    "/2/instances/{}/reboot",
    "/2/instances/{}/disk/{}/grow",
    "/2/instances/{}/export",
    "/2/nodes/{}",
    "/2/nodes/{}/role",
    "/2/nodes/{}/evacuate",
    "/2/nodes/{}/storage",
    "/2/groups",
    "/2/groups/{}/modify",
    "/2/networks",
    "/2/networks/{}/connect",
    "/2/query/{}",
    "/2/query/{}/fields",
    "/2/filters",
    "/2/filters/{}",
    "/2/modify",
    "/2/tags",
    "/2/os",
    "/{}",
];

fn request() -> impl Strategy<Value = Vec<u8>> {
    let segment = prop_oneof![
        "[a-z0-9.-]{1,12}",
        "[%a-zA-Z0-9.+_~-]{0,16}",
        "\\PC{0,6}",
        Just("%".to_string()),
        Just("%e9%a".to_string()),
        Just("..".to_string()),
        Just("node1.example.com".to_string()),
        Just("1".to_string()),
        Just("instance".to_string()),
    ];
    (
        prop_oneof![
            Just("GET"),
            Just("PUT"),
            Just("POST"),
            Just("DELETE"),
            Just("PATCH")
        ],
        0..PATHS.len(),
        prop::collection::vec(segment, 2),
        "([a-z_%=&+;]{0,6}=[%a-zA-Z0-9é,+-]{0,10}&?){0,4}",
        prop_oneof![
            Just("application/json".to_string()),
            Just("text/plain".to_string()),
            Just("application/json; charset=utf-8".to_string()),
            Just(String::new()),
            "[ -~]{0,10}"
        ],
        prop_oneof![
            3 => json_value().prop_map(|v| v.to_string().into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..64),
        ],
        any::<bool>(),
    )
        .prop_map(|(method, path, segs, query, ctype, body, auth)| {
            let mut path = PATHS[path].to_string();
            for s in &segs {
                path = path.replacen("{}", s, 1);
            }
            let mut req = format!("{method} {path}?{query} HTTP/1.1\r\nHost: fuzz\r\n");
            if auth {
                req.push_str("Authorization: Basic YWRtaW46YWRtaW4=\r\n");
            }
            req.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            ));
            let mut bytes = req.into_bytes();
            bytes.extend(body);
            bytes
        })
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

/// Waits until no job is queued, waiting or running.
fn all_jobs_end(base: &str) -> Vec<Value> {
    let unfinished = || -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-s", &format!("{base}/2/jobs?bulk=1")])
            .output()
            .unwrap();
        let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
        jobs.as_array()
            .unwrap()
            .iter()
            .filter(|j| !["success", "error", "canceled"].contains(&j["status"].as_str().unwrap()))
            .map(|j| json!({"id": j["id"], "status": j["status"], "summary": j["summary"]}))
            .collect()
    };
    for _ in 0..600 {
        if unfinished().is_empty() {
            return vec![];
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    unfinished()
}

#[test]
fn fuzzed_requests_and_opcodes_never_panic_or_fail_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = start_logged(&dir);
    let addr = base.trim_start_matches("http://").to_string();

    let answered = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
    runner(1500)
        .run(&request(), |req| {
            let code = send_raw(&addr, &req);
            *answered.borrow_mut().entry(code).or_default() += 1;
            prop_assert!(
                code != 0 && code != 500,
                "answer {code} to {}",
                String::from_utf8_lossy(&req[..req.len().min(300)])
            );
            Ok(())
        })
        .unwrap();

    runner(1500)
        .run(&opcode(catalog()), |op| {
            let body = json!({"ops": [op]}).to_string();
            let code = post_jobs_raw(&addr, &body);
            *answered.borrow_mut().entry(code).or_default() += 1;
            prop_assert!(
                code == 200 || code == 400 || code == 413,
                "answer {code} to {}",
                &body[..body.len().min(300)]
            );
            Ok(())
        })
        .unwrap();

    let open = all_jobs_end(&base);
    assert!(open.is_empty(), "jobs that never ended: {open:?}");
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    let answered = answered.into_inner();
    eprintln!("answers by status: {answered:?}");
    assert!(
        answered.get(&200).copied().unwrap_or(0) > 100,
        "{answered:?}"
    );
}

/// A value of the parameter's type (from the table), for opcodes that need every required one.
fn plausible(ty: &Value) -> Value {
    match ty {
        Value::String(t) => match t.as_str() {
            "Bool" => json!(false),
            "Int" | "Size" => json!(1),
            "Number" => json!(0.01),
            "List" | "ListOfStr" => json!([]),
            "ListOfObject" => json!([{}]),
            "Object" => json!({}),
            _ => json!("x"),
        },
        Value::Object(o) => match o.iter().next() {
            Some((k, v)) if k == "Enum" => v[0].clone(),
            Some((k, v)) if k == "ListOfEnum" => json!([v[0]]),
            Some((k, v)) if k == "IntMin" => json!(v.as_i64().unwrap().max(1)),
            Some((_, v)) => v[0].clone(),
            None => Value::Null,
        },
        _ => Value::Null,
    }
}

#[test]
fn every_opcode_reaches_its_logical_unit() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, base) = start_logged(&dir);
    let addr = base.trim_start_matches("http://").to_string();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/opcodes/opcodes.json");
    let table: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut ids = vec![];
    for op in table["opcodes"].as_array().unwrap() {
        let mut body = serde_json::Map::new();
        body.insert("OP_ID".into(), op["id"].clone());
        for p in op["params"].as_array().unwrap() {
            if p["default"] == "required" {
                body.insert(p["name"].as_str().unwrap().into(), plausible(&p["type"]));
            }
        }
        let body = json!({"ops": [body]}).to_string();
        let code = post_jobs_raw(&addr, &body);
        assert!(code == 200 || code == 400, "{}: {code}", op["id"]);
        if code == 200 {
            ids.push(op["id"].as_str().unwrap().to_string());
        }
    }
    assert!(ids.len() > 40, "only {} opcodes were accepted", ids.len());
    assert!(all_jobs_end(&base).is_empty());
    let out = Command::new("curl")
        .args(["-s", &format!("{base}/2/jobs?bulk=1")])
        .output()
        .unwrap();
    let jobs: Value = serde_json::from_slice(&out.stdout).unwrap();
    for job in jobs.as_array().unwrap() {
        let text = job["opresult"].to_string();
        assert!(
            !text.contains("opcode\"") && !text.contains("not implemented"),
            "{} fell through its unit: {text}",
            job["summary"]
        );
    }
}
