//! A small QMP client: one JSON object per line over a unix socket, an `id` on every command so
//! replies are matched even when events arrive in between, and events fanned out on a broadcast
//! channel. QEMU serves one client per QMP socket, so the VM's supervisor owns this connection.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{broadcast, oneshot, watch};

#[derive(Debug, Error, Clone, PartialEq)]
pub enum QmpError {
    #[error("QMP connection failed: {0}")]
    Connect(String),
    #[error("QMP command '{command}' failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP command '{0}' timed out")]
    Timeout(String),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP protocol error: {0}")]
    Protocol(String),
}

/// An asynchronous QMP event (`SHUTDOWN`, `RESET`, `DEVICE_DELETED`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

/// A command's outcome as the reader sees it: the return value, or QMP's (class, desc).
type Reply = oneshot::Sender<Result<Value, (String, String)>>;
type Pending = Arc<Mutex<HashMap<u64, Reply>>>;

pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    next_id: AtomicU64,
    closed: watch::Receiver<bool>,
}

pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

impl Qmp {
    /// Connects (retrying while the socket does not exist yet), reads the greeting and enters
    /// command mode with `qmp_capabilities`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(QmpError::Connect(format!("{}: {e}", path.display())));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (read, writer) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| QmpError::Connect("no QMP greeting".into()))?
            .map_err(|e| QmpError::Connect(e.to_string()))?
            .ok_or(QmpError::Closed)?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|e| QmpError::Protocol(e.to_string()))?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(format!(
                "unexpected greeting {greeting}"
            )));
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(read_loop(lines, pending.clone(), events.clone(), closed_tx));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(writer),
            pending,
            events,
            next_id: AtomicU64::new(1),
            closed,
        };
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, COMMAND_TIMEOUT)
            .await
    }

    pub async fn execute_within(
        &self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        // Checked after registering: the reader clears `pending` before it marks the end.
        if self.is_closed() {
            self.lock_pending().remove(&id);
            return Err(QmpError::Closed);
        }
        let mut message = json!({"execute": command, "id": id});
        if !arguments.is_null() {
            message["arguments"] = arguments;
        }
        let mut line = message.to_string();
        line.push('\n');
        let written = self.writer.lock().await.write_all(line.as_bytes()).await;
        if written.is_err() {
            self.lock_pending().remove(&id);
            return Err(QmpError::Closed);
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.lock_pending().remove(&id);
                Err(QmpError::Timeout(command.to_string()))
            }
            Ok(Err(_)) => Err(QmpError::Closed),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
        }
    }

    /// Subscribe before issuing the command whose event you wait for.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Waits for the first event matching `wanted`; None after the timeout or when QEMU is gone.
    pub async fn wait_event(
        rx: &mut broadcast::Receiver<Event>,
        wanted: impl Fn(&Event) -> bool,
        timeout: Duration,
    ) -> Option<Event> {
        let found = async {
            loop {
                match rx.recv().await {
                    Ok(event) if wanted(&event) => return Some(event),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        };
        tokio::time::timeout(timeout, found).await.ok().flatten()
    }

    /// Resolves when QEMU closes the connection (the process quit or died).
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reply>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<Event>,
    closed: watch::Sender<bool>,
) {
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!("QMP: unparsable line {line:?}");
            continue;
        };
        if let Some(name) = message.get("event").and_then(Value::as_str) {
            let data = message.get("data").cloned().unwrap_or(Value::Null);
            let _ = events.send(Event {
                name: name.to_string(),
                data,
            });
            continue;
        }
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let Some(reply) = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
        else {
            continue;
        };
        let outcome = match message.get("error") {
            Some(err) => Err((
                err["class"].as_str().unwrap_or("GenericError").to_string(),
                err["desc"].as_str().unwrap_or("").to_string(),
            )),
            None => Ok(message.get("return").cloned().unwrap_or(Value::Null)),
        };
        let _ = reply.send(outcome);
    }
    // Dropping the senders fails every waiting command with Closed.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let _ = closed.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    /// A scripted QMP server: greeting, capabilities, then answers by command name and emits an
    /// event before each reply (as QEMU may).
    async fn mock(path: std::path::PathBuf) {
        let listener = UnixListener::bind(&path).unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        write
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        while let Ok(Some(line)) = lines.next_line().await {
            let msg: Value = serde_json::from_str(&line).unwrap();
            let id = msg["id"].clone();
            let reply = match msg["execute"].as_str().unwrap() {
                "qmp_capabilities" => json!({"return": {}, "id": id}),
                "query-status" => {
                    json!({"return": {"status": "running", "running": true}, "id": id})
                }
                "system_reset" => {
                    let event = json!({"event": "RESET", "data": {"guest": false}});
                    write
                        .write_all(format!("{event}\n").as_bytes())
                        .await
                        .unwrap();
                    json!({"return": {}, "id": id})
                }
                "hang" => continue,
                "quit" => {
                    write
                        .write_all(format!("{}\n", json!({"return": {}, "id": id})).as_bytes())
                        .await
                        .unwrap();
                    return;
                }
                _ => {
                    json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": id})
                }
            };
            write
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn commands_events_errors_timeouts_and_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        tokio::spawn(mock(path.clone()));
        let qmp = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let status = qmp.execute("query-status", Value::Null).await.unwrap();
        assert_eq!(status["status"], "running");

        let mut events = qmp.events();
        qmp.execute("system_reset", Value::Null).await.unwrap();
        let reset =
            Qmp::wait_event(&mut events, |e| e.name == "RESET", Duration::from_secs(1)).await;
        assert_eq!(reset.unwrap().data["guest"], false);

        let err = qmp.execute("nope", Value::Null).await.unwrap_err();
        assert!(
            matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"),
            "{err}"
        );
        let err = qmp
            .execute_within("hang", Value::Null, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err, QmpError::Timeout("hang".into()));

        qmp.execute("quit", Value::Null).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), qmp.closed())
            .await
            .unwrap();
        assert!(qmp.is_closed());
        assert_eq!(
            qmp.execute("query-status", Value::Null).await.unwrap_err(),
            QmpError::Closed
        );
    }

    #[tokio::test]
    async fn connect_gives_up_when_nobody_listens() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.sock"), Duration::from_millis(50))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, QmpError::Connect(_)), "{err}");
    }
}
