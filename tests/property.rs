//! A stateful property test (fixed seed, bounded cases): random sequences of RAPI calls that
//! change the configuration — creates, modifies, renames, removes, networks added, connected,
//! disconnected, removed, with valid and invalid parameters — submitted from four clients at
//! once, so their jobs interleave. Whatever happened, afterwards the configuration verification
//! finds nothing, every network's counters and users agree with the instances, and the htools
//! read the cluster.

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

const ADMIN: Option<&str> = Some("admin:admin");
const NAMES: usize = 6;
const NETS: usize = 2;

#[derive(Debug, Clone)]
enum Call {
    Create {
        name: usize,
        template: &'static str,
        nic: Nic,
        vcpus: Value,
    },
    Modify {
        name: usize,
        vcpus: Value,
        ip: Option<&'static str>,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Remove {
        name: usize,
    },
    NetworkAdd {
        net: usize,
    },
    Connect {
        net: usize,
    },
    Disconnect {
        net: usize,
    },
    NetworkRemove {
        net: usize,
    },
}

#[derive(Debug, Clone)]
enum Nic {
    Default,
    Pool(usize),
    Ip(usize, &'static str),
    Mac(&'static str),
}

fn name(i: usize) -> String {
    format!("p{i}.example.com")
}

fn net(i: usize) -> String {
    format!("pnet{i}")
}

fn vcpus() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (1i64..4).prop_map(|n| json!(n)),
        1 => Just(json!("2")),
        1 => Just(json!("x")),
        1 => Just(json!(1e20)),
    ]
}

fn nic() -> impl Strategy<Value = Nic> {
    prop_oneof![
        3 => Just(Nic::Default),
        3 => (0..NETS).prop_map(Nic::Pool),
        2 => (0..NETS, prop_oneof![Just("10.70.0.5"), Just("10.71.0.5"), Just("300.1.1.1")])
            .prop_map(|(n, ip)| Nic::Ip(n, ip)),
        1 => prop_oneof![Just("aa:00:00:12:34:56"), Just("not-a-mac")].prop_map(Nic::Mac),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => (0..NAMES, prop_oneof![Just("plain"), Just("diskless"), Just("drbd")], nic(), vcpus())
            .prop_map(|(name, template, nic, vcpus)| Call::Create { name, template, nic, vcpus }),
        2 => (0..NAMES, vcpus(), prop_oneof![Just(None), Just(Some("10.70.0.9")), Just(Some("999.1.1.1"))])
            .prop_map(|(name, vcpus, ip)| Call::Modify { name, vcpus, ip }),
        1 => (0..NAMES, 0..NAMES).prop_map(|(from, to)| Call::Rename { from, to }),
        1 => (0..NAMES).prop_map(|name| Call::Remove { name }),
        2 => (0..NETS).prop_map(|net| Call::NetworkAdd { net }),
        2 => (0..NETS).prop_map(|net| Call::Connect { net }),
        1 => (0..NETS).prop_map(|net| Call::Disconnect { net }),
        1 => (0..NETS).prop_map(|net| Call::NetworkRemove { net }),
    ]
}

/// The request a call makes: (method, path, body).
fn request(c: &Call) -> (&'static str, String, Value) {
    match c {
        Call::Create {
            name: n,
            template,
            nic,
            vcpus,
        } => {
            let nic = match nic {
                Nic::Default => json!({}),
                Nic::Pool(i) => json!({"network": net(*i), "ip": "pool"}),
                Nic::Ip(i, ip) => json!({"network": net(*i), "ip": ip}),
                Nic::Mac(mac) => json!({"mac": mac}),
            };
            let disks = if *template == "diskless" {
                json!([])
            } else {
                json!([{"size": 128}])
            };
            (
                "POST",
                "/2/instances".into(),
                json!({"__version__": 1, "name": name(*n), "os": "debootstrap+default",
                       "disk_template": template, "disks": disks, "nics": [nic],
                       "mode": "create", "beparams": {"vcpus": vcpus}}),
            )
        }
        Call::Modify { name: n, vcpus, ip } => {
            let mut body = json!({"beparams": {"vcpus": vcpus}});
            if let Some(ip) = ip {
                body["nics"] = json!([["modify", 0, {"ip": ip}]]);
            }
            ("PUT", format!("/2/instances/{}/modify", name(*n)), body)
        }
        Call::Rename { from, to } => (
            "PUT",
            format!("/2/instances/{}/rename", name(*from)),
            json!({"new_name": name(*to), "name_check": false, "ip_check": false}),
        ),
        Call::Remove { name: n } => ("DELETE", format!("/2/instances/{}", name(*n)), json!({})),
        Call::NetworkAdd { net: i } => (
            "POST",
            "/2/networks".into(),
            json!({"network_name": net(*i), "network": format!("10.{}.0.0/28", 70 + i),
                   "gateway": format!("10.{}.0.1", 70 + i)}),
        ),
        Call::Connect { net: i } => (
            "PUT",
            format!("/2/networks/{}/connect", net(*i)),
            json!({"group_name": "default", "network_mode": "bridged", "network_link": "br0"}),
        ),
        Call::Disconnect { net: i } => (
            "PUT",
            format!("/2/networks/{}/disconnect", net(*i)),
            json!({"group_name": "default"}),
        ),
        Call::NetworkRemove { net: i } => ("DELETE", format!("/2/networks/{}", net(*i)), json!({})),
    }
}

/// Waits until every job has ended; none may stay unfinished.
fn settle(s: &Server) {
    for _ in 0..600 {
        let (_, jobs) = curl(s, "GET", "/2/jobs?bulk=1", None, None);
        let open = jobs
            .as_array()
            .unwrap()
            .iter()
            .filter(|j| !["success", "error", "canceled"].contains(&j["status"].as_str().unwrap()))
            .count();
        if open == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("jobs did not end");
}

/// Checks the invariants; answers (instances, networks, failed jobs) to show the run did work.
fn check_invariants(s: &Server) -> (usize, usize, usize) {
    // The configuration verification finds nothing.
    let (_, id) = curl(
        s,
        "POST",
        "/2/jobs",
        ADMIN,
        Some(r#"{"ops": [{"OP_ID": "OP_CLUSTER_VERIFY_CONFIG"}]}"#),
    );
    let verify = wait_job(s, id.as_u64().unwrap());
    assert_eq!(
        verify["opresult"][0], true,
        "verification: {}",
        verify["oplog"]
    );
    // Every network's counters and users agree with the instances' NICs.
    let (_, instances) = curl(s, "GET", "/2/instances?bulk=1", None, None);
    let mut users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ips: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for inst in instances.as_array().unwrap() {
        let nets = inst["nic.networks.names"].as_array().unwrap();
        for (i, n) in nets.iter().enumerate() {
            if let Some(n) = n.as_str() {
                users
                    .entry(n.into())
                    .or_default()
                    .insert(inst["name"].as_str().unwrap().into());
                if let Some(ip) = inst["nic.ips"][i].as_str() {
                    ips.entry(n.into()).or_default().push(ip.into());
                }
            }
        }
    }
    let (_, networks) = curl(s, "GET", "/2/networks?bulk=1", None, None);
    for netw in networks.as_array().unwrap() {
        let name = netw["name"].as_str().unwrap();
        let size = 16; // every network here is a /28
        assert_eq!(
            netw["free_count"].as_u64().unwrap() + netw["reserved_count"].as_u64().unwrap(),
            size,
            "{netw}"
        );
        let listed: BTreeSet<String> = netw["inst_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            listed,
            users.get(name).cloned().unwrap_or_default(),
            "{netw}"
        );
        let held = ips.get(name).cloned().unwrap_or_default();
        let distinct: BTreeSet<&String> = held.iter().collect();
        assert_eq!(
            distinct.len(),
            held.len(),
            "{name}: addresses shared: {held:?}"
        );
        // Network and broadcast addresses and the gateway are reserved besides instances'.
        assert_eq!(
            netw["reserved_count"].as_u64().unwrap(),
            held.len() as u64 + 3,
            "{netw}"
        );
    }
    let (_, jobs) = curl(s, "GET", "/2/jobs?bulk=1", None, None);
    let failed = jobs
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["status"] == "error")
        .count();
    let counts = (
        instances.as_array().unwrap().len(),
        networks.as_array().unwrap().len(),
        failed,
    );
    // The htools read the whole cluster.
    let (host, port) = s
        .base
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap();
    let master = format!("https://admin:admin@{host}:{port}");
    for (tool, args) in [
        ("hbal", vec!["-m", &master]),
        ("hspace", vec!["-m", &master]),
    ] {
        let out = Command::new(tool)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} (ganeti-htools): {e}"));
        assert!(
            out.status.success(),
            "{tool}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    counts
}

#[test]
fn random_concurrent_changes_leave_a_sound_configuration() {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 4,
            failure_persistence: None,
            // Each case runs a server: report the failing case as found, without shrinking.
            max_shrink_iters: 0,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let calls = proptest::collection::vec(proptest::collection::vec(call(), 12..20), 4);
    let seen = std::sync::Mutex::new(vec![]);
    runner
        .run(&calls, |clients| {
            let s = start(&[]);
            std::thread::scope(|scope| {
                for calls in &clients {
                    let s = &s;
                    scope.spawn(move || {
                        for c in calls {
                            let (method, path, body) = request(c);
                            let (code, answer) =
                                curl(s, method, &path, ADMIN, Some(&body.to_string()));
                            // Refused before a job (400) or a job id: never a server error.
                            assert!(
                                code == 200 || code == 400 || code == 404,
                                "{c:?}: {code} {answer}"
                            );
                        }
                    });
                }
            });
            settle(&s);
            seen.lock().unwrap().push(check_invariants(&s));
            Ok(())
        })
        .unwrap();
    // The runs did something: instances and networks exist, invalid calls failed as jobs.
    let seen = seen.into_inner().unwrap();
    eprintln!("(instances, networks, failed jobs) per case: {seen:?}");
    assert!(
        seen.iter().any(|c| c.0 > 0) && seen.iter().any(|c| c.1 > 0),
        "{seen:?}"
    );
    assert!(seen.iter().all(|c| c.2 > 0), "{seen:?}");
}
