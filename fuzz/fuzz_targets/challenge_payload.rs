//! The cert-manager webhook's request body, parsed as the challenge handler does it:
//! the ChallengePayload JSON, its action, the solver config, then the account lookup.
//! Never panics; a failure reply always serialises to JSON that reads back.

#![no_main]

use std::sync::{Arc, OnceLock};

use kube_acme_dns::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, DomainName},
    apiserver::payload::{ChallengePayload, ChallengeReply},
    index::AccountIndex,
    webhook::resolver::{AccountResolver, parse_config},
};
use libfuzzer_sys::fuzz_target;

fn resolver() -> &'static AccountResolver {
    static RESOLVER: OnceLock<AccountResolver> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let index = AccountIndex::new(1);
        for (namespace, name, label, domain) in [
            ("default", "web", "d420c923-bbd7-4056-ab64-c3ca54c9b3cf", "example.com"),
            ("other", "shared", "shared", "example.org"),
            ("third", "shared", "shared2", "example.org"),
        ] {
            let mut account = AcmeDnsAccount::new(
                name,
                AcmeDnsAccountSpec {
                    domains: vec![DomainName(domain.into())],
                    ..Default::default()
                },
            );
            account.metadata.namespace = Some(namespace.into());
            account.status = Some(AcmeDnsAccountStatus {
                subdomain: Some(DnsLabel(label.into())),
                ..Default::default()
            });
            index.apply(&account);
        }
        AccountResolver {
            index: Arc::new(index),
            zone: "auth.example.test".into(),
            cluster_resource_namespace: "cert-manager".into(),
            cross_namespace: false,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<ChallengePayload>(data) else {
        return;
    };
    let Some(request) = payload.request else {
        return;
    };
    let api_version = payload.api_version.unwrap_or_default();
    let _ = request.action();
    let _ = parse_config(request.challenge.config.as_ref());
    let reply = match resolver().resolve(&request.challenge) {
        Ok(account) => ChallengeReply::failure(
            &api_version,
            &request.challenge.uid,
            format!("account {account}"),
        ),
        Err(e) => ChallengeReply::failure(&api_version, &request.challenge.uid, e.to_string()),
    };
    let json = serde_json::to_vec(&reply).expect("a reply serialises");
    let back: serde_json::Value = serde_json::from_slice(&json).expect("a reply reads back");
    assert_eq!(back["response"]["uid"], request.challenge.uid.as_str());
});
