//! What every HTTP server in the process shares (the webhook's aggregated API, the
//! acme-dns API, metrics and health): TLS with a reloading certificate, body and time
//! limits, and a graceful shutdown that stops accepting, lets requests in flight
//! finish within a bound, then returns.

pub mod tls;

#[cfg(test)]
mod tests;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::CertificateDer;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;
use tracing::{debug, warn};

pub use self::tls::{ServingCert, TlsConfig, TlsError};

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/1 client that has not sent its headers by then is dropped (slow loris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of request head an HTTP/1 connection buffers; a larger head gets a 431.
/// Our callers send a few hundred bytes of headers (the aggregator's a few KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header bytes of one HTTP/2 request, and streams one connection may open at once.
const MAX_H2_HEADER_LIST: u32 = 64 * 1024;
const MAX_H2_STREAMS: u32 = 128;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body a handler reads; beyond it the request gets a 413.
    pub max_body: usize,
    /// A request still running after this gets a 503.
    pub request_timeout: Duration,
    /// At shutdown, how long requests in flight may take to finish before the server
    /// returns anyway. Below Kubernetes' default 30 s termination grace period.
    pub drain_timeout: Duration,
    /// Connections served at once; a new one beyond this is closed at once, so a flood
    /// of idle connections costs a file descriptor each only briefly and never the
    /// process its memory.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(20),
            // cert-manager, the aggregator and acme-dns clients keep a handful each.
            max_connections: 1024,
        }
    }
}

/// What the transport knows about the caller, in every request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client certificate chain, leaf first, verified by the TLS configuration's
    /// client verifier; empty when none was presented or the connection is plain.
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Serves `router` over plain HTTP until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    accept_loop(listener, router, limits, shutdown, |stream| async move {
        Some((stream, Vec::new()))
    })
    .await
}

/// Serves `router` over TLS until `shutdown`, then drains. Each connection takes the
/// configuration current when it is accepted.
pub async fn serve_tls(
    listener: TcpListener,
    tls: TlsConfig,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    accept_loop(
        listener,
        router,
        limits,
        shutdown,
        move |stream: TcpStream| {
            let acceptor = TlsAcceptor::from(tls.current());
            async move {
                let remote = stream.peer_addr().ok();
                match acceptor.accept(stream).await {
                    Ok(stream) => {
                        let certificates = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(<[_]>::to_vec)
                            .unwrap_or_default();
                        Some((stream, certificates))
                    }
                    Err(e) => {
                        debug!(?remote, error = %e, "TLS handshake failed");
                        None
                    }
                }
            }
        },
    )
    .await
}

async fn accept_loop<H, F, IO>(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    handshake: H,
) where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = Option<(IO, Vec<CertificateDer<'static>>)>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = with_limits(router, &limits);
    let handshake = Arc::new(handshake);
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut last_warned = None;
    loop {
        let (stream, addr) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Once a minute at most: a flood must not become a flood of logs.
            if last_warned
                .is_none_or(|at: std::time::Instant| at.elapsed() > Duration::from_secs(60))
            {
                warn!(%addr, limit = limits.max_connections, "HTTP connections at the limit; closing new ones until some end");
                last_warned = Some(std::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let handshake = handshake.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let established = tokio::select! {
                () = shutdown.cancelled() => return,
                established = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream)) => established,
            };
            let Ok(Some((io, certificates))) = established else {
                return;
            };
            let peer = Peer { addr, certificates };
            serve_connection(io, peer, router, shutdown).await;
        });
    }
    // Closing the listener makes new connections fail at once instead of queueing.
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        warn!(
            connections = connections.len(),
            "requests still running after {:?}; leaving them", limits.drain_timeout
        );
    }
}

async fn serve_connection<IO>(io: IO, peer: Peer, router: Router, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let service = router.map_request(move |request: Request<hyper::body::Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(peer.clone());
        request
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_H2_HEADER_LIST)
        .max_concurrent_streams(MAX_H2_STREAMS);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            // HTTP/1: close once the response in flight is written; HTTP/2: GOAWAY,
            // then finish the open streams.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(%addr, error = %e, "connection ended with an error");
    }
}

fn with_limits(router: Router, limits: &Limits) -> Router {
    router
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            request_timeout,
        ))
        .layer(DefaultBodyLimit::max(limits.max_body))
}

async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {limit:?}; retry it"),
        )
            .into_response(),
    }
}
