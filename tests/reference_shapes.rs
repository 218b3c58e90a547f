//! Shape comparison with a real Ganeti 3.0: `tools/capture-reference` drives gantry through the
//! same scenario it drove the reference through, and every status code, content type, JSON path,
//! type and enumerated value must match `tests/reference/ganeti-3.0/shapes.json`, except for the
//! deliberate differences listed with their reasons in `tests/reference/exceptions.txt`.

mod common;

use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::process::Command;

const REFERENCE: &str = "tests/reference/ganeti-3.0/shapes.json";
const EXCEPTIONS: &str = "tests/reference/exceptions.txt";

/// One difference, written `step path what` so that an exception line can name it.
fn differences(reference: &Map<String, Value>, got: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut say = |step: &str, path: &str, what: String| {
        out.push((format!("{step} {path}"), what));
    };
    for (step, want) in reference {
        let Some(have) = got.get(step) else {
            say(step, "*", "step missing".into());
            continue;
        };
        for key in ["status", "content_type"] {
            if want[key] != have[key] {
                say(step, key, format!("{} != {}", want[key], have[key]));
            }
        }
        if let Some(exact) = want.get("exact")
            && Some(exact) != have.get("exact")
        {
            say(
                step,
                "exact",
                format!("answer differs: got {}", have["exact"]),
            );
        }
        // The reference cluster holds more than the scenario creates, so it may have seen more
        // types (and values) at a path than gantry: gantry's must be among them.
        let (ws, hs) = (
            want["shape"].as_object().unwrap(),
            have["shape"].as_object().unwrap(),
        );
        for (path, t) in ws {
            match hs.get(path) {
                None => say(step, path, format!("missing ({t})")),
                Some(h) if !subset(h, t) => say(step, path, format!("type {t} != {h}")),
                _ => {}
            }
        }
        for (path, t) in hs.iter().filter(|(p, _)| !ws.contains_key(*p)) {
            say(step, path, format!("extra ({t})"));
        }
        let (we, he) = (
            want["enums"].as_object().unwrap(),
            have["enums"].as_object().unwrap(),
        );
        for (path, values) in we {
            if let Some(h) = he.get(path)
                && !h
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|v| values.as_array().unwrap().contains(v))
            {
                say(step, path, format!("values {values} != {h}"));
            }
        }
    }
    out
}

/// Whether every type in `have` (`int|null`) is one of `want`'s.
fn subset(have: &Value, want: &Value) -> bool {
    let want: Vec<&str> = want.as_str().unwrap().split('|').collect();
    have.as_str().unwrap().split('|').all(|t| want.contains(&t))
}

/// `step path reason...` per line; `*` as path covers the whole step. A reason is required.
fn exceptions() -> BTreeSet<String> {
    let text = std::fs::read_to_string(EXCEPTIONS).expect("exceptions file");
    let mut set = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (step, path) = (words.next().unwrap(), words.next().unwrap_or(""));
        assert!(words.next().is_some(), "exception without a reason: {line}");
        set.insert(format!("{step} {path}"));
    }
    set
}

fn excepted(exceptions: &BTreeSet<String>, key: &str) -> bool {
    exceptions.iter().any(|e| covers(e, key))
}

/// An exception covers a difference with the same step and path, or a path it begins with
/// when it ends in `*`.
fn covers(exception: &str, key: &str) -> bool {
    match exception.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => exception == key,
    }
}

#[test]
fn gantry_answers_in_the_shapes_a_real_ganeti_answers_in() {
    // One node, as the reference cluster has.
    let s = common::start(&["--nodes", "node1.example.com"]);
    let out = s.dir.path().join("gantry-shapes.json");
    let run = Command::new("python3")
        .arg("tools/capture-reference")
        .args(["--url", &s.base, "--user", "admin:admin"])
        .args(["--read-user", "viewer:viewer", "--out"])
        .arg(&out)
        .output()
        .expect("run tools/capture-reference");
    assert!(
        run.status.success(),
        "capture failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let read = |p: &std::path::Path| -> Map<String, Value> {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let (reference, got) = (read(REFERENCE.as_ref()), read(&out));
    let exceptions = exceptions();
    let all = differences(&reference, &got);
    let open: Vec<String> = all
        .iter()
        .filter(|(key, _)| !excepted(&exceptions, key))
        .map(|(key, what)| format!("{key}: {what}"))
        .collect();
    // Exceptions that no longer match anything are stale and must go.
    let stale: Vec<&String> = exceptions
        .iter()
        .filter(|e| !all.iter().any(|(key, _)| covers(e, key)))
        .collect();
    assert!(
        open.is_empty() && stale.is_empty(),
        "{} differences from Ganeti 3.0:\n{}\nstale exceptions: {stale:?}",
        open.len(),
        open.join("\n")
    );
}
