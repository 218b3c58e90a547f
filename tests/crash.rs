//! Kill -9 at random moments while many clients submit: every job id a client was given must
//! exist after the restart in a valid state, interrupted jobs are failed as Ganeti does, queued
//! ones run, and new ids continue above all old ones. Repeated several times on one data dir.

mod common;
use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLIENTS: usize = 8;
const ROUNDS: usize = 4;

/// A kill delay between 300 and 1300 ms, different each round.
fn random_delay() -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    Duration::from_millis(300 + (nanos / 7 % 1000))
}

#[test]
fn kill_9_under_concurrent_submissions_loses_nothing() {
    let mut dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let s = start_in(dir, &["--no-ssl"]);
        // Everything acknowledged in earlier rounds survived the previous kill.
        for (id, from_round) in &acked {
            let (code, job) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
            assert_eq!(
                code, 200,
                "job {id} (round {from_round}) lost in round {round}"
            );
            check_valid(&job);
        }
        let highest_before = acked.keys().max().copied().unwrap_or(0);

        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(vec![]));
        let base = s.base.clone();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, got, base) = (stop.clone(), got.clone(), base.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Every other job has two opcodes, so some are killed between opcodes.
                        let mut ops = vec![json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.15})];
                        if c % 2 == 0 {
                            ops.push(json!({"OP_ID": "OP_TEST_DELAY", "duration": 0.05}));
                        }
                        if let Some(id) = submit_raw(&base, &json!({"ops": ops})) {
                            got.lock().unwrap().push(id);
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(random_delay());
        dir = kill_9(s);
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        let new_ids = got.lock().unwrap().clone();
        assert!(!new_ids.is_empty(), "round {round}: clients got job ids");
        assert!(
            new_ids.iter().all(|id| *id > highest_before),
            "round {round}: ids continue above the old ones"
        );
        for id in new_ids {
            acked.insert(id, round);
        }
    }

    // Final restart: every acknowledged job exists, and everything not interrupted finishes.
    let s = start_in(dir, &["--no-ssl"]);
    let mut interrupted = 0;
    for id in acked.keys() {
        let job = wait_job(&s, *id);
        check_valid(&job);
        if job["status"] == "error" {
            interrupted += 1;
        }
    }
    let next = delay_job(&s, 0.01, json!({}));
    assert!(next > *acked.keys().max().unwrap());
    eprintln!(
        "{} acknowledged jobs over {ROUNDS} kills, {interrupted} interrupted",
        acked.len()
    );
}

/// Kills the server -9 the moment a client sees job `id` `seen`, and answers the job as the
/// restarted server has it.
fn after_kill_9_once_seen(s: Server, id: u64, seen: &str) -> Value {
    until(
        &format!("the job is {seen}"),
        Duration::from_secs(20),
        || {
            let (_, job) = curl(&s, "GET", &format!("/2/jobs/{id}"), None, None);
            job["status"] == seen
        },
    );
    let s = start_in(kill_9(s), &["--no-ssl"]);
    curl(&s, "GET", &format!("/2/jobs/{id}"), None, None).1
}

/// As `after_kill_9_once_seen`, for an OP_TEST_DELAY of `duration` s.
fn job_after_kill_9_once_seen(duration: f64, seen: &str) -> Value {
    let s = start(&["--no-ssl"]);
    let id = delay_job(&s, duration, json!({}));
    after_kill_9_once_seen(s, id, seen)
}

/// Cancels job `id` in a thread of its own (the answer may come after the kill).
fn cancel_in_background(s: &Server, id: u64) -> std::thread::JoinHandle<()> {
    let base = s.base.clone();
    std::thread::spawn(move || {
        let path = format!("/2/jobs/{id}");
        let _ = curl_url(&base, "DELETE", &path, Some("admin:admin"), None);
    })
}

/// A job is `running` on disk before its opcode starts: killed the moment a client sees it
/// running, it comes back failed as after an unclean shutdown, never queued to run again (a
/// second execution of an opcode that had touched a node).
#[test]
fn a_job_seen_running_is_not_run_again_after_kill_9() {
    let job = job_after_kill_9_once_seen(60.0, "running");
    assert_eq!(job["status"], "error", "{job}");
    assert!(
        job["opresult"]
            .to_string()
            .contains("Unclean master daemon shutdown"),
        "{job}"
    );
}

/// A job's end is durable before anyone can see it: killed the moment a client sees a job
/// succeed (and a dependent job may have acted on it), it comes back succeeded, never running
/// (which recovery would turn into an error).
#[test]
fn a_job_seen_ended_is_still_ended_after_kill_9() {
    let job = job_after_kill_9_once_seen(0.01, "success");
    assert_eq!(job["status"], "success", "{job}");
}

/// A queued job's cancel is durable before anyone can see it: killed the moment a client sees
/// it canceled (while the canceller still waits for its answer), it comes back canceled, never
/// queued to run after all.
#[test]
fn a_job_seen_canceled_is_still_canceled_after_kill_9() {
    let s = start(&["--no-ssl"]);
    let first = delay_job(&s, 60.0, json!({}));
    // Queued, not started, as long as the job it depends on runs.
    let queued = delay_job(&s, 0.01, json!({"depends": [[first, []]]}));
    let canceller = cancel_in_background(&s, queued);
    let job = after_kill_9_once_seen(s, queued, "canceled");
    let _ = canceller.join();
    assert_eq!(job["status"], "canceled", "{job}");
}

/// The same for a job canceled between two opcodes (asked while the first ran): the first
/// opcode's success and the cancel are durable before a client sees the job canceled.
#[test]
fn a_job_canceled_at_an_opcode_boundary_stays_canceled_after_kill_9() {
    let s = start(&["--no-ssl"]);
    let delay = |duration: f64| json!({"OP_ID": "OP_TEST_DELAY", "duration": duration});
    let body = json!({"ops": [delay(0.5), delay(0.01)]});
    let (code, id) = curl(
        &s,
        "POST",
        "/2/jobs",
        Some("admin:admin"),
        Some(&body.to_string()),
    );
    assert_eq!(code, 200, "{id}");
    let id = id.as_u64().unwrap();
    until("the job runs", Duration::from_secs(20), || {
        curl(&s, "GET", &format!("/2/jobs/{id}"), None, None).1["status"] == "running"
    });
    let canceller = cancel_in_background(&s, id);
    let job = after_kill_9_once_seen(s, id, "canceled");
    let _ = canceller.join();
    assert_eq!(job["opstatus"], json!(["success", "canceled"]), "{job}");
}

/// POST /2/jobs with curl; answers the id only when the server acknowledged it.
fn submit_raw(base: &str, body: &Value) -> Option<u64> {
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "5", "-u", "admin:admin", "-X", "POST"])
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("{base}/2/jobs"))
        .output()
        .ok()?;
    serde_json::from_slice::<Value>(&out.stdout).ok()?.as_u64()
}

/// A job is whole and in a state the spec allows after a crash.
fn check_valid(job: &Value) {
    let status = job["status"].as_str().expect("status");
    assert!(
        ["queued", "waiting", "running", "success", "error"].contains(&status),
        "{job}"
    );
    let opstatus = job["opstatus"].as_array().unwrap();
    assert_eq!(opstatus.len(), job["ops"].as_array().unwrap().len());
    if status == "error" {
        let first_error = opstatus.iter().position(|s| s == "error").unwrap();
        assert_eq!(
            job["opresult"][first_error],
            json!(["OpExecError", ["Unclean master daemon shutdown"]]),
            "only the crash can fail a delay: {job}"
        );
        for later in &opstatus[first_error..] {
            assert_eq!(later, "error", "{job}");
        }
    }
}
