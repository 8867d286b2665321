//! The AcmeDnsAccount CRD against a real kube-apiserver: it installs, a valid account
//! round-trips, and the API server itself rejects invalid accounts with a message that
//! names the field.

mod common;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use kube_acme_dns::api::{
    AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, Cidr, DnsLabel, DomainName, TxtValue,
};

const NS: &str = "default";

async fn accounts() -> Api<AcmeDnsAccount> {
    let client = common::client().await;
    common::install_crd(&client).await;
    Api::namespaced(client, NS)
}

/// Creates an account from raw JSON (so invalid values reach the server unchanged) and
/// returns the API server's error message.
async fn rejection(spec: serde_json::Value) -> String {
    let api = accounts().await;
    let name = common::unique_name("invalid");
    let object = json!({
        "apiVersion": "acmedns.io/v1alpha1",
        "kind": "AcmeDnsAccount",
        "metadata": { "name": name },
        "spec": spec,
    });
    let account: AcmeDnsAccount = serde_json::from_value(object).unwrap();
    match api.create(&PostParams::default(), &account).await {
        Ok(_) => {
            let _ = api.delete(&name, &DeleteParams::default()).await;
            panic!("the API server accepted an invalid account: {spec}");
        }
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "invalid input is a 422: {status:?}");
            status.message
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn valid_account_round_trips_spec_and_status() {
    let api = accounts().await;
    let name = common::unique_name("valid");
    let spec = AcmeDnsAccountSpec {
        domains: vec![
            DomainName("example.test".into()),
            DomainName("sub-1.example.test".into()),
        ],
        subdomain: Some(DnsLabel("d420c923-bbd7-4056-ab64-c3ca54c9b3cf".into())),
        allow_from: vec![Cidr("192.0.2.0/24".into()), Cidr("2001:db8::/32".into())],
    };
    let created = api
        .create(
            &PostParams::default(),
            &AcmeDnsAccount::new(&name, spec.clone()),
        )
        .await
        .expect("a valid account is accepted");
    assert_eq!(created.spec, spec);

    let status = AcmeDnsAccountStatus {
        subdomain: spec.subdomain.clone(),
        fqdn: Some("d420c923-bbd7-4056-ab64-c3ca54c9b3cf.auth.example.test.".into()),
        txt: vec![TxtValue {
            value: "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo".into(),
            updated_at: Time(Timestamp::from_second(1_800_000_000).unwrap()),
        }],
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "Served".into(),
            message: "served at d420c923-bbd7-4056-ab64-c3ca54c9b3cf.auth.example.test.".into(),
            last_transition_time: Time(Timestamp::from_second(1_800_000_000).unwrap()),
            observed_generation: Some(1),
        }],
        observed_generation: Some(1),
        ..Default::default()
    };
    api.patch_status(
        &name,
        &PatchParams::apply("kube-acme-dns-tests"),
        &Patch::Apply(json!({
            "apiVersion": "acmedns.io/v1alpha1",
            "kind": "AcmeDnsAccount",
            "status": status,
        })),
    )
    .await
    .expect("status is written through the status subresource");

    let read = api.get(&name).await.unwrap();
    assert_eq!(read.spec, spec);
    assert_eq!(read.status, Some(status));
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn status_cannot_be_changed_through_the_main_resource() {
    // TXT values live in status so that only principals allowed to patch
    // acmednsaccounts/status can change what is served.
    let api = accounts().await;
    let name = common::unique_name("status-split");
    let mut account = AcmeDnsAccount::new(&name, AcmeDnsAccountSpec::default());
    account.status = Some(AcmeDnsAccountStatus {
        fqdn: Some("injected.auth.example.test.".into()),
        ..Default::default()
    });
    let created = api.create(&PostParams::default(), &account).await.unwrap();
    assert_eq!(created.status, None, "status in a create is ignored");
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn account_without_domains_is_valid() {
    // Accounts made through the acme-dns /register API know no domains.
    let api = accounts().await;
    let name = common::unique_name("nodomains");
    let created = api
        .create(
            &PostParams::default(),
            &AcmeDnsAccount::new(&name, AcmeDnsAccountSpec::default()),
        )
        .await
        .expect("an account without domains is accepted");
    assert!(created.spec.domains.is_empty());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test]
async fn domain_that_is_not_a_dns_name_is_rejected() {
    let message = rejection(json!({ "domains": ["example.test", "Bad_Name..test"] })).await;
    assert!(message.contains("spec.domains[1]"), "{message}");
    assert!(
        message.contains("must be a lowercase DNS name"),
        "{message}"
    );
}

#[tokio::test]
async fn wildcard_domain_is_rejected_with_the_fix() {
    let message = rejection(json!({ "domains": ["*.example.test"] })).await;
    assert!(message.contains("spec.domains[0]"), "{message}");
    assert!(message.contains("remove the '*.' prefix"), "{message}");
    assert!(
        !message.contains("must be a lowercase DNS name"),
        "one clear message, not two: {message}"
    );
}

#[tokio::test]
async fn challenge_name_as_domain_is_rejected_with_the_fix() {
    let message = rejection(json!({ "domains": ["_acme-challenge.example.test"] })).await;
    assert!(message.contains("spec.domains[0]"), "{message}");
    assert!(
        message.contains("not its _acme-challenge name"),
        "{message}"
    );
}

#[tokio::test]
async fn duplicate_domain_is_rejected() {
    let message = rejection(json!({ "domains": ["example.test", "example.test"] })).await;
    assert!(message.contains("spec.domains[1]"), "{message}");
    assert!(message.contains("Duplicate value"), "{message}");
}

#[tokio::test]
async fn too_long_domain_label_is_rejected() {
    let label = "a".repeat(64);
    let message = rejection(json!({ "domains": [format!("{label}.example.test")] })).await;
    assert!(message.contains("spec.domains[0]"), "{message}");
}

#[tokio::test]
async fn bad_cidr_is_rejected() {
    let message = rejection(json!({ "allowFrom": ["192.0.2.0/24", "192.0.2.0/33"] })).await;
    assert!(message.contains("spec.allowFrom[1]"), "{message}");
    assert!(
        message.contains("must be a network in CIDR notation"),
        "{message}"
    );

    let message = rejection(json!({ "allowFrom": ["not-a-network"] })).await;
    assert!(message.contains("spec.allowFrom[0]"), "{message}");
}

#[tokio::test]
async fn bad_subdomain_label_is_rejected() {
    for bad in ["has.dot", "UPPER", "-leading-hyphen", &"a".repeat(64)] {
        let message = rejection(json!({ "subdomain": bad })).await;
        assert!(message.contains("spec.subdomain"), "{bad}: {message}");
    }
    let message = rejection(json!({ "subdomain": "has.dot" })).await;
    assert!(message.contains("single lowercase DNS label"), "{message}");
}

#[tokio::test]
async fn too_many_domains_are_rejected() {
    let domains: Vec<String> = (0..=100).map(|i| format!("d{i}.example.test")).collect();
    let message = rejection(json!({ "domains": domains })).await;
    assert!(message.contains("spec.domains"), "{message}");
    assert!(message.contains("100"), "{message}");
}
