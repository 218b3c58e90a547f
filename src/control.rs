//! The server's control socket, `<data-dir>/control.sock` (0600 in a 0700 data dir: its owner
//! only): how `gantry backup` and `gantry users token` reach a running server, whose database
//! no other process may open. One JSON request line, one JSON answer line.

use crate::rapi::auth::UserDb;
use crate::rapi::tokens::{Rights, Tokens};
use crate::storage::GroupCommit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// (`backup.rs` leaves a file of this name out of archives.)
pub const SOCKET: &str = "control.sock";

#[derive(Debug, Serialize, Deserialize)]
pub enum Control {
    /// Write a backup archive to this (absolute) path.
    Backup(PathBuf),
    /// Issue an API token for a user of the users file.
    CreateToken {
        user: String,
        rights: Option<Rights>,
        ttl: u64,
    },
}

/// What the server answers: a summary, or why not.
type Answer = Result<String, String>;

/// What the control socket serves with.
#[derive(Clone)]
pub struct Context {
    pub data_dir: PathBuf,
    pub commit: GroupCommit,
    pub users: UserDb,
    pub tokens: Tokens,
}

async fn answer(ctx: Context, request: Control) -> Answer {
    match request {
        Control::Backup(file) => tokio::task::spawn_blocking(move || {
            crate::backup::write_backup(&ctx.data_dir, &ctx.commit, &file)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string())),
        Control::CreateToken { user, rights, ttl } => {
            ctx.tokens.issue(&ctx.users, &user, rights, ttl).await
        }
    }
}

/// Binds the control socket now (so that once the server says it listens, `gantry users token`
/// and `gantry backup` reach it), then serves it in a task until the process ends.
pub fn serve(ctx: Context) -> Result<(), String> {
    let path = ctx.data_dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener =
        tokio::net::UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    tokio::spawn(accept(listener, ctx));
    Ok(())
}

async fn accept(listener: tokio::net::UnixListener, ctx: Context) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let result: Answer = match serde_json::from_str::<Control>(&line) {
                Ok(request) => answer(ctx, request).await,
                Err(e) => Err(format!("not a control request: {e}")),
            };
            if let Err(e) = &result {
                tracing::error!("control request failed: {e}");
            }
            let mut text = serde_json::to_vec(&result).unwrap_or_default();
            text.push(b'\n');
            let _ = write.write_all(&text).await;
        });
    }
}

/// Asks the server running on `data_dir`; None when none answers there.
pub fn ask(data_dir: &Path, request: &Control) -> Option<Answer> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(data_dir.join(SOCKET)).ok()?;
    let mut text = serde_json::to_vec(request).ok()?;
    text.push(b'\n');
    if let Err(e) = stream.write_all(&text) {
        return Some(Err(format!("the server did not take the request: {e}")));
    }
    let mut line = String::new();
    if let Err(e) = std::io::BufReader::new(stream).read_line(&mut line) {
        return Some(Err(format!("the server did not answer: {e}")));
    }
    Some(
        serde_json::from_str::<Answer>(&line)
            .unwrap_or_else(|_| Err("the server ended the request without an answer".into())),
    )
}
