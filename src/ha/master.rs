//! One master among several over etcd: it answers from the start (handing requests to the
//! leader, `forward.rs`), campaigns, and when elected opens the queue and the configuration on
//! etcd with its fence, recovers what the previous leader left as after an unclean shutdown,
//! and executes. When it loses the leadership it replaces itself with a fresh process (the
//! same program and arguments): every task of the old leadership ends at that instant, so
//! nothing it ran can still call a node, and the new process is a follower.

use super::forward::Forwarder;
use super::master_ip::MasterIp;
use super::{EtcdKv, EtcdOptions, Leadership, Seen, campaign, connect};
use crate::http::ServerOptions;
use crate::jobqueue::{Store, job_of_record};
use crate::kv::Database;
use crate::metrics::METRICS;
use crate::rapi::leading::{FollowerJobs, LocalAuth, Serving};
use crate::rapi::{self, State};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What a master publishes in the leader key while it leads: how the others reach it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MasterRecord {
    pub name: String,
    pub url: String,
    /// The DER of the certificate it serves (the others pin it), base64.
    #[serde(with = "der_base64", default)]
    pub cert: Option<Vec<u8>>,
}

mod der_base64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(der: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match der {
            Some(der) => s.serialize_some(&STANDARD.encode(der)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| STANDARD.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub struct Master {
    pub etcd: EtcdOptions,
    pub me: MasterRecord,
    pub local: LocalAuth,
    /// `--master-ip`: the address that moves with the leadership.
    pub master_ip: Option<MasterIp>,
    /// `--wait-timeout`, for the waits a follower answers itself.
    pub wait_timeout: Duration,
}

impl Master {
    /// Serves until `shutdown`; `lead` opens the stores on the database it is given and starts
    /// executing (called once, when this master is elected).
    pub async fn run<F, Fut>(
        self,
        listener: tokio::net::TcpListener,
        server: ServerOptions,
        lead: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String>
    where
        F: FnOnce(Database) -> Fut,
        Fut: Future<Output = Result<Arc<State>, String>>,
    {
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        // A process of this host may have held it (killed, or restarted on losing).
        if let Some(ip) = self.master_ip.clone() {
            let _ = tokio::task::spawn_blocking(move || ip.drop_here()).await;
        }
        let ip = self.master_ip.clone();
        let restart = move || -> ! { restart(port, ip.as_ref()) };
        let (publish, state) = watch::channel(None);
        let forwarder = Forwarder::new(&self.etcd, &self.me.name);
        let jobs = FollowerJobs {
            store: Arc::default(),
            wait_timeout: self.wait_timeout,
            changes: tokio::sync::broadcast::channel(1024).0,
        };
        tokio::spawn(read_jobs_from_etcd(self.etcd.clone(), jobs.clone()));
        let serving = Serving {
            state,
            elsewhere: Some(Arc::new(forwarder.clone())),
            local: self.local.clone(),
            jobs: Some(jobs),
        };
        let (stop, stopped) = watch::channel(false);
        let rapi = tokio::spawn(rapi::serve(listener, serving, server, async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let mut shutdown = std::pin::pin!(shutdown);
        let mut leadership = tokio::select! {
            won = self.win(&forwarder) => won,
            _ = &mut shutdown => {
                let _ = stop.send(true);
                let _ = rapi.await;
                return Ok(());
            }
        };
        // From the keep-alive thread: the moment the leadership is lost, however busy this
        // process is.
        let on_loss = restart.clone();
        leadership.when_lost(move || {
            on_loss();
        });
        let (etcd, fence) = (self.etcd.clone(), leadership.fence());
        let kv = tokio::task::spawn_blocking(move || EtcdKv::connect(&etcd, Some(fence)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let on_failure = restart.clone();
        kv.when_failed(move || {
            on_failure();
        });
        let db = Database::replicated(Arc::new(kv));
        let since = std::time::Instant::now();
        let state = tokio::select! {
            started = lead(db) => match started {
                Ok(state) => state,
                Err(e) => {
                    tracing::error!("cannot take over as leader: {e}");
                    restart();
                }
            },
            _ = leadership.lost() => restart(),
        };
        let queue = state.queue.clone();
        let _ = publish.send(Some(state));
        METRICS.leader.set(1);
        let taking = self
            .master_ip
            .clone()
            .map(|ip| tokio::spawn(async move { ip.take().await }));
        tracing::info!(
            master = %self.me.name,
            took = ?since.elapsed(),
            "this master leads: it executes jobs"
        );
        tokio::select! {
            _ = leadership.lost() => restart(),
            _ = &mut shutdown => {}
        }
        // Asked to stop: stop answering, let running jobs end, then hand over at once.
        if let Some(taking) = taking {
            taking.abort();
        }
        if let Some(ip) = self.master_ip.clone() {
            let _ = tokio::task::spawn_blocking(move || ip.drop_here()).await;
        }
        let _ = stop.send(true);
        let _ = rapi.await;
        tracing::info!("shutting down: waiting for running jobs");
        queue.shutdown(Duration::from_secs(10)).await;
        if let Err(e) = leadership.resign().await {
            tracing::warn!("could not hand the leadership over (it expires by itself): {e}");
        }
        Ok(())
    }

    /// Connects and campaigns until elected, through any etcd outage.
    async fn win(&self, forwarder: &Forwarder) -> Leadership {
        let record = serde_json::to_string(&self.me).unwrap_or_default();
        let mut pause = Duration::from_millis(200);
        loop {
            let attempt = async {
                let client = connect(&self.etcd).await?;
                forwarder.set_client(client.clone());
                campaign(&client, &self.etcd, &record).await
            };
            match attempt.await {
                Ok(won) => return won,
                Err(e) => {
                    tracing::warn!("etcd: {e}; trying again in {pause:?}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Opens the job store on etcd for reading (no fence: a follower never writes), trying again
/// while etcd cannot be reached; the follower relays job reads until then.
async fn read_jobs_from_etcd(etcd: EtcdOptions, jobs: FollowerJobs) {
    use backon::{ExponentialBuilder, Retryable};
    let open = || async {
        let etcd = etcd.clone();
        tokio::task::spawn_blocking(move || EtcdKv::connect(&etcd, None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    };
    let retry = ExponentialBuilder::default()
        .with_max_delay(Duration::from_secs(5))
        .without_max_times();
    let kv = match open.retry(retry).await {
        Ok(kv) => kv,
        Err(e) => return tracing::warn!("job reads stay with the leader: {e}"),
    };
    let changes = jobs.changes.clone();
    kv.watch(move |seen| {
        let changed = match seen {
            Seen::Record { tree, key } => match job_of_record(tree, key) {
                Some(id) => Some(id),
                None => return,
            },
            Seen::Anything => None,
        };
        // Nobody waiting is no error.
        let _ = changes.send(changed);
    });
    match Store::open(Database::replicated(Arc::new(kv))) {
        Ok(store) => {
            let _ = jobs.store.set(Arc::new(store));
        }
        Err(e) => tracing::warn!("job reads stay with the leader: {e}"),
    }
}

/// Replaces this process with a new one of the same program and arguments (the pid stays), on
/// the port it listened on (which `--port 0` chose).
fn restart(port: u16, master_ip: Option<&MasterIp>) -> ! {
    use std::os::unix::process::CommandExt;
    tracing::error!("this master no longer leads: restarting as a follower");
    // Before anything else: the next leader may be taking it already.
    if let Some(ip) = master_ip {
        ip.drop_here();
    }
    let mut args: Vec<std::ffi::OsString> = vec![];
    let mut given = std::env::args_os().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--port" {
            given.next();
        } else if !arg.to_string_lossy().starts_with("--port=") {
            args.push(arg);
        }
    }
    args.push(format!("--port={port}").into());
    let error = std::process::Command::new("/proc/self/exe")
        .args(args)
        .exec();
    tracing::error!("cannot restart: {error}");
    std::process::exit(75)
}
