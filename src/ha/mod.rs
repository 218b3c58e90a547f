//! Leadership over etcd (issue 16, first part): several masters campaign for one key under the
//! cluster's prefix; the holder is the leader, the only master that may execute jobs. The key
//! is attached to an etcd lease with a short TTL that the leader keeps alive; when it cannot
//! (it died, or lost etcd), the key expires and another master takes it.
//!
//! **Fencing.** Every write a leader makes carries [`Leadership::fence`]: a compare on the
//! leader key's create revision, in the same transaction. A leader whose key expired (even one
//! that does not know it yet, say behind a partition) has every such write refused, so two
//! masters never both change the queue or the configuration. A leader also stops itself: when
//! no keep-alive succeeded within the TTL less a margin, [`Leadership::lost`] fires before etcd
//! can have handed the key to anyone else.
//!
//! `kv.rs`: the stores' key-value interface on etcd, every batch one fenced transaction.
//! `master.rs`: a master's life (`gantry serve --store etcd`); `forward.rs`: followers hand
//! requests to the leader.

mod commit;
mod forward;
mod kv;
pub mod master;
pub mod master_ip;
pub use kv::{EtcdKv, Seen};

use crate::metrics::METRICS;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, TlsOptions,
    Txn, TxnOp, WatchOptions,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How to reach etcd: `--etcd-endpoints`, `--etcd-prefix`, `--etcd-ca`, `--etcd-user`.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// Every key of this cluster lives under it (several clusters may share one etcd).
    pub prefix: String,
    /// CA certificate (PEM) for `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// etcd user and password (etcd's RBAC).
    pub user: Option<(String, String)>,
    /// Seconds a leader's key outlives its last keep-alive.
    pub ttl: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("{0}")]
    Setup(String),
}

/// Connects with a request timeout of a third of the TTL: a call that takes longer than that
/// counts as etcd unreachable.
pub async fn connect(opts: &EtcdOptions) -> Result<Client, HaError> {
    let mut connect = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs((opts.ttl as u64 / 3).max(1)));
    if let Some((user, password)) = &opts.user {
        connect = connect.with_user(user, password);
    }
    if let Some(ca) = &opts.ca {
        let pem =
            std::fs::read(ca).map_err(|e| HaError::Setup(format!("{}: {e}", ca.display())))?;
        connect = connect.with_tls(TlsOptions::new().ca_certificate(Certificate::from_pem(pem)));
    }
    Ok(Client::connect(&opts.endpoints, Some(connect)).await?)
}

/// Whether a failed request never reached a member (the client's channel picked an endpoint
/// that is down): then sending it again is safe, whatever it was.
fn unreached(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("connect error"),
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

/// Sends a request again (briefly backing off) while it did not reach any member; etcd-client
/// balances over the endpoints but does not retry by itself.
async fn reaching<T, F, Fut>(request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_times(5);
    request.retry(backoff).when(unreached).await
}

/// Runs an etcd request, timing it (`gantry_etcd_request_seconds`).
async fn timed<T>(request: impl std::future::Future<Output = T>) -> T {
    let since = std::time::Instant::now();
    let answer = request.await;
    METRICS
        .etcd_request_seconds
        .observe(since.elapsed().as_secs_f64());
    answer
}

fn leader_key(prefix: &str) -> String {
    format!("{prefix}/leader")
}

/// The current leader's name, if any master holds the key.
pub async fn leader(client: &mut Client, prefix: &str) -> Result<Option<String>, HaError> {
    let answer = reaching(|| {
        let mut client = client.clone();
        async move { client.get(leader_key(prefix), None).await }
    })
    .await?;
    Ok(answer
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// This master holding the leader key.
pub struct Leadership {
    client: Client,
    key: String,
    lease: i64,
    /// The leader key's create revision: what fenced writes compare.
    revision: i64,
    lost: watch::Receiver<bool>,
    /// Ends the keep-alive thread (resigning, or dropped).
    stop: watch::Sender<bool>,
    hook: Hook,
}

/// What the keep-alive thread calls when the leadership is lost.
type Hook = Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>>;

/// Campaigns until this master (`name`) is the leader.
pub async fn campaign(
    client: &Client,
    opts: &EtcdOptions,
    name: &str,
) -> Result<Leadership, HaError> {
    let mut client = client.clone();
    let key = leader_key(&opts.prefix);
    loop {
        let lease = reaching(|| {
            let mut client = client.clone();
            async move { client.lease_grant(opts.ttl, None).await }
        })
        .await?
        .id();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                name,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let answer = timed(reaching(|| {
            let (mut client, txn) = (client.clone(), txn.clone());
            async move { client.txn(txn).await }
        }))
        .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        if answer.succeeded() {
            METRICS.leadership_changes.inc();
            tracing::info!(%name, "this master leads");
            let (tx, lost) = watch::channel(false);
            let (stop, stopped) = watch::channel(false);
            let hook = Hook::default();
            spawn_keeper(opts.clone(), lease, tx, stopped, hook.clone())
                .map_err(|e| HaError::Setup(format!("cannot start the keep-alive thread: {e}")))?;
            return Ok(Leadership {
                client,
                key,
                lease,
                revision,
                lost,
                stop,
                hook,
            });
        }
        // Someone else leads: give the unused lease back and wait for their key to go (a
        // watch can hang on a member cut off from the others: look again now and then).
        let _ = client.lease_revoke(lease).await;
        let patience = Duration::from_secs(opts.ttl.max(1) as u64 * 2);
        let _ = tokio::time::timeout(patience, wait_for_deletion(&mut client, &key, revision + 1))
            .await;
    }
}

async fn wait_for_deletion(client: &mut Client, key: &str, from: i64) -> Result<(), HaError> {
    let options = WatchOptions::new().with_start_revision(from);
    let mut events = client.watch(key, Some(options)).await?;
    while let Some(answer) = events.message().await? {
        if answer
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Keeps the lease alive on a thread and runtime of its own, with a client of its own: a busy or
/// blocked main runtime (the stores block its threads while etcd answers) must not delay the
/// keep-alives, nor the moment this master notices that it lost the leadership.
fn spawn_keeper(
    opts: EtcdOptions,
    lease: i64,
    lost: watch::Sender<bool>,
    mut stopped: watch::Receiver<bool>,
    hook: Hook,
) -> std::io::Result<()> {
    let runtime = runtime_thread("etcd-lease")?;
    runtime.spawn(async move {
        tokio::select! {
            _ = keep_alive(&opts, lease, &lost) => {
                if let Some(hook) = hook.get() {
                    hook();
                }
            }
            _ = stopped.wait_for(|s| *s) => {}
        }
    });
    Ok(())
}

/// A thread of its own driving a current-thread runtime (for the life of the process); its
/// handle. What runs there is not delayed by the main runtime's threads being busy or blocked.
fn runtime_thread(name: &str) -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Keeps the lease alive every third of the TTL. etcd expires the lease no sooner than the TTL
/// after it received the last keep-alive, which is after this master sent it: so the
/// leadership is reported lost once the TTL less a margin has passed since the last keep-alive
/// that was *sent* and answered, on a timer of its own (a hung call does not delay it). Then
/// this master stops before etcd can give the key to another.
async fn keep_alive(opts: &EtcdOptions, lease: i64, lost: &watch::Sender<bool>) {
    let ttl = Duration::from_secs(opts.ttl.max(2) as u64);
    let margin = ttl / 4;
    let mut last_ok = tokio::time::Instant::now();
    let mut client = None;
    let mut channel = None;
    loop {
        let deadline = last_ok + ttl - margin;
        let sent = tokio::time::Instant::now();
        tokio::select! {
            renewed = renew(opts, &mut client, lease, &mut channel, ttl / 3) => {
                if renewed {
                    last_ok = sent;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
        let deadline = last_ok + ttl - margin;
        // A renewal that failed is tried again at once on a new stream (the member it used may
        // have died; the others still answer); only a renewed lease waits for the next round.
        let pause = if last_ok == sent {
            ttl / 3
        } else {
            RETRY_PAUSE
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    tracing::error!("lost the leadership: no etcd keep-alive answered within the lease TTL");
    METRICS.leadership_changes.inc();
    let _ = lost.send(true);
}

/// Between failed keep-alive attempts: short, so that one dead member costs no leadership.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

type KeepAlive = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// One keep-alive round trip; a broken stream (or client) is made again on the next call.
async fn renew(
    opts: &EtcdOptions,
    client: &mut Option<Client>,
    lease: i64,
    channel: &mut Option<KeepAlive>,
    wait: Duration,
) -> bool {
    if client.is_none() {
        *client = tokio::time::timeout(wait, connect(opts))
            .await
            .ok()
            .and_then(Result::ok);
    }
    let Some(connected) = client.as_mut() else {
        return false;
    };
    if channel.is_none() {
        let opened = tokio::time::timeout(wait, connected.lease_keep_alive(lease)).await;
        *channel = opened.ok().and_then(Result::ok);
    }
    let Some((keeper, stream)) = channel.as_mut() else {
        return false;
    };
    let since = std::time::Instant::now();
    let answered = match keeper.keep_alive().await {
        Ok(()) => matches!(
            tokio::time::timeout(wait, stream.message()).await,
            Ok(Ok(Some(answer))) if answer.ttl() > 0
        ),
        Err(_) => false,
    };
    METRICS
        .etcd_request_seconds
        .observe(since.elapsed().as_secs_f64());
    if !answered {
        *channel = None;
    }
    answered
}

impl Leadership {
    /// The compare every write of this leader carries.
    pub fn fence(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// Writes `value` at `key` only while this master still leads; false when fenced off.
    pub async fn fenced_put(&mut self, key: &str, value: &[u8]) -> Result<bool, HaError> {
        let txn = Txn::new()
            .when([self.fence()])
            .and_then([TxnOp::put(key, value, None)]);
        let answer = timed(reaching(|| {
            let (mut client, txn) = (self.client.clone(), txn.clone());
            async move { client.txn(txn).await }
        }))
        .await?;
        Ok(answer.succeeded())
    }

    /// Whether this master has stopped leading (then it must stop executing at once).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Waits until the leadership is lost.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Has the keep-alive thread call `hook` the moment it finds the leadership lost, whatever
    /// the rest of the process is doing (a master restarts itself from there).
    pub fn when_lost(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.hook.set(Box::new(hook));
        if self.is_lost()
            && let Some(hook) = self.hook.get()
        {
            hook();
        }
    }

    /// Gives the leadership up at once (another master may take it without waiting for the TTL).
    pub async fn resign(mut self) -> Result<(), HaError> {
        let _ = self.stop.send(true);
        self.client.lease_revoke(self.lease).await?;
        Ok(())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
