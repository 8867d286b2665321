//! Table tests of the pure answer function, one per row of the DNS behaviour table in the
//! README, with hickory-proto as an independent encoder and decoder.

use std::str::FromStr;

use hickory_proto::{
    op::{Edns, Message, OpCode, Query, ResponseCode},
    rr::{
        DNSClass, Name, RData, RecordType,
        rdata::opt::{EdnsCode, EdnsOption, NSIDPayload},
    },
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::*;
use crate::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, TxtValue},
    index::{AccountIndex, Label},
};

const ACCOUNT: &str = "d420c923-bbd7-4056-ab64-c3ca54c9b3cf";
const VALUES: [&str; 2] = [
    "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo",
    "Xa8l9GzS4n2wVfO1Hk3sbbyGkqQ0D0y0Vg7d3lPPyvE",
];

fn zone() -> Zone {
    let mut config = ZoneConfig::new("auth.example.test");
    config.nameserver_addresses = vec![
        "192.0.2.53".parse().unwrap(),
        "2001:db8::53".parse().unwrap(),
    ];
    config.records = vec![
        "api A 192.0.2.10".into(),
        r#"@ CAA 0 issue "letsencrypt.org""#.into(),
        "deep.sub A 192.0.2.11".into(),
    ];
    Zone::new(&config).unwrap()
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

fn index() -> AccountIndex {
    let index = AccountIndex::new(1);
    index.apply(&account(ACCOUNT, &VALUES));
    index.apply(&account("empty", &[]));
    index
}

fn query_bytes(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 0x4242;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

fn respond(packet: &[u8], transport: Transport) -> Option<(Answered, Vec<u8>)> {
    let mut out = Vec::new();
    answer(packet, &zone(), &index(), transport, &mut out).map(|a| (a, out))
}

fn ask(name: &str, qtype: RecordType) -> Message {
    ask_with(name, qtype, Some(1232), Transport::Udp)
}

fn ask_with(name: &str, qtype: RecordType, edns: Option<u16>, transport: Transport) -> Message {
    let (_, bytes) = respond(&query_bytes(name, qtype, edns), transport).expect("an answer");
    let message = Message::from_vec(&bytes).expect("our answer decodes");
    assert_eq!(message.metadata.id, 0x4242, "id echoed");
    assert_eq!(message.queries.len(), 1, "question echoed");
    message
}

fn txt_strings(message: &Message) -> Vec<String> {
    message
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::TXT(txt) => txt
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<String>(),
            other => panic!("not TXT: {other:?}"),
        })
        .collect()
}

fn assert_negative(message: &Message, rcode: ResponseCode) {
    assert_eq!(message.metadata.response_code, rcode);
    assert!(message.metadata.authoritative);
    assert!(message.answers.is_empty(), "{:?}", message.answers);
    assert_eq!(message.authorities.len(), 1);
    let soa = &message.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name, Name::from_str("auth.example.test.").unwrap());
    assert_eq!(soa.ttl, 60, "negative TTL is the SOA minimum");
    match &soa.data {
        RData::SOA(soa) => assert_eq!(soa.minimum, 60),
        other => panic!("{other:?}"),
    }
}

#[test]
fn txt_at_account_name_answers_every_value_authoritatively() {
    let message = ask(&format!("{ACCOUNT}.auth.example.test."), RecordType::TXT);
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert!(message.metadata.authoritative);
    assert!(!message.metadata.recursion_available);
    assert_eq!(txt_strings(&message), VALUES);
    assert!(message.answers.iter().all(|r| r.ttl == 1));
    assert!(message.authorities.is_empty());
}

#[test]
fn nodata_for_existing_name_with_other_type() {
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::CNAME,
        RecordType::MX,
    ] {
        let message = ask(&format!("{ACCOUNT}.auth.example.test."), qtype);
        assert_negative(&message, ResponseCode::NoError);
    }
}

#[test]
fn nodata_for_txt_at_account_without_values() {
    assert_negative(
        &ask("empty.auth.example.test.", RecordType::TXT),
        ResponseCode::NoError,
    );
}

#[test]
fn nxdomain_with_soa_for_missing_name() {
    assert_negative(
        &ask("missing.auth.example.test.", RecordType::TXT),
        ResponseCode::NXDomain,
    );
}

#[test]
fn nxdomain_below_an_account_name() {
    let name = format!("x.{ACCOUNT}.auth.example.test.");
    assert_negative(&ask(&name, RecordType::TXT), ResponseCode::NXDomain);
}

#[test]
fn refused_outside_the_zone_even_with_recursion_desired() {
    for name in ["example.com.", "example.test.", "xauth.example.test.", "."] {
        let message = ask(name, RecordType::TXT);
        assert_eq!(
            message.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(!message.metadata.authoritative);
        assert!(!message.metadata.recursion_available);
        assert!(message.answers.is_empty() && message.authorities.is_empty());
    }
}

#[test]
fn soa_at_apex() {
    let message = ask("auth.example.test.", RecordType::SOA);
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert_eq!(message.answers.len(), 1);
    match &message.answers[0].data {
        RData::SOA(soa) => {
            assert_eq!(soa.mname, Name::from_str("ns.auth.example.test.").unwrap());
            assert_eq!(
                soa.rname,
                Name::from_str("hostmaster.auth.example.test.").unwrap()
            );
            assert_eq!(soa.minimum, 60);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn ns_at_apex_with_addresses_of_in_zone_name_server() {
    let message = ask("auth.example.test.", RecordType::NS);
    assert_eq!(message.answers.len(), 1);
    match &message.answers[0].data {
        RData::NS(ns) => assert_eq!(ns.0, Name::from_str("ns.auth.example.test.").unwrap()),
        other => panic!("{other:?}"),
    }
    let glue: Vec<_> = message
        .additionals
        .iter()
        .map(|r| (r.name.to_string(), r.record_type()))
        .collect();
    assert_eq!(
        glue,
        [
            ("ns.auth.example.test.".to_string(), RecordType::A),
            ("ns.auth.example.test.".to_string(), RecordType::AAAA),
        ]
    );
}

#[test]
fn a_and_aaaa_of_the_name_server_host() {
    let a = ask("ns.auth.example.test.", RecordType::A);
    assert!(matches!(&a.answers[0].data, RData::A(ip) if ip.0.to_string() == "192.0.2.53"));
    let aaaa = ask("ns.auth.example.test.", RecordType::AAAA);
    assert!(matches!(&aaaa.answers[0].data, RData::AAAA(ip) if ip.0.to_string() == "2001:db8::53"));
    assert_negative(
        &ask("ns.auth.example.test.", RecordType::TXT),
        ResponseCode::NoError,
    );
}

#[test]
fn static_records_from_configuration() {
    let api = ask("api.auth.example.test.", RecordType::A);
    assert!(matches!(&api.answers[0].data, RData::A(ip) if ip.0.to_string() == "192.0.2.10"));
    let caa = ask("auth.example.test.", RecordType::CAA);
    assert_eq!(caa.answers.len(), 1);
    assert_eq!(caa.answers[0].record_type(), RecordType::CAA);
    let deep = ask("deep.sub.auth.example.test.", RecordType::A);
    assert_eq!(deep.answers.len(), 1);
}

#[test]
fn empty_non_terminal_is_nodata_not_nxdomain() {
    assert_negative(
        &ask("sub.auth.example.test.", RecordType::A),
        ResponseCode::NoError,
    );
}

#[test]
fn any_gets_a_minimal_answer() {
    // RFC 8482: one synthesised HINFO instead of every record at the name.
    for name in [
        format!("{ACCOUNT}.auth.example.test."),
        "auth.example.test.".into(),
    ] {
        let message = ask(&name, RecordType::ANY);
        assert_eq!(message.answers.len(), 1, "{name}");
        match &message.answers[0].data {
            RData::HINFO(hinfo) => assert_eq!(&*hinfo.cpu, b"RFC8482"),
            other => panic!("{other:?}"),
        }
    }
    assert_negative(
        &ask("missing.auth.example.test.", RecordType::ANY),
        ResponseCode::NXDomain,
    );
    // An account with no value pending, and an empty non-terminal (only
    // deep.sub has records), have no data to stand for: NODATA.
    for name in ["empty.auth.example.test.", "sub.auth.example.test."] {
        assert_negative(&ask(name, RecordType::ANY), ResponseCode::NoError);
    }
}

#[test]
fn edns_is_echoed_with_our_payload_size_and_the_do_bit() {
    let mut message = Message::from_vec(&query_bytes(
        &format!("{ACCOUNT}.auth.example.test."),
        RecordType::TXT,
        Some(4096),
    ))
    .unwrap();
    message.edns.as_mut().unwrap().set_dnssec_ok(true);
    let (_, bytes) = respond(&message.to_vec().unwrap(), Transport::Udp).unwrap();
    let response = Message::from_vec(&bytes).unwrap();
    let edns = response.edns.expect("OPT in the response");
    assert_eq!(edns.max_payload(), answer::MAX_UDP_PAYLOAD);
    assert!(edns.flags().dnssec_ok, "DO copied (RFC 3225)");

    let plain = ask_with("auth.example.test.", RecordType::SOA, None, Transport::Udp);
    assert!(plain.edns.is_none(), "no OPT when the query had none");
}

fn big_index() -> (AccountIndex, Vec<String>) {
    let values: Vec<String> = (0..20).map(|i| format!("{i:043}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let index = AccountIndex::new(1);
    index.apply(&account("big", &refs));
    (index, values)
}

#[test]
fn tc_is_set_when_the_udp_answer_does_not_fit_the_client_buffer() {
    let (index, values) = big_index();
    for edns in [None, Some(512)] {
        let query = query_bytes("big.auth.example.test.", RecordType::TXT, edns);
        let mut out = Vec::new();
        let answered = answer(&query, &zone(), &index, Transport::Udp, &mut out).unwrap();
        assert!(answered.truncated);
        assert!(
            out.len() <= 512,
            "{} bytes over a 512-byte buffer",
            out.len()
        );
        let message = Message::from_vec(&out).unwrap();
        assert!(message.metadata.truncation);
        assert!(message.answers.is_empty());
        assert_eq!(message.edns.is_some(), edns.is_some());
    }
    // A client with a larger buffer gets everything over UDP.
    let query = query_bytes("big.auth.example.test.", RecordType::TXT, Some(1232));
    let mut out = Vec::new();
    answer(&query, &zone(), &index, Transport::Udp, &mut out).unwrap();
    let message = Message::from_vec(&out).unwrap();
    assert!(!message.metadata.truncation);
    assert_eq!(txt_strings(&message), values);
}

#[test]
fn tcp_answers_are_always_complete() {
    let (index, values) = big_index();
    let query = query_bytes("big.auth.example.test.", RecordType::TXT, None);
    let mut out = Vec::new();
    answer(&query, &zone(), &index, Transport::Tcp, &mut out).unwrap();
    let message = Message::from_vec(&out).unwrap();
    assert!(!message.metadata.truncation);
    assert_eq!(txt_strings(&message), values);
}

#[test]
fn the_question_is_echoed_in_the_case_it_was_asked() {
    let mixed = format!("{}.AuTh.ExAmPlE.tEsT.", ACCOUNT.to_uppercase());
    let query = query_bytes(&mixed, RecordType::TXT, Some(1232));
    let (_, bytes) = respond(&query, Transport::Udp).unwrap();
    let question_len = query.len() - 12 - 11;
    assert_eq!(
        &bytes[12..12 + question_len],
        &query[12..12 + question_len],
        "byte for byte"
    );
    let message = Message::from_vec(&bytes).unwrap();
    assert_eq!(txt_strings(&message), VALUES);
    // Answers own the name by a pointer to the question, so they carry its case too.
    let answer_start = 12 + question_len;
    assert_eq!(&bytes[answer_start..answer_start + 2], &[0xC0, 0x0C]);
}

#[test]
fn edns_version_other_than_zero_gets_badvers() {
    let mut message = Message::from_vec(&query_bytes(
        "auth.example.test.",
        RecordType::SOA,
        Some(1232),
    ))
    .unwrap();
    message.edns.as_mut().unwrap().set_version(1);
    let (answered, bytes) = respond(&message.to_vec().unwrap(), Transport::Udp).unwrap();
    assert_eq!(answered.rcode, 16);
    let response = Message::from_vec(&bytes).unwrap();
    // 16 is BADVERS in an OPT context (hickory names the shared code BADSIG).
    assert_eq!(u16::from(response.metadata.response_code), 16);
    assert_eq!(response.edns.unwrap().version(), 0);
}

#[test]
fn other_classes_and_zone_transfers_are_refused() {
    let mut message =
        Message::from_vec(&query_bytes("auth.example.test.", RecordType::SOA, None)).unwrap();
    message.queries[0].query_class = DNSClass::CH;
    let (answered, _) = respond(&message.to_vec().unwrap(), Transport::Udp).unwrap();
    assert_eq!(answered.rcode, 5);
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        let message = ask_with("auth.example.test.", qtype, None, Transport::Tcp);
        assert_eq!(message.metadata.response_code, ResponseCode::Refused);
    }
}

#[test]
fn other_opcodes_are_not_implemented() {
    let mut message =
        Message::from_vec(&query_bytes("auth.example.test.", RecordType::SOA, None)).unwrap();
    message.metadata.op_code = OpCode::Notify;
    let (answered, bytes) = respond(&message.to_vec().unwrap(), Transport::Udp).unwrap();
    assert_eq!(answered.rcode, 4);
    let response = Message::from_vec(&bytes).unwrap();
    assert_eq!(response.metadata.op_code, OpCode::Notify);
    assert_eq!(response.metadata.response_code, ResponseCode::NotImp);
}

#[test]
fn rd_and_cd_are_copied_for_query_only() {
    // For other opcodes we do not know what the bits mean, so the NOTIMP has them clear
    // (ISC genreport's opcodeflg test); the opcode itself is still echoed.
    for opcode in [0u8, 1, 2, 3, 4, 5, 15] {
        let mut packet = query_bytes("auth.example.test.", RecordType::SOA, None);
        packet[2] = opcode << 3 | 0x01; // RD
        packet[3] = 0x10; // CD
        let (_, bytes) = respond(&packet, Transport::Udp).unwrap();
        let response = Message::from_vec(&bytes).unwrap();
        let query = opcode == 0;
        assert_eq!(u8::from(response.metadata.op_code), opcode);
        assert_eq!(
            response.metadata.recursion_desired, query,
            "RD, opcode {opcode}"
        );
        assert_eq!(
            response.metadata.checking_disabled, query,
            "CD, opcode {opcode}"
        );
        let rcode = if query {
            ResponseCode::NoError
        } else {
            ResponseCode::NotImp
        };
        assert_eq!(response.metadata.response_code, rcode);
    }
}

/// A header with id 0x4242, built by hand for packets hickory will not write.
fn raw_header(flags: u16, counts: [u16; 4]) -> Vec<u8> {
    let mut header = vec![0x42, 0x42];
    header.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        header.extend_from_slice(&count.to_be_bytes());
    }
    header
}

/// An OPT record as a client sends it: owned by the root, 4096-byte buffer, version 0,
/// `rdata` as the option list, well-formed or not.
fn client_opt(dnssec_ok: bool, rdata: &[u8]) -> Vec<u8> {
    let mut opt = vec![
        0,
        0,
        41,
        0x10,
        0x00,
        0,
        0,
        if dnssec_ok { 0x80 } else { 0 },
        0,
    ];
    opt.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    opt.extend_from_slice(rdata);
    opt
}

/// The OPT record of our answers: our payload size, version 0, no options.
fn our_opt(dnssec_ok: bool) -> Vec<u8> {
    let mut opt = vec![0, 0, 41];
    opt.extend_from_slice(&answer::MAX_UDP_PAYLOAD.to_be_bytes());
    opt.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    opt
}

/// A client COOKIE option (RFC 7873 §4): code 10, eight bytes.
const CLIENT_COOKIE: [u8; 12] = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn edns_queries_rejected_at_the_header_get_an_opt() {
    // RFC 6891 §6.1.1: an OPT in the request means one in the response, whatever the
    // RCODE.
    let question = &query_bytes("auth.example.test.", RecordType::SOA, None)[12..];
    let cookie = client_opt(false, &CLIENT_COOKIE);

    // An unassigned opcode (3), DO set: NOTIMP with our OPT, DO copied.
    let packet = concat(&[
        &raw_header(3 << 11, [1, 0, 0, 1]),
        question,
        &client_opt(true, &CLIENT_COOKIE),
    ]);
    let (answered, bytes) = respond(&packet, Transport::Udp).unwrap();
    assert_eq!(answered.rcode, 4);
    assert_eq!(
        bytes,
        concat(&[
            &raw_header(0x8000 | 3 << 11 | 4, [0, 0, 0, 1]),
            &our_opt(true)
        ])
    );
    let response = Message::from_vec(&bytes).unwrap();
    assert_eq!(response.metadata.op_code, OpCode::Unknown(3));
    assert_eq!(response.metadata.response_code, ResponseCode::NotImp);
    let edns = response.edns.expect("OPT in the NOTIMP");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), answer::MAX_UDP_PAYLOAD);
    assert!(edns.flags().dnssec_ok);
    assert!(edns.options().as_ref().is_empty());

    // No question, only an OPT with a cookie: FORMERR with our OPT.
    let packet = concat(&[&raw_header(0, [0, 0, 0, 1]), &cookie]);
    assert_eq!(
        formerr(&packet),
        concat(&[&raw_header(0x8001, [0, 0, 0, 1]), &our_opt(false)])
    );
    let response = Message::from_vec(&formerr(&packet)).unwrap();
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    assert!(response.edns.is_some());

    // Two questions, the second owned by a compression pointer to the first.
    let second = concat(&[&[0xC0, 12], &question[question.len() - 4..]]);
    let packet = concat(&[&raw_header(0, [2, 0, 0, 1]), question, &second, &cookie]);
    assert_eq!(
        formerr(&packet),
        concat(&[&raw_header(0x8001, [0, 0, 0, 1]), &our_opt(false)])
    );

    // An OPT read whole counts even when a record promised after it is missing.
    let packet = concat(&[&raw_header(0, [0, 0, 0, 2]), &cookie]);
    assert_eq!(
        formerr(&packet),
        concat(&[&raw_header(0x8001, [0, 0, 0, 1]), &our_opt(false)])
    );

    // Without an OPT, or when it cannot be read whole, the answer is the header alone.
    for packet in [
        concat(&[&raw_header(3 << 11, [1, 0, 0, 0]), question]),
        concat(&[&raw_header(0, [0, 0, 0, 1]), &cookie[..cookie.len() - 1]]),
        concat(&[&raw_header(0, [2, 0, 0, 1]), question, &cookie]),
    ] {
        let (_, bytes) = respond(&packet, Transport::Udp).unwrap();
        assert_eq!(bytes.len(), 12, "{packet:02x?}");
        assert_eq!(&bytes[10..12], &[0, 0], "no additional records");
    }
}

#[test]
fn malformed_edns_options_and_misplaced_opt_get_formerr() {
    let question = &query_bytes("auth.example.test.", RecordType::SOA, None)[12..];
    let formerr_with_opt = concat(&[&raw_header(0x8101, [0, 0, 0, 1]), &our_opt(false)]);

    // RFC 6891 §7: options that do not end exactly at the end of the RDATA.
    for rdata in [
        &[0, 10, 0, 8, 1, 2, 3, 4][..],            // length past the end
        &[0, 10],                                  // option header cut short
        &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0], // a stray byte after the option
        &[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 12, 0], // second header cut short
    ] {
        let packet = concat(&[
            &raw_header(0x0100, [1, 0, 0, 1]),
            question,
            &client_opt(false, rdata),
        ]);
        assert_eq!(formerr(&packet), formerr_with_opt, "options {rdata:02x?}");
    }

    // Whole options, empty ones included, are fine.
    let options = concat(&[&CLIENT_COOKIE, &[0, 12, 0, 0]]);
    let packet = concat(&[
        &raw_header(0x0100, [1, 0, 0, 1]),
        question,
        &client_opt(false, &options),
    ]);
    let (answered, bytes) = respond(&packet, Transport::Udp).unwrap();
    assert_eq!(answered.rcode, 0);
    let response = Message::from_vec(&bytes).unwrap();
    assert_eq!(response.answers[0].record_type(), RecordType::SOA);
    assert!(response.edns.is_some());

    // An OPT outside the additional section (RFC 6891 §6.1.1).
    let opt = client_opt(false, &[]);
    let in_answers = concat(&[&raw_header(0x0100, [1, 1, 0, 0]), question, &opt]);
    assert_eq!(formerr(&in_answers), raw_header(0x8101, [0; 4]));
    let in_authority = concat(&[&raw_header(0x0100, [1, 0, 1, 1]), question, &opt, &opt]);
    assert_eq!(formerr(&in_authority), formerr_with_opt);
}

fn formerr(packet: &[u8]) -> Vec<u8> {
    let (answered, bytes) = respond(packet, Transport::Udp).expect("FORMERR, not a drop");
    assert_eq!(answered.rcode, 1, "{packet:02x?}");
    assert_eq!(&bytes[..2], &packet[..2], "id echoed");
    bytes
}

#[test]
fn malformed_queries_get_formerr() {
    let valid = query_bytes("auth.example.test.", RecordType::SOA, Some(1232));
    // Question cut short, at every length past the header.
    for len in 12..valid.len() - 11 {
        assert_eq!(
            formerr(&valid[..len]).len(),
            12,
            "header only when the question is unreadable"
        );
    }
    // Two questions.
    let mut two = valid.clone();
    two[5] = 2;
    formerr(&two);
    // Zero questions.
    let mut none = valid.clone();
    none[5] = 0;
    formerr(&none);
    // A compression pointer, and a reserved label type, in the question name.
    let mut pointer = valid.clone();
    pointer[12] = 0xC0;
    formerr(&pointer);
    let mut reserved = valid.clone();
    reserved[12] = 0x40;
    formerr(&reserved);
    // Additional count promising records that are not there.
    let mut missing = valid.clone();
    missing[11] = 2;
    formerr(&missing);
    // Two OPT records (RFC 6891 §6.1.1).
    let mut two_opt = valid.clone();
    two_opt[11] = 2;
    two_opt.extend_from_slice(&valid[valid.len() - 11..]);
    formerr(&two_opt);
    // OPT as the question type.
    let opt = query_bytes("auth.example.test.", RecordType::OPT, None);
    formerr(&opt);
}

#[test]
fn runts_and_responses_are_dropped() {
    assert!(respond(&[], Transport::Udp).is_none());
    assert!(respond(&[0; 11], Transport::Udp).is_none());
    let mut response = query_bytes("auth.example.test.", RecordType::SOA, None);
    response[2] |= 0x80;
    assert!(
        respond(&response, Transport::Udp).is_none(),
        "never answer a response"
    );
}

/// A small deterministic generator, so a failure names a reproducible input.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_packets_never_panic_and_any_answer_decodes() {
    let zone = zone();
    let index = index();
    let seeds = [
        query_bytes(
            &format!("{ACCOUNT}.auth.example.test."),
            RecordType::TXT,
            Some(1232),
        ),
        query_bytes("auth.example.test.", RecordType::NS, None),
        query_bytes("a.b.c.auth.example.test.", RecordType::ANY, Some(512)),
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    for round in 0..200_000 {
        let packet: Vec<u8> = if round % 4 == 0 {
            let len = (rng.next() % 80) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            let mut p = seeds[round % seeds.len()].clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % p.len();
                p[at] = rng.next() as u8;
            }
            if rng.next() % 8 == 0 {
                p.truncate((rng.next() as usize) % p.len());
            }
            p
        };
        for transport in [Transport::Udp, Transport::Tcp] {
            if answer(&packet, &zone, &index, transport, &mut out).is_some() {
                assert!(out.len() >= 12);
                assert_eq!(out[..2], packet[..2], "id echoed");
                if transport == Transport::Udp {
                    assert!(out.len() <= answer::MAX_UDP_PAYLOAD as usize);
                }
                Message::from_vec(&out)
                    .unwrap_or_else(|e| panic!("undecodable answer to {packet:02x?}: {e}"));
            }
        }
    }
}

#[test]
fn zone_configuration_errors_say_what_to_write() {
    let mut config = ZoneConfig::new("auth.example.test");
    config.records = vec!["api MX 10 mail".into()];
    let err = Zone::new(&config).unwrap_err().to_string();
    assert!(err.contains("NAME TYPE DATA"), "{err}");
    config.records = vec!["www.example.com. A 192.0.2.1".into()];
    let err = Zone::new(&config).unwrap_err().to_string();
    assert!(err.contains("outside the zone"), "{err}");
}

#[test]
fn names_the_zone_uses_are_reserved_for_accounts() {
    let reserved = zone().reserved_labels();
    for label in ["ns", "NS", "api", "sub"] {
        assert!(
            reserved.contains(&Label::new(label.as_bytes()).unwrap()),
            "{label} should be reserved"
        );
    }
    // "deep" only exists below "sub"; an account label is one level below the apex.
    for label in ["deep", ACCOUNT] {
        assert!(!reserved.contains(&Label::new(label.as_bytes()).unwrap()));
    }
}

/// `bytes` cut down as response rate limiting slips an answer.
fn slipped(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    crate::wire::truncate_response(&mut out);
    out
}

#[test]
fn a_slipped_answer_keeps_the_header_the_question_and_the_opt() {
    // NS at the apex: an answer, glue in the additional section before the OPT.
    let query = query_bytes("auth.example.test.", RecordType::NS, Some(1232));
    let (_, whole) = respond(&query, Transport::Udp).unwrap();
    let message = Message::from_vec(&whole).unwrap();
    assert_eq!((message.answers.len(), message.additionals.len()), (1, 2));
    // The same header with TC set and the counts of the question and the OPT, the
    // question as asked, our OPT: nothing else.
    let mut header = whole[..12].to_vec();
    header[2] |= 0x02;
    header[4..].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    let question = &query[12..query.len() - 11];
    let bytes = slipped(&whole);
    assert_eq!(bytes, concat(&[&header, question, &our_opt(false)]));
    let message = Message::from_vec(&bytes).unwrap();
    assert!(message.metadata.truncation);
    assert!(message.metadata.authoritative, "flags kept");
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert!(message.answers.is_empty() && message.additionals.is_empty());
    assert_eq!(message.edns.unwrap().max_payload(), answer::MAX_UDP_PAYLOAD);

    // Without EDNS, no OPT; NXDOMAIN stays NXDOMAIN, its SOA goes.
    let query = query_bytes("missing.auth.example.test.", RecordType::TXT, None);
    let (_, bytes) = respond(&query, Transport::Udp).unwrap();
    let message = Message::from_vec(&slipped(&bytes)).unwrap();
    assert!(message.metadata.truncation);
    assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(message.queries.len(), 1);
    assert!(message.authorities.is_empty() && message.edns.is_none());
    assert_eq!(slipped(&bytes).len(), query.len());

    // BADVERS keeps its upper bits, which live in the OPT.
    let mut message = Message::from_vec(&query_bytes(
        "auth.example.test.",
        RecordType::SOA,
        Some(1232),
    ))
    .unwrap();
    message.edns.as_mut().unwrap().set_version(1);
    let (_, bytes) = respond(&message.to_vec().unwrap(), Transport::Udp).unwrap();
    let response = Message::from_vec(&slipped(&bytes)).unwrap();
    assert!(response.metadata.truncation);
    assert_eq!(u16::from(response.metadata.response_code), 16);

    // A FORMERR without a question: the header and the OPT.
    let packet = concat(&[
        &raw_header(0, [0, 0, 0, 1]),
        &client_opt(true, &CLIENT_COOKIE),
    ]);
    assert_eq!(
        slipped(&formerr(&packet)),
        concat(&[&raw_header(0x8201, [0, 0, 0, 1]), &our_opt(true)])
    );
}

const IDENTITY: &str = "kube-acme-dns-6c9f7b5d4-x7k2p";

fn zone_with_identity() -> Zone {
    let mut config = ZoneConfig::new("auth.example.test");
    config.identity = IDENTITY.into();
    Zone::new(&config).unwrap()
}

/// A query with EDNS, carrying the empty NSID option of RFC 5001 §2.1 when `nsid`.
fn query_asking_nsid(name: &str, qtype: RecordType, udp_size: u16, nsid: bool) -> Vec<u8> {
    let mut message = Message::from_vec(&query_bytes(name, qtype, Some(udp_size))).unwrap();
    if nsid {
        let empty = NSIDPayload::new(Vec::new()).unwrap();
        message
            .edns
            .as_mut()
            .unwrap()
            .options_mut()
            .insert(EdnsOption::NSID(empty));
    }
    message.to_vec().unwrap()
}

fn respond_from(zone: &Zone, index: &AccountIndex, packet: &[u8]) -> (Answered, Message) {
    let mut out = Vec::new();
    let answered = answer(packet, zone, index, Transport::Udp, &mut out).expect("an answer");
    (
        answered,
        Message::from_vec(&out).expect("our answer decodes"),
    )
}

/// The NSID option's data in the answer's OPT, if it has one.
fn nsid_of(message: &Message) -> Option<Vec<u8>> {
    let edns = message.edns.as_ref().expect("OPT in the response");
    match edns.options().get(EdnsCode::NSID)? {
        EdnsOption::NSID(payload) => Some(payload.as_ref().to_vec()),
        other => panic!("{other:?}"),
    }
}

fn chaos_txt(name: &str) -> Vec<u8> {
    let mut message = Message::from_vec(&query_bytes(name, RecordType::TXT, Some(1232))).unwrap();
    message.queries[0].query_class = DNSClass::CH;
    message.to_vec().unwrap()
}

#[test]
fn nsid_asked_is_answered_with_the_identity() {
    let query = query_asking_nsid("auth.example.test.", RecordType::SOA, 1232, true);
    let (_, message) = respond_from(&zone_with_identity(), &index(), &query);
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert_eq!(message.answers.len(), 1, "the answer itself is unchanged");
    assert_eq!(nsid_of(&message), Some(IDENTITY.as_bytes().to_vec()));

    // Answers that are only a header and the question carry it too.
    let query = query_asking_nsid("example.org.", RecordType::A, 1232, true);
    let (answered, message) = respond_from(&zone_with_identity(), &index(), &query);
    assert_eq!(answered.rcode, 5);
    assert_eq!(nsid_of(&message), Some(IDENTITY.as_bytes().to_vec()));
}

#[test]
fn nsid_not_asked_is_not_answered() {
    let query = query_asking_nsid("auth.example.test.", RecordType::SOA, 1232, false);
    let (_, message) = respond_from(&zone_with_identity(), &index(), &query);
    assert_eq!(nsid_of(&message), None);
    assert!(message.edns.unwrap().options().as_ref().is_empty());
}

#[test]
fn nsid_asked_without_an_identity_is_not_answered() {
    let query = query_asking_nsid("auth.example.test.", RecordType::SOA, 1232, true);
    let (_, message) = respond_from(&zone(), &index(), &query);
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert_eq!(nsid_of(&message), None);
}

#[test]
fn chaos_id_server_and_hostname_bind_answer_the_identity() {
    for name in ["id.server.", "hostname.bind.", "ID.Server."] {
        let (answered, message) = respond_from(&zone_with_identity(), &index(), &chaos_txt(name));
        assert_eq!(answered.rcode, 0, "{name}");
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert_eq!(message.answers.len(), 1, "{name}");
        let record = &message.answers[0];
        assert_eq!(record.dns_class, DNSClass::CH);
        assert_eq!(record.ttl, 0);
        assert_eq!(record.name, Name::from_str(name).unwrap());
        assert_eq!(txt_strings(&message), [IDENTITY]);
    }
}

#[test]
fn chaos_version_bind_is_refused() {
    for name in ["version.bind.", "version.server.", "authors.bind."] {
        let (answered, message) = respond_from(&zone_with_identity(), &index(), &chaos_txt(name));
        assert_eq!(answered.rcode, 5, "{name}");
        assert!(message.answers.is_empty());
    }
    // Only TXT is answered at id.server.
    let mut message =
        Message::from_vec(&query_bytes("id.server.", RecordType::A, Some(1232))).unwrap();
    message.queries[0].query_class = DNSClass::CH;
    let (answered, _) = respond_from(&zone_with_identity(), &index(), &message.to_vec().unwrap());
    assert_eq!(answered.rcode, 5);
}

#[test]
fn chaos_identity_queries_are_refused_without_an_identity() {
    for name in ["id.server.", "hostname.bind."] {
        let (answered, message) = respond_from(&zone(), &index(), &chaos_txt(name));
        assert_eq!(answered.rcode, 5, "{name}");
        assert!(message.answers.is_empty());
    }
}

#[test]
fn nsid_counts_towards_the_udp_size_that_decides_truncation() {
    // Two 218-byte values make an answer of exactly 512 bytes with an empty OPT:
    // header 12, question 27, two TXT records of 12 + 1 + 218, OPT 11.
    let values = ["a".repeat(218), "b".repeat(218)];
    let index = AccountIndex::new(1);
    index.apply(&account("big", &[&values[0], &values[1]]));
    let zone = zone_with_identity();
    let name = "big.auth.example.test.";

    let mut out = Vec::new();
    let plain = query_asking_nsid(name, RecordType::TXT, 512, false);
    let answered = answer(&plain, &zone, &index, Transport::Udp, &mut out).unwrap();
    assert!(!answered.truncated);
    assert_eq!(out.len(), 512, "the answer just fits without NSID");

    // The NSID option (4 + identity bytes) no longer fits: truncated, and the
    // truncated answer still carries the NSID within the client's 512 bytes.
    let asked = query_asking_nsid(name, RecordType::TXT, 512, true);
    let answered = answer(&asked, &zone, &index, Transport::Udp, &mut out).unwrap();
    assert!(answered.truncated);
    assert!(out.len() <= 512, "{} bytes", out.len());
    let message = Message::from_vec(&out).unwrap();
    assert!(message.metadata.truncation);
    assert!(message.answers.is_empty());
    assert_eq!(nsid_of(&message), Some(IDENTITY.as_bytes().to_vec()));

    // A buffer that much larger takes it all, to the byte.
    let size = 512 + 4 + IDENTITY.len();
    let asked = query_asking_nsid(name, RecordType::TXT, size as u16, true);
    let answered = answer(&asked, &zone, &index, Transport::Udp, &mut out).unwrap();
    assert!(!answered.truncated);
    assert_eq!(out.len(), size);
    let message = Message::from_vec(&out).unwrap();
    assert_eq!(txt_strings(&message), values);
    assert_eq!(nsid_of(&message), Some(IDENTITY.as_bytes().to_vec()));
}

#[test]
fn a_slipped_answer_to_an_nsid_query_is_no_larger_than_the_query() {
    // Response rate limiting may send a truncated reply to a forged source; the NSID
    // would make it larger than the query, so it keeps the OPT without options.
    let query = query_asking_nsid("example.org.", RecordType::A, 1232, true);
    let (_, whole) = respond_from(&zone_with_identity(), &index(), &query);
    assert!(nsid_of(&whole).is_some());
    let mut out = Vec::new();
    answer(
        &query,
        &zone_with_identity(),
        &index(),
        Transport::Udp,
        &mut out,
    )
    .unwrap();
    let bytes = slipped(&out);
    assert!(
        bytes.len() <= query.len(),
        "{} > {}",
        bytes.len(),
        query.len()
    );
    let message = Message::from_vec(&bytes).unwrap();
    assert!(message.metadata.truncation);
    assert_eq!(message.metadata.response_code, ResponseCode::Refused);
    assert_eq!(nsid_of(&message), None);
    assert_eq!(message.edns.unwrap().max_payload(), answer::MAX_UDP_PAYLOAD);
}
