//! The delegation check against a real authoritative server (Knot) holding the user's
//! zones, with and without the `_acme-challenge` CNAME.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, api::PostParams};

use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

use common::knot::{Knot, zone_text};

/// Writes the user's zone `origin`, with the `_acme-challenge` CNAME if given.
fn zone_file(dir: &Path, origin: &str, challenge_cname: Option<&str>) -> PathBuf {
    let path = dir.join(format!("{origin}.zone"));
    let records: Vec<String> = challenge_cname
        .map(|target| format!("_acme-challenge CNAME {target}"))
        .into_iter()
        .collect();
    std::fs::write(&path, zone_text(origin, &records)).unwrap();
    path
}

async fn delegated_condition(
    accounts: &Api<AcmeDnsAccount>,
    name: &str,
    status: &str,
) -> Condition {
    common::eventually(
        &format!("{name} Delegated={status}"),
        Duration::from_secs(45),
        || async {
            let account = accounts.get(name).await.ok()?;
            account
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Delegated" && c.status == status)
        },
    )
    .await
}

#[tokio::test]
async fn delegation_condition_follows_the_users_cname() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "delegation").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);

    let good = common::unique_name("good");
    let late = common::unique_name("late");
    let wrong = common::unique_name("wrong");
    let good_fqdn = format!("{good}.auth.example.test.");
    let late_fqdn = format!("{late}.auth.example.test.");
    let dir = std::env::temp_dir().join(common::unique_name("knot"));
    std::fs::create_dir_all(&dir).unwrap();
    let zones = [
        zone_file(&dir, "delegated.test", Some(&good_fqdn)),
        zone_file(&dir, "missing.test", None),
        zone_file(&dir, "elsewhere.test", Some("other.example.net.")),
    ];
    let knot = Knot::start(&dir, &zones);

    let resolver = knot.addr.to_string();
    let serve = common::spawn_serve(
        &namespace,
        &namespace,
        &["--delegation-resolver", &resolver],
    );
    let account = |label: &str, domain: &str| {
        AcmeDnsAccount::new(
            label,
            AcmeDnsAccountSpec {
                domains: vec![DomainName(domain.into())],
                subdomain: Some(DnsLabel(label.into())),
                ..Default::default()
            },
        )
    };
    let pp = PostParams::default();
    accounts
        .create(&pp, &account(&good, "delegated.test"))
        .await
        .unwrap();
    accounts
        .create(&pp, &account(&late, "missing.test"))
        .await
        .unwrap();
    accounts
        .create(&pp, &account(&wrong, "elsewhere.test"))
        .await
        .unwrap();

    let ok = delegated_condition(&accounts, &good, "True").await;
    assert_eq!(ok.reason, "CnameFound");

    let missing = delegated_condition(&accounts, &late, "False").await;
    assert_eq!(missing.reason, "CnameMissing");
    assert!(
        missing.message.contains(&format!(
            "publish `_acme-challenge.missing.test. CNAME {late_fqdn}`"
        )),
        "the message says what to publish: {}",
        missing.message
    );

    let elsewhere = delegated_condition(&accounts, &wrong, "False").await;
    assert_eq!(elsewhere.reason, "CnameWrongTarget");
    assert!(
        elsewhere.message.contains("other.example.net"),
        "{}",
        elsewhere.message
    );

    let events = common::event_reasons(&namespace);
    assert!(
        events.contains("Delegated") && events.contains("NotDelegated"),
        "{events}"
    );

    // The two failing accounts are rechecked after 10 s. Finding what their status
    // says, the controller neither writes nor reads them.
    let counters = || async {
        let (_, body) = common::http_get(serve.metrics, "/metrics").await.unwrap();
        let value = |name| common::metric(&body, name).unwrap_or_default();
        (
            value("kube_acme_dns_delegation_checks_total"),
            value("kube_acme_dns_controller_reads_total"),
        )
    };
    let (checks, reads) = counters().await;
    common::eventually(
        "the failing accounts rechecked",
        Duration::from_secs(30),
        || async { (counters().await.0 >= checks + 2.0).then_some(()) },
    )
    .await;
    assert_eq!(
        counters().await.1,
        reads,
        "a recheck that finds nothing new reads no account"
    );
    let unchanged = delegated_condition(&accounts, &late, "False").await;
    assert_eq!(unchanged, missing, "the status is left as it was");

    // The user publishes the CNAME: the recheck (with backoff) notices, and the account
    // is read to write what it found.
    zone_file(&dir, "missing.test", Some(&late_fqdn));
    knot.reload();
    let fixed = delegated_condition(&accounts, &late, "True").await;
    assert_eq!(fixed.reason, "CnameFound");
    assert!(counters().await.1 > reads, "the changed account was read");
}
