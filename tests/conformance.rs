//! cert-manager's own DNS01 conformance suite (`test/acme`, strict mode), unchanged,
//! against our solver through kube-apiserver and our DNS responder: a thin Go solver
//! (e2e/conformance) forwards each call as a ChallengePayload.

mod common;

use std::time::Duration;

use kube::{Api, api::PostParams};

use common::aggregation;
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel};

#[tokio::test]
async fn cert_managers_dns01_conformance_suite_passes_in_strict_mode() {
    let admin = common::client().await;
    common::install_crd(&admin).await;
    let namespace = common::create_namespace(&admin, "conformance").await;
    let label = common::unique_name("conformance");
    let solver = aggregation::start_all_roles(&label).await;

    // The suite sends dnsName example.com; the account is found by the FQDN it
    // resolved, as with cnameStrategy: Follow.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin, &namespace);
    let spec = AcmeDnsAccountSpec {
        subdomain: Some(DnsLabel(label.clone())),
        ..Default::default()
    };
    accounts
        .create(
            &PostParams::default(),
            &AcmeDnsAccount::new("conformance", spec),
        )
        .await
        .unwrap();
    let fqdn = common::eventually("subdomain assigned", Duration::from_secs(20), || async {
        accounts.get("conformance").await.ok()?.status?.fqdn
    })
    .await;

    let output = tokio::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/e2e/conformance/run.sh"
    ))
    .env("KAD_KUBECONFIG", std::env::var("KUBECONFIG").unwrap())
    .env("KAD_ZONE", "auth.example.test.")
    .env("KAD_FQDN", &fqdn)
    .env("KAD_DNS", solver.serve.dns.to_string())
    .env("KAD_RESOURCE_NAMESPACE", &namespace)
    .output()
    .await
    .expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("--- PASS: TestConformance"),
        "the conformance suite failed:\n{stdout}\n{stderr}"
    );
    for subtest in [
        "Basic/PresentRecord",
        "Extended/DeletingOneRecordRetainsOthers",
    ] {
        assert!(
            stdout.contains(&format!("--- PASS: TestConformance/{subtest}")),
            "{subtest} did not pass:\n{stdout}"
        );
    }
    // Nothing left behind.
    let left = accounts
        .get("conformance")
        .await
        .unwrap()
        .status
        .unwrap()
        .txt;
    assert!(left.is_empty(), "{left:?}");
}
