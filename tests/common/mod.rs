//! Shared set-up for tests that run against the local control plane started by
//! `make cluster-up` (`e2e/cluster.sh up`). `make test` starts it and exports KUBECONFIG.

#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{conditions, wait::await_condition},
};

/// A client for the local control plane. Fails with what to run when there is none:
/// these tests prove behaviour against a real API server and must not pass without one.
pub async fn client() -> Client {
    let Ok(path) = std::env::var("KUBECONFIG") else {
        panic!(
            "KUBECONFIG is not set: these tests need the local control plane. \
             Run `make test`, or `make cluster-up && eval $(make -s cluster-env)` first."
        );
    };
    let config = kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {path}: {e}"));
    Client::try_from(config).expect("client from kubeconfig")
}

/// Installs (or updates) the CRD exactly as `kube-acme-dns crd` prints it and waits until
/// the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kube_acme_dns::api::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply("kube-acme-dns-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the generated CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watching the CRD");
}

/// A name unique to this test run, so tests can run in parallel and be re-run against
/// the same control plane without cleaning up first.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a namespace of its own for a test. There is no namespace controller in the
/// local control plane to finalise deletions, so namespaces are left behind; their names
/// are unique, and `make cluster-down` removes everything.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    let name = unique_name(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name }
    }))
    .unwrap();
    namespaces
        .create(&Default::default(), &namespace)
        .await
        .expect("create a test namespace");
    name
}
