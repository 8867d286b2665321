//! `kube-acme-dns serve`: connects to the cluster, keeps a watch-fed view of every
//! AcmeDnsAccount, and serves health and metrics. The DNS responder, webhook solver,
//! acme-dns API and controller attach to this as they are added.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, reflector, watcher},
};
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tracing::{info, warn};

use crate::api::AcmeDnsAccount;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The zone this server is authoritative for; accounts are served at
    /// `<subdomain>.<zone>`.
    #[arg(long, env = "KUBE_ACME_DNS_ZONE", default_value = "auth.example.test")]
    pub zone: String,

    /// Where `/metrics`, `/healthz` and `/readyz` listen.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_METRICS_ADDR",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_addr: SocketAddr,

    /// Watch AcmeDnsAccounts in this namespace only; all namespaces when unset.
    #[arg(long, env = "KUBE_ACME_DNS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
}

/// Shared state of the health and metrics endpoints.
#[derive(Clone)]
struct Health {
    synced: Arc<AtomicBool>,
    registry: Registry,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let client = Client::try_default().await.context(
        "cannot reach Kubernetes: set KUBECONFIG, or run in a pod with a service account",
    )?;
    let accounts: Api<AcmeDnsAccount> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    check_crd_installed(&accounts).await?;

    let registry = Registry::new();
    let account_gauge = IntGauge::new(
        "kube_acme_dns_accounts",
        "AcmeDnsAccounts currently known to this replica",
    )?;
    registry.register(Box::new(account_gauge.clone()))?;
    let health = Health {
        synced: Arc::new(AtomicBool::new(false)),
        registry,
    };

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {} for metrics", args.metrics_addr))?;
    info!(addr = %args.metrics_addr, zone = %args.zone, "serving /metrics, /healthz and /readyz");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health.clone());
    let http = axum::serve(listener, app).with_graceful_shutdown(shutdown_signal());

    let (store, writer) = reflector::store();
    let synced = health.synced.clone();
    // Errors from the watch are logged and retried with backoff, never fatal: when the
    // API server goes away the last state seen stays in the store.
    let watch = reflector(writer, watcher(accounts, watcher::Config::default()))
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(account)) => {
                    info!(account = %qualified_name(&account), subdomain = ?account.status.as_ref().and_then(|s| s.subdomain.as_ref()), "account applied");
                }
                Ok(watcher::Event::Delete(account)) => {
                    info!(account = %qualified_name(&account), "account deleted");
                }
                Ok(watcher::Event::InitDone) => {
                    if !synced.swap(true, Ordering::SeqCst) {
                        info!(accounts = store.len(), "initial account sync complete");
                    }
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(err) => warn!(%err, "AcmeDnsAccount watch failed; retrying with backoff"),
            }
            account_gauge.set(store.len() as i64);
            futures::future::ready(())
        });

    tokio::select! {
        result = http => result.context("metrics server failed")?,
        () = watch => anyhow::bail!("the AcmeDnsAccount watch ended, which it never should"),
    }
    info!("shut down");
    Ok(())
}

/// Fails early, with the command that fixes it, when the CRD is missing; otherwise the
/// watch would retry a 404 forever and the process would look healthy but serve nothing.
async fn check_crd_installed(accounts: &Api<AcmeDnsAccount>) -> anyhow::Result<()> {
    match accounts.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => anyhow::bail!(
            "the AcmeDnsAccount CRD is not installed in this cluster: \
             apply it with `kube-acme-dns crd | kubectl apply -f -` (or install the Helm chart)"
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => anyhow::bail!(
            "not allowed to list AcmeDnsAccounts ({}): grant list/watch on \
             acmednsaccounts.acmedns.io to this identity (the Helm chart's RBAC does)",
            status.message
        ),
        Err(err) => Err(err).context("cannot list AcmeDnsAccounts"),
    }
}

fn qualified_name(account: &AcmeDnsAccount) -> String {
    format!(
        "{}/{}",
        account.namespace().unwrap_or_default(),
        account.name_any()
    )
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.synced.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first full sync of AcmeDnsAccounts",
        )
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&health.registry.gather(), &mut body) {
        Ok(()) => (StatusCode::OK, body).into_response(),
        Err(err) => {
            warn!(%err, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn shutdown_signal() {
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
