//! Once warm, answering a DNS query allocates nothing: not the answer function, and not
//! the UDP server thread around it (receive, rate limiting, metrics, send). Counted by a
//! global allocator that counts every allocation in this process.
//!
//! One test in this binary, so no other test allocates while it counts.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::{SocketAddr, UdpSocket},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{
        DNSClass, Name, RecordType,
        rdata::opt::{EdnsOption, NSIDPayload},
    },
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube_acme_dns::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, TxtValue},
    dns::{
        Transport, Zone, ZoneConfig, answer,
        metrics::DnsMetrics,
        rrl::{RateLimiter, RrlConfig},
        server::DnsSockets,
    },
    index::AccountIndex,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counter is an
// atomic that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const APEX: &str = "auth.example.test";
const ACCOUNT: &str = "d420c923-bbd7-4056-ab64-c3ca54c9b3cf";

fn zone() -> Zone {
    let mut config = ZoneConfig::new(APEX);
    // Mixed case on purpose: the glue lookup must not allocate to fold it.
    config.nameservers = vec![format!("NS1.{APEX}"), format!("ns2.{APEX}")];
    config.nameserver_addresses = vec![
        "192.0.2.53".parse().unwrap(),
        "2001:db8::53".parse().unwrap(),
    ];
    config.records = vec![
        "api A 192.0.2.10".into(),
        r#"@ CAA 0 issue "letsencrypt.org""#.into(),
        "deep.sub A 192.0.2.11".into(),
    ];
    config.identity = "replica-0".into();
    Zone::new(&config).unwrap()
}

fn account(label: &str, values: &[String]) -> AcmeDnsAccount {
    let mut account = AcmeDnsAccount::new(label, AcmeDnsAccountSpec::default());
    account.metadata.namespace = Some("default".into());
    account.status = Some(AcmeDnsAccountStatus {
        subdomain: Some(DnsLabel(label.into())),
        txt: values
            .iter()
            .map(|v| TxtValue {
                value: v.clone(),
                updated_at: Time(Timestamp::UNIX_EPOCH),
            })
            .collect(),
        ..Default::default()
    });
    account
}

fn index() -> AccountIndex {
    let index = AccountIndex::new(1);
    let two = vec!["LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo".into(); 2];
    index.apply(&account(ACCOUNT, &two));
    // More than fits 512 bytes: the truncation path.
    let many: Vec<String> = (0..40).map(|i| format!("{i:0>43}")).collect();
    index.apply(&account("big", &many));
    index.apply(&account("empty", &[]));
    index
}

fn query(name: &str, qtype: RecordType, class: DNSClass, edns: Option<bool>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 0x1234;
    let mut q = Query::query(Name::from_str(name).unwrap(), qtype);
    q.set_query_class(class);
    message.add_query(q);
    if let Some(nsid) = edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        if nsid {
            e.options_mut()
                .insert(EdnsOption::NSID(NSIDPayload::new(Vec::new()).unwrap()));
        }
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

/// One query down every branch of the answer path.
fn queries() -> Vec<Vec<u8>> {
    let account = format!("{ACCOUNT}.{APEX}.");
    let apex = format!("{APEX}.");
    let mut queries = vec![
        query(&account, RecordType::TXT, DNSClass::IN, None),
        query(&account, RecordType::TXT, DNSClass::IN, Some(true)),
        query(&account, RecordType::A, DNSClass::IN, Some(false)),
        query(&account, RecordType::ANY, DNSClass::IN, None),
        query(&format!("big.{APEX}."), RecordType::TXT, DNSClass::IN, None),
        query(
            &format!("empty.{APEX}."),
            RecordType::TXT,
            DNSClass::IN,
            None,
        ),
        query(
            &format!("nobody.{APEX}."),
            RecordType::TXT,
            DNSClass::IN,
            None,
        ),
        query(&apex, RecordType::NS, DNSClass::IN, Some(false)),
        query(&apex, RecordType::SOA, DNSClass::IN, None),
        query(&apex, RecordType::CAA, DNSClass::IN, None),
        query(&format!("API.{APEX}."), RecordType::A, DNSClass::IN, None),
        query(&format!("sub.{APEX}."), RecordType::A, DNSClass::IN, None),
        query("example.org.", RecordType::A, DNSClass::IN, None),
        query(&apex, RecordType::AXFR, DNSClass::IN, None),
        query("id.server.", RecordType::TXT, DNSClass::CH, None),
        query("version.bind.", RecordType::TXT, DNSClass::CH, None),
    ];
    // Header rejects: an unknown opcode, and a truncated question.
    let mut notimp = query(&apex, RecordType::SOA, DNSClass::IN, Some(false));
    notimp[2] |= 0x0F << 3;
    queries.push(notimp);
    let mut short = query(&apex, RecordType::SOA, DNSClass::IN, None);
    short.truncate(short.len() - 3);
    queries.push(short);
    queries
}

const ROUNDS: usize = 500;

#[test]
fn answering_allocates_nothing_once_warm() {
    let zone = zone();
    let index = index();
    let queries = queries();

    // The answer function alone, for both transports.
    let mut out = Vec::new();
    let mut warm = |rounds: usize| {
        for _ in 0..rounds {
            for q in &queries {
                for transport in [Transport::Udp, Transport::Tcp] {
                    answer(q, &zone, &index, transport, &mut out);
                }
            }
        }
    };
    warm(1);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    warm(ROUNDS);
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(
        allocated,
        0,
        "the answer function allocated {allocated} times in {} answers",
        ROUNDS * queries.len() * 2
    );

    // The UDP server: a real socket and its thread, with rate limiting on (a rate of one
    // per second with every answer over it slipped, so each query still gets a reply).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let registry = prometheus::Registry::new();
    let metrics = DnsMetrics::new(&registry).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sockets = DnsSockets::bind("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let server: SocketAddr = sockets.local_addr;
    let rrl = RrlConfig {
        rate: 1,
        burst: 1,
        slip: 1,
        ..RrlConfig::default()
    };
    assert!(RateLimiter::new(rrl).enabled());
    // The TCP side is not driven here: only the UDP thread runs.
    let _tcp = sockets
        .serve(Arc::new(zone), Arc::new(index), metrics, rrl, stop.clone())
        .unwrap();

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(server).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = [0u8; 4096];
    let mut exchange = |rounds: usize| {
        for _ in 0..rounds {
            for q in &queries {
                client.send(q).expect("send a query");
                let len = client.recv(&mut reply).expect("every query gets a reply");
                assert_eq!(reply[..2], q[..2], "a reply to another query");
                assert!(len >= 12);
            }
        }
    };
    // Warm: the thread's first answers size its buffers; the metrics flush every 4096
    // answers, so the warm-up goes past one flush.
    exchange(4096 / queries.len() + 1);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    exchange(ROUNDS);
    let allocated = ALLOCATIONS.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        allocated,
        0,
        "the UDP server allocated {allocated} times in {} queries",
        ROUNDS * queries.len()
    );
}
