//! HTTP plumbing shared by the RAPI server and the node agent: the connection loop (keep-alive,
//! header-read timeout, connection cap, optional TLS, graceful shutdown), TLS material, and a
//! constant-time comparison for secrets. Knows nothing of Ganeti.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub struct ServerOptions {
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Compares two secrets in time independent of where they differ. Both sides are hashed first
/// so that the length of the expected secret does not leak either.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use md5::{Digest, Md5};
    use subtle::ConstantTimeEq;
    Md5::digest(a).ct_eq(&Md5::digest(b)).into()
}

/// Serves any warp filter with gantry's connection handling: keep-alive, a header-read
/// timeout, a cap on open connections, optional TLS, graceful shutdown. Also used by node agents.
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
    let slots = Arc::new(Semaphore::new(opts.max_connections));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached, closing new connection");
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(service.clone());
        let acceptor = acceptor.clone();
        let header_timeout = opts.header_timeout;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let result = match acceptor {
                Some(acc) => {
                    let tls = match tokio::time::timeout(header_timeout, acc.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        _ => return,
                    };
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
                    watcher.watch(conn).await
                }
                None => {
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
