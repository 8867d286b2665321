//! The DNS answer path on arbitrary bytes. The first byte picks the transport (even:
//! UDP, odd: TCP); the rest is the packet as it came off the wire.
//!
//! Beyond "never panics", it checks what clients rely on: every answer is a response
//! (QR set) with the query's ID, TC is set exactly when the answer says it truncated,
//! a UDP answer fits the size the query allows (512 bytes without EDNS, else its
//! advertised size clamped to 512..=1232) and a TCP answer fits the 16-bit length
//! prefix. The same query answered twice gives the same bytes.

#![no_main]

use std::sync::OnceLock;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube_acme_dns::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, TxtValue},
    dns::{Transport, Zone, ZoneConfig, answer, answer::MAX_UDP_PAYLOAD},
    index::AccountIndex,
    wire::{self, Reject},
};
use libfuzzer_sys::fuzz_target;

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut config = ZoneConfig::new("auth.example.test");
        config.nameserver_addresses = vec![
            "192.0.2.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ];
        config.records = vec![
            "api A 192.0.2.10".into(),
            "api AAAA 2001:db8::10".into(),
            r#"@ CAA 0 issue "letsencrypt.org""#.into(),
            r#"info TXT "static text""#.into(),
            "deep.sub A 192.0.2.11".into(),
        ];
        config.identity = "replica-0".into();
        Zone::new(&config).expect("the fuzz zone is valid")
    })
}

fn account(label: &str, values: &[&str]) -> AcmeDnsAccount {
    let mut account = AcmeDnsAccount::new(label, AcmeDnsAccountSpec::default());
    account.metadata.namespace = Some("default".into());
    account.status = Some(AcmeDnsAccountStatus {
        subdomain: Some(DnsLabel(label.into())),
        txt: values
            .iter()
            .map(|v| TxtValue {
                value: v.to_string(),
                updated_at: Time(Timestamp::UNIX_EPOCH),
            })
            .collect(),
        ..Default::default()
    });
    account
}

fn index() -> &'static AccountIndex {
    static INDEX: OnceLock<AccountIndex> = OnceLock::new();
    INDEX.get_or_init(|| {
        let index = AccountIndex::new(1);
        index.apply(&account(
            "d420c923-bbd7-4056-ab64-c3ca54c9b3cf",
            &[
                "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo",
                "Xa8l9GzS4n2wVfO1Hk3sbbyGkqQ0D0y0Vg7d3lPPyvE",
            ],
        ));
        // Enough values that the answer does not fit 512 bytes: the truncation path.
        let many: Vec<String> = (0..40).map(|i| format!("{i:0>43}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        index.apply(&account("big", &many));
        index.apply(&account("empty", &[]));
        index
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let transport = if selector & 1 == 0 {
        Transport::Udp
    } else {
        Transport::Tcp
    };
    let mut out = Vec::new();
    let Some(answered) = answer(packet, zone(), index(), transport, &mut out) else {
        return;
    };

    assert!(out.len() >= wire::HEADER_LEN, "an answer shorter than a header");
    assert!(packet.len() >= 2, "an answer to a packet without an ID");
    assert_eq!(out[..2], packet[..2], "the answer's ID is not the query's");
    assert_ne!(out[2] & 0x80, 0, "QR is not set");
    assert_eq!(
        out[2] & 0x02 != 0,
        answered.truncated,
        "TC disagrees with what was reported"
    );

    let edns = match wire::parse_query(packet) {
        Ok(query) => query.edns,
        Err(Reject::Rcode { edns, .. }) => edns,
        Err(Reject::Drop) => panic!("answered a packet the parser drops"),
    };
    match transport {
        Transport::Udp => {
            let limit = edns.map_or(512, |e| e.udp_size.clamp(512, MAX_UDP_PAYLOAD) as usize);
            assert!(
                out.len() <= limit,
                "UDP answer of {} bytes, the query allows {limit}",
                out.len()
            );
        }
        Transport::Tcp => {
            assert!(!answered.truncated, "a TCP answer was truncated");
            assert!(out.len() <= u16::MAX as usize, "TCP answer too long");
        }
    }

    let mut again = Vec::new();
    answer(packet, zone(), index(), transport, &mut again);
    assert_eq!(out, again, "the same query answered differently");
});
