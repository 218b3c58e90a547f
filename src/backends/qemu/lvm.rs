//! Logical volumes for the `plain` disk template, as Ganeti keeps them: one LV per disk in the
//! cluster's volume group (`vg_name`), named by the disk's UUID and tagged with the instance's
//! UUID, so every volume of an instance is found again (stale ones removed, all of them on
//! removal) whatever its disks' order. An instance is on LVM when its volume group existed on
//! this host when its first disk was made (`MARKER` in its directory says which); otherwise its
//! `plain` disks are files, as before.

use std::path::{Path, PathBuf};
use tokio::process::Command;

/// The file in an instance's directory naming its volume group.
pub const MARKER: &str = "lvm-vg";

/// A name `lvcreate` takes as one argument and never as an option.
fn is_lvm_name(name: &str) -> bool {
    (1..=127).contains(&name.len())
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+'))
}

fn tag(instance_uuid: &str) -> String {
    format!("gantry_{instance_uuid}")
}

pub fn lv_path(vg: &str, disk_id: &str) -> PathBuf {
    Path::new("/dev").join(vg).join(disk_id)
}

/// The volume group an instance's disks live in, if it is on LVM.
pub fn instance_vg(instance_dir: &Path) -> Option<String> {
    let vg = std::fs::read_to_string(instance_dir.join(MARKER)).ok()?;
    let vg = vg.trim().to_string();
    is_lvm_name(&vg).then_some(vg)
}

/// Whether `vg` is a volume group on this host (LVM installed and the group there).
pub async fn vg_exists(vg: &str) -> bool {
    is_lvm_name(vg)
        && Command::new("vgs")
            .args(["--noheadings", "-o", "vg_name", vg])
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .await
            .is_ok_and(|o| o.status.success())
}

async fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .await
        .map_err(|e| format!("cannot run {tool} (is lvm2 installed?): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub async fn create(vg: &str, disk_id: &str, mib: u64, instance_uuid: &str) -> Result<(), String> {
    let size = format!("{mib}m");
    let tag = tag(instance_uuid);
    run(
        "lvcreate",
        &[
            "--yes",
            "--wipesignatures",
            "y",
            "-L",
            &size,
            "-n",
            disk_id,
            "--addtag",
            &tag,
            vg,
        ],
    )
    .await
    .map(|_| ())
}

/// Grows a volume to `mib` (an absolute size, so a repeated call changes nothing).
pub async fn extend(vg: &str, disk_id: &str, mib: u64) -> Result<(), String> {
    let current = run(
        "lvs",
        &[
            "--noheadings",
            "--units",
            "m",
            "--nosuffix",
            "-o",
            "lv_size",
            &format!("{vg}/{disk_id}"),
        ],
    )
    .await?;
    let current: f64 = current.trim().parse().unwrap_or(0.0);
    if current >= mib as f64 {
        return Ok(());
    }
    run(
        "lvextend",
        &["-L", &format!("{mib}m"), &format!("{vg}/{disk_id}")],
    )
    .await
    .map(|_| ())
}

/// The volumes of an instance: their names (disk UUIDs).
pub async fn volumes(vg: &str, instance_uuid: &str) -> Result<Vec<String>, String> {
    let listed = run(
        "lvs",
        &[
            "--noheadings",
            "-o",
            "lv_name",
            "-S",
            &format!("vg_name={vg} && lv_tags={}", tag(instance_uuid)),
        ],
    )
    .await?;
    Ok(listed.split_whitespace().map(str::to_string).collect())
}

pub async fn remove(vg: &str, name: &str) -> Result<(), String> {
    run("lvremove", &["--yes", &format!("{vg}/{name}")])
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_that_could_be_options_or_paths_are_refused() {
        assert!(super::is_lvm_name("xenvg"));
        assert!(!super::is_lvm_name("-an"));
        assert!(!super::is_lvm_name("../etc"));
        assert!(!super::is_lvm_name(""));
    }
}
