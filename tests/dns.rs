//! The DNS responder as a user meets it: `kube-acme-dns serve` against the local
//! control plane, asked with `dig` and `kdig` over UDP and TCP.

mod common;

use std::{net::SocketAddr, time::Duration};

use hickory_proto::{
    op::{Message, MessageType, ResponseCode},
    rr::RecordType,
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use common::dns;
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

/// Runs `dig` (or `kdig`) against `server` and returns its output.
fn ask(tool: &str, server: SocketAddr, args: &[&str]) -> String {
    let port = server.port().to_string();
    let mut all = vec![format!("@{}", server.ip()), "-p".into(), port];
    let retries = if tool == "kdig" {
        "+retry=0"
    } else {
        "+tries=1"
    };
    all.extend(["+time=2", retries].iter().map(|s| s.to_string()));
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    common::run(tool, &refs, None)
}

fn status_of(output: &str) -> &str {
    // dig: "status: NOERROR," — kdig: "status: NOERROR;"
    output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split([',', ';']).next())
        .unwrap_or("no status")
}

async fn create_account(accounts: &Api<AcmeDnsAccount>, name: &str, spec: AcmeDnsAccountSpec) {
    accounts
        .create(&PostParams::default(), &AcmeDnsAccount::new(name, spec))
        .await
        .expect("create account");
}

/// Waits for the controller to assign the account's subdomain; returns its FQDN.
async fn assigned_fqdn(accounts: &Api<AcmeDnsAccount>, name: &str) -> String {
    common::eventually("subdomain assigned", Duration::from_secs(20), || async {
        accounts.get(name).await.ok()?.status?.fqdn
    })
    .await
}

async fn set_txt(accounts: &Api<AcmeDnsAccount>, name: &str, values: &[String]) {
    let now = Timestamp::now().to_string();
    let txt: Vec<_> = values
        .iter()
        .map(|v| json!({ "value": v, "updatedAt": now }))
        .collect();
    accounts
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "txt": txt } })),
        )
        .await
        .expect("write status.txt");
}

fn digest(i: usize) -> String {
    format!("{i:0>43}")
}

#[tokio::test]
async fn new_account_gets_a_subdomain_and_its_txt_is_answered_within_a_second() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "dns-new").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);
    let serve = common::spawn_serve(&namespace, &namespace, &[]);
    common::wait_ready(&serve).await;

    let domain = format!("{}.example.test", common::unique_name("web"));
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(domain.clone())],
        ..Default::default()
    };
    create_account(&accounts, "web", spec).await;
    let fqdn = assigned_fqdn(&accounts, "web").await;
    let account = accounts.get("web").await.unwrap();
    let status = account.status.unwrap();
    let label = status.subdomain.unwrap().0;
    assert!(uuid::Uuid::parse_str(&label).is_ok(), "a UUID: {label}");
    assert_eq!(fqdn, format!("{label}.auth.example.test."));
    assert_eq!(status.cnames[0].name, format!("_acme-challenge.{domain}."));
    assert_eq!(status.cnames[0].target, fqdn);
    // `kubectl get -o yaml --show-managed-fields` names us as the status's writer.
    let status_writers: Vec<_> = account
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .map(|m| m.manager.clone().unwrap_or_default())
        .collect();
    assert_eq!(status_writers, ["kube-acme-dns"]);

    set_txt(&accounts, "web", &[digest(1)]).await;
    let written = std::time::Instant::now();
    let answered = common::eventually("TXT answered", Duration::from_secs(1), || async {
        let out = ask("dig", serve.dns, &["+short", &fqdn, "TXT"]);
        out.contains(&digest(1)).then_some(written.elapsed())
    })
    .await;
    assert!(
        answered < Duration::from_secs(1),
        "answered after {answered:?}"
    );

    let over_tcp = ask("kdig", serve.dns, &["+tcp", &fqdn, "TXT"]);
    assert!(over_tcp.contains(&digest(1)), "{over_tcp}");

    let events = common::event_reasons(&namespace);
    assert!(events.contains("SubdomainAssigned"), "events: {events}");
}

#[tokio::test]
async fn every_row_of_the_behaviour_table_over_udp_and_tcp() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "dns-rows").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);
    let serve = common::spawn_serve(
        &namespace,
        &namespace,
        &[
            "--record",
            "api A 192.0.2.10",
            "--record",
            r#"@ CAA 0 issue "letsencrypt.org""#,
        ],
    );
    common::wait_ready(&serve).await;

    let label = common::unique_name("rows");
    let spec = AcmeDnsAccountSpec {
        subdomain: Some(DnsLabel(label.clone())),
        ..Default::default()
    };
    create_account(&accounts, "rows", spec).await;
    let fqdn = assigned_fqdn(&accounts, "rows").await;
    assert_eq!(fqdn, format!("{label}.auth.example.test."));
    let values: Vec<String> = (0..25).map(digest).collect();
    set_txt(&accounts, "rows", &values).await;
    common::eventually("25 values served", Duration::from_secs(5), || async {
        let out = ask("dig", serve.dns, &["+tcp", "+short", &fqdn, "TXT"]);
        (out.lines().count() == 25).then_some(())
    })
    .await;

    for (tool, transport) in [
        ("dig", "+notcp"),
        ("dig", "+tcp"),
        ("kdig", "+notcp"),
        ("kdig", "+tcp"),
    ] {
        let q = |args: &[&str]| {
            let mut all = vec![transport];
            all.extend_from_slice(args);
            ask(tool, serve.dns, &all)
        };
        let ctx = format!("{tool} {transport}");

        // TXT at the account, as the tool shows it (flags are checked on parsed
        // answers below).
        let out = q(&["+bufsize=4096", &fqdn, "TXT"]);
        assert_eq!(status_of(&out), "NOERROR", "{ctx}: {out}");
        if transport == "+tcp" {
            for v in &values {
                assert!(out.contains(v.as_str()), "{ctx}: {v} missing: {out}");
            }
        }

        // Another type at an existing name: NODATA with the SOA, not NXDOMAIN.
        let out = q(&[&fqdn, "A"]);
        assert_eq!(status_of(&out), "NOERROR", "{ctx}: {out}");
        assert!(out.contains("ANSWER: 0"), "{ctx}: {out}");
        assert!(out.contains("SOA"), "{ctx}: {out}");

        // A missing name: NXDOMAIN with the SOA, negative TTL 60.
        let out = q(&["missing.auth.example.test", "TXT"]);
        assert_eq!(status_of(&out), "NXDOMAIN", "{ctx}: {out}");
        assert!(
            out.lines()
                .any(|l| l.contains("SOA") && l.split_whitespace().nth(1) == Some("60")),
            "{ctx}: SOA with TTL 60: {out}"
        );

        // Outside the zone, recursion asked: REFUSED.
        let out = q(&["+rec", "example.com", "A"]);
        assert_eq!(status_of(&out), "REFUSED", "{ctx}: {out}");

        // Apex SOA and NS, the name server's address, static records.
        assert!(
            q(&["+short", "auth.example.test", "SOA"]).starts_with("ns.auth.example.test."),
            "{ctx}"
        );
        assert_eq!(
            q(&["+short", "auth.example.test", "NS"]).trim(),
            "ns.auth.example.test.",
            "{ctx}"
        );
        assert_eq!(
            q(&["+short", "ns.auth.example.test", "A"]).trim(),
            "127.0.0.1",
            "{ctx}"
        );
        assert_eq!(
            q(&["+short", "api.auth.example.test", "A"]).trim(),
            "192.0.2.10",
            "{ctx}"
        );
        assert!(
            q(&["+short", "auth.example.test", "CAA"]).contains("letsencrypt.org"),
            "{ctx}"
        );

        // ANY: the minimal answer of RFC 8482.
        let out = q(&[&fqdn, "ANY"]);
        assert!(
            out.contains("HINFO") && out.contains("RFC8482"),
            "{ctx}: {out}"
        );
        assert!(
            !out.contains(&digest(0)),
            "{ctx}: ANY must not list the TXT values: {out}"
        );

        // Mixed case (0x20): the answer echoes the question's case. (kdig prints
        // owner names lowercased whatever it received, so only dig can show it.)
        if tool == "dig" {
            let mixed = "AuTh.ExAmPlE.tEsT.";
            let out = q(&["+noall", "+answer", mixed, "SOA"]);
            assert!(
                out.lines().next().unwrap_or("").starts_with(mixed),
                "{ctx}: {out}"
            );
        }
    }

    // The same rows decoded by hickory-proto, over UDP and TCP: flags and sections
    // as parsed, not as a tool prints them.
    let ask_both = |name: &str, rtype: RecordType, recursion: bool| {
        let query = dns::query(name, rtype, recursion, Some(4096));
        [
            ("udp", dns::udp(serve.dns, &query, dns::TIMEOUT)),
            ("tcp", dns::tcp(serve.dns, &query, dns::TIMEOUT)),
        ]
        .map(|(t, reply)| {
            (
                t,
                reply.unwrap_or_else(|e| panic!("{t} {name} {rtype}: {e}")),
            )
        })
    };
    let mut expected_values = values.clone();
    expected_values.sort();
    for (transport, reply) in ask_both(&fqdn, RecordType::TXT, false) {
        let m = &reply.metadata;
        assert_eq!(
            m.response_code,
            ResponseCode::NoError,
            "{transport}: {reply:?}"
        );
        assert!(m.authoritative, "{transport}: AA set: {reply:?}");
        if transport == "udp" {
            // 25 values (about 1.4 kB) do not fit the 1232 bytes we answer over UDP
            // whatever the client offers (DNS flag day 2020), so TC tells it to use TCP.
            assert!(m.truncation, "udp: TC set: {reply:?}");
            let edns = reply.edns.as_ref().expect("OPT echoed");
            assert_eq!(edns.max_payload(), 1232, "udp: our payload size");
            continue;
        }
        assert!(!m.truncation, "tcp: never truncated: {reply:?}");
        assert_eq!(dns::txt_strings(&reply), expected_values, "tcp");
        for record in &reply.answers {
            assert!((1..=60).contains(&record.ttl), "tcp: short TTL: {record:?}");
        }
    }
    for (transport, reply) in ask_both(&fqdn, RecordType::A, false) {
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{transport}: NODATA"
        );
        assert!(reply.metadata.authoritative, "{transport}: {reply:?}");
        assert!(reply.answers.is_empty(), "{transport}: {reply:?}");
        assert!(
            reply
                .authorities
                .iter()
                .any(|r| r.record_type() == RecordType::SOA),
            "{transport}: SOA in authority: {reply:?}"
        );
    }
    for (transport, reply) in ask_both("missing.auth.example.test.", RecordType::TXT, false) {
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{transport}"
        );
        assert!(reply.metadata.authoritative, "{transport}: {reply:?}");
        let soa = reply
            .authorities
            .iter()
            .find(|r| r.record_type() == RecordType::SOA)
            .unwrap_or_else(|| panic!("{transport}: SOA in authority: {reply:?}"));
        assert_eq!(soa.ttl, 60, "{transport}: negative TTL = SOA minimum");
    }
    for (transport, reply) in ask_both("example.com.", RecordType::A, true) {
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{transport}"
        );
        assert!(
            !reply.metadata.recursion_available,
            "{transport}: not a resolver"
        );
    }

    // A UDP answer that does not fit the client's buffer sets TC; TCP gets it all.
    for edns in [Some(512), None] {
        let query = dns::query(&fqdn, RecordType::TXT, false, edns);
        let reply = dns::udp(serve.dns, &query, dns::TIMEOUT).unwrap();
        assert!(
            reply.metadata.truncation,
            "TC set (EDNS {edns:?}): {reply:?}"
        );
        let reply = dns::tcp(serve.dns, &query, dns::TIMEOUT).unwrap();
        assert!(!reply.metadata.truncation, "TCP (EDNS {edns:?}): {reply:?}");
        assert_eq!(
            dns::txt_strings(&reply),
            expected_values,
            "TCP (EDNS {edns:?})"
        );
    }
    let out = ask("dig", serve.dns, &["+bufsize=512", &fqdn, "TXT"]);
    assert!(
        out.contains("ANSWER: 25"),
        "dig retries over TCP and gets everything: {out}"
    );

    malformed_packets_get_formerr_or_the_documented_drop(&serve).await;
    assert_eq!(
        dns::txt_values(serve.dns, &fqdn),
        Some(expected_values),
        "still answering after the malformed packets"
    );
}

/// The README's DNS behaviour: malformed is FORMERR or dropped, never a crash. A packet with a
/// readable header gets FORMERR with its id; the two documented drop cases (shorter than
/// a header, or itself a response) get no answer and are counted as dropped.
async fn malformed_packets_get_formerr_or_the_documented_drop(serve: &common::Serve) {
    let formerr = |packet: &[u8], id: u16| {
        let reply = dns::udp_bytes(serve.dns, packet, dns::TIMEOUT)
            .unwrap_or_else(|e| panic!("FORMERR expected for {packet:02x?}: {e}"));
        let message = Message::from_vec(&reply).expect("the FORMERR decodes");
        assert_eq!(message.metadata.id, id, "id echoed: {message:?}");
        assert_eq!(message.metadata.message_type, MessageType::Response);
        assert_eq!(
            message.metadata.response_code,
            ResponseCode::FormErr,
            "{message:?}"
        );
        assert_eq!(reply.len(), 12, "header only: {reply:02x?}");
    };
    // The question is cut off after its first length byte.
    formerr(
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f",
        0x1234,
    );
    // A header that announces no question, then zeros.
    formerr(&[0u8; 512], 0);

    let dropped = || async {
        let (_, body) = common::http_get(serve.metrics, "/metrics").await?;
        Some(labelled_metric(
            &body,
            "kube_acme_dns_dns_dropped_total{transport=\"udp\"}",
        ))
    };
    let before = dropped().await.expect("metrics");
    let mut response = dns::query("auth.example.test.", RecordType::SOA, false, None);
    response.metadata.message_type = MessageType::Response;
    for (case, packet) in [
        ("shorter than a header", vec![0xff; 7]),
        ("a response", response.to_vec().unwrap()),
    ] {
        let silence = dns::udp_bytes(serve.dns, &packet, Duration::from_millis(300));
        assert!(
            silence.as_ref().is_err_and(|e| matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            "{case}: dropped, got {silence:02x?}"
        );
    }
    common::eventually("both drops counted", Duration::from_secs(5), || async {
        (dropped().await? == before + 2.0).then_some(())
    })
    .await;
}

fn labelled_metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix)?.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn two_replicas_both_answer_and_only_one_reconciles() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "dns-ha").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);
    let extra = ["--leader-election-duration", "3"];
    let mut replicas = vec![
        common::spawn_serve(&namespace, &namespace, &extra),
        common::spawn_serve(&namespace, &namespace, &extra),
    ];
    for r in &replicas {
        common::wait_ready(r).await;
    }
    let leaders = |replicas: &[common::Serve]| {
        let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.metrics).collect();
        async move {
            let mut flags = Vec::new();
            for addr in addrs {
                let (_, body) = common::http_get(addr, "/metrics").await?;
                flags.push(common::metric(&body, "kube_acme_dns_controller_leader")?);
            }
            Some(flags)
        }
    };
    let flags = common::eventually("one leader", Duration::from_secs(15), || async {
        let flags = leaders(&replicas).await?;
        (flags.iter().sum::<f64>() == 1.0).then_some(flags)
    })
    .await;
    let leader = flags.iter().position(|f| *f == 1.0).unwrap();

    create_account(&accounts, "shared", AcmeDnsAccountSpec::default()).await;
    let fqdn = assigned_fqdn(&accounts, "shared").await;
    set_txt(&accounts, "shared", &[digest(7)]).await;
    for r in &replicas {
        common::eventually("every replica answers", Duration::from_secs(2), || async {
            ask("dig", r.dns, &["+short", &fqdn, "TXT"])
                .contains(&digest(7))
                .then_some(())
        })
        .await;
    }
    let reconciles = |addr| async move {
        let (_, body) = common::http_get(addr, "/metrics").await.unwrap();
        labelled_metric(&body, "kube_acme_dns_reconciles_total{result=\"ok\"}")
    };
    assert!(
        reconciles(replicas[leader].metrics).await > 0.0,
        "the leader reconciles"
    );
    assert_eq!(
        reconciles(replicas[1 - leader].metrics).await,
        0.0,
        "the other does not"
    );

    // The leader goes away: the other replica takes over and new accounts still get
    // their subdomain.
    let mut gone = replicas.remove(leader);
    gone.child.kill().await.unwrap();
    common::eventually(
        "the other replica leads",
        Duration::from_secs(20),
        || async { (leaders(&replicas).await? == [1.0]).then_some(()) },
    )
    .await;
    create_account(&accounts, "after-failover", AcmeDnsAccountSpec::default()).await;
    assigned_fqdn(&accounts, "after-failover").await;
}

#[tokio::test]
async fn answers_go_on_when_the_api_server_goes_away() {
    // A control plane of its own, since this test stops it.
    let dir = std::env::temp_dir().join(common::unique_name("apiserver-gone"));
    let cluster = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cluster.sh");
    let dir_str = dir.to_str().unwrap().to_string();
    let up = std::process::Command::new(cluster)
        .arg("up")
        .env("KAD_CLUSTER_DIR", &dir)
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ =
                std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cluster.sh"))
                    .arg("down")
                    .env("KAD_CLUSTER_DIR", &self.0)
                    .output();
        }
    }
    let _down = Down(dir_str);
    let kubeconfig = dir.join("kubeconfig");
    let client = common::client_from(&kubeconfig).await;
    common::install_crd(&client).await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, "default");
    let serve = common::spawn_serve_as(
        kubeconfig,
        "default",
        "gone",
        &["--leader-election-namespace", "default"],
    );
    common::wait_ready(&serve).await;
    create_account(&accounts, "survivor", AcmeDnsAccountSpec::default()).await;
    let fqdn = assigned_fqdn(&accounts, "survivor").await;
    set_txt(&accounts, "survivor", &[digest(9)]).await;
    common::eventually("TXT answered", Duration::from_secs(2), || async {
        ask("dig", serve.dns, &["+short", &fqdn, "TXT"])
            .contains(&digest(9))
            .then_some(())
    })
    .await;

    // The API server alone goes away for a minute (etcd stays), while queries flow.
    let control = |command: &str| {
        let out = std::process::Command::new(cluster)
            .arg(command)
            .env("KAD_CLUSTER_DIR", &dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    control("stop-apiserver");
    let stopped = std::time::Instant::now();
    let mut queries = 0;
    while stopped.elapsed() < Duration::from_secs(60) {
        let out = ask("dig", serve.dns, &["+short", &fqdn, "TXT"]);
        assert!(
            out.contains(&digest(9)),
            "still answered with the API server gone ({:.0} s): {out}",
            stopped.elapsed().as_secs_f64()
        );
        let out = ask("kdig", serve.dns, &["+tcp", "+short", &fqdn, "TXT"]);
        assert!(out.contains(&digest(9)), "over TCP too: {out}");
        queries += 2;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _) = common::http_get(serve.metrics, "/readyz").await.unwrap();
    assert_eq!(status, 200, "stays ready: it serves the last state it saw");

    // Back: the same process picks the watch up again and serves what changes next.
    control("start-apiserver");
    let back = std::time::Instant::now();
    common::eventually("a TXT change written", Duration::from_secs(30), || async {
        let now = Timestamp::now().to_string();
        let patch = json!({ "status": { "txt": [{ "value": digest(10), "updatedAt": now }] } });
        accounts
            .patch_status("survivor", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .ok()
    })
    .await;
    common::eventually(
        "the change answered without a restart",
        Duration::from_secs(30),
        || async {
            let out = ask("dig", serve.dns, &["+short", &fqdn, "TXT"]);
            (out.contains(&digest(10)) && !out.contains(&digest(9))).then_some(())
        },
    )
    .await;
    let mut serve = serve;
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "the same serve process throughout"
    );
    common::report(&format!(
        "API server stopped 60 s: {queries} queries (UDP and TCP) all answered from the last \
         state; after it returned, a TXT change answered {:.1} s later by the same process",
        back.elapsed().as_secs_f64()
    ));
}
