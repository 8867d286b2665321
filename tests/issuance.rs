//! A real certificate issuance: cert-manager's own controllers, Pebble as the ACME CA,
//! unbound as the resolver that holds the user's zone (`<unique>.test`) with the
//! `_acme-challenge` CNAME into our zone, and `serve` (DNS + controller + webhook)
//! behind the aggregation layer. Validation follows the CNAME exactly as on the
//! Internet, and every query stays on loopback.

mod common;

use std::time::Duration;

use kube::{Api, api::PostParams};
use serde_json::json;

use common::{
    aggregation, cert_manager, certificate, knot::zone_text, pebble::Pebble, unbound::Unbound,
};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

/// Issues a certificate for `domain` and `*.domain` through a ClusterIssuer
/// with the given cnameStrategy, and checks what the user would: Ready, both names in
/// the certificate, signed by Pebble, no TXT value left behind.
#[allow(clippy::too_many_arguments)]
async fn issue(
    domain: &str,
    name: &str,
    cname_strategy: Option<&str>,
    namespace: &str,
    pebble: &Pebble,
    accounts: &Api<AcmeDnsAccount>,
    account: &str,
) {
    let mut dns01 = json!({
        "webhook": { "groupName": "acme.acmedns.io", "solverName": "acme-dns" }
    });
    if let Some(strategy) = cname_strategy {
        dns01["cnameStrategy"] = json!(strategy);
    }
    let issuer = pebble.cluster_issuer(name, dns01);
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "secretName": format!("{name}-tls"),
            "dnsNames": [domain, format!("*.{domain}")],
            "issuerRef": { "kind": "ClusterIssuer", "name": name },
        },
    });
    for object in [&issuer, &certificate] {
        common::run("kubectl", &["apply", "-f", "-"], Some(&object.to_string()));
    }

    let elapsed =
        cert_manager::wait_certificate_ready(namespace, name, Duration::from_secs(360)).await;
    eprintln!("Certificate {name} Ready after {elapsed:?}");

    // The Secret holds a certificate for both names, signed by Pebble.
    let chain = cert_manager::tls_chain(namespace, &format!("{name}-tls"));
    certificate::assert_wildcard_issued_by(&chain, domain, pebble);

    // CleanUp removed every challenge value.
    common::eventually("no stale TXT values", Duration::from_secs(60), || async {
        let account = accounts.get(account).await.ok()?;
        account.status?.txt.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn wildcard_certificate_is_issued_through_pebble_with_and_without_cname_follow() {
    let admin = common::client().await;
    common::install_crd(&admin).await;

    // cert-manager: its CRDs, and its controllers running against our API server.
    cert_manager::install();
    let namespace = common::create_namespace(&admin, "issuance").await;

    // Our side: DNS + controller + webhook, the account the user created.
    let label = common::unique_name("issue");
    // A domain of its own, so no account elsewhere in the cluster lists it too.
    let domain = format!("{label}.test");
    let solver = aggregation::start_all_roles(&label).await;
    // With cert-manager's CRDs in place the API server accepts the whole chart,
    // including its serving-certificate PKI (Issuers, Certificates).
    let chart = common::render_chart(&[]);
    let applied = common::run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&chart),
    );
    assert!(
        applied.contains("certificate.cert-manager.io/kad-kube-acme-dns-webhook-tls"),
        "{applied}"
    );
    // Two users' domains, each delegated to an account of its own: one issuer follows
    // the CNAME, the other does not. cert-manager solves the challenges of one domain
    // one after the other, so two domains let both certificates be issued at once.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), &namespace);
    let follow_label = format!("{label}-f");
    let follow_domain = format!("{follow_label}.test");
    let work = std::env::temp_dir().join(common::unique_name("issuance"));
    std::fs::create_dir_all(&work).unwrap();
    let mut zones = Vec::new();
    for (account, label, domain) in [
        ("example-test", &label, &domain),
        ("follow-test", &follow_label, &follow_domain),
    ] {
        let spec = AcmeDnsAccountSpec {
            domains: vec![DomainName(domain.clone())],
            subdomain: Some(DnsLabel(label.clone())),
            ..Default::default()
        };
        accounts
            .create(&PostParams::default(), &AcmeDnsAccount::new(account, spec))
            .await
            .unwrap();
        common::eventually("subdomain assigned", Duration::from_secs(20), || async {
            accounts.get(account).await.ok()?.status?.fqdn
        })
        .await;
        // The user's zone with the one CNAME they published.
        let zone = work.join(format!("{domain}.zone"));
        let cname = format!("_acme-challenge CNAME {label}.auth.example.test.");
        std::fs::write(&zone, zone_text(domain, &[cname])).unwrap();
        zones.push(zone);
    }

    // A resolver holding the users' zones that sends auth.example.test to our responder.
    let unbound = Unbound::start(
        &work.join("unbound"),
        &zones,
        &[("auth.example.test", solver.serve.dns)],
    );
    let pebble = Pebble::start(&work.join("pebble"), unbound.addr);

    let _cert_manager = cert_manager::start_controllers(unbound.addr, None);

    tokio::join!(
        issue(
            &domain,
            "pebble-plain",
            None,
            &namespace,
            &pebble,
            &accounts,
            "example-test"
        ),
        issue(
            &follow_domain,
            "pebble-follow",
            Some("Follow"),
            &namespace,
            &pebble,
            &accounts,
            "follow-test"
        ),
    );
}
