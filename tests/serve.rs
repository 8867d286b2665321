//! `kube-acme-dns serve` as a process against the local control plane.

mod common;

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DomainName};

const BIN: &str = env!("CARGO_BIN_EXE_kube-acme-dns");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET, enough for the health and metrics endpoints.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Runs `serve` as the chart's ServiceAccount, so the test also proves the chart's RBAC
/// is enough.
fn spawn_serve(metrics: SocketAddr, namespace: &str) -> Child {
    Command::new(BIN)
        .args(["serve", "--metrics-addr", &metrics.to_string()])
        .args(["--watch-namespace", namespace])
        .env("KUBECONFIG", common::chart_identity_kubeconfig())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start kube-acme-dns serve")
}

/// Polls until `check` holds or the deadline passes; returns the last body seen.
async fn eventually(
    addr: SocketAddr,
    path: &str,
    what: &str,
    check: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((status, body)) = get(addr, path).await {
            if check(status, &body) {
                return body;
            }
            last = Some((status, body));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 20 s; last answer from {path}: {last:?}");
}

#[tokio::test]
async fn serve_turns_ready_after_sync_and_counts_accounts() {
    let client = common::client().await;
    common::install_crd(&client).await;
    // A namespace of its own, so the counts are exact while other tests run.
    let namespace = common::create_namespace(&client, "serve").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);
    let name = common::unique_name("serve");
    accounts
        .create(
            &PostParams::default(),
            &AcmeDnsAccount::new(
                &name,
                AcmeDnsAccountSpec {
                    domains: vec![DomainName(format!("{name}.example.test"))],
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();

    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut serve = spawn_serve(metrics, &namespace);
    eventually(metrics, "/healthz", "healthz answering", |s, _| s == 200).await;
    eventually(
        metrics,
        "/readyz",
        "readiness after the first sync",
        |s, _| s == 200,
    )
    .await;
    eventually(metrics, "/metrics", "the account counted", |s, body| {
        s == 200 && account_gauge(body) == 1
    })
    .await;

    accounts
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        metrics,
        "/metrics",
        "the deleted account uncounted",
        |_, body| account_gauge(body) == 0,
    )
    .await;

    serve.start_kill().unwrap();
    serve.wait().await.unwrap();
}

fn account_gauge(metrics: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("kube_acme_dns_accounts "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

#[tokio::test]
async fn serve_without_a_reachable_cluster_fails_with_what_to_do() {
    let output = Command::new(BIN)
        .args(["serve", "--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach Kubernetes"), "{stderr}");
    assert!(stderr.contains("KUBECONFIG"), "{stderr}");
}
