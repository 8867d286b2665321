//! The webhook behind the real aggregation layer: a serving PKI, `serve` with the
//! webhook role, and the chart's APIService pointed at it on loopback.

use std::time::Duration;

use base64::{Engine, prelude::BASE64_STANDARD};
use serde_json::{Value, json};

use super::{RELEASE, RELEASE_NAMESPACE, pki::Ca};

/// `serve` with the webhook role, reachable through kube-apiserver.
pub struct Solver {
    pub serve: super::Serve,
    pub webhook: std::net::SocketAddr,
    /// The CA of the webhook's serving certificate, the APIService's caBundle.
    pub ca: Ca,
    /// The name the serving certificate is for, as the aggregator checks it.
    pub server_name: String,
    /// From starting `serve` until it reported ready.
    pub ready_after: Duration,
}

/// Starts `serve` (watching every namespace, as the chart's ServiceAccount) with the
/// webhook role and `extra` flags, and registers it as the APIService
/// `v1alpha1.acme.acmedns.io` from the chart: an ExternalName Service `localhost`, the
/// port in the APIService, the test CA as caBundle. Waits until it is Available and
/// discovery through kube-apiserver reaches it.
pub async fn start_solver(extra: &[&str]) -> Solver {
    start_solver_with_log(extra, None).await
}

/// `start_solver`, logging where `log` says (else to the test's stderr).
pub async fn start_solver_with_log(extra: &[&str], log: Option<super::ServeLog<'_>>) -> Solver {
    let service = format!("{RELEASE}-kube-acme-dns");
    // The name the aggregator checks: <service>.<namespace>.svc.
    let server_name = format!("{service}.{RELEASE_NAMESPACE}.svc");
    let ca = Ca::new("webhook-test-ca");
    let pki = std::env::temp_dir().join(super::unique_name("webhook-pki"));
    let (cert, key) = ca.serving(&[&server_name]).write(&pki, "tls");
    let webhook_port = super::free_port();
    let webhook: std::net::SocketAddr = format!("127.0.0.1:{webhook_port}").parse().unwrap();
    let webhook_addr = webhook.to_string();
    let mut args = vec![
        "--webhook-addr",
        &webhook_addr,
        "--webhook-tls-cert",
        cert.to_str().unwrap(),
        "--webhook-tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let kubeconfig = super::chart_identity_kubeconfig();
    let serve = match log {
        Some(log) => super::spawn_serve_all_namespaces_logging(kubeconfig, &args, log),
        None => super::spawn_serve_all_namespaces(kubeconfig, &args),
    };
    let ready_after = super::wait_ready(&serve).await;

    let rendered = super::render_chart(&["--show-only", "templates/apiservice.yaml"]);
    let mut apiservice: Value = serde_yaml::from_str(&rendered).unwrap();
    apiservice["spec"]["service"]["port"] = json!(webhook_port);
    apiservice["spec"]["caBundle"] = json!(BASE64_STANDARD.encode(&ca.cert.cert_pem));
    let external = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": service, "namespace": RELEASE_NAMESPACE },
        "spec": { "type": "ExternalName", "externalName": "localhost" },
    });
    for object in [&external, &apiservice] {
        super::run(
            "kubectl",
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(&object.to_string()),
        );
    }
    super::eventually(
        "the APIService Available",
        Duration::from_secs(30),
        || async {
            let out = super::run(
                "kubectl",
                &[
                    "get",
                    "apiservice",
                    "v1alpha1.acme.acmedns.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
                ],
                None,
            );
            (out.trim() == "True").then_some(())
        },
    )
    .await;
    // Available may still be the verdict on an earlier test's solver: discovery through
    // the aggregator reaching this one is the proof.
    let admin = super::client().await;
    super::eventually(
        "discovery served through the aggregator",
        Duration::from_secs(30),
        || async {
            let request = http::Request::get("/apis/acme.acmedns.io/v1alpha1")
                .body(Vec::new())
                .unwrap();
            let text = admin.request_text(request).await.ok()?;
            text.contains("APIResourceList").then_some(())
        },
    )
    .await;
    Solver {
        serve,
        webhook,
        ca,
        server_name,
        ready_after,
    }
}

/// `start_solver` with every role (DNS, controller, webhook), a leader election lease of
/// its own, and a delegation resolver that answers nothing (these tests publish no CNAME
/// to check).
pub async fn start_all_roles(lease: &str) -> Solver {
    start_all_roles_with_log(lease, None).await
}

/// `start_all_roles`, logging where `log` says (else to the test's stderr).
pub async fn start_all_roles_with_log(lease: &str, log: Option<super::ServeLog<'_>>) -> Solver {
    start_solver_with_log(
        &[
            "--roles",
            "dns,controller,webhook",
            "--leader-election-namespace",
            RELEASE_NAMESPACE,
            "--leader-election-lease",
            lease,
            "--delegation-resolver",
            "127.0.0.1:9",
        ],
        log,
    )
    .await
}
