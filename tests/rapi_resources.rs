//! Every RAPI resource and method over HTTPS against the real binary: the success path and at
//! least one error path each, with status codes, headers and JSON shapes.

mod common;
use common::*;
use serde_json::{Value, json};

const ADMIN: Option<&str> = Some("admin:admin");
const VIEWER: Option<&str> = Some("viewer:viewer");

/// One request; asserts the HTTP code and, for errors, Ganeti's `{code, message, explain}` body.
fn call(s: &Server, method: &str, path: &str, body: Option<&str>, want: u16) -> Value {
    let (code, headers, answer) = curl_full(s, method, path, ADMIN, body);
    assert_eq!(code, want, "{method} {path}: {answer}");
    assert!(
        headers.contains("content-type: application/json"),
        "{method} {path}: {headers}"
    );
    if want >= 400 {
        assert_eq!(answer["code"], want, "{method} {path}: {answer}");
        assert!(answer["message"].is_string(), "{method} {path}: {answer}");
        assert!(answer["explain"].is_string(), "{method} {path}: {answer}");
    }
    answer
}

/// A job-submitting request: answers the finished job.
fn job(s: &Server, method: &str, path: &str, body: Option<&str>) -> Value {
    let id = call(s, method, path, body, 200);
    assert!(id.is_u64(), "{method} {path} answers a job id: {id}");
    wait_job(s, id.as_u64().unwrap())
}

fn succeeds(s: &Server, method: &str, path: &str, body: Option<&str>) -> Value {
    let finished = job(s, method, path, body);
    assert_eq!(finished["status"], "success", "{method} {path}: {finished}");
    finished
}

/// A job that fails: its first failed opcode's error has `kind` as its ecode or, for errors
/// without one (TagError, OpExecError), as its class.
fn fails_with(s: &Server, method: &str, path: &str, body: Option<&str>, kind: &str) {
    let finished = job(s, method, path, body);
    assert_eq!(finished["status"], "error", "{method} {path}: {finished}");
    let failed = finished["opstatus"]
        .as_array()
        .unwrap()
        .iter()
        .position(|st| st == "error")
        .unwrap();
    let error = &finished["opresult"][failed];
    assert!(
        error[1][1] == kind || error[0] == kind,
        "{method} {path}: wanted {kind}, got {error}"
    );
}

/// The identifiers of a non-bulk list, under the key upstream uses for that resource.
fn keyed(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| o[key].as_str().unwrap().to_string())
        .collect()
}

fn ids(list: &Value) -> Vec<String> {
    keyed(list, "id")
}

/// Groups and networks are listed as `{"name", "uri"}` upstream.
fn names(list: &Value) -> Vec<String> {
    keyed(list, "name")
}

#[test]
fn cluster_level_resources() {
    let s = start(&[]);
    assert!(s.base.starts_with("https://"));
    assert_eq!(call(&s, "GET", "/", None, 200), Value::Null);
    assert_eq!(call(&s, "GET", "/2", None, 200), Value::Null);
    assert_eq!(call(&s, "GET", "/version", None, 200), json!(2));
    call(&s, "PUT", "/version", None, 501);
    let info = call(&s, "GET", "/2/info", None, 200);
    for key in [
        "name",
        "master",
        "software_version",
        "protocol_version",
        "enabled_hypervisors",
        "default_hypervisor",
        "hvparams",
        "beparams",
        "ipolicy",
        "tags",
        "uuid",
    ] {
        assert!(info.get(key).is_some(), "/2/info has {key}: {info}");
    }
    let features = call(&s, "GET", "/2/features", None, 200);
    assert!(
        features
            .as_array()
            .unwrap()
            .contains(&json!("node-evac-res1"))
    );
    call(&s, "POST", "/2/features", None, 501);

    succeeds(&s, "PUT", "/2/modify", Some(r#"{"max_running_jobs": 8}"#));
    assert_eq!(call(&s, "GET", "/2/info", None, 200)["max_running_jobs"], 8);
    let bad = call(&s, "PUT", "/2/modify", Some(r#"{"no_such": 1}"#), 400);
    assert!(
        bad["message"].as_str().unwrap().contains("no_such"),
        "{bad}"
    );
    succeeds(&s, "PUT", "/2/redistribute-config", None);
    call(&s, "GET", "/2/redistribute-config", None, 501);

    succeeds(&s, "PUT", "/2/tags?tag=prod&tag=eu", None);
    let mut tags: Vec<String> =
        serde_json::from_value(call(&s, "GET", "/2/tags", None, 200)).unwrap();
    tags.sort();
    assert_eq!(tags, ["eu", "prod"]);
    succeeds(&s, "DELETE", "/2/tags?tag=eu", None);
    assert_eq!(call(&s, "GET", "/2/tags", None, 200), json!(["prod"]));
    fails_with(&s, "PUT", "/2/tags?tag=bad%20tag", None, "TagError");

    let os = call(&s, "GET", "/2/os", None, 200);
    assert!(
        os.as_array()
            .unwrap()
            .contains(&json!("debootstrap+default"))
    );
    call(&s, "DELETE", "/2/os", None, 501);

    call(&s, "GET", "/2/no-such-resource", None, 404);
    call(&s, "GET", "/3/info", None, 404);
}

#[test]
fn instance_resources() {
    let s = start(&[]);
    let create = json!({"__version__": 1, "mode": "create", "name": "vm1.example.com",
        "disk_template": "drbd", "disks": [{"size": 1024}], "nics": [{}],
        "os_type": "debootstrap+default", "beparams": {"memory": 256}})
    .to_string();
    succeeds(&s, "POST", "/2/instances", Some(&create));
    fails_with(&s, "POST", "/2/instances", Some(&create), "already_exists");
    call(&s, "POST", "/2/instances", Some("[1, 2]"), 400);
    call(&s, "POST", "/2/instances", Some("{not json"), 400);

    let list = call(&s, "GET", "/2/instances", None, 200);
    assert_eq!(
        list,
        json!([{"id": "vm1.example.com", "uri": "/2/instances/vm1.example.com"}])
    );
    let bulk = call(&s, "GET", "/2/instances?bulk=1", None, 200);
    for key in [
        "name",
        "pnode",
        "snodes",
        "status",
        "oper_state",
        "admin_state",
        "disk_template",
        "disk.sizes",
        "nic.macs",
        "beparams",
        "hvparams",
        "tags",
        "uuid",
        "ctime",
        "mtime",
    ] {
        assert!(bulk[0].get(key).is_some(), "bulk instance has {key}");
    }
    call(&s, "GET", "/2/instances?bulk=maybe", None, 400);

    let inst = call(&s, "GET", "/2/instances/vm1.example.com", None, 200);
    assert_eq!(inst["status"], "running");
    call(&s, "GET", "/2/instances/nosuch.example.com", None, 404);

    let info = succeeds(
        &s,
        "GET",
        "/2/instances/vm1.example.com/info?static=1",
        None,
    );
    assert!(info["opresult"][0]["vm1.example.com"].is_object());

    let console = call(&s, "GET", "/2/instances/vm1.example.com/console", None, 200);
    assert_eq!(console["instance"], "vm1.example.com", "{console}");
    assert!(console["kind"].is_string(), "{console}");

    succeeds(
        &s,
        "POST",
        "/2/instances/vm1.example.com/reboot?type=hard",
        None,
    );
    call(
        &s,
        "POST",
        "/2/instances/vm1.example.com/reboot?type=gentle",
        None,
        400,
    );
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/shutdown",
        Some(r#"{"timeout": 5}"#),
    );
    assert_eq!(
        call(&s, "GET", "/2/instances/vm1.example.com", None, 200)["status"],
        "ADMIN_down"
    );
    call(&s, "GET", "/2/instances/vm1.example.com/console", None, 503);
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/activate-disks",
        None,
    );
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/deactivate-disks",
        None,
    );
    succeeds(
        &s,
        "POST",
        "/2/instances/vm1.example.com/reinstall",
        Some(r#"{"os": "debootstrap+minimal", "start": false}"#),
    );
    fails_with(
        &s,
        "POST",
        "/2/instances/vm1.example.com/reinstall",
        Some(r#"{"os": "nosuch"}"#),
        "OpExecError",
    );
    succeeds(
        &s,
        "POST",
        "/2/instances/vm1.example.com/recreate-disks",
        None,
    );
    succeeds(
        &s,
        "POST",
        "/2/instances/vm1.example.com/disk/0/grow",
        Some(r#"{"amount": 512, "wait_for_sync": false}"#),
    );
    call(
        &s,
        "POST",
        "/2/instances/vm1.example.com/disk/x/grow",
        Some("{}"),
        400,
    );
    fails_with(
        &s,
        "POST",
        "/2/instances/vm1.example.com/disk/7/grow",
        Some(r#"{"amount": 512}"#),
        "wrong_input",
    );
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/modify",
        Some(r#"{"beparams": {"memory": 512}}"#),
    );
    assert_eq!(
        call(&s, "GET", "/2/instances/vm1.example.com", None, 200)["beparams"]["memory"],
        512
    );
    call(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/modify",
        Some(r#"{"bogus": 1}"#),
        400,
    );
    succeeds(&s, "PUT", "/2/instances/vm1.example.com/startup", None);
    succeeds(
        &s,
        "POST",
        "/2/instances/vm1.example.com/replace-disks?mode=replace_on_secondary",
        None,
    );
    call(
        &s,
        "POST",
        "/2/instances/vm1.example.com/replace-disks?disks=a,b",
        None,
        400,
    );
    succeeds(&s, "PUT", "/2/instances/vm1.example.com/migrate", None);
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/failover",
        Some(r#"{"ignore_consistency": true}"#),
    );
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/prepare-export?mode=local",
        None,
    );
    call(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/prepare-export",
        None,
        400,
    );
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/export",
        Some(r#"{"mode": "local", "destination": "node3.example.com"}"#),
    );
    call(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/export",
        Some(r#"{"mode": "local"}"#),
        400,
    );

    succeeds(&s, "PUT", "/2/instances/vm1.example.com/tags?tag=web", None);
    assert_eq!(
        call(&s, "GET", "/2/instances/vm1.example.com/tags", None, 200),
        json!(["web"])
    );
    call(&s, "GET", "/2/instances/nosuch/tags", None, 404);
    succeeds(
        &s,
        "DELETE",
        "/2/instances/vm1.example.com/tags?tag=web",
        None,
    );

    succeeds(&s, "PUT", "/2/instances/vm1.example.com/shutdown", None);
    succeeds(
        &s,
        "PUT",
        "/2/instances/vm1.example.com/rename",
        Some(r#"{"new_name": "vm2.example.com", "name_check": false, "ip_check": false}"#),
    );
    call(
        &s,
        "PUT",
        "/2/instances/vm2.example.com/rename",
        Some("{}"),
        400,
    );
    call(&s, "GET", "/2/instances/vm1.example.com", None, 404);
    call(
        &s,
        "POST",
        "/2/instances/vm2.example.com/no-such-action",
        None,
        404,
    );
    call(&s, "PATCH", "/2/instances/vm2.example.com", None, 501);

    succeeds(&s, "DELETE", "/2/instances/vm2.example.com", None);
    fails_with(
        &s,
        "DELETE",
        "/2/instances/vm2.example.com",
        None,
        "unknown_entity",
    );

    let multi = json!({"instances": [
        {"name": "m1.example.com", "disk_template": "plain", "disks": [{"size": 512}],
         "nics": [{}], "os_type": "image", "mode": "create"},
        {"name": "m2.example.com", "disk_template": "plain", "disks": [{"size": 512}],
         "nics": [{}], "os_type": "image", "mode": "create"}]})
    .to_string();
    let alloc = succeeds(&s, "POST", "/2/instances-multi-alloc", Some(&multi));
    assert!(alloc["opresult"][0]["jobs"].is_array(), "{alloc}");
    call(
        &s,
        "POST",
        "/2/instances-multi-alloc",
        Some(r#"{"instances": 1}"#),
        400,
    );
}

#[test]
fn node_group_and_network_resources() {
    let s = start(&[]);
    let nodes = call(&s, "GET", "/2/nodes", None, 200);
    assert_eq!(
        ids(&nodes),
        [
            "node1.example.com",
            "node2.example.com",
            "node3.example.com"
        ]
    );
    let bulk = call(&s, "GET", "/2/nodes?bulk=1", None, 200);
    for key in [
        "name",
        "mtotal",
        "mfree",
        "dtotal",
        "dfree",
        "ctotal",
        "role",
        "pinst_cnt",
        "group.uuid",
        "offline",
        "drained",
        "uuid",
    ] {
        assert!(bulk[0].get(key).is_some(), "bulk node has {key}");
    }
    call(&s, "GET", "/2/nodes/node1.example.com", None, 200);
    call(&s, "GET", "/2/nodes/nosuch", None, 404);
    assert_eq!(
        call(&s, "GET", "/2/nodes/node1.example.com/role", None, 200),
        json!("master")
    );
    succeeds(
        &s,
        "PUT",
        "/2/nodes/node3.example.com/role",
        Some(r#""drained""#),
    );
    assert_eq!(
        call(&s, "GET", "/2/nodes/node3.example.com/role", None, 200),
        json!("drained")
    );
    call(
        &s,
        "PUT",
        "/2/nodes/node3.example.com/role",
        Some(r#""boss""#),
        400,
    );
    succeeds(
        &s,
        "PUT",
        "/2/nodes/node3.example.com/role",
        Some(r#""regular""#),
    );
    succeeds(
        &s,
        "POST",
        "/2/nodes/node3.example.com/modify",
        Some(r#"{"drained": false}"#),
    );
    call(
        &s,
        "POST",
        "/2/nodes/node3.example.com/modify",
        Some(r#"{"colour": 1}"#),
        400,
    );
    succeeds(
        &s,
        "POST",
        "/2/nodes/node2.example.com/evacuate",
        Some(r#"{"mode": "all"}"#),
    );
    call(
        &s,
        "POST",
        "/2/nodes/node2.example.com/evacuate",
        Some(r#"{"mode": "sideways"}"#),
        400,
    );
    succeeds(&s, "POST", "/2/nodes/node2.example.com/migrate", None);
    call(
        &s,
        "POST",
        "/2/nodes/node2.example.com/migrate?live=1&mode=live",
        None,
        400,
    );
    succeeds(
        &s,
        "POST",
        "/2/nodes/node2.example.com/powercycle?force=1",
        None,
    );
    succeeds(
        &s,
        "GET",
        "/2/nodes/node1.example.com/storage?output_fields=name,size",
        None,
    );
    call(&s, "GET", "/2/nodes/node1.example.com/storage", None, 400);
    succeeds(
        &s,
        "PUT",
        "/2/nodes/node1.example.com/storage/modify?storage_type=lvm-pv&name=/dev/sda1&allocatable=1",
        None,
    );
    // Only physical volumes have a changeable field (upstream MODIFIABLE_STORAGE_FIELDS).
    fails_with(
        &s,
        "PUT",
        "/2/nodes/node1.example.com/storage/modify?storage_type=lvm-vg&name=xenvg&allocatable=1",
        None,
        "wrong_input",
    );
    call(
        &s,
        "PUT",
        "/2/nodes/node1.example.com/storage/modify?storage_type=lvm-vg",
        None,
        400,
    );
    succeeds(
        &s,
        "PUT",
        "/2/nodes/node1.example.com/storage/repair?storage_type=lvm-vg&name=xenvg",
        None,
    );
    fails_with(
        &s,
        "PUT",
        "/2/nodes/node1.example.com/storage/repair?storage_type=file&name=/srv",
        None,
        "wrong_input",
    );
    call(
        &s,
        "PUT",
        "/2/nodes/node1.example.com/storage/repair",
        None,
        400,
    );
    succeeds(&s, "PUT", "/2/nodes/node1.example.com/tags?tag=rack1", None);
    assert_eq!(
        call(&s, "GET", "/2/nodes/node1.example.com/tags", None, 200),
        json!(["rack1"])
    );
    call(&s, "GET", "/2/nodes/nosuch/tags", None, 404);

    // Groups
    succeeds(&s, "POST", "/2/groups", Some(r#"{"name": "rack2"}"#));
    fails_with(
        &s,
        "POST",
        "/2/groups",
        Some(r#"{"name": "rack2"}"#),
        "already_exists",
    );
    assert_eq!(
        names(&call(&s, "GET", "/2/groups", None, 200)),
        ["default", "rack2"]
    );
    let group = call(&s, "GET", "/2/groups/rack2", None, 200);
    for key in [
        "name",
        "uuid",
        "alloc_policy",
        "node_cnt",
        "node_list",
        "ipolicy",
        "tags",
    ] {
        assert!(group.get(key).is_some(), "group has {key}");
    }
    call(&s, "GET", "/2/groups/nosuch", None, 404);
    succeeds(
        &s,
        "PUT",
        "/2/groups/rack2/modify",
        Some(r#"{"alloc_policy": "last_resort"}"#),
    );
    // The client's custom_* names are renamed to the opcode's parameters, as upstream.
    succeeds(
        &s,
        "PUT",
        "/2/groups/rack2/modify",
        Some(r#"{"custom_ndparams": {"spindle_count": 2}}"#),
    );
    assert_eq!(
        call(&s, "GET", "/2/groups/rack2", None, 200)["ndparams"]["spindle_count"],
        2
    );
    call(
        &s,
        "PUT",
        "/2/groups/rack2/modify",
        Some(r#"{"alloc_policy": 3}"#),
        400,
    );
    succeeds(
        &s,
        "PUT",
        "/2/groups/rack2/assign-nodes",
        Some(r#"{"nodes": ["node3.example.com"]}"#),
    );
    assert_eq!(call(&s, "GET", "/2/groups/rack2", None, 200)["node_cnt"], 1);
    fails_with(
        &s,
        "PUT",
        "/2/groups/rack2/assign-nodes",
        Some(r#"{"nodes": ["nosuch.example.com"]}"#),
        "unknown_entity",
    );
    succeeds(&s, "PUT", "/2/groups/rack2/tags?tag=cold", None);
    assert_eq!(
        call(&s, "GET", "/2/groups/rack2/tags", None, 200),
        json!(["cold"])
    );
    succeeds(
        &s,
        "PUT",
        "/2/groups/rack2/rename",
        Some(r#"{"new_name": "rack3"}"#),
    );
    call(&s, "PUT", "/2/groups/rack3/rename", Some("{}"), 400);
    succeeds(
        &s,
        "PUT",
        "/2/groups/default/assign-nodes",
        Some(r#"{"nodes": ["node3.example.com"]}"#),
    );
    succeeds(&s, "DELETE", "/2/groups/rack3", None);
    fails_with(&s, "DELETE", "/2/groups/rack3", None, "unknown_entity");

    // Networks
    succeeds(
        &s,
        "POST",
        "/2/networks",
        Some(r#"{"network_name": "lan", "network": "10.1.0.0/24", "gateway": "10.1.0.1"}"#),
    );
    call(
        &s,
        "POST",
        "/2/networks",
        Some(r#"{"network_name": "bad"}"#),
        400,
    );
    assert_eq!(names(&call(&s, "GET", "/2/networks", None, 200)), ["lan"]);
    let net = call(&s, "GET", "/2/networks/lan", None, 200);
    assert_eq!(net["gateway"], "10.1.0.1");
    call(&s, "GET", "/2/networks/nosuch", None, 404);
    succeeds(
        &s,
        "PUT",
        "/2/networks/lan/connect",
        Some(r#"{"group_name": "default", "network_mode": "bridged", "network_link": "br0"}"#),
    );
    fails_with(
        &s,
        "PUT",
        "/2/networks/lan/connect",
        Some(r#"{"group_name": "nosuch", "network_mode": "bridged", "network_link": "br0"}"#),
        "unknown_entity",
    );
    succeeds(
        &s,
        "PUT",
        "/2/networks/lan/modify",
        Some(r#"{"add_reserved_ips": ["10.1.0.5"]}"#),
    );
    call(
        &s,
        "PUT",
        "/2/networks/lan/modify",
        Some(r#"{"name": "x"}"#),
        400,
    );
    succeeds(&s, "PUT", "/2/networks/lan/tags?tag=dmz", None);
    assert_eq!(
        call(&s, "GET", "/2/networks/lan/tags", None, 200),
        json!(["dmz"])
    );
    succeeds(
        &s,
        "PUT",
        "/2/networks/lan/disconnect",
        Some(r#"{"group_name": "default"}"#),
    );
    call(&s, "PUT", "/2/networks/lan/disconnect", Some("{}"), 400);
    succeeds(&s, "DELETE", "/2/networks/lan", None);
    fails_with(&s, "DELETE", "/2/networks/lan", None, "unknown_entity");
}

#[test]
fn job_and_query_resources() {
    let s = start(&[]);
    let first = delay_job(&s, 0.05, json!({}));
    wait_job(&s, first);
    let list = call(&s, "GET", "/2/jobs", None, 200);
    assert_eq!(
        list[0],
        json!({"id": first, "uri": format!("/2/jobs/{first}")})
    );
    let bulk = call(&s, "GET", "/2/jobs?bulk=1", None, 200);
    assert_eq!(bulk[0]["id"], first);
    let one = call(&s, "GET", &format!("/2/jobs/{first}"), None, 200);
    for key in [
        "id",
        "ops",
        "status",
        "opstatus",
        "opresult",
        "oplog",
        "received_ts",
        "start_ts",
        "end_ts",
        "summary",
    ] {
        assert!(one.get(key).is_some(), "job has {key}");
    }
    call(&s, "GET", "/2/jobs/424242", None, 404);
    call(&s, "GET", "/2/jobs/abc", None, 400);
    assert_eq!(
        call(&s, "DELETE", &format!("/2/jobs/{first}"), None, 200)[0],
        false,
        "a finished job cannot be canceled"
    );
    let wait =
        json!({"fields": ["status"], "previous_job_info": null, "previous_log_serial": null})
            .to_string();
    let changed = call(
        &s,
        "GET",
        &format!("/2/jobs/{first}/wait"),
        Some(&wait),
        200,
    );
    assert_eq!(changed["job_info"], json!(["success"]));
    call(
        &s,
        "GET",
        &format!("/2/jobs/{first}/wait"),
        Some(r#"{"fields": "status"}"#),
        400,
    );
    let (code, _) = curl(
        &s,
        "GET",
        &format!("/2/jobs/{first}/wait"),
        VIEWER,
        Some(&wait),
    );
    assert_eq!(code, 403, "waiting needs write access");

    // /2/query
    let q = call(&s, "GET", "/2/query/node?fields=name,mtotal", None, 200);
    assert_eq!(q["fields"][0]["name"], "name");
    assert_eq!(q["data"].as_array().unwrap().len(), 3);
    assert_eq!(q["data"][0][0], json!([0, "node1.example.com"]));
    call(&s, "GET", "/2/query/node", None, 400);
    call(&s, "GET", "/2/query/toaster?fields=name", None, 404);
    let filtered = call(
        &s,
        "PUT",
        "/2/query/node",
        Some(
            r#"{"fields": ["name"], "qfilter": ["|", ["=", "name", "node2.example.com"], ["=~", "name", "^node3"]]}"#,
        ),
        200,
    );
    assert_eq!(
        filtered["data"],
        json!([[[0, "node2.example.com"]], [[0, "node3.example.com"]]])
    );
    let legacy = call(
        &s,
        "PUT",
        "/2/query/job",
        Some(&json!({"fields": ["id", "status"], "filter": ["=", "id", first]}).to_string()),
        200,
    );
    assert_eq!(legacy["data"], json!([[[0, first], [0, "success"]]]));
    let bad = call(
        &s,
        "PUT",
        "/2/query/node",
        Some(r#"{"fields": ["name"], "qfilter": ["~~", "name", 1]}"#),
        400,
    );
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .contains("Unknown operator"),
        "{bad}"
    );
    call(
        &s,
        "PUT",
        "/2/query/node",
        Some(r#"{"fields": ["name"], "qfilter": ["=", "colour", 1]}"#),
        400,
    );
    let fields = call(
        &s,
        "GET",
        "/2/query/instance/fields?fields=name,bogus",
        None,
        200,
    );
    assert_eq!(fields["fields"][1]["kind"], "unknown");
    call(&s, "GET", "/2/query/toaster/fields", None, 404);
    let (code, _) = curl(&s, "GET", "/2/query/node?fields=name", None, None);
    assert_eq!(code, 401, "queries need credentials");
}

#[test]
fn filter_rules_pause_reject_and_rate_limit_jobs() {
    let s = start(&[]);
    call(&s, "GET", "/2/filters", None, 200);
    let pause = call(
        &s,
        "POST",
        "/2/filters",
        Some(
            r#"{"priority": 1, "predicates": [["opcode", ["=", "OP_ID", "OP_TEST_DELAY"]]], "action": "PAUSE", "reason": [["me", "maintenance", 1]]}"#,
        ),
        200,
    );
    let uuid = pause
        .as_str()
        .expect("POST answers the rule's uuid")
        .to_string();
    let listed = call(&s, "GET", "/2/filters", None, 200);
    assert_eq!(
        listed,
        json!([{"uuid": uuid, "uri": format!("/2/filters/{uuid}")}])
    );
    let rule = call(&s, "GET", &format!("/2/filters/{uuid}"), None, 200);
    assert_eq!(rule["action"], "PAUSE");
    assert_eq!(rule["priority"], 1);
    assert_eq!(rule["reason_trail"][0], json!(["me", "maintenance", 1]));
    assert_eq!(rule["reason_trail"][1][0], "luxid");
    assert_eq!(call(&s, "GET", "/2/filters?bulk=1", None, 200)[0], rule);

    let held = delay_job(&s, 0.05, json!({}));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        call(&s, "GET", &format!("/2/jobs/{held}"), None, 200)["status"],
        "queued",
        "a paused job stays queued"
    );

    // Replace the rule in place: REJECT cancels matching queued jobs.
    let same = call(
        &s,
        "PUT",
        &format!("/2/filters/{uuid}"),
        Some(r#"{"predicates": [["jobid", [">", "id", 0]]], "action": "REJECT"}"#),
        200,
    );
    assert_eq!(same, json!(uuid));
    assert_eq!(wait_job(&s, held)["status"], "canceled");
    call(&s, "DELETE", &format!("/2/filters/{uuid}"), None, 200);
    call(&s, "DELETE", &format!("/2/filters/{uuid}"), None, 404);
    call(&s, "GET", &format!("/2/filters/{uuid}"), None, 404);

    // At most one job matched by a RATE_LIMIT 1 rule runs at a time.
    call(
        &s,
        "POST",
        "/2/filters",
        Some(
            r#"{"predicates": [["reason", ["=", "reason", "batch"]]], "action": ["RATE_LIMIT", 1]}"#,
        ),
        200,
    );
    let batch: Vec<u64> = (0..3)
        .map(|_| delay_job(&s, 0.3, json!({"reason": [["test", "batch", 0]]})))
        .collect();
    let mut spans: Vec<(f64, f64)> = batch
        .iter()
        .map(|id| {
            let j = wait_job(&s, *id);
            assert_eq!(j["status"], "success", "{j}");
            let ts = |k: &str| j[k][0].as_f64().unwrap() + j[k][1].as_f64().unwrap() / 1e6;
            (ts("start_ts"), ts("end_ts"))
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "rate-limited jobs overlapped: {spans:?}"
        );
    }

    // Bad rules: unknown keys (RAPI), bad actions and predicates (the queue).
    let bad = call(&s, "POST", "/2/filters", Some(r#"{"colour": "red"}"#), 400);
    assert_eq!(
        bad["message"],
        "Invalid body parameters: filter rule doesn&#x27;t support the parameter &#x27;colour&#x27;"
    );
    call(
        &s,
        "POST",
        "/2/filters",
        Some(r#"{"priority": "high"}"#),
        400,
    );
    call(
        &s,
        "POST",
        "/2/filters",
        Some(r#"{"action": "EXPLODE"}"#),
        400,
    );
    call(&s, "POST", "/2/filters", Some(r#"{"priority": -1}"#), 400);
    call(
        &s,
        "POST",
        "/2/filters",
        Some(r#"{"predicates": [["owner", ["=", "x", 1]]]}"#),
        400,
    );
    let (code, _) = curl(&s, "POST", "/2/filters", VIEWER, Some("{}"));
    assert_eq!(code, 403);
}

#[test]
fn filter_rules_survive_a_restart() {
    let s = start(&[]);
    let uuid = call(
        &s,
        "POST",
        "/2/filters",
        Some(r#"{"action": "PAUSE"}"#),
        200,
    );
    let held = delay_job(&s, 0.05, json!({}));
    let s = restart_after_kill_9(s, &[]);
    assert_eq!(
        call(&s, "GET", "/2/filters", None, 200)[0]["uuid"],
        uuid,
        "rules are durable"
    );
    assert_eq!(
        call(&s, "GET", &format!("/2/jobs/{held}"), None, 200)["status"],
        "queued"
    );
    call(
        &s,
        "DELETE",
        &format!("/2/filters/{}", uuid.as_str().unwrap()),
        None,
        200,
    );
    assert_eq!(
        wait_job(&s, held)["status"],
        "success",
        "deleting the rule releases the job"
    );
}
