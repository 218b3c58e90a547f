//! A follower's requests go to the leader, whose answer it relays unchanged: clients may use any
//! master. The leader is read from its key (cached until a request to it fails to connect);
//! while there is none (an election, or etcd without quorum) a request waits up to twice the
//! TTL and a few seconds, then gets a 503 in Ganeti's error format.

use super::master::MasterRecord;
use super::{EtcdOptions, leader};
use crate::rapi::leading::{Answer, Elsewhere, NO_LEADER, Received, refusal as error};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use warp::http::{HeaderMap, Response};

#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    me: String,
    etcd: Mutex<Option<etcd_client::Client>>,
    known: Mutex<Option<Known>>,
    patience: Duration,
}

#[derive(Clone)]
struct Known {
    record: MasterRecord,
    http: reqwest::Client,
    read: tokio::time::Instant,
}

/// How long the leader read from etcd is trusted before it is read again: a leadership may move
/// while the old leader still answers (it restarts as a follower at the same address).
const FRESH: Duration = Duration::from_secs(1);

/// Names the masters a request passed through: a follower hands a request on at most twice, so
/// two followers with stale views never pass one back and forth.
const FORWARDED_BY: &str = "x-gantry-forwarded-by";
const MAX_HOPS: usize = 2;

/// Headers of one connection, not of the request (RFC 9110 §7.6.1), and the length reqwest sets.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// How long a relayed request may take: longer than any `/2/jobs/N/wait`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

impl Forwarder {
    pub fn new(opts: &EtcdOptions, me: &str) -> Forwarder {
        Forwarder {
            inner: Arc::new(Inner {
                prefix: opts.prefix.clone(),
                me: me.to_string(),
                etcd: Mutex::new(None),
                known: Mutex::new(None),
                patience: Duration::from_secs(opts.ttl.max(1) as u64 * 2 + 5),
            }),
        }
    }

    pub fn set_client(&self, client: etcd_client::Client) {
        *self.inner.etcd.lock().unwrap_or_else(|e| e.into_inner()) = Some(client);
    }

    /// The leader, from the cache or its key; none while nobody leads or etcd is unreachable.
    async fn leader(&self, fresh: bool) -> Option<Known> {
        let cached = self
            .inner
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(known) = cached
            .as_ref()
            .filter(|k| !fresh && k.read.elapsed() < FRESH)
        {
            return Some(known.clone());
        }
        let mut client = self
            .inner
            .etcd
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let text = leader(&mut client, &self.inner.prefix).await.ok()??;
        let record: MasterRecord = serde_json::from_str(&text).ok()?;
        // The same leader as before: keep its client, and with it the open connections (a new
        // client each second would mean a new TLS handshake to the leader each second).
        if let Some(known) = cached.filter(|k| k.record == record) {
            let known = Known {
                read: tokio::time::Instant::now(),
                ..known
            };
            *self.inner.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(known.clone());
            return Some(known);
        }
        let mut http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(der) = &record.cert {
            http = http.use_preconfigured_tls(crate::http::tls::pinned_client_config(der).ok()?);
        }
        let known = Known {
            record,
            http: http.build().ok()?,
            read: tokio::time::Instant::now(),
        };
        *self.inner.known.lock().unwrap_or_else(|e| e.into_inner()) = Some(known.clone());
        Some(known)
    }

    fn forget(&self) {
        *self.inner.known.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    async fn relay(self, mut request: Received) -> Response<Bytes> {
        let deadline = tokio::time::Instant::now() + self.inner.patience;
        // Only a request that was never sent, or one that changes nothing, is sent again.
        let retry_any = matches!(request.method.as_str(), "GET" | "HEAD");
        let path: Vec<String> = request
            .headers
            .get(FORWARDED_BY)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(|n| n.trim().to_string()).collect())
            .unwrap_or_default();
        if path.len() >= MAX_HOPS {
            return error(503, NO_LEADER);
        }
        let mut by = path.clone();
        by.push(self.inner.me.clone());
        if let Ok(value) = by.join(",").parse() {
            request.headers.insert(FORWARDED_BY, value);
        }
        // Handed on by another master: its view was stale, so read the leader afresh.
        let mut fresh = !path.is_empty();
        loop {
            let current = self.leader(fresh).await;
            fresh = true;
            match current {
                Some(known) if known.record.name == self.inner.me => {
                    // Elected a moment ago, still recovering: the client tries again.
                    return error(503, "This master is taking over as leader; retry shortly");
                }
                Some(known) => match send(&known, &request).await {
                    Ok(answer) => return answer,
                    Err(e) if e.is_connect() || retry_any => {
                        tracing::debug!(
                            leader = %known.record.name,
                            "leader unreachable: {}",
                            crate::util::root_cause(&e)
                        );
                        self.forget();
                    }
                    Err(e) => {
                        self.forget();
                        return error(
                            502,
                            &format!(
                                "The leading master {} did not answer ({}); the request may or \
                                 may not have been carried out: look it up, or send it again \
                                 with an Idempotency-Key",
                                known.record.name,
                                crate::util::root_cause(&e)
                            ),
                        );
                    }
                },
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return error(503, NO_LEADER);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn send(known: &Known, request: &Received) -> Result<Response<Bytes>, reqwest::Error> {
    let url = format!("{}{}", known.record.url, request.target);
    let mut outgoing = known
        .http
        .request(request.method.clone(), url)
        .body(request.body.clone());
    for (name, value) in &request.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing.send().await?;
    let status = answer.status();
    let headers: HeaderMap = answer.headers().clone();
    let body = answer.bytes().await?;
    let mut relayed = Response::new(body);
    *relayed.status_mut() = status;
    for (name, value) in &headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            relayed.headers_mut().append(name, value.clone());
        }
    }
    Ok(relayed)
}

impl Elsewhere for Forwarder {
    fn forward(&self, request: Received) -> Answer {
        Box::pin(self.clone().relay(request))
    }

    fn leader_url(&self) -> std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send + '_>> {
        Box::pin(async move { self.leader(false).await.map(|k| k.record.url) })
    }

    fn describe(&self) -> std::pin::Pin<Box<dyn Future<Output = serde_json::Value> + Send + '_>> {
        Box::pin(async move {
            let leader = self
                .leader(true)
                .await
                .map(|k| serde_json::json!({"name": k.record.name, "url": k.record.url}));
            serde_json::json!({"store": "etcd", "this": self.inner.me, "leader": leader})
        })
    }
}
