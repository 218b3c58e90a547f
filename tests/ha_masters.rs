//! Several masters over etcd (issue 16), end to end: three `gantry serve --store etcd` on a real
//! three-member etcd cluster, clients submitting to all three, kill -9 of the leader, then of
//! etcd members. Every master records its fake-hypervisor executions in one journal, so a job
//! run twice would show.
#![cfg(feature = "etcd")]

mod common;
use common::etcd::EtcdCluster;
use common::have_etcd;
use common::{
    Server, curl, curl_full, curl_headers, curl_url, delay_job, spawn_gantry, until, wait_job,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: Option<&str> = Some("admin:admin");
const TTL: &str = "3";

fn master(etcd: &EtcdCluster, name: &str, journal: &Path, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), "admin {cleartext}admin write\n").unwrap();
    let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let endpoints = etcd.endpoints().join(",");
    let journal = journal.to_str().unwrap();
    let (child, base) = spawn_gantry(
        dir.path(),
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--etcd-ttl",
            TTL,
            "--master-name",
            name,
            "--fake-journal",
            journal,
            "--fake-delay-ms",
            "20",
            // Room for every instance however fast the clients go (a fake node's memory).
            "--node-memory",
            "4194304",
        ]
        .iter()
        .chain(extra)
        .copied()
        .collect::<Vec<_>>(),
        log,
    );
    Server {
        child,
        base,
        dir,
        netns: None,
    }
}

/// (this master's role, the leader's name) as `/gantry/v1/leader` answers.
fn role(s: &Server) -> (String, Option<String>) {
    let (_, answer) = curl(s, "GET", "/gantry/v1/leader", ADMIN, None);
    (
        answer["role"].as_str().unwrap_or_default().to_string(),
        answer["leader"]["name"].as_str().map(str::to_string),
    )
}

fn create_body(name: &str) -> String {
    json!({"__version__": 1, "mode": "create", "name": name, "disk_template": "plain",
        "disks": [{"size": 128}], "nics": [{}], "os": "debootstrap+default",
        "name_check": false, "ip_check": false})
    .to_string()
}

/// One acknowledged submission: which client, when, the job id.
#[derive(Clone, Debug)]
struct Ack {
    client: usize,
    at: Instant,
    id: u64,
}

/// Clients that submit instance creations, each starting on its own master and moving to the
/// next one when its master does not answer (as a client given several master URLs does).
fn load(
    masters: Arc<Vec<String>>,
    clients: usize,
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let (masters, stop, acks) = (masters.clone(), stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut at = client % masters.len();
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let name = format!("c{client}-{n}.example.com");
                    let (code, id) = curl_url(
                        &masters[at],
                        "POST",
                        "/2/instances",
                        ADMIN,
                        Some(&create_body(&name)),
                    );
                    match (code, id.as_u64()) {
                        (200, Some(id)) => acks.lock().unwrap().push(Ack {
                            client,
                            at: Instant::now(),
                            id,
                        }),
                        (0, _) => at = (at + 1) % masters.len(),
                        // 503 while no master leads, 502 when the leader died under a request.
                        _ => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            })
        })
        .collect()
}

fn finalized(job: &Value) -> bool {
    ["success", "error", "canceled"].contains(&job["status"].as_str().unwrap_or(""))
}

#[test]
fn three_masters_fail_over_without_losing_or_repeating_a_job() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let work = tempfile::tempdir().unwrap();
    let journal = work.path().join("journal");
    let mut masters: Vec<Option<Server>> = vec![];
    for i in 0..3 {
        masters.push(Some(master(&etcd, &format!("m{i}"), &journal, &[])));
        if i == 0 {
            let first = masters[0].as_ref().unwrap();
            until("m0 leads", Duration::from_secs(30), || {
                role(first).0 == "leader"
            });
        }
    }
    // Every master names the same leader; the others are followers.
    for s in masters.iter().flatten() {
        assert_eq!(role(s).1.as_deref(), Some("m0"), "{}", s.base);
    }
    assert_eq!(role(masters[1].as_ref().unwrap()).0, "follower");

    // Concurrent submissions spread over the three masters.
    let urls = Arc::new(
        masters
            .iter()
            .flatten()
            .map(|s| s.base.clone())
            .collect::<Vec<_>>(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(vec![]));
    let clients = load(urls.clone(), 6, stop.clone(), acks.clone());
    let t0 = Instant::now();
    while acks.lock().unwrap().len() < 30 {
        if t0.elapsed() > Duration::from_secs(20) {
            for s in masters.iter().flatten() {
                let log = std::fs::read_to_string(s.dir.path().join("stderr")).unwrap();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("=== {}\n{}", s.base, tail.join("\n"));
            }
            panic!("no acks");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // A long job running on the leader, and a client waiting on it through a follower.
    let (code, long) = curl(
        masters[1].as_ref().unwrap(),
        "POST",
        "/2/jobs",
        ADMIN,
        Some(r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 120}]}"#),
    );
    assert_eq!(code, 200, "{long}");
    let long = long.as_u64().unwrap();
    until("the long job runs", Duration::from_secs(30), || {
        let (_, job) = curl(
            masters[1].as_ref().unwrap(),
            "GET",
            &format!("/2/jobs/{long}"),
            None,
            None,
        );
        job["status"] == "running"
    });
    // A client sees `running` a moment before it is in etcd; a job that ends after that moment
    // was made durable after it (the leader's commits are ordered), so the kill below finds the
    // long job running in the store, not queued to run again.
    let (_, marker) = curl(
        masters[1].as_ref().unwrap(),
        "POST",
        "/2/jobs",
        ADMIN,
        // Ahead of the clients' backlog of creations.
        Some(r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01, "priority": -10}]}"#),
    );
    let marker = wait_job(masters[1].as_ref().unwrap(), marker.as_u64().unwrap());
    assert_eq!(marker["status"], "success", "{marker}");
    let waiter = {
        let url = masters[2].as_ref().unwrap().base.clone();
        std::thread::spawn(move || {
            let body = json!({"fields": ["status"], "previous_job_info": ["running"],
                "previous_log_serial": null});
            // The server answers null after its wait timeout without change: ask again.
            loop {
                let (code, answer) = curl_url(
                    &url,
                    "GET",
                    &format!("/2/jobs/{long}/wait"),
                    ADMIN,
                    Some(&body.to_string()),
                );
                if code == 200 && !answer.is_null() {
                    return answer;
                }
            }
        })
    };

    // kill -9 of the leader, under load.
    let killed_at = Instant::now();
    drop(masters[0].take());
    let survivors: Vec<&Server> = masters.iter().flatten().collect();
    let mut new_leader = None;
    until("another master leads", Duration::from_secs(30), || {
        new_leader = survivors.iter().position(|s| role(s).0 == "leader");
        new_leader.is_some()
    });
    let failover = killed_at.elapsed();
    let acked_at_failover = acks.lock().unwrap().len();
    until(
        "jobs acknowledged after the failover",
        Duration::from_secs(30),
        || acks.lock().unwrap().len() >= acked_at_failover + 30,
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let leader = survivors[new_leader.unwrap()];
    let follower = survivors[1 - new_leader.unwrap()];
    // An event stream asked of a follower is redirected to the new leader (not relayed).
    let (code, headers, _) = curl_full(follower, "GET", "/gantry/v1/events", None, None);
    assert_eq!(code, 307, "{headers}");
    assert!(
        headers.contains(&format!("location: {}/gantry/v1/events", leader.base)),
        "{headers}"
    );
    eprintln!(
        "failover: a follower led {failover:?} after kill -9 of the leader (TTL {TTL} s); \
         {} jobs acknowledged",
        acks.lock().unwrap().len()
    );

    // The client waiting through a follower saw the change: the job ended as after an
    // unclean shutdown of its master.
    let seen = waiter.join().unwrap();
    assert_eq!(seen["job_info"], json!(["error"]), "{seen}");

    // Every acknowledged job exists and ends, read through a follower; those that were running
    // on the dead leader end as after an unclean shutdown, the others succeed.
    let acks = acks.lock().unwrap().clone();
    let mut unclean = 0;
    for ack in &acks {
        let job = wait_job(follower, ack.id);
        assert!(finalized(&job), "{job}");
        if job["status"] == "error" {
            assert!(
                job["opresult"]
                    .to_string()
                    .contains("Unclean master daemon shutdown"),
                "job {} failed otherwise: {job}",
                ack.id
            );
            unclean += 1;
        } else {
            assert_eq!(job["status"], "success", "{job}");
        }
    }
    assert!(unclean <= 6, "{unclean} jobs failed by the failover");
    // Ids strictly increasing: per client in the order they were answered, and every id
    // acknowledged after the failover above every id acknowledged before the kill.
    let mut last: HashMap<usize, u64> = HashMap::new();
    for ack in &acks {
        if let Some(previous) = last.insert(ack.client, ack.id) {
            assert!(
                ack.id > previous,
                "client {}: {previous} then {}",
                ack.client,
                ack.id
            );
        }
    }
    let before = acks.iter().filter(|a| a.at < killed_at).map(|a| a.id).max();
    let after = acks
        .iter()
        .filter(|a| a.at > killed_at + failover)
        .map(|a| a.id)
        .min();
    assert!(after > before, "ids went back: {before:?} then {after:?}");
    // No job ran twice: one disk creation per instance, across every master's executions.
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut created: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        if let [_, "create_disks", _, name] = line.split(' ').collect::<Vec<_>>()[..] {
            *created.entry(name).or_default() += 1;
        }
    }
    let twice: Vec<_> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "executed twice: {twice:?}");
    let (_, instances) = curl(leader, "GET", "/2/instances", None, None);
    assert!(instances.as_array().unwrap().len() + unclean >= acks.len());
    // The configuration verification finds nothing.
    let (code, id) = curl(
        follower,
        "POST",
        "/2/jobs",
        ADMIN,
        Some(r#"{"ops": [{"OP_ID": "OP_CLUSTER_VERIFY_CONFIG"}]}"#),
    );
    assert_eq!(code, 200, "{id}");
    let verified = wait_job(follower, id.as_u64().unwrap());
    assert_eq!(verified["opresult"][0], true, "{verified}");

    // One etcd member down: service continues on every master.
    etcd.kill_member(0);
    for (i, s) in survivors.iter().enumerate() {
        let (code, id) = curl(
            s,
            "POST",
            "/2/instances",
            ADMIN,
            Some(&create_body(&format!("one-down-{i}.example.com"))),
        );
        assert_eq!(code, 200, "{id}");
        assert_eq!(wait_job(s, id.as_u64().unwrap())["status"], "success");
    }
    // Two down: no quorum. The leader gives up; submissions are refused with a 503 that says
    // why, on every master.
    etcd.kill_member(1);
    let t0 = Instant::now();
    while !survivors.iter().all(|s| role(s).0 == "follower") {
        if t0.elapsed() > Duration::from_secs(30) {
            for s in &survivors {
                let log = std::fs::read_to_string(s.dir.path().join("stderr")).unwrap();
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                eprintln!("=== {} {:?}\n{}", s.base, role(s), tail.join("\n"));
            }
            panic!("still leading");
        }
    }
    for s in &survivors {
        let (code, answer) = curl(
            s,
            "POST",
            "/2/instances",
            ADMIN,
            Some(&create_body("no-quorum.example.com")),
        );
        assert_eq!(code, 503, "{answer}");
        assert!(
            answer["message"].as_str().unwrap_or("").contains("etcd"),
            "{answer}"
        );
    }
    // Back: service returns, and nothing acknowledged is lost.
    etcd.start_member(0);
    etcd.start_member(1);
    etcd.wait_healthy();
    until("a master leads again", Duration::from_secs(60), || {
        survivors.iter().any(|s| role(s).0 == "leader")
    });
    let (code, id) = curl(
        follower,
        "POST",
        "/2/instances",
        ADMIN,
        Some(&create_body("after.example.com")),
    );
    assert_eq!(code, 200, "{id}");
    assert_eq!(wait_job(leader, id.as_u64().unwrap())["status"], "success");
    for ack in &acks {
        let (code, job) = curl(leader, "GET", &format!("/2/jobs/{}", ack.id), None, None);
        assert_eq!(code, 200, "job {} lost: {job}", ack.id);
    }

    // A follower hands a request on at most twice: one that two masters already relayed is
    // refused, one that a single master relayed is answered.
    let (leader, follower) = match role(survivors[0]).0.as_str() {
        "leader" => (survivors[0], survivors[1]),
        _ => (survivors[1], survivors[0]),
    };
    assert_eq!(relayed_by(follower, "m8,m9"), 503);
    assert_eq!(relayed_by(follower, "m9"), 200);

    // A write the leader dies under: the follower cannot know whether it was carried out, so
    // it says so (502) instead of sending it again. The leader is stopped first so that the
    // request surely reaches it and waits there.
    let pid = leader.child.id() as i32;
    // SAFETY: signals to a child process this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let base = follower.base.clone();
    let write = std::thread::spawn(move || {
        curl_url(
            &base,
            "POST",
            "/2/jobs",
            ADMIN,
            Some(r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}"#),
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let (code, answer) = write.join().unwrap();
    assert_eq!(code, 502, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or("")
            .contains("may or may not have been carried out"),
        "{answer}"
    );
    until("the last master leads", Duration::from_secs(30), || {
        role(follower).0 == "leader"
    });
}

/// The status of a read sent to `s` as if masters `by` had relayed it already.
fn relayed_by(s: &Server, by: &str) -> u16 {
    let header = format!("x-gantry-forwarded-by: {by}");
    curl_headers(s, "GET", "/2/info", &[&header], None).0
}

/// A follower answers for itself (its role, its metrics), with the users file as the leader
/// does, and every master's metrics say whether it leads.
#[test]
fn a_follower_answers_for_itself_to_users_of_the_users_file() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let work = tempfile::tempdir().unwrap();
    let journal = work.path().join("journal");
    let strict = ["--require-authentication"];
    let leader = master(&etcd, "a", &journal, &strict);
    until("a leads", Duration::from_secs(30), || {
        role(&leader).0 == "leader"
    });
    let follower = master(&etcd, "b", &journal, &strict);
    until("b follows a", Duration::from_secs(30), || {
        role(&follower) == ("follower".into(), Some("a".into()))
    });

    let (code, _) = curl(&follower, "GET", "/gantry/v1/leader", None, None);
    assert_eq!(code, 401, "who leads is not told to strangers");
    let (code, _) = curl(&follower, "GET", "/metrics", None, None);
    assert_eq!(code, 401);
    // Metrics are text: read them with curl's own output.
    let metrics = |s: &Server| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-f", "-k", "-u", ADMIN.unwrap()])
            .arg(format!("{}/metrics", s.base))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: /metrics refused", s.base);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let (mine, theirs) = (metrics(&follower), metrics(&leader));
    assert!(mine.contains("\ngantry_leader 0\n"), "{mine}");
    assert!(theirs.contains("\ngantry_leader 1\n"), "{theirs}");
    // The follower's own etcd requests (its campaign), not the leader's figures.
    assert!(mine.contains("gantry_etcd_request_seconds_count"), "{mine}");
    assert!(!mine.contains("gantry_jobs_submitted_total 1"), "{mine}");

    // A token made on the leader works through the follower for the API (the leader checks
    // it); the follower's own answers take passwords only.
    let (code, made) = curl(
        &leader,
        "POST",
        "/gantry/v1/tokens",
        ADMIN,
        Some(r#"{"rights": "read", "ttl": 600}"#),
    );
    assert_eq!(code, 200, "{made}");
    let header = format!("X-Api-Key: {}", made["token"].as_str().unwrap());
    assert_eq!(
        curl_headers(&follower, "GET", "/2/info", &[&header], None).0,
        200
    );
    assert_eq!(
        curl_headers(&follower, "GET", "/metrics", &[&header], None).0,
        401
    );
    assert_eq!(
        curl_headers(&leader, "GET", "/metrics", &[&header], None).0,
        200
    );

    // `gantry users token create` on the masters' etcd (no server's control socket to ask):
    // the token is written there and every master takes it at once.
    let endpoint = etcd.endpoints()[0].clone();
    // A gantry command on the masters' etcd, from any host.
    let on_etcd = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
            .args(args)
            .args(["--store", "etcd", "--etcd-endpoints", &endpoint])
            .output()
            .unwrap()
    };
    let users = leader.dir.path().join("users");
    let users = users.to_str().unwrap();
    let token_create = |user: &str, more: &[&str]| {
        let args = [&["users", "token", "create", user, "--users", users], more].concat();
        on_etcd(&args)
    };
    let made = token_create("admin", &["--ttl", "600"]);
    assert!(made.status.success(), "{made:?}");
    let header = format!(
        "X-AUTH-TOKEN: {}",
        String::from_utf8_lossy(&made.stdout).trim()
    );
    let delay = r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0}]}"#;
    assert_eq!(
        curl_headers(&follower, "POST", "/2/jobs", &[&header], Some(delay)).0,
        200
    );
    let refused = token_create("nobody", &[]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("no user 'nobody'"),
        "{said}"
    );

    // The drain flag, set with the same command as on one master's data dir.
    let queue = |action: &str| {
        let out = on_etcd(&["queue", action]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let submit = || {
        curl(
            &follower,
            "POST",
            "/2/jobs",
            ADMIN,
            Some(r#"{"ops": [{"OP_ID": "OP_TEST_DELAY", "duration": 0.01}]}"#),
        )
    };
    assert!(queue("info").contains("is unset"));
    assert!(queue("drain").contains("is set"));
    // The leader reads the flag at most a second later.
    until("submissions are refused", Duration::from_secs(10), || {
        submit().0 == 503
    });
    assert_eq!(submit().1["message"], "Job queue is drained, cannot submit");
    assert!(queue("undrain").contains("is unset"));
    until("submissions are accepted", Duration::from_secs(10), || {
        submit().0 == 200
    });
    let (code, id) = submit();
    assert_eq!(code, 200, "{id}");
    let id = id.as_u64().unwrap();
    until("the job ends", Duration::from_secs(20), || {
        curl(&follower, "GET", &format!("/2/jobs/{id}"), ADMIN, None).1["status"] == "success"
    });

    // A wait through the follower wakes when its etcd watch hears the job change (it would
    // also notice by polling, every 2 s: the metric tells which).
    let slow = delay_job(&follower, 1.0, json!({}));
    let mut previous = json!(null);
    until("the waited job ends", Duration::from_secs(30), || {
        let body = json!({"fields": ["status"], "previous_job_info": previous});
        let path = format!("/2/jobs/{slow}/wait");
        let (code, answer) = curl(&follower, "GET", &path, ADMIN, Some(&body.to_string()));
        assert_eq!(code, 200, "{answer}");
        if answer.is_object() {
            previous = answer["job_info"].clone();
        }
        previous == json!(["success"])
    });
    let woken = metrics(&follower);
    assert!(
        woken.contains("gantry_follower_wait_wakeups_total{by=\"watch\"}"),
        "{woken}"
    );

    // A follower reads jobs from etcd: with the leader stopped, a poll and a wait through the
    // follower are still answered (a relayed request would hang on the stopped leader).
    let pid = leader.child.id() as i32;
    // SAFETY: signals to a child process this test started and still owns.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let at_follower = |path: &str, body: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-k", "-m", "10", "-u", ADMIN.unwrap(), "-X", "GET"])
            .args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
            ])
            .arg(format!("{}{path}", follower.base))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let polled = at_follower(&format!("/2/jobs/{id}"), "");
    let waited = at_follower(
        &format!("/2/jobs/{id}/wait"),
        r#"{"fields": ["status"], "previous_job_info": ["running"]}"#,
    );
    let missing = at_follower("/2/jobs/999999", "");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(polled["status"], "success", "{polled}");
    assert_eq!(waited["job_info"], json!(["success"]), "{waited}");
    assert_eq!(missing["message"], "Job 999999 not found", "{missing}");
}

/// etcd's JSON gateway (`/v3/kv/...`, keys and values in base64), as another writer would
/// reach the store.
fn etcd_call(endpoint: &str, call: &str, body: Value) -> Value {
    let out = std::process::Command::new("curl")
        .args(["-s", "-f", "-m", "10", "--data-binary"])
        .arg(body.to_string())
        .arg(format!("{endpoint}/v3/kv/{call}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "etcd {call}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Config writes are compare-and-swaps on the document's revision: when another process
/// changed the configuration in etcd, the leader's next change is refused (its job ends as
/// after an unclean shutdown, the master starts over and reads the configuration again)
/// instead of overwriting it.
#[test]
fn a_configuration_changed_by_another_writer_is_not_overwritten() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1);
    let work = tempfile::tempdir().unwrap();
    let leader = master(&etcd, "a", &work.path().join("journal"), &[]);
    until("a leads", Duration::from_secs(30), || {
        role(&leader).0 == "leader"
    });
    // Its job, once ended (through a restart: answered by the master as follower meanwhile).
    let tag = |name: &str| {
        let (code, id) = curl(&leader, "PUT", &format!("/2/tags?tag={name}"), ADMIN, None);
        assert_eq!(code, 200, "{id}");
        let mut job = Value::Null;
        until("the tag's job ends", Duration::from_secs(60), || {
            job = curl(&leader, "GET", &format!("/2/jobs/{id}"), ADMIN, None).1;
            finalized(&job)
        });
        job
    };
    assert_eq!(tag("ours")["status"], "success");

    // Another writer adds a tag to the stored document.
    let endpoint = etcd.endpoints()[0].clone();
    let key = b64.encode("/gantry/kv/config/config");
    let stored = etcd_call(&endpoint, "range", json!({ "key": key }));
    let value = stored["kvs"][0]["value"]
        .as_str()
        .expect("a stored configuration");
    let mut doc: Value = serde_json::from_slice(&b64.decode(value).unwrap()).unwrap();
    let tags = doc["cluster"]["meta"]["tags"]
        .as_array_mut()
        .expect("cluster tags");
    assert_eq!(*tags, vec![json!("ours")]);
    tags.push(json!("theirs"));
    let value = b64.encode(doc.to_string());
    etcd_call(&endpoint, "put", json!({ "key": key, "value": value }));

    // The leader's next change is refused; it starts over, and the other writer's tag stays.
    let late = tag("late");
    assert_eq!(late["status"], "error", "{late}");
    until("a leads again", Duration::from_secs(30), || {
        role(&leader).0 == "leader"
    });
    let (code, tags) = curl(&leader, "GET", "/2/tags", ADMIN, None);
    assert_eq!(code, 200, "{tags}");
    assert_eq!(tags, json!(["ours", "theirs"]));
    // Changes go on from the configuration it read again.
    assert_eq!(tag("after")["status"], "success");
    let (_, tags) = curl(&leader, "GET", "/2/tags", ADMIN, None);
    assert_eq!(tags, json!(["after", "ours", "theirs"]));
}
