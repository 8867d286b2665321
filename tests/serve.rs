//! `kube-acme-dns serve` as a process against the local control plane.

mod common;

use std::time::Duration;

use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use tokio::process::Command;

use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DomainName};

#[tokio::test]
async fn serve_turns_ready_after_sync_and_counts_accounts() {
    let client = common::client().await;
    common::install_crd(&client).await;
    // A namespace of its own, so the counts are exact while other tests run.
    let namespace = common::create_namespace(&client, "serve").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);
    let name = common::unique_name("serve");
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(format!("{name}.example.test"))],
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &AcmeDnsAccount::new(&name, spec))
        .await
        .unwrap();

    // Runs as the chart's ServiceAccount, so this also proves the chart's RBAC.
    let serve = common::spawn_serve(&namespace, &namespace, &["--roles", "dns"]);
    common::wait_ready(&serve).await;
    let count = || async {
        let (_, body) = common::http_get(serve.metrics, "/metrics").await?;
        common::metric(&body, "kube_acme_dns_accounts")
    };
    common::eventually("the account counted", Duration::from_secs(10), || async {
        (count().await? == 1.0).then_some(())
    })
    .await;

    accounts
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(
        "the deleted account uncounted",
        Duration::from_secs(10),
        || async { (count().await? == 0.0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn serve_without_a_reachable_cluster_fails_with_what_to_do() {
    let output = Command::new(common::BIN)
        .args([
            "serve",
            "--metrics-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
        ])
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

#[tokio::test]
async fn bad_static_record_fails_before_anything_starts() {
    let output = Command::new(common::BIN)
        .args(["serve", "--record", "api MX 10 mail.example.test."])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NAME TYPE DATA"), "{stderr}");
}

#[tokio::test]
async fn api_registering_outside_the_watched_namespace_fails_before_anything_starts() {
    let output = Command::new(common::BIN)
        .args(["serve", "--roles", "dns,api"])
        .args([
            "--watch-namespace",
            "tenants",
            "--api-namespace",
            "acme-dns",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"set --api-namespace to "tenants""#),
        "{stderr}"
    );
}
