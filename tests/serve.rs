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
async fn rate_limit_out_of_range_fails_before_anything_starts() {
    let output = Command::new(common::BIN)
        .args(["serve"])
        .env("KUBE_ACME_DNS_RRL_SLIP", "11")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rrl-slip is 11: set it (KUBE_ACME_DNS_RRL_SLIP) to 0"),
        "{stderr}"
    );
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

#[tokio::test]
async fn at_sigterm_it_stops_being_ready_but_answers_until_the_delay_is_over() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "drain").await;
    let mut serve = common::spawn_serve(
        &namespace,
        &namespace,
        &["--roles", "dns", "--shutdown-delay", "3"],
    );
    common::wait_ready(&serve).await;
    let pid = serve.child.id().expect("running") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let signalled = std::time::Instant::now();
    common::eventually("/readyz failing", Duration::from_secs(2), || async {
        let (code, body) = common::http_get(serve.metrics, "/readyz").await?;
        (code == 503 && body == "shutting down").then_some(())
    })
    .await;
    // Still answering DNS, over UDP and TCP, and still alive, during the delay.
    assert!(common::dns::answers_soa(
        serve.dns,
        "auth.example.test.",
        false
    ));
    let over_tcp = common::dns::tcp(
        serve.dns,
        &common::dns::query(
            "auth.example.test.",
            hickory_proto::rr::RecordType::SOA,
            false,
            None,
        ),
        common::dns::TIMEOUT,
    );
    assert!(over_tcp.is_ok(), "{over_tcp:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "checked within the delay"
    );
    assert!(serve.child.try_wait().unwrap().is_none());
    // Then it exits cleanly, soon after the delay.
    let status = tokio::time::timeout(Duration::from_secs(15), serve.child.wait())
        .await
        .expect("exited after the delay")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn at_sigterm_the_leader_hands_the_lease_to_the_other_replica_at_once() {
    use k8s_openapi::api::coordination::v1::Lease;

    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "handover").await;
    let lease = common::unique_name("handover");
    let start = |identity: &str| {
        common::spawn_serve(
            &namespace,
            &lease,
            &["--roles", "dns,controller", "--identity", identity],
        )
    };
    let mut first = start("first");
    common::wait_ready(&first).await;
    let leases: Api<Lease> = Api::namespaced(client, common::RELEASE_NAMESPACE);
    let holder = || async {
        leases
            .get(&lease)
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    };
    let held = common::eventually("first holds the Lease", Duration::from_secs(30), || {
        holder()
    })
    .await;
    assert_eq!(held, "first");
    let second = start("second");
    common::wait_ready(&second).await;

    let pid = first.child.id().expect("running") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let signalled = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), first.child.wait())
        .await
        .expect("the leader exits")
        .unwrap();
    assert!(status.success(), "{status}");
    // Handed back, the Lease is the other's at its next try (every 5 s). Left to expire,
    // it would take 15 s without renewal, at least 10 s after the last one.
    common::eventually("second holds the Lease", Duration::from_secs(8), || async {
        (holder().await? == "second").then_some(())
    })
    .await;
    common::report(&format!(
        "the other replica held the Lease {:.1} s after SIGTERM",
        signalled.elapsed().as_secs_f64()
    ));
}
