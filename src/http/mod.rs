//! HTTP plumbing shared by the RAPI server and the node agent: the connection loop (keep-alive,
//! header-read timeout, connection cap, optional TLS, graceful shutdown), and TLS material.
//! Knows nothing of Ganeti.

mod slots;
pub mod tls;

use slots::Slots;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;

pub struct ServerOptions {
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Time a client has to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections at once, in all.
    pub max_connections: usize,
    /// Open connections at once from one address.
    pub max_per_ip: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Serves any warp filter with gantry's connection handling (see `slots.rs`): keep-alive, a
/// header-read timeout, a short TLS handshake timeout, per-address and total connection caps,
/// optional TLS, graceful shutdown. Used by the RAPI and by node agents.
pub async fn serve_filter<F>(
    listener: TcpListener,
    routes: F,
    opts: ServerOptions,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let service = warp::service(routes);
    let slots = Slots::new(opts.max_connections, opts.max_per_ip);
    let acceptor = opts.tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!("accept failed: {e}"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = &mut shutdown => break,
        };
        let Some(slot) = slots.admit(peer.ip()) else {
            continue;
        };
        // Small answers should not wait for Nagle (nor a TLS session ticket behind them).
        let _ = stream.set_nodelay(true);
        let svc = MarkBusy {
            inner: hyper_util::service::TowerToHyperService::new(service.clone()),
            conn: slot.conn.clone(),
        };
        let acceptor = acceptor.clone();
        let (header_timeout, handshake_timeout) = (opts.header_timeout, opts.handshake_timeout);
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let serve = async {
                match acceptor {
                    Some(acc) => {
                        let tls = match tokio::time::timeout(handshake_timeout, acc.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            _ => return Ok(()),
                        };
                        let io = hyper_util::rt::TokioIo::new(tls);
                        watcher.watch(builder.serve_connection(io, svc)).await
                    }
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        watcher.watch(builder.serve_connection(io, svc)).await
                    }
                }
            };
            tokio::select! {
                result = serve => if let Err(e) = result {
                    tracing::debug!(%peer, "connection ended: {e}");
                },
                _ = slot.conn.evicted.notified() => {
                    tracing::debug!(%peer, "idle connection closed for a new one");
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Marks its connection busy while a request is being answered, so it is never evicted then.
#[derive(Clone)]
struct MarkBusy<S> {
    inner: S,
    conn: Arc<slots::Connection>,
}

impl<S, R> hyper::service::Service<R> for MarkBusy<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        self.conn.idle.store(false, Ordering::Relaxed);
        let answer = self.inner.call(request);
        let conn = self.conn.clone();
        Box::pin(async move {
            let result = answer.await;
            conn.idle.store(true, Ordering::Relaxed);
            result
        })
    }
}
