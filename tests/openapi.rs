//! The OpenAPI document (`src/rapi/openapi.rs`, generated from the route tables): checked in as
//! `doc/openapi.json` and current (regenerate with `GANTRY_WRITE_DOCS=1 cargo test --test
//! openapi`), served at `/openapi.json`, valid by `openapi-spec-validator`, and true of a live
//! server by schemathesis: no server error, every status, content type and body as documented.

mod common;
use common::*;
use serde_json::json;
use std::process::Command;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/doc/openapi.json");

fn generated() -> String {
    serde_json::to_string_pretty(&gantry::rapi::openapi::document()).unwrap() + "\n"
}

#[test]
fn the_checked_in_document_is_current_and_served() {
    if std::env::var_os("GANTRY_WRITE_DOCS").is_some() {
        std::fs::write(DOC, generated()).unwrap();
    }
    let checked_in = std::fs::read_to_string(DOC).unwrap_or_default();
    assert!(
        checked_in == generated(),
        "doc/openapi.json is stale: GANTRY_WRITE_DOCS=1 cargo test --test openapi"
    );
    let s = start(&[]);
    let (code, served) = curl(&s, "GET", "/openapi.json", None, None);
    assert_eq!(code, 200);
    assert_eq!(served, gantry::rapi::openapi::document());
    // Every resource of the op table is in it, with its method.
    for route in gantry::rapi::table::ROUTES {
        let method = route.method.to_lowercase();
        assert!(
            served["paths"][route.path][&method].is_object(),
            "{} {} missing",
            route.method,
            route.path
        );
    }
}

/// A Python tool from PyPI; with GANTRY_REQUIRE_QEMU=1 (CI, which installs them) its absence
/// fails the test, naming the package.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new(tool).arg("--help").output().is_ok();
    if !found {
        assert!(
            std::env::var("GANTRY_REQUIRE_QEMU").as_deref() != Ok("1"),
            "{tool} is required: pip install {package}"
        );
        eprintln!("SKIPPED: {tool} not installed (pip install {package})");
    }
    found
}

#[test]
fn the_document_is_valid_openapi() {
    if !have("openapi-spec-validator", "openapi-spec-validator") {
        return;
    }
    let out = Command::new("openapi-spec-validator")
        .arg(DOC)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    if !have("schemathesis", "schemathesis") {
        return;
    }
    let s = start(&["--no-ssl"]);
    // Objects the path examples name, so the examples reach real ones, not only 404s.
    job_ok(
        &s,
        "POST",
        "/2/instances",
        json!({"__version__": 1, "mode": "create", "name": "web1.example.com",
               "os": "debootstrap+default", "disk_template": "plain", "disks": [{"size": 1024}],
               "nics": [{}]}),
    );
    job_ok(
        &s,
        "POST",
        "/2/networks",
        json!({"network_name": "net1", "network": "192.0.2.0/24"}),
    );
    let out = Command::new("schemathesis")
        .arg("--config-file")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/openapi/schemathesis.toml"
        ))
        .arg("run")
        .arg(format!("{}/openapi.json", s.base))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
            // admin:admin, the test users file's write user.
            "--header",
            "Authorization: Basic YWRtaW46YWRtaW4=",
            // An endless stream by design; tests/events.rs covers it.
            "--exclude-path",
            "/gantry/v1/events",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "10",
            // One worker: schemathesis 4.32 with several fails now and then inside itself.
            "--seed",
            "1",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
