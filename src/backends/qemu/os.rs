//! Ganeti OS definitions (`man/ganeti-os-interface`): directories in a search path holding
//! `ganeti_api_version`, `variants.list`, `parameters.list` and the `create`/`rename`/`export`/
//! `import`/`verify` scripts. Scripts run with a reset environment in the OS directory; a failure
//! reports the tail of their output.

use crate::backends::VmSpec;
use crate::cluster::model::OsDefinition;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// API versions gantry speaks, newest first.
const KNOWN_API: [i64; 3] = [20, 15, 10];

/// An OS definition found on disk, with the directory it lives in.
#[derive(Debug, Clone)]
pub struct InstalledOs {
    pub def: OsDefinition,
    pub dir: PathBuf,
}

fn list_file(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect()
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o100 != 0)
}

/// Reads one OS directory; None (with a log line) if it is not a valid definition.
pub fn read_os(dir: &Path) -> Option<InstalledOs> {
    let name = dir.file_name()?.to_str()?.to_string();
    let api: Vec<i64> = list_file(&dir.join("ganeti_api_version"))
        .iter()
        .filter_map(|l| l.parse().ok())
        .collect();
    let Some(version) = KNOWN_API.iter().copied().find(|v| api.contains(v)) else {
        tracing::warn!(os = %name, "ignored: no supported ganeti_api_version");
        return None;
    };
    let mut needed = vec!["create", "import", "export", "rename"];
    if version >= 20 {
        needed.extend(["verify"]);
    }
    if let Some(missing) = needed.iter().find(|s| !executable(&dir.join(s))) {
        tracing::warn!(os = %name, "ignored: script '{missing}' missing or not executable");
        return None;
    }
    let parameters = list_file(&dir.join("parameters.list"))
        .iter()
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((k, d)) => (k.to_string(), d.trim().to_string()),
            None => (l.clone(), String::new()),
        })
        .collect();
    Some(InstalledOs {
        def: OsDefinition {
            name,
            variants: if version >= 15 {
                list_file(&dir.join("variants.list"))
            } else {
                vec![]
            },
            api_versions: api,
            parameters,
            trusted: true,
        },
        dir: dir.to_path_buf(),
    })
}

/// Every valid OS in the search path; the first directory holding a name wins, as in Ganeti.
pub fn scan(search_path: &[PathBuf]) -> BTreeMap<String, InstalledOs> {
    let mut found = BTreeMap::new();
    for root in search_path {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for dir in dirs.into_iter().filter(|d| d.is_dir()) {
            if let Some(os) = read_os(&dir) {
                found.entry(os.def.name.clone()).or_insert(os);
            }
        }
    }
    found
}

/// What every script gets (the environment is reset: nothing of gantry's own leaks in): the
/// API version, OS name and variant, and the OS parameters as `OSP_<NAME>`.
fn core_env(
    os: &InstalledOs,
    variant: String,
    params: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let api = KNOWN_API
        .iter()
        .copied()
        .find(|v| os.def.api_versions.contains(v))
        .unwrap_or(10);
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/sbin:/bin:/usr/sbin:/usr/bin".into()),
        ("OS_API_VERSION".into(), api.to_string()),
        ("OS_NAME".into(), os.def.name.clone()),
        (
            "OS_VARIANT".into(),
            if api >= 15 { variant } else { String::new() },
        ),
        ("DEBUG_LEVEL".into(), "0".into()),
    ];
    for (k, v) in params {
        env.push((
            format!("OSP_{}", k.to_uppercase().replace('-', "_")),
            v.clone(),
        ));
    }
    env
}

/// The environment of an instance script: the core one plus the instance, its disks and NICs.
pub fn instance_env(os: &InstalledOs, vm: &VmSpec, disks: &[PathBuf]) -> Vec<(String, String)> {
    let variant = match vm.os.split_once('+') {
        Some((_, v)) => v.to_string(),
        None => os.def.variants.first().cloned().unwrap_or_default(),
    };
    let mut env = core_env(os, variant, &vm.osparams);
    env.extend([
        ("INSTANCE_NAME".into(), vm.name.to_string()),
        ("INSTANCE_OS".into(), vm.os.clone()),
        ("INSTANCE_UUID".into(), vm.uuid.clone()),
        ("HYPERVISOR".into(), "kvm".into()),
        ("INSTANCE_BE_maxmem".into(), vm.memory_mib.to_string()),
        ("INSTANCE_BE_vcpus".into(), vm.vcpus.to_string()),
        ("DISK_COUNT".into(), disks.len().to_string()),
        ("NIC_COUNT".into(), vm.macs.len().to_string()),
    ]);
    for (n, (path, size)) in disks.iter().zip(&vm.disks_mib).enumerate() {
        env.push((format!("DISK_{n}_PATH"), path.display().to_string()));
        env.push((format!("DISK_{n}_SIZE"), size.to_string()));
        env.push((format!("DISK_{n}_ACCESS"), "rw".into()));
        env.push((format!("DISK_{n}_BACKEND_TYPE"), "file:raw".into()));
    }
    for (n, mac) in vm.macs.iter().enumerate() {
        env.push((format!("NIC_{n}_MAC"), mac.to_string()));
        let Some(net) = vm.nics.get(n) else {
            env.push((format!("NIC_{n}_MODE"), "bridged".into()));
            continue;
        };
        env.push((format!("NIC_{n}_MODE"), net.mode.clone()));
        env.push((format!("NIC_{n}_LINK"), net.link.clone()));
        if net.mode == "bridged" {
            env.push((format!("NIC_{n}_BRIDGE"), net.link.clone()));
        }
        if let Some(ip) = &net.ip {
            env.push((format!("NIC_{n}_IP"), ip.clone()));
        }
        if !net.vlan.is_empty() {
            env.push((format!("NIC_{n}_VLAN"), net.vlan.clone()));
        }
    }
    if vm.reinstall {
        env.push(("INSTANCE_REINSTALL".into(), "1".into()));
    }
    env
}

/// The environment of the `export` or `import` script for disk `n` (`kind` is "EXPORT" or
/// "IMPORT"): the instance environment plus `<KIND>_INDEX`, `_DISK_PATH` and `_DEVICE`.
pub fn disk_script_env(
    os: &InstalledOs,
    vm: &VmSpec,
    disks: &[PathBuf],
    n: usize,
    kind: &str,
) -> Vec<(String, String)> {
    let mut env = instance_env(os, vm, disks);
    let path = disks[n].display().to_string();
    env.extend([
        (format!("{kind}_INDEX"), n.to_string()),
        (format!("{kind}_DISK_PATH"), path.clone()),
        (format!("{kind}_DEVICE"), path),
    ]);
    env
}

/// Runs the OS's `verify parameters` (API 20) with the core environment only.
pub async fn verify_parameters(
    os: &InstalledOs,
    os_type: &str,
    params: &BTreeMap<String, String>,
) -> Result<(), String> {
    if !os.def.api_versions.contains(&20) {
        return Ok(());
    }
    let variant = os_type.split_once('+').map(|(_, v)| v).unwrap_or_default();
    let env = core_env(os, variant.to_string(), params);
    run(os, "verify", &["parameters"], &env, None, None)
        .await
        .map(|_| ())
}

/// Runs one script of an OS; answers its output lines, or an error with the last 20 of them.
pub async fn run_script(
    os: &InstalledOs,
    script: &str,
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    run(os, script, &[], env, None, None).await
}

/// Like `run_script`, with stdin read from a file and/or stdout written to one (export and
/// import stream disk images that way); the answer then holds stderr only.
pub async fn run_script_io(
    os: &InstalledOs,
    script: &str,
    env: &[(String, String)],
    stdin: Option<std::fs::File>,
    stdout: Option<std::fs::File>,
) -> Result<Vec<String>, String> {
    run(os, script, &[], env, stdin, stdout).await
}

async fn run(
    os: &InstalledOs,
    script: &str,
    args: &[&str],
    env: &[(String, String)],
    stdin: Option<std::fs::File>,
    stdout: Option<std::fs::File>,
) -> Result<Vec<String>, String> {
    let path = os.dir.join(script);
    let to_file = stdout.is_some();
    // spawn + wait_with_output: tokio's `output()` would replace a stdout set here with a pipe.
    let out = Command::new(&path)
        .args(args)
        .current_dir(&os.dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(stdin.map_or_else(Stdio::null, Stdio::from))
        .stdout(stdout.map_or_else(Stdio::piped, Stdio::from))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?
        .wait_with_output()
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::from_utf8_lossy(&out.stderr).to_string();
    if !to_file {
        text.insert_str(0, &String::from_utf8_lossy(&out.stdout));
    }
    let lines: Vec<String> = text.lines().map(String::from).collect();
    if out.status.success() {
        Ok(lines)
    } else {
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Err(format!(
            "OS {script} script failed ({}), last lines of its output:\n{tail}",
            out.status
        ))
    }
}
