//! The floors of the house, checked on the source: which room may import which, and the
//! invariants `doc/architecture.md` states. A violation names the file and the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every non-test source file as (path below src/, code before its `#[cfg(test)]` module).
fn code() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![];
    sources(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("").to_string();
            let rel = p.strip_prefix(&src).unwrap().display().to_string();
            (rel, code)
        })
        .collect()
}

/// The top-level room of a file: `cmdlib/instance/create.rs` → `cmdlib`, `qlang.rs` → `qlang`.
fn room(rel: &str) -> String {
    rel.split('/')
        .next()
        .unwrap()
        .trim_end_matches(".rs")
        .to_string()
}

/// The rooms a piece of code names through `crate::room` (also inside `use crate::{a, b::c}`).
fn rooms_named(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn violations(rule: &str, check: impl Fn(&str, &str) -> Vec<String>) -> Vec<String> {
    code()
        .iter()
        .flat_map(|(rel, code)| check(rel, code))
        .map(|v| format!("{rule}: {v}"))
        .collect()
}

fn lines_with<'a>(rel: &'a str, code: &'a str, needle: &'a str) -> Vec<String> {
    code.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle) && !l.trim_start().starts_with("//"))
        .map(|(n, l)| format!("src/{rel}:{}: {}", n + 1, l.trim()))
        .collect()
}

#[test]
fn rooms_import_only_downwards() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, code) in code() {
        let own = room(&rel);
        for other in rooms_named(&code) {
            if other != own && other != "self" {
                graph.entry(own.clone()).or_default().insert(other);
            }
        }
    }
    let mut cycles = vec![];
    for (a, targets) in &graph {
        for b in targets {
            if a < b && graph.get(b).is_some_and(|t| t.contains(a)) {
                cycles.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert!(cycles.is_empty(), "rooms importing each other: {cycles:?}");
    let forbidden: &[(&str, &[&str])] = &[
        (
            "cmdlib",
            &["jobqueue", "rapi", "http", "agent", "cli", "automation"],
        ),
        // The engine's own loops only read the configuration and submit jobs.
        (
            "automation",
            &["rapi", "http", "agent", "cli", "backends", "views"],
        ),
        ("jobqueue", &["automation", "rapi"]),
        (
            "cluster",
            &["cmdlib", "jobqueue", "rapi", "backends", "views", "http"],
        ),
        (
            "locking",
            &["cmdlib", "jobqueue", "rapi", "cluster", "backends"],
        ),
        ("agent", &["rapi", "jobqueue", "cmdlib", "cluster"]),
        ("backends", &["rapi", "jobqueue", "cmdlib", "agent"]),
        (
            "http",
            &["rapi", "jobqueue", "cmdlib", "cluster", "backends", "agent"],
        ),
        (
            "opcodes",
            &["rapi", "jobqueue", "cmdlib", "cluster", "backends"],
        ),
        ("views", &["rapi", "jobqueue", "cmdlib"]),
    ];
    for (from, never) in forbidden {
        for to in *never {
            assert!(
                !graph.get(*from).is_some_and(|t| t.contains(*to)),
                "{from} must not import {to}: {graph:?}"
            );
        }
    }
}

#[test]
fn files_of_the_rapi_do_not_import_each_other_both_ways() {
    let rapi: Vec<(String, String)> = code()
        .into_iter()
        .filter(|(rel, _)| rel.starts_with("rapi/"))
        .collect();
    let module = |rel: &str| {
        rel.trim_start_matches("rapi/")
            .trim_end_matches(".rs")
            .to_string()
    };
    let names = |code: &str, other: &str| {
        code.contains(&format!("super::{other}::")) || code.contains(&format!("super::{other}::{{"))
    };
    for (a, code_a) in &rapi {
        for (b, code_b) in &rapi {
            let (ma, mb) = (module(a), module(b));
            if ma < mb && ma != "mod" && mb != "mod" {
                assert!(
                    !(names(code_a, &mb) && names(code_b, &ma)),
                    "rapi/{ma} and rapi/{mb} import each other"
                );
            }
        }
    }
}

#[test]
fn only_the_stores_touch_sled() {
    let allowed = ["storage.rs", "kv.rs"];
    let found = violations("sled outside the stores", |rel, code| {
        if allowed.contains(&rel) {
            return vec![];
        }
        lines_with(rel, code, "sled::")
    });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_rapi_never_writes_config_or_drives_a_backend() {
    let found = violations("rapi", |rel, code| {
        if !rel.starts_with("rapi/") {
            return vec![];
        }
        let mut v = lines_with(rel, code, "ClusterStore");
        v.extend(lines_with(rel, code, "dyn Backend"));
        v.extend(lines_with(rel, code, ".cluster()"));
        v.extend(lines_with(rel, code, ".backend()"));
        v
    });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn cmdlib_knows_no_http() {
    let found = violations("cmdlib", |rel, code| {
        if !rel.starts_with("cmdlib/") {
            return vec![];
        }
        ["warp::", "hyper::", "reqwest::", "ApiError", "StatusCode"]
            .iter()
            .flat_map(|n| lines_with(rel, code, n))
            .collect()
    });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn opcode_ids_are_named_only_by_the_catalog() {
    // Everywhere else an opcode is an `OpId` variant, so a typo does not compile.
    let found = violations("opcode id as a string", |rel, code| {
        if rel == "opcodes/catalog.rs" {
            return vec![];
        }
        code.lines()
            .enumerate()
            .filter(|(_, l)| {
                let mut rest = *l;
                while let Some(at) = rest.find("\"OP_") {
                    rest = &rest[at + 4..];
                    if !rest.starts_with("ID\"") && !rest.starts_with('"') {
                        return true;
                    }
                }
                false
            })
            .map(|(n, l)| format!("src/{rel}:{}: {}", n + 1, l.trim()))
            .collect()
    });
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_client_speaks_only_http() {
    let found = violations("client", |rel, code| {
        if !rel.starts_with("client/") {
            return vec![];
        }
        [
            "crate::jobqueue",
            "crate::cluster",
            "crate::cmdlib",
            "crate::storage",
            "sled::",
        ]
        .iter()
        .flat_map(|needle| lines_with(rel, code, needle))
        .collect()
    });
    assert!(found.is_empty(), "{found:#?}");
}
