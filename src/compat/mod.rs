//! The acme-dns compatible HTTP API (`/register`, `/update`, `/health`), so clients that
//! speak acme-dns (lego, Traefik, cert-manager's `acmeDNS` solver, acme.sh, the certbot
//! hook, Caddy) work unchanged: `protocol` is the wire format, `server` the routes over
//! an account store, `store` the accounts as AcmeDnsAccounts and credential Secrets.

pub mod keywork;
pub mod limit;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod store;

#[cfg(test)]
mod tests;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::http::{self, Limits, ServingCert, TlsConfig, TlsError};

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Address of the acme-dns compatible HTTP API.
    #[arg(long, env = "KUBE_ACME_DNS_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api_addr: SocketAddr,

    /// Namespace where `/register` creates AcmeDnsAccounts and their credential Secrets.
    /// Defaults to the pod's namespace.
    #[arg(long, env = "KUBE_ACME_DNS_API_NAMESPACE")]
    pub api_namespace: Option<String>,

    /// Remove `/register` (it answers 404, as acme-dns does with registration disabled);
    /// accounts then get credentials only through an administrator.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_API_DISABLE_REGISTRATION",
        default_value_t = false
    )]
    pub api_disable_registration: bool,

    /// When set, `/register` needs this value in the X-Registration-Token header.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_API_REGISTRATION_TOKEN",
        hide_env_values = true
    )]
    pub api_registration_token: Option<String>,

    /// CIDRs of proxies in front of the API whose X-Forwarded-For is believed,
    /// comma-separated. Without any, the TCP peer is the client.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_API_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_net
    )]
    pub api_trusted_proxies: Vec<IpNet>,

    /// bcrypt cost of new API keys (acme-dns uses 10).
    #[arg(long, env = "KUBE_ACME_DNS_API_BCRYPT_COST", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(4..=16))]
    pub api_bcrypt_cost: u32,

    /// bcrypt computations at once; more requests wait. 0 means one per CPU. The checks
    /// run on threads of their own at nice 10, so a flood of bad keys slows other API
    /// requests, not DNS answers.
    #[arg(
        long,
        env = "KUBE_ACME_DNS_API_BCRYPT_CONCURRENCY",
        default_value_t = 0
    )]
    pub api_bcrypt_concurrency: usize,

    /// Registrations one source (an IPv4 address or an IPv6 /64) may make at once;
    /// after that, one more per --api-register-refill. 0 means no limit.
    #[arg(long, env = "KUBE_ACME_DNS_API_REGISTER_BURST", default_value_t = 10)]
    pub api_register_burst: u32,

    /// Seconds for a source to earn one more registration once its burst is spent.
    #[arg(long, env = "KUBE_ACME_DNS_API_REGISTER_REFILL", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub api_register_refill: u64,

    /// Serve HTTPS with this certificate (PEM), re-read when it changes; plain HTTP when
    /// unset (behind a TLS-terminating Ingress).
    #[arg(long, env = "KUBE_ACME_DNS_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --api-tls-cert.
    #[arg(long, env = "KUBE_ACME_DNS_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
}

fn parse_net(text: &str) -> Result<IpNet, String> {
    protocol::parse_cidr(text.trim())
        .ok_or_else(|| format!("{text:?} is not a CIDR such as 10.0.0.0/8 or fd00::/8"))
}

impl ApiArgs {
    pub fn settings(&self) -> server::Settings {
        server::Settings {
            registration: !self.api_disable_registration,
            registration_token: self.api_registration_token.clone(),
            trusted_proxies: self.api_trusted_proxies.clone(),
            bcrypt_cost: self.api_bcrypt_cost,
            bcrypt_concurrency: match self.api_bcrypt_concurrency {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            },
            register_limit: (self.api_register_burst > 0).then(|| limit::RateLimit {
                burst: self.api_register_burst,
                refill: Duration::from_secs(self.api_register_refill),
            }),
        }
    }

    pub fn namespace(&self) -> String {
        self.api_namespace
            .clone()
            .unwrap_or_else(crate::pod_namespace)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr} for the acme-dns API: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot start the threads that check API keys: {0}")]
    Threads(#[source] std::io::Error),
}

/// Serves the API over `store` until `shutdown`, then drains requests in flight.
pub async fn serve<S: server::AccountStore>(
    args: &ApiArgs,
    store: S,
    metrics: metrics::ApiMetrics,
    shutdown: CancellationToken,
) -> Result<(), ApiError> {
    let listener = TcpListener::bind(args.api_addr)
        .await
        .map_err(|source| ApiError::Listen {
            addr: args.api_addr,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let router = server::router(store, args.settings(), metrics).map_err(ApiError::Threads)?;
    // A register or update body is a few hundred bytes.
    let limits = Limits {
        max_body: 16 * 1024,
        ..Limits::default()
    };
    match (&args.api_tls_cert, &args.api_tls_key) {
        (Some(cert), Some(key)) => {
            let serving = ServingCert::load(cert, key)?;
            let tls = TlsConfig::new(serving.server_config());
            tokio::spawn(
                serving
                    .clone()
                    .keep_current(Duration::from_secs(30), shutdown.clone()),
            );
            info!(%addr, "acme-dns API serving /register, /update and /health over HTTPS");
            http::serve_tls(listener, tls, router, limits, shutdown).await;
        }
        _ => {
            info!(%addr, "acme-dns API serving /register, /update and /health over HTTP");
            http::serve(listener, router, limits, shutdown).await;
        }
    }
    Ok(())
}
