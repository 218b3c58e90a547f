//! Backups of a data dir, taken while the server runs: one tar.gz holding a copy of the
//! database made while every write waits (`GroupCommit::copy_into`), so jobs, their logs and the
//! configuration are from one instant, plus the data dir's own files (certificates, cluster
//! secret, users, drain flag). VM disks (`storage/`) are not in it.
//!
//! sled lets one process open a database, so a running server makes the copy itself when
//! `gantry backup` asks over `<data-dir>/control.sock` (the data dir is its owner's only);
//! without a server, `gantry backup` opens the database directly. `restore` unpacks into a data
//! dir that has no database yet; the server started on it recovers as after a crash.

use crate::storage::GroupCommit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONTROL_SOCKET: &str = "control.sock";
const MANIFEST: &str = "gantry-backup.json";
/// Files of a data dir that describe a running process, not the cluster.
const NOT_BACKED_UP: &[&str] = &["gantry.pid", CONTROL_SOCKET];

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    gantry: String,
    created: u64,
    jobs: usize,
    instances: usize,
}

/// A request on the control socket and its answer, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
enum Control {
    Backup(PathBuf),
}

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Done(String),
    Failed(String),
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
    let file = std::fs::File::create(out).map_err(io)?;
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

/// Serves backup requests of `gantry backup` on `<data_dir>/control.sock` until the process ends.
pub async fn serve_control(data_dir: PathBuf, commit: GroupCommit) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let path = data_dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (data_dir, commit) = (data_dir.clone(), commit.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match serde_json::from_str::<Control>(&line) {
                Ok(Control::Backup(file)) => {
                    let result = tokio::task::spawn_blocking(move || {
                        write_backup(&data_dir, &commit, &file)
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                    match result {
                        Ok(summary) => {
                            tracing::info!("{summary}");
                            Answer::Done(summary)
                        }
                        Err(e) => {
                            tracing::error!("backup failed: {e}");
                            Answer::Failed(e)
                        }
                    }
                }
                Err(e) => Answer::Failed(format!("not a control request: {e}")),
            };
            let mut text = serde_json::to_vec(&answer).unwrap_or_default();
            text.push(b'\n');
            let _ = write.write_all(&text).await;
        });
    }
}

/// `gantry backup`: asks the server running on `data_dir`, or copies the database itself
/// when no server runs there.
pub fn backup(data_dir: &Path, file: &Path) -> Result<String, String> {
    use std::io::{BufRead, Write};
    if !data_dir.join("db").is_dir() {
        return Err(format!(
            "{} is not a gantry data dir (it has no db/); give the server's --data-dir",
            data_dir.display()
        ));
    }
    let file = std::path::absolute(file).map_err(|e| format!("{}: {e}", file.display()))?;
    match std::os::unix::net::UnixStream::connect(data_dir.join(CONTROL_SOCKET)) {
        Ok(mut stream) => {
            let mut request =
                serde_json::to_vec(&Control::Backup(file)).map_err(|e| e.to_string())?;
            request.push(b'\n');
            stream.write_all(&request).map_err(|e| e.to_string())?;
            let mut line = String::new();
            std::io::BufReader::new(stream)
                .read_line(&mut line)
                .map_err(|e| format!("the server did not answer: {e}"))?;
            match serde_json::from_str::<Answer>(&line) {
                Ok(Answer::Done(summary)) => Ok(summary),
                Ok(Answer::Failed(e)) => Err(e),
                Err(_) => Err("the server ended the backup without an answer".into()),
            }
        }
        // No server (or a stale socket): the database is ours to open.
        Err(_) => {
            let commit =
                GroupCommit::open_offline(&data_dir.join("db")).map_err(|e| e.to_string())?;
            write_backup(data_dir, &commit, &file)
        }
    }
}
