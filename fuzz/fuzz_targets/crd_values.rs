//! Values users write in configuration and in AcmeDnsAccount resources: the zone apex,
//! static records (`--record NAME TYPE DATA`), the server identity, DNS labels, CIDRs,
//! and whole account specs (YAML or JSON) applied to the account index. Never panics;
//! a zone that builds answers a query at its apex.

#![no_main]

use kube_acme_dns::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel},
    compat::protocol::parse_cidr,
    dns::{Transport, Zone, ZoneConfig, answer},
    index::{AccountIndex, Label},
    wire,
};
use libfuzzer_sys::fuzz_target;

/// An A query for `auth.example.test.` with ID 0x4242.
const APEX_QUERY: &[u8] = b"\x42\x42\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\
\x04auth\x07example\x04test\x00\x00\x01\x00\x01";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        let _ = Label::new(data);
        return;
    };
    let _ = Label::new(text.as_bytes());
    let _ = parse_cidr(text);
    if let Some(name) = wire::encode_name(text) {
        assert!(name.len() <= 255);
        assert_eq!(name.last(), Some(&0));
    }

    // The text as the apex, as a static record, and as the identity.
    let _ = Zone::new(&ZoneConfig::new(text));
    let mut config = ZoneConfig::new("auth.example.test");
    config.records = vec![text.to_string()];
    if let Ok(zone) = Zone::new(&config) {
        let index = AccountIndex::new(1);
        let mut out = Vec::new();
        for transport in [Transport::Udp, Transport::Tcp] {
            answer(APEX_QUERY, &zone, &index, transport, &mut out).expect("an answer");
        }
        let _ = zone.reserved_labels();
    }
    let mut config = ZoneConfig::new("auth.example.test");
    config.identity = text.to_string();
    let _ = Zone::new(&config);

    // The text as an account spec, and as an account's subdomain, applied to an index.
    let index = AccountIndex::new(1);
    let spec = serde_yaml::from_str::<AcmeDnsAccountSpec>(text)
        .ok()
        .or_else(|| serde_json::from_str::<AcmeDnsAccountSpec>(text).ok());
    if let Some(spec) = spec {
        let mut account = AcmeDnsAccount::new("fuzz", spec.clone());
        account.metadata.namespace = Some("default".into());
        account.status = Some(AcmeDnsAccountStatus {
            subdomain: spec.subdomain.clone(),
            ..Default::default()
        });
        index.apply(&account);
        for domain in &spec.domains {
            let _ = index.accounts_for_domain(&domain.0);
        }
        for cidr in &spec.allow_from {
            let _ = parse_cidr(&cidr.0);
        }
        index.delete(&account);
    }
    let mut account = AcmeDnsAccount::new("fuzz", AcmeDnsAccountSpec::default());
    account.metadata.namespace = Some("default".into());
    account.status = Some(AcmeDnsAccountStatus {
        subdomain: Some(DnsLabel(text.to_string())),
        ..Default::default()
    });
    index.apply(&account);
    if let Some(label) = Label::new(text.as_bytes()) {
        let _ = index.lookup(&label);
        let _ = index.account_for_label(&label);
    }
});
