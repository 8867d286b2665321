//! `/healthz`, `/readyz` and `/metrics` on one port.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    http::{self, Limits},
    index::AccountIndex,
};

#[derive(Clone)]
pub struct Health {
    synced: Arc<AtomicBool>,
    /// Set at shutdown: not ready any more, while still serving.
    draining: Arc<AtomicBool>,
    registry: Registry,
    index: Arc<AccountIndex>,
    accounts: IntGauge,
    served_names: IntGauge,
    txt_values: IntGauge,
    index_synced: IntGauge,
    tasks: IntGauge,
}

impl Health {
    pub fn new(registry: Registry, index: Arc<AccountIndex>) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(Self {
            synced: Arc::new(AtomicBool::new(false)),
            draining: Arc::new(AtomicBool::new(false)),
            accounts: gauge(
                "kube_acme_dns_accounts",
                "AcmeDnsAccounts known to this replica",
            )?,
            served_names: gauge(
                "kube_acme_dns_served_names",
                "Account names this replica answers for (accounts with an assigned subdomain, one per label)",
            )?,
            txt_values: gauge("kube_acme_dns_txt_values", "TXT values this replica serves")?,
            index_synced: gauge(
                "kube_acme_dns_index_synced",
                "1 once the account index has completed its first full sync",
            )?,
            tasks: gauge(
                "kube_acme_dns_runtime_tasks",
                "Tasks alive in the async runtime (connections, watches, requests in flight): \
                 steady under steady load",
            )?,
            registry,
            index,
        })
    }

    /// Marks the first full sync done; returns whether it already was.
    pub fn mark_synced(&self) -> bool {
        self.index_synced.set(1);
        self.synced.swap(true, Ordering::SeqCst)
    }

    /// From now on `/readyz` says not ready, so the endpoints drop this replica while
    /// it still answers.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// Binds the endpoint and returns the future serving it until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics and health"))?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    Ok(http::serve(listener, app, Limits::default(), shutdown))
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if health.synced.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full sync of AcmeDnsAccounts",
        )
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    // Counted at scrape time, not on every change, so the watch path stays cheap.
    let (accounts, names, txt) = health.index.counts();
    health.accounts.set(accounts as i64);
    health.served_names.set(names as i64);
    health.txt_values.set(txt as i64);
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    health.tasks.set(tasks as i64);
    let mut body = Vec::new();
    match TextEncoder::new().encode(&health.registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, body).into_response(),
        Err(err) => {
            warn!(%err, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
