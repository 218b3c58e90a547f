//! The job event stream (`GET /gantry/v1/events`, Server-Sent Events) followed with curl while
//! jobs run: every status change and log entry exactly once and in order, resumable, bounded.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One parsed Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

fn parse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut e = Sse {
                id: None,
                event: "message".into(),
                data: Value::Null,
            };
            // Lines starting with ':' are keep-alive comments.
            for line in block.lines() {
                match line.split_once(':') {
                    Some(("id", v)) => e.id = v.trim().parse().ok(),
                    Some(("event", v)) => e.event = v.trim().to_string(),
                    Some(("data", v)) => {
                        e.data = serde_json::from_str(v.trim()).unwrap_or(Value::Null)
                    }
                    _ => {}
                }
            }
            (e.id.is_some() || e.event != "message").then_some(e)
        })
        .collect()
}

/// curl following the stream into a file, from `last_id` when given.
fn follow(s: &Server, out: &std::path::Path, last_id: Option<u64>) -> Child {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-k", "-N", "-o"]).arg(out);
    if let Some(id) = last_id {
        cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    cmd.arg(format!("{}/gantry/v1/events", s.base))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl runs")
}

fn submit_delay(s: &Server, repeat: u64) -> u64 {
    delay_job(s, 0.001, json!({"repeat": repeat}))
}

/// Waits until the stream file holds a final status event for every job in `ids`.
fn wait_for_finals(path: &std::path::Path, ids: &[u64]) -> Vec<Sse> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let events = parse(&std::fs::read_to_string(path).unwrap_or_default());
        let finals = events
            .iter()
            .filter(|e| e.event == "status" && e.data["status"] == "success")
            .count();
        if finals >= ids.len() {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "only {finals} of {} jobs seen ending",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_change_of_a_thousand_jobs_arrives_once_in_order_and_resumes_without_loss() {
    let s = start(&["--event-buffer", "100000", "--queue-limit", "5000"]);
    let dir = tempfile::tempdir().unwrap();
    let stream = dir.path().join("stream");
    let mut follower = follow(&s, &stream, None);
    std::thread::sleep(Duration::from_millis(300));
    // 1,000 jobs from 8 clients, each job logging three entries.
    let ids: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| (0..125).map(|_| submit_delay(&s, 3)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let events = wait_for_finals(&stream, &ids);
    let _ = follower.kill();
    let _ = follower.wait();

    let event_ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert!(
        event_ids.windows(2).all(|w| w[0] < w[1]),
        "event ids only grow"
    );
    let mut statuses: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut serials: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in &events {
        let job = e.data["job_id"].as_u64().unwrap();
        match e.event.as_str() {
            "status" => statuses
                .entry(job)
                .or_default()
                .push(e.data["status"].as_str().unwrap().into()),
            "log" => serials
                .entry(job)
                .or_default()
                .push(e.data["serial"].as_u64().unwrap()),
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(statuses.len(), 1000);
    for id in &ids {
        let seen = &statuses[id];
        assert_eq!(
            seen.first().map(String::as_str),
            Some("queued"),
            "job {id}: {seen:?}"
        );
        assert_eq!(
            seen.last().map(String::as_str),
            Some("success"),
            "job {id}: {seen:?}"
        );
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!(&unique, seen, "job {id}: each state change once: {seen:?}");
    }
    // Every log entry once, in serial order: compared with the jobs' own logs for a sample.
    for id in ids.iter().step_by(97) {
        let job = wait_job(&s, *id);
        let logged: Vec<u64> = job["oplog"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| entry[0].as_u64().unwrap())
            .collect();
        assert_eq!(serials[id], logged, "job {id}");
        assert_eq!(logged.len(), 3);
    }
    assert_eq!(serials.values().map(Vec::len).sum::<usize>(), 3000);

    // Reconnecting with the id of an event in the middle replays exactly what followed it.
    let middle = event_ids[event_ids.len() / 2];
    let resumed_path = dir.path().join("resumed");
    let mut resumed = follow(&s, &resumed_path, Some(middle));
    let want: Vec<u64> = event_ids
        .iter()
        .copied()
        .filter(|id| *id > middle)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got: Vec<u64> = parse(&std::fs::read_to_string(&resumed_path).unwrap_or_default())
            .iter()
            .filter_map(|e| e.id)
            .collect();
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = resumed.kill();
    let _ = resumed.wait();
    assert_eq!(
        got, want,
        "a resumed follower loses nothing and repeats nothing"
    );
}

#[test]
fn selection_and_a_resume_point_older_than_the_window() {
    let s = start(&["--event-retention", "10"]);
    let a = submit_delay(&s, 1);
    let b = submit_delay(&s, 1);
    wait_job(&s, a);
    wait_job(&s, b);
    // Only job b, from the start of what is kept: the window lost the oldest events.
    let out = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-N",
            "--max-time",
            "2",
            "-H",
            "Last-Event-ID: 1",
        ])
        .arg(format!(
            "{}/gantry/v1/events?job={b}&status=success",
            s.base
        ))
        .output()
        .unwrap();
    let events = parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(events[0].event, "reset", "{events:?}");
    let rest = &events[1..];
    assert!(!rest.is_empty());
    assert!(
        rest.iter()
            .all(|e| e.data["job_id"] == b && e.data["status"] == "success"),
        "{rest:?}"
    );
    // Bad parameters are refused in Ganeti's error format.
    let (code, body) = curl(&s, "GET", "/gantry/v1/events?colour=red", None, None);
    assert_eq!(code, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("colour"));
    // Authentication follows the GET rules: with --require-authentication, no user, no stream.
    let locked = start(&["--require-authentication"]);
    assert_eq!(curl(&locked, "GET", "/gantry/v1/events", None, None).0, 401);
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_follower_that_stops_reading_is_dropped_and_memory_stays_bounded() {
    let s = start(&["--event-buffer", "64", "--queue-limit", "5000"]);
    // A client that connects, reads nothing, and keeps its receive window tiny.
    let script = r#"
import socket, ssl, sys, time
host, port = sys.argv[1], int(sys.argv[2])
raw = socket.socket()
raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
raw.connect((host, port))
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(raw)
s.sendall(b"GET /gantry/v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
sys.stdout.write("connected\n"); sys.stdout.flush()
sys.stdin.readline()           # the test says when to read again
# Read the backlog fast now: a 4 KiB window would take minutes over megabytes.
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
seen, tail = False, b""
s.settimeout(20)
try:
    while not seen:
        chunk = s.recv(65536)
        if not chunk:
            break
        # Only the end of what came so far is searched: megabytes are read here.
        window = tail + chunk
        seen = b"event:dropped" in window
        tail = window[-32:]
except socket.timeout:
    pass
print("dropped" if seen else "not dropped")
"#;
    let host_port = s.base.trim_start_matches("https://").to_string();
    let (host, port) = host_port.split_once(':').unwrap();
    let mut client = Command::new("python3")
        .args(["-c", script, host, port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let before = rss_kib(s.child.id());
    // Far more events than the socket buffers and the follower's channel hold.
    let ids: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| (0..150).map(|_| submit_delay(&s, 20)).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for id in ids.iter().rev().take(5) {
        wait_job(&s, *id);
    }
    let after = rss_kib(s.child.id());
    use std::io::Write;
    writeln!(client.stdin.take().unwrap()).unwrap();
    let mut verdict = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut verdict).unwrap();
    let _ = client.wait();
    assert_eq!(verdict.trim(), "dropped");
    // 1,200 jobs of 22 events each went by; a generous bound on what the server kept.
    assert!(
        after < before + 200 * 1024,
        "RSS grew from {before} KiB to {after} KiB while a follower did not read"
    );
}
