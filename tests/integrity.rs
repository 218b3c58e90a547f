//! Nothing invalid reaches the cluster configuration (issue 9's findings, one test each, with
//! upstream's error class and message), and what is stored stays readable by the htools.

mod common;
use common::*;
use serde_json::{Value, json};
use std::process::Command;

const ADMIN: Option<&str> = Some("admin:admin");

fn create_body(name: &str, extra: Value) -> Value {
    let mut body = json!({"__version__": 1, "name": name, "os": "debootstrap+default",
        "disk_template": "plain", "disks": [{"size": 128}], "nics": [{}], "mode": "create"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

/// Creates a plain instance with defaults and asserts it worked.
fn create_ok(s: &Server, name: &str) {
    let job = submit(s, "POST", "/2/instances", create_body(name, json!({})));
    assert_eq!(job["status"], "success", "{job}");
}

/// Submits and waits; answers the finished job.
fn submit(s: &Server, method: &str, path: &str, body: Value) -> Value {
    let (code, id) = curl(s, method, path, ADMIN, Some(&body.to_string()));
    assert_eq!(code, 200, "{method} {path}: {id}");
    wait_job(s, id.as_u64().unwrap())
}

/// Runs the configuration verification (OP_CLUSTER_VERIFY_CONFIG) and asserts it found nothing.
fn assert_config_sound(s: &Server) {
    let job = submit(
        s,
        "POST",
        "/2/jobs",
        json!({"ops": [{"OP_ID": "OP_CLUSTER_VERIFY_CONFIG"}]}),
    );
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(
        job["opresult"][0], true,
        "config verification: {}",
        job["oplog"]
    );
}

/// Submits, waits, and answers the (class, message) of the job's failure.
fn refused(s: &Server, method: &str, path: &str, body: Value) -> (String, String) {
    failure(&submit(s, method, path, body))
}

/// The (class, message) of a failed job.
fn failure(job: &Value) -> (String, String) {
    assert_eq!(job["status"], "error", "{job}");
    let err = &job["opresult"][0];
    (
        err[0].as_str().unwrap_or_default().to_string(),
        err[1][0].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn backend_parameters_are_typed_as_upstream_types_them() {
    let s = start(&[]);
    // "2" is converted, as upstream's ForceDictType does; the htools can read the result.
    let job = submit(
        &s,
        "POST",
        "/2/instances",
        create_body(
            "web1.example.com",
            json!({"beparams": {"vcpus": "2", "maxmem": "1G"}}),
        ),
    );
    assert_eq!(job["status"], "success", "{job}");
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_eq!(inst["beparams"]["vcpus"], 2, "{inst}");
    assert_eq!(inst["beparams"]["maxmem"], 1024, "{inst}");
    for (beparams, class, message) in [
        (
            json!({"bogus": 1}),
            "TypeEnforcementError",
            "Unknown parameter 'bogus'",
        ),
        (
            json!({"vcpus": "x"}),
            "TypeEnforcementError",
            "'vcpus' (value x) is not a valid integer",
        ),
        (
            json!({"auto_balance": "yes"}),
            "TypeEnforcementError",
            "'auto_balance' (value yes) is not a valid boolean",
        ),
        (
            json!({"memory": 1e20}),
            "TypeEnforcementError",
            "is not a valid size",
        ),
    ] {
        let job = submit(
            &s,
            "POST",
            "/2/instances",
            create_body("web2.example.com", json!({"beparams": beparams})),
        );
        let (c, m) = failure(&job);
        assert_eq!(c, class, "{beparams}");
        assert!(m.contains(message), "{beparams}: {m}");
        let job = submit(
            &s,
            "PUT",
            "/2/instances/web1.example.com/modify",
            json!({"beparams": beparams}),
        );
        assert!(
            failure(&job).1.contains(message),
            "modify {beparams}: {job}"
        );
    }
    // The cluster's defaults are a flat dictionary, as upstream's OpClusterSetParams takes it.
    let job = submit(
        &s,
        "PUT",
        "/2/modify",
        json!({"beparams": {"default": {"vcpus": 2}}}),
    );
    assert_eq!(failure(&job).1, "Unknown parameter 'default'");
    let job = submit(&s, "PUT", "/2/modify", json!({"beparams": {"vcpus": "3"}}));
    assert_eq!(job["status"], "success", "{job}");
    let (_, info) = curl(&s, "GET", "/2/info", None, None);
    assert_eq!(info["beparams"]["default"]["vcpus"], 3, "{info}");
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_eq!(
        inst["beparams"]["vcpus"], 2,
        "a refused modify changed nothing: {inst}"
    );
    // The htools read the whole cluster (one mistyped value used to break them all).
    let (host, port) = s
        .base
        .trim_start_matches("https://")
        .rsplit_once(':')
        .unwrap();
    let out = Command::new("hbal")
        .args(["-m", &format!("https://admin:admin@{host}:{port}")])
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .expect("hbal is installed by .ci/run");
    assert!(
        out.status.success(),
        "hbal: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_config_sound(&s);
}

#[test]
fn nic_addresses_are_checked() {
    let s = start(&[]);
    assert_eq!(
        refused(
            &s,
            "POST",
            "/2/instances",
            create_body("web1.example.com", json!({"nics": [{"ip": "300.1.1.1"}]})),
        ),
        (
            "OpPrereqError".into(),
            "Invalid IP address '300.1.1.1'".into()
        )
    );
    create_ok(&s, "web1.example.com");
    let job = submit(
        &s,
        "PUT",
        "/2/instances/web1.example.com/modify",
        json!({"nics": [["modify", 0, {"ip": "999.1.1.1"}]]}),
    );
    assert_eq!(failure(&job).1, "Invalid IP address '999.1.1.1'");
    // One MAC, one instance.
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    let mac = inst["nic.macs"][0].as_str().unwrap().to_string();
    let job = submit(
        &s,
        "POST",
        "/2/instances",
        create_body(
            "web2.example.com",
            json!({"nics": [{"mac": mac.to_uppercase()}]}),
        ),
    );
    assert_eq!(
        failure(&job).1,
        format!("MAC address {mac} already in use in cluster")
    );
    assert_config_sound(&s);
}

#[test]
fn dry_run_changes_nothing_on_modify_and_reinstall() {
    let s = start(&[]);
    create_ok(&s, "web1.example.com");
    // Stopped, so that each opcode of the reinstall job passes its checks in a dry run too.
    let down = submit(
        &s,
        "PUT",
        "/2/instances/web1.example.com/shutdown",
        json!({}),
    );
    assert_eq!(down["status"], "success", "{down}");
    let (_, before) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    let job = submit(
        &s,
        "PUT",
        "/2/instances/web1.example.com/modify?dry-run=1",
        json!({"beparams": {"vcpus": 4}}),
    );
    assert_eq!(job["status"], "success", "{job}");
    let job = submit(
        &s,
        "POST",
        "/2/instances/web1.example.com/reinstall?dry-run=1",
        json!({"os": "debootstrap+default"}),
    );
    assert_eq!(job["status"], "success", "{job}");
    assert!(
        job["ops"]
            .as_array()
            .unwrap()
            .iter()
            .all(|op| op["dry_run"] == true),
        "every opcode of the reinstall is a dry run: {}",
        job["ops"]
    );
    let (_, after) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    for field in ["serial_no", "mtime", "beparams", "status"] {
        assert_eq!(before[field], after[field], "{field} changed in a dry run");
    }
    assert_config_sound(&s);
}

#[test]
fn an_unknown_iallocator_is_an_error_naming_it() {
    let s = start(&[]);
    let job = submit(
        &s,
        "POST",
        "/2/instances",
        create_body(
            "web1.example.com",
            json!({"iallocator": "no-such-allocator"}),
        ),
    );
    let (class, message) = failure(&job);
    assert_eq!(class, "OpExecError");
    assert!(
        message.contains("'no-such-allocator' not found"),
        "{message}"
    );
    let (_, list) = curl(&s, "GET", "/2/instances", None, None);
    assert_eq!(list, json!([]));
    assert_config_sound(&s);
}

/// Ids of every job the queue holds.
fn job_ids(s: &Server) -> Vec<u64> {
    let (_, jobs) = curl(s, "GET", "/2/jobs", None, None);
    jobs.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn node_evacuation_fails_when_an_instance_cannot_move() {
    let s = start(&[]);
    let plain = create_body("web1.example.com", json!({"pnode": "node1.example.com"}));
    assert_eq!(
        submit(&s, "POST", "/2/instances", plain)["status"],
        "success"
    );
    let before = job_ids(&s);
    let job = submit(
        &s,
        "POST",
        "/2/nodes/node1.example.com/evacuate",
        json!({"mode": "all"}),
    );
    let (class, message) = failure(&job);
    assert_eq!(class, "OpExecError");
    assert!(
        message.starts_with("Unable to evacuate instances web1.example.com"),
        "{message}"
    );
    assert_eq!(
        job_ids(&s).len(),
        before.len() + 1,
        "no child job was submitted"
    );
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_eq!(inst["pnode"], "node1.example.com");

    // A node whose instances can move: a dry run submits nothing and moves nothing.
    let drbd = json!({"__version__": 1, "name": "db1.example.com", "os": "debootstrap+default",
        "disk_template": "drbd", "disks": [{"size": 128}], "nics": [{}], "mode": "create",
        "pnode": "node2.example.com", "snode": "node3.example.com"});
    assert_eq!(
        submit(&s, "POST", "/2/instances", drbd)["status"],
        "success"
    );
    let before = job_ids(&s);
    let job = submit(
        &s,
        "POST",
        "/2/nodes/node2.example.com/evacuate?dry-run=1",
        json!({"mode": "primary-only"}),
    );
    assert_eq!(job["status"], "success", "{job}");
    assert_eq!(job["opresult"][0]["jobs"], json!([]), "{job}");
    assert_eq!(
        job_ids(&s).len(),
        before.len() + 1,
        "a dry run submitted children"
    );
    let (_, inst) = curl(&s, "GET", "/2/instances/db1.example.com", None, None);
    assert_eq!(inst["pnode"], "node2.example.com");
    assert_config_sound(&s);
}

#[test]
fn concurrent_creates_never_share_an_address() {
    // Every backend call takes 50 ms, so the creates really overlap.
    let s = start(&["--fake-delay-ms", "50"]);
    let net = json!({"network_name": "net1", "network": "10.9.0.0/28", "gateway": "10.9.0.1",
                     "mac_prefix": "aa:bb:cc"});
    assert_eq!(submit(&s, "POST", "/2/networks", net)["status"], "success");
    let connect =
        json!({"group_name": "default", "network_mode": "bridged", "network_link": "br0"});
    let job = submit(&s, "PUT", "/2/networks/net1/connect", connect);
    assert_eq!(job["status"], "success", "{job}");
    // 20 creates at once, spread over the three nodes so they run in parallel; the /28 has
    // 13 free addresses (16 less network, broadcast and gateway).
    let ids: Vec<u64> = (0..20)
        .map(|n| {
            let body = create_body(
                &format!("vm{n}.example.com"),
                json!({"nics": [{"network": "net1", "ip": "pool"}],
                       "pnode": format!("node{}.example.com", n % 3 + 1)}),
            );
            let (code, id) = curl(&s, "POST", "/2/instances", ADMIN, Some(&body.to_string()));
            assert_eq!(code, 200, "{id}");
            id.as_u64().unwrap()
        })
        .collect();
    let mut ok = 0;
    for id in ids {
        let job = wait_job(&s, id);
        if job["status"] == "success" {
            ok += 1;
        } else {
            assert!(
                failure(&job).1.contains("has no free addresses"),
                "{}",
                job["opresult"]
            );
        }
    }
    assert_eq!(ok, 13, "every free address is used once, no more");
    let (_, list) = curl(&s, "GET", "/2/instances?bulk=1", None, None);
    let mut ips: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["nic.ips"][0].as_str().unwrap().to_string())
        .collect();
    for inst in list.as_array().unwrap() {
        let mac = inst["nic.macs"][0].as_str().unwrap();
        assert!(
            mac.starts_with("aa:bb:cc:"),
            "the network's MAC prefix: {mac}"
        );
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 13, "addresses are unique: {ips:?}");
    let (_, net) = curl(&s, "GET", "/2/networks/net1", None, None);
    assert_eq!(net["free_count"], 0, "{net}");
    // Network, gateway and broadcast addresses are reserved outside instances (upstream).
    assert_eq!(
        net["external_reservations"], "10.9.0.0, 10.9.0.1, 10.9.0.15",
        "{net}"
    );
    assert_config_sound(&s);
}

#[test]
fn disk_sizes_no_node_could_hold_are_refused() {
    let s = start(&[]);
    let huge = create_body(
        "web2.example.com",
        json!({"disks": [{"size": 18446744073709551615u64}]}),
    );
    let (class, message) = failure(&submit(&s, "POST", "/2/instances", huge));
    assert_eq!(class, "OpPrereqError");
    assert!(
        message.contains("larger than the largest supported"),
        "{message}"
    );
    create_ok(&s, "web1.example.com");
    for amount in [json!(18446744073709551615u64), json!("1e20G")] {
        let body = json!({"amount": amount}).to_string();
        let path = "/2/instances/web1.example.com/disk/0/grow";
        let (code, answer) = curl(&s, "POST", path, ADMIN, Some(&body));
        // Refused before a job exists (400), or the job fails: either way nothing grows.
        if code == 200 {
            let job = wait_job(&s, answer.as_u64().unwrap());
            assert_eq!(job["status"], "error", "{job}");
        } else {
            assert_eq!(code, 400, "{answer}");
        }
    }
    let (_, inst) = curl(&s, "GET", "/2/instances/web1.example.com", None, None);
    assert_eq!(
        inst["disk.sizes"],
        json!([128]),
        "a refused grow changed nothing"
    );
    assert_config_sound(&s);
}

#[test]
fn hypervisor_nic_node_and_disk_parameters_are_typed_per_hypervisor_and_template() {
    let s = start(&[]);
    // The fake hypervisor has no kernel: upstream's HypervisorError, as a real Ganeti answers.
    assert_eq!(
        refused(
            &s,
            "POST",
            "/2/instances",
            create_body(
                "hv1.example.com",
                json!({"hvparams": {"kernel_path": "/x"}}),
            ),
        ),
        (
            "HypervisorError".into(),
            "Parameter 'kernel_path' is not supported".into()
        )
    );
    assert_eq!(
        refused(
            &s,
            "POST",
            "/2/instances",
            create_body("hv2.example.com", json!({"hvparams": {"bogus": 1}})),
        ),
        (
            "TypeEnforcementError".into(),
            "Unknown parameter 'bogus'".into()
        )
    );
    create_ok(&s, "hv3.example.com");
    let job = submit(
        &s,
        "PUT",
        "/2/instances/hv3.example.com/modify",
        json!({"hvparams": {"kernel_path": "/x"}}),
    );
    assert_eq!(failure(&job).0, "HypervisorError");
    // Cluster-wide: per hypervisor and per disk template, NIC modes, node parameters.
    for (body, class, message) in [
        (
            json!({"hvparams": {"kvm": {"acpi": "maybe"}}}),
            "TypeEnforcementError",
            "'acpi' (value maybe) is not a valid boolean",
        ),
        (
            json!({"hvparams": {"vmware": {}}}),
            "TypeEnforcementError",
            "Unknown hypervisor 'vmware'",
        ),
        (
            json!({"diskparams": {"drbd": {"resync-rate": "fast"}}}),
            "TypeEnforcementError",
            "'resync-rate' (value fast) is not a valid integer",
        ),
        (
            json!({"nicparams": {"mode": "weird"}}),
            "ConfigurationError",
            "Invalid NIC mode 'weird'",
        ),
        (
            json!({"ndparams": {"cpu_speed": "fast"}}),
            "TypeEnforcementError",
            "'cpu_speed' (value fast) is not a valid float",
        ),
        (
            json!({"ipolicy": {"vcpu-ratio": "x"}}),
            "TypeEnforcementError",
            "'vcpu-ratio' (value x) is not a valid float",
        ),
        (
            json!({"ipolicy": {"bogus": 1}}),
            "TypeEnforcementError",
            "Invalid keys in ipolicy: bogus",
        ),
        (
            json!({"ipolicy": {"std": {"memory-size": "big"}}}),
            "TypeEnforcementError",
            "'memory-size' (value big) is not a valid integer",
        ),
    ] {
        let job = submit(&s, "PUT", "/2/modify", body.clone());
        assert_eq!(failure(&job), (class.into(), message.into()), "{body}");
    }
    let job = submit(
        &s,
        "PUT",
        "/2/groups/default/modify",
        json!({"ndparams": {"spindle_count": "many"}}),
    );
    assert_eq!(failure(&job).0, "TypeEnforcementError");
    let job = submit(
        &s,
        "POST",
        "/2/nodes/node2.example.com/modify",
        json!({"ndparams": {"ssh_port": "x"}}),
    );
    assert_eq!(failure(&job).0, "TypeEnforcementError");
    assert_eq!(
        refused(
            &s,
            "PUT",
            "/2/groups/default/modify",
            json!({"custom_ipolicy": {"disk-templates": ["floppy"]}}),
        ),
        (
            "TypeEnforcementError".into(),
            "Invalid disk template specified: floppy".into()
        )
    );
    // Convertible values are stored converted.
    let job = submit(
        &s,
        "PUT",
        "/2/modify",
        json!({"ndparams": {"cpu_speed": "1.5"}}),
    );
    assert_eq!(job["status"], "success", "{job}");
    let (_, info) = curl(&s, "GET", "/2/info", None, None);
    assert_eq!(info["ndparams"]["cpu_speed"], 1.5);
    assert_config_sound(&s);
}

fn job_of(s: &Server, op: Value) -> Value {
    submit(s, "POST", "/2/jobs", json!({"ops": [op]}))
}

#[test]
fn group_changes_and_evacuations_compute_their_moves_first() {
    let s = start(&[]);
    assert_eq!(
        submit(&s, "POST", "/2/groups", json!({"name": "g2"}))["status"],
        "success"
    );
    let moved = submit(
        &s,
        "PUT",
        "/2/groups/g2/assign-nodes?force=1",
        json!({"nodes": ["node3.example.com"]}),
    );
    assert_eq!(moved["status"], "success", "{moved}");
    let pinned = |name: &str, template: &str| {
        let body = create_body(
            name,
            json!({"disk_template": template, "pnode": "node1.example.com",
                   "disks": if template == "diskless" { json!([]) } else { json!([{"size": 128}]) }}),
        );
        assert_eq!(
            submit(&s, "POST", "/2/instances", body)["status"],
            "success"
        );
    };
    pinned("shared1.example.com", "diskless");
    pinned("local1.example.com", "plain");

    // Node-local disks cannot change group: the parent fails and submits nothing.
    let before = job_ids(&s).len();
    let job = job_of(
        &s,
        json!({"OP_ID": "OP_INSTANCE_CHANGE_GROUP", "instance_name": "local1.example.com",
               "target_groups": ["g2"]}),
    );
    let (class, message) = failure(&job);
    assert_eq!(class, "OpPrereqError");
    assert!(message.starts_with("Can't compute solution for changing group of instance 'local1.example.com' using iallocator 'hail'"), "{message}");
    assert_eq!(job["opresult"][0][1][1], "insufficient_resources");
    assert_eq!(job_ids(&s).len(), before + 1, "no child job");
    // The same for a group evacuation that would leave it behind.
    let job = job_of(
        &s,
        json!({"OP_ID": "OP_GROUP_EVACUATE", "group_name": "default"}),
    );
    assert!(
        failure(&job)
            .1
            .starts_with("Can't compute group evacuation using iallocator 'hail'")
    );
    assert_eq!(job_ids(&s).len(), before + 2, "still no child job");
    // Its own group is no target.
    let job = job_of(
        &s,
        json!({"OP_ID": "OP_INSTANCE_CHANGE_GROUP", "instance_name": "shared1.example.com",
               "target_groups": ["default"]}),
    );
    assert_eq!(job["opresult"][0][1][1], "wrong_input", "{job}");
    // A dry run computes and moves nothing.
    let job = job_of(
        &s,
        json!({"OP_ID": "OP_INSTANCE_CHANGE_GROUP", "instance_name": "shared1.example.com",
               "target_groups": ["g2"], "dry_run": true}),
    );
    assert_eq!(job["opresult"][0], json!({"jobs": []}), "{job}");
    // Shared storage moves: one child job migrates it to the target group's node.
    let job = job_of(
        &s,
        json!({"OP_ID": "OP_INSTANCE_CHANGE_GROUP", "instance_name": "shared1.example.com",
               "target_groups": ["g2"]}),
    );
    assert_eq!(job["status"], "success", "{job}");
    let child = job["opresult"][0]["jobs"][0][1]
        .as_u64()
        .expect("a child job");
    let child = wait_job(&s, child);
    assert_eq!(child["status"], "success", "{child}");
    assert_eq!(child["ops"][0]["OP_ID"], "OP_INSTANCE_MIGRATE");
    let (_, inst) = curl(&s, "GET", "/2/instances/shared1.example.com", None, None);
    assert_eq!(inst["pnode"], "node3.example.com");
    assert_config_sound(&s);
}
