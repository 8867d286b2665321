//! The cert-manager DNS-01 webhook solver: the acme-dns [`Solver`] served by the
//! generic [`apiserver`](crate::apiserver) as group `acme.acmedns.io`, version
//! `v1alpha1`, resource `acme-dns`, reached through the kube-apiserver's aggregation
//! layer.

pub mod resolver;
pub mod solver;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use kube::Client;
use tokio_util::sync::CancellationToken;

pub use self::{resolver::AccountResolver, solver::Solver};
use crate::{
    apiserver::{self, Options, SolverApi},
    http::Limits,
};

pub const GROUP: &str = "acme.acmedns.io";
pub const VERSION: &str = "v1alpha1";
pub const RESOURCE: &str = "acme-dns";

pub const API: SolverApi = SolverApi {
    group: GROUP,
    version: VERSION,
    resource: RESOURCE,
};

/// Largest ChallengePayload accepted. A real one is well under 4 KiB.
const MAX_BODY: usize = 64 * 1024;

/// How often the serving certificate files are re-read; cert-manager renews them in
/// place well before expiry, so a minute's delay is harmless.
const CERT_RELOAD_PERIOD: Duration = Duration::from_secs(30);

#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// HTTPS address of the webhook solver (the APIService's Service points here).
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_ADDR",
        default_value = "127.0.0.1:8443"
    )]
    pub webhook_addr: SocketAddr,

    /// Serving certificate (PEM) for the webhook; re-read when it changes.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_TLS_CERT",
        default_value = "/tls/tls.crt"
    )]
    pub webhook_tls_cert: String,

    /// Private key (PEM) for the webhook's serving certificate.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_TLS_KEY",
        default_value = "/tls/tls.key"
    )]
    pub webhook_tls_key: String,

    /// Also ask the API server (SubjectAccessReview) whether the calling user may create
    /// acme-dns.acme.acmedns.io; the aggregator has already checked it, so this is
    /// defence in depth.
    #[arg(long, env = "KUBE_ACME_DNS_WEBHOOK_AUTHORIZE", default_value_t = false)]
    pub webhook_authorize: bool,

    /// cert-manager's cluster resource namespace: challenges from ClusterIssuers carry
    /// it, and may use accounts in every namespace.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_CLUSTER_RESOURCE_NAMESPACE",
        default_value = "cert-manager"
    )]
    pub cluster_resource_namespace: String,

    /// Let namespaced Issuers use accounts in other namespaces too.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_WEBHOOK_CROSS_NAMESPACE",
        default_value_t = false
    )]
    pub webhook_cross_namespace: bool,

    /// Most TXT values kept per account; the oldest is dropped beyond it.
    #[arg(long, env = "KUBE_ACME_DNS_MAX_TXT_VALUES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_txt_values: u16,
}

/// Serves the webhook until `shutdown`, then lets challenges in flight finish.
pub async fn serve(
    args: WebhookArgs,
    client: Client,
    solver: Solver,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("cannot listen on {} for the webhook", args.webhook_addr))?;
    let options = Options {
        api: API,
        tls_cert: args.webhook_tls_cert.into(),
        tls_key: args.webhook_tls_key.into(),
        cert_reload_period: CERT_RELOAD_PERIOD,
        authorize: args.webhook_authorize,
        limits: Limits {
            max_body: MAX_BODY,
            ..Limits::default()
        },
    };
    apiserver::serve(listener, client, options, solver, shutdown).await?;
    Ok(())
}
