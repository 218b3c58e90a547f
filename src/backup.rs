//! Backups of a data dir, taken while the server runs: one tar.gz holding a copy of the
//! database made while every write waits (`GroupCommit::copy_into`), so jobs, their logs and the
//! configuration are from one instant, plus the data dir's own files (certificates, cluster
//! secret, users, drain flag). VM disks (`storage/`) are not in it.
//!
//! sled lets one process open a database, so a running server makes the copy itself when
//! `gantry backup` asks over its control socket (`control.sock`); without a server, `gantry
//! backup` opens the database directly. `restore` unpacks into a data
//! dir that has no database yet; the server started on it recovers as after a crash.

use crate::storage::GroupCommit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const MANIFEST: &str = "gantry-backup.json";
/// Files of a data dir that describe a running process, not the cluster.
const NOT_BACKED_UP: &[&str] = &["gantry.pid", "control.sock"];

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    gantry: String,
    created: u64,
    jobs: usize,
    instances: usize,
}

/// Writes a backup of `data_dir` (whose database `commit` holds open) to `file`; answers a
/// summary. The archive appears under its name only when complete.
pub fn write_backup(data_dir: &Path, commit: &GroupCommit, file: &Path) -> Result<String, String> {
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    let copy = PathBuf::from(format!("{}.db", partial.display()));
    let _ = std::fs::remove_dir_all(&copy);
    let result = (|| {
        let manifest = copy_database(commit, &copy)?;
        archive(data_dir, &copy, &manifest, &partial)?;
        std::fs::rename(&partial, file).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(format!(
            "backup of {} written to {}: {} jobs, {} instances",
            data_dir.display(),
            file.display(),
            manifest.jobs,
            manifest.instances
        ))
    })();
    let _ = std::fs::remove_dir_all(&copy);
    let _ = std::fs::remove_file(&partial);
    result
}

/// Copies every tree into a new database at `dest` while writers wait, then reads the copy back
/// the way `check-db` does, so a backup that could not be restored is never written.
fn copy_database(commit: &GroupCommit, dest: &Path) -> Result<Manifest, String> {
    let target = GroupCommit::open_offline(dest).map_err(|e| e.to_string())?;
    commit.copy_into(&target).map_err(|e| e.to_string())?;
    let store = crate::jobqueue::Store::open(&target).map_err(|e| e.to_string())?;
    let (unfinished, finished, archived, _) = store
        .check()
        .map_err(|e| format!("the copy does not read back: {e}"))?;
    let config = crate::cluster::check_stored(&target)
        .map_err(|e| format!("the copy's configuration does not read back: {e}"))?;
    Ok(Manifest {
        format: 1,
        gantry: env!("CARGO_PKG_VERSION").into(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        jobs: unfinished + finished + archived,
        instances: config.map_or(0, |c| c.instances.len()),
    })
}

fn archive(data_dir: &Path, db_copy: &Path, manifest: &Manifest, out: &Path) -> Result<(), String> {
    let io = |e: std::io::Error| format!("{}: {e}", out.display());
    // It holds the cluster secret and TLS keys: its owner's only, like the data dir.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(out)
            .map_err(io)?
    };
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    let text = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o600);
    header.set_mtime(manifest.created);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, text.as_slice())
        .map_err(io)?;
    tar.append_dir_all("db", db_copy).map_err(io)?;
    let entries =
        std::fs::read_dir(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let plain_file = entry.file_type().is_ok_and(|t| t.is_file());
        if plain_file && !NOT_BACKED_UP.iter().any(|n| name == *n) {
            tar.append_path_with_name(entry.path(), &name).map_err(io)?;
        }
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|f| f.sync_all())
        .map_err(io)
}

/// Unpacks a backup into `data_dir`, which must not hold a database yet.
pub fn restore(file: &Path, data_dir: &Path) -> Result<String, String> {
    if data_dir.join("db").exists() {
        return Err(format!(
            "{} already holds a database; restore into a new directory, or move it aside first",
            data_dir.display()
        ));
    }
    let open = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    crate::util::create_private_dir(data_dir)
        .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(open));
    let not_a_backup =
        |e: std::io::Error| format!("{} is not a gantry backup: {e}", file.display());
    // `unpack` refuses entries that would land outside the target directory.
    archive.unpack(data_dir).map_err(not_a_backup)?;
    let manifest: Manifest = std::fs::read(data_dir.join(MANIFEST))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .ok_or_else(|| format!("{} is not a gantry backup (no {MANIFEST})", file.display()))?;
    let _ = std::fs::remove_file(data_dir.join(MANIFEST));
    {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(data_dir.join("db"), private)
            .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    }
    Ok(format!(
        "restored {} jobs and {} instances (backup of gantry {}) into {}",
        manifest.jobs,
        manifest.instances,
        manifest.gantry,
        data_dir.display()
    ))
}
