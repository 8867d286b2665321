//! The webhook behind the real aggregation layer: a serving PKI, `serve` with the
//! webhook role, and the chart's APIService pointed at it on loopback.

use std::{path::Path, time::Duration};

use kube::Client;
use serde_json::{Value, json};

use super::{RELEASE, RELEASE_NAMESPACE};

pub fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a serving certificate for the name the aggregator checks:
/// `<service>.<namespace>.svc`.
pub fn serving_pki(dir: &Path, dns_name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=webhook-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            &format!("/CN={dns_name}"),
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        format!("subjectAltName=DNS:{dns_name}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    Client::try_from(config).unwrap()
}

/// A kubeconfig for a ServiceAccount (created if missing), authenticated by a token.
pub fn service_account_kubeconfig(namespace: &str, name: &str) -> std::path::PathBuf {
    let manifest = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    );
    super::run("kubectl", &["apply", "-f", "-"], Some(&manifest));
    let token = super::run(
        "kubectl",
        &["create", "token", name, "-n", namespace, "--duration", "1h"],
        None,
    );
    let mut kubeconfig = kube::config::Kubeconfig::read().unwrap();
    for auth in &mut kubeconfig.auth_infos {
        auth.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.trim().to_string().into()),
            ..Default::default()
        });
    }
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", super::unique_name(name)));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `serve` with the webhook role, reachable through kube-apiserver.
pub struct Solver {
    pub serve: super::Serve,
    pub webhook: std::net::SocketAddr,
    pub pki: std::path::PathBuf,
}

/// Starts `serve` (watching every namespace, as the chart's ServiceAccount) with the
/// webhook role and `extra` flags, and registers it as the APIService
/// `v1alpha1.acme.acmedns.io` from the chart: an ExternalName Service `localhost`, the
/// port in the APIService, the test CA as caBundle. Waits until it is Available.
pub async fn start_solver(extra: &[&str]) -> Solver {
    let service = format!("{RELEASE}-kube-acme-dns");
    let pki = std::env::temp_dir().join(super::unique_name("webhook-pki"));
    serving_pki(&pki, &format!("{service}.{RELEASE_NAMESPACE}.svc"));
    let webhook_port = super::free_port();
    let webhook: std::net::SocketAddr = format!("127.0.0.1:{webhook_port}").parse().unwrap();
    let cert = pki.join("tls.crt");
    let key = pki.join("tls.key");
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
    let serve = super::spawn_serve_all_namespaces(super::chart_identity_kubeconfig(), &args);
    super::wait_ready(&serve).await;

    let rendered = super::render_chart(&["--show-only", "templates/apiservice.yaml"]);
    let mut apiservice: Value = serde_yaml::from_str(&rendered).unwrap();
    apiservice["spec"]["service"]["port"] = json!(webhook_port);
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    apiservice["spec"]["caBundle"] = json!(base64(&ca));
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
    Solver {
        serve,
        webhook,
        pki,
    }
}

/// `start_solver` with every role (DNS, controller, webhook), a leader election lease of
/// its own, and a delegation resolver that answers nothing (these tests publish no CNAME
/// to check).
pub async fn start_all_roles(lease: &str) -> Solver {
    start_solver(&[
        "--roles",
        "dns,controller,webhook",
        "--leader-election-namespace",
        RELEASE_NAMESPACE,
        "--leader-election-lease",
        lease,
        "--delegation-resolver",
        "127.0.0.1:9",
    ])
    .await
}
