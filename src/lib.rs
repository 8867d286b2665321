//! kube-acme-dns: a Kubernetes-native ACME-DNS.
//!
//! One binary with several roles, each in its own module; `main.rs` only parses flags
//! and starts the roles that are enabled.

pub mod api;
pub mod apiserver;
pub mod compat;
pub mod controller;
pub mod credentials;
pub mod dns;
pub mod health;
pub mod http;
pub mod import;
pub mod index;
pub mod serve;
pub mod telemetry;
pub mod txt;
pub mod watch;
pub mod webhook;
pub mod wire;

/// The namespace this pod runs in, read from its service account mount; `default` out of
/// a cluster.
pub fn pod_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|ns| ns.trim().to_string())
        .unwrap_or_else(|_| "default".into())
}

/// A client of the Kubernetes API, configured as `kubectl` would be (KUBECONFIG, or the
/// pod's service account), that names itself `kube-acme-dns/<version>`. The API server
/// takes a writer's field manager from that name: `metadata.managedFields` then says
/// which fields of an account are ours (status, Secrets, Events, the Lease) rather than
/// "unknown".
pub async fn kube_client() -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::infer().await?;
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("kube-acme-dns/", env!("CARGO_PKG_VERSION"))),
    ));
    Ok(kube::Client::try_from(config)?)
}
