//! cert-manager's own controllers (built by `e2e/cert-manager/build.sh`) running out of
//! cluster against the local control plane, and what a user reads back from them.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use base64::{Engine, prelude::BASE64_STANDARD};
use kube::{Api, api::DynamicObject, discovery::ApiResource};

const BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cert-manager/build.sh");

fn build_script(args: &[&str]) -> String {
    super::run(BUILD, args, None).trim().to_string()
}

/// Builds the controllers if needed, installs cert-manager's CRDs (waiting until they are
/// served) and the `cert-manager` namespace that holds ClusterIssuers' Secrets.
pub fn install() {
    build_script(&[]);
    let crds = build_script(&["crds"]);
    super::run("kubectl", &["apply", "--server-side", "-f", &crds], None);
    super::wait_established(&[
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "clusterissuers.cert-manager.io",
        "challenges.acme.cert-manager.io",
    ]);
    super::apply_namespace("cert-manager");
}

/// Starts cert-manager's controllers, killed when the returned child is dropped, with
/// their log in a file of their own (its path is printed). Every DNS-01 self check asks
/// `resolver` only, never the zones' authoritative servers, so no query leaves loopback.
/// `namespace` scopes them to one namespace (no ClusterIssuers).
pub fn start_controllers(resolver: SocketAddr, namespace: Option<&str>) -> tokio::process::Child {
    assert!(
        resolver.ip().is_loopback(),
        "resolver off loopback: {resolver}"
    );
    let mut command = tokio::process::Command::new(build_script(&["path"]));
    command
        .args(["--kubeconfig", &std::env::var("KUBECONFIG").unwrap()])
        .args(["--cluster-resource-namespace", "cert-manager"])
        .args([
            "--dns01-recursive-nameservers",
            &resolver.to_string(),
            "--dns01-recursive-nameservers-only",
        ])
        .args(["--dns01-check-retry-period", "1s"]);
    if let Some(namespace) = namespace {
        command.args(["--namespace", namespace]);
    }
    let log = std::env::temp_dir().join(format!("{}.log", super::unique_name("cert-manager")));
    eprintln!("cert-manager's controllers log to {}", log.display());
    let log_file = std::fs::File::create(&log).unwrap();
    command
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("start cert-manager's controllers")
}

pub fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// Waits until the Certificate `namespace/name` is Ready; returns how long that took.
pub async fn wait_certificate_ready(namespace: &str, name: &str, timeout: Duration) -> Duration {
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(super::client().await, namespace, &certificate_resource());
    let started = std::time::Instant::now();
    super::eventually(&format!("Certificate {name} Ready"), timeout, || async {
        let cert = certificates.get(name).await.ok()?;
        let conditions = cert.data["status"]["conditions"].as_array()?.clone();
        conditions
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;
    started.elapsed()
}

/// The PEM chain cert-manager stored in the Secret `namespace/secret`.
pub fn tls_chain(namespace: &str, secret: &str) -> Vec<u8> {
    let pem = super::run(
        "kubectl",
        &[
            "get",
            "secret",
            secret,
            "-n",
            namespace,
            "-o",
            "jsonpath={.data.tls\\.crt}",
        ],
        None,
    );
    BASE64_STANDARD
        .decode(pem.trim())
        .expect("tls.crt is base64")
}
