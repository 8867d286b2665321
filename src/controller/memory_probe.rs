//! Heap per account of what `serve` keeps for 100 000 accounts: the objects, the
//! reflector store, the index, the controller's schedule, kube-runtime's scheduler, the
//! Event recorder's cache and reconciles in flight. Ignored: it is a measurement, not a
//! check. Run alone, so no other test allocates meanwhile:
//!
//! `cargo test --lib controller::memory_probe -- --ignored --nocapture --test-threads=1`

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::jiff::SignedDuration;
use kube::{
    Client, Resource,
    runtime::{
        controller::{ReconcileReason, ReconcileRequest},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        scheduler::{ScheduleRequest, scheduler},
        watcher,
    },
};
use prometheus::Registry;

use super::{
    Context, ControllerMetrics, reconcile,
    schedule::DelegationSchedule,
    status::{DELEGATED, READY},
};
use crate::{
    api::AcmeDnsAccount,
    index::{AccountIndex, AccountKey, Label, ReservedLabels},
};

const N: usize = 100_000;
const ZONE: &str = "auth.example.test";

/// glibc's heap in use, all arenas: allocated chunks with their headers, and mmapped
/// blocks.
fn heap() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    m.uordblks + m.hblkhd
}

fn per(bytes: isize, n: usize) -> f64 {
    bytes as f64 / n as f64
}

fn delta(before: usize) -> isize {
    heap() as isize - before as isize
}

fn row(what: &str, bytes: isize, n: usize) {
    println!(
        "{what:<72} {:>12.1} B/account  {:>8.1} MiB at 100 000",
        per(bytes, n),
        per(bytes, n) * N as f64 / 1048576.0
    );
}

/// An account as the API server sends it once the controller has given it its status
/// (`with_status`), or as created. Parsed from JSON as the watch does, so every string
/// has the capacity the watch's would.
fn account(i: usize, with_status: bool) -> AcmeDnsAccount {
    let fqdn = format!("s{i:06}.{ZONE}.");
    let challenge = format!("_acme-challenge.d{i:06}.scale.example.com.");
    let mut json = serde_json::json!({
        "apiVersion": "acmedns.io/v1alpha1",
        "kind": "AcmeDnsAccount",
        "metadata": {
            "name": format!("acct-{i:06}"),
            "namespace": "bench-scale",
            "uid": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", i * 2654435761 % (1 << 32), i % 65536, i % 4096, (i * 7) % 4096, i * 1_000_003),
            "resourceVersion": format!("{}", 48_213_000 + 2 * i),
            "generation": 1,
            "creationTimestamp": "2026-12-06T10:00:00Z",
            // managedFields are dropped by the watch's `.modify()`.
        },
        "spec": {
            "domains": [format!("d{i:06}.scale.example.com")],
            "subdomain": format!("s{i:06}"),
        },
    });
    if with_status {
        json["status"] = serde_json::json!({
            "subdomain": format!("s{i:06}"),
            "fqdn": fqdn,
            "cnames": [{ "name": challenge, "target": fqdn }],
            "txt": [{
                "value": format!("{:043}", i).replace('0', "x"),
                "updatedAt": "2026-12-06T10:05:00Z",
            }],
            "conditions": [
                {
                    "type": READY,
                    "status": "True",
                    "reason": "Served",
                    "message": format!("TXT values are served at {fqdn}"),
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-12-06T10:01:00Z",
                },
                {
                    "type": DELEGATED,
                    "status": "False",
                    "reason": "CnameMissing",
                    "message": format!("{challenge} has no CNAME: publish `{challenge} CNAME {fqdn}` in your DNS zone"),
                    "observedGeneration": 1,
                    "lastTransitionTime": "2026-12-06T10:01:00Z",
                },
            ],
            "observedGeneration": 1,
        });
    }
    serde_json::from_str(&json.to_string()).unwrap()
}

/// Heap of `N` values made by `make`, each one's own allocations plus its `size_of`
/// inline (in one exactly sized Vec).
fn measure<T>(what: &str, make: impl Fn(usize) -> T) -> isize {
    let mut values = Vec::with_capacity(N);
    let before = heap();
    for i in 0..N {
        values.push(make(i));
    }
    let total = delta(before) + (N * size_of::<T>()) as isize;
    let own = total - (N * size_of::<T>()) as isize;
    println!(
        "{what:<44} inline {:>4} B + own heap {:>7.1} B = {:>7.1} B/account ({:>6.1} MiB)",
        size_of::<T>(),
        per(own, N),
        per(total, N),
        per(total, N) * N as f64 / 1048576.0
    );
    drop(values);
    total
}

fn echo_client(hang_status_writes: bool) -> Client {
    let service = tower::service_fn(
        move |request: http::Request<kube::client::Body>| async move {
            if hang_status_writes && request.uri().path().ends_with("/status") {
                futures::future::pending::<()>().await;
            }
            let body = request.into_body().collect_bytes().await.unwrap();
            Ok::<_, Infallible>(http::Response::new(kube::client::Body::from(body)))
        },
    );
    Client::new(service, "default")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "a measurement: run alone with --ignored --nocapture --test-threads=1"]
fn heap_per_account_at_100k() {
    println!("\n== objects ({N}, parsed from JSON) ==");
    println!(
        "size_of AcmeDnsAccount {} (ObjectMeta {}, spec {}, Option<status> {})",
        size_of::<AcmeDnsAccount>(),
        size_of::<kube::api::ObjectMeta>(),
        size_of::<crate::api::AcmeDnsAccountSpec>(),
        size_of::<Option<crate::api::AcmeDnsAccountStatus>>()
    );
    measure("AcmeDnsAccount, with status", |i| account(i, true));
    measure("AcmeDnsAccount, as created (no status)", |i| {
        account(i, false)
    });
    measure("Arc<AcmeDnsAccount>, with status", |i| {
        Arc::new(account(i, true))
    });
    let sample: Vec<AcmeDnsAccount> = (0..N).map(|i| account(i, true)).collect();
    println!("-- parts of one account (clones, exact capacity) --");
    measure("metadata (ObjectMeta)", |i| sample[i].metadata.clone());
    measure("  metadata name+namespace strings", |i| {
        (
            sample[i].metadata.name.clone(),
            sample[i].metadata.namespace.clone(),
        )
    });
    measure("  metadata uid+resourceVersion strings", |i| {
        (
            sample[i].metadata.uid.clone(),
            sample[i].metadata.resource_version.clone(),
        )
    });
    measure("spec", |i| sample[i].spec.clone());
    let status = |i: usize| sample[i].status.as_ref().unwrap();
    measure("status (whole)", |i| status(i).clone());
    measure("  status.subdomain + fqdn", |i| {
        (status(i).subdomain.clone(), status(i).fqdn.clone())
    });
    measure("  status.cnames (1)", |i| status(i).cnames.clone());
    measure("  status.txt (1)", |i| status(i).txt.clone());
    measure("  status.conditions (2)", |i| status(i).conditions.clone());
    measure("    conditions' messages only", |i| {
        (
            status(i).conditions[0].message.clone(),
            status(i).conditions[1].message.clone(),
        )
    });
    measure("ObjectRef<AcmeDnsAccount> from_obj (with extra)", |i| {
        ObjectRef::from_obj(&sample[i])
    });
    measure("ObjectRef<AcmeDnsAccount> name+namespace only", |i| {
        ObjectRef::<AcmeDnsAccount>::new(sample[i].metadata.name.as_deref().unwrap())
            .within("bench-scale")
    });
    measure("AccountKey", |i| AccountKey::of(&sample[i]));
    drop(sample);

    println!("\n== reflector store, filled as src/watch.rs fills it ==");
    index_and_store();

    println!("\n== controller ==");
    schedule_memos();
    kube_scheduler();
    recorder_cache();
    reconciles_in_flight();
}

/// The watch's path: every InitApply goes to the writer (which clones it into an Arc)
/// and, owned, into the re-list Vec the index is reset from.
fn index_and_store() {
    let base = heap();
    let (store, mut writer) = reflector::store::<AcmeDnsAccount>();
    let index = AccountIndex::new(1);
    let list = |writer: &mut reflector::store::Writer<AcmeDnsAccount>| {
        writer.apply_watcher_event(&watcher::Event::Init);
        let mut relist = Vec::new();
        for i in 0..N {
            let event = watcher::Event::InitApply(account(i, true));
            writer.apply_watcher_event(&event);
            let watcher::Event::InitApply(account) = event else {
                unreachable!()
            };
            relist.push(account);
        }
        relist
    };

    let relist = list(&mut writer);
    row(
        "first list: writer buffer + re-list Vec (before InitDone)",
        delta(base),
        N,
    );
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let before_index = heap();
    index.reset(&relist);
    let index_heap = delta(before_index);
    row(
        "  index.reset of realistic accounts (1 version each)",
        index_heap,
        N,
    );
    row("  peak: store + re-list Vec + index", delta(base), N);
    let relist_vec = relist.capacity() * size_of::<AcmeDnsAccount>();
    drop(relist);
    row("  re-list Vec freed", -(delta(base) - index_heap), N);
    let steady_store = delta(base) - index_heap;
    row(
        "store of Arc<AcmeDnsAccount> after InitDone (steady)",
        steady_store,
        N,
    );
    println!(
        "  (re-list Vec's own block: {} B/account; store.len() {})",
        relist_vec / N,
        store.state().len()
    );

    // Status writes as the controller's make them: one Apply per account, each a new
    // resourceVersion, as the watch feeds it (writer, then index).
    let before = heap();
    for round in 1..=3 {
        for i in 0..N {
            let mut account = account(i, true);
            account.metadata.resource_version = Some(format!("{}", 48_213_000 + 2 * N * round + i));
            let event = watcher::Event::Apply(account);
            writer.apply_watcher_event(&event);
            let watcher::Event::Apply(account) = event else {
                unreachable!()
            };
            index.apply(&account);
        }
        row(
            &format!("  after {round} Apply per account: store+index growth (versions kept)"),
            delta(before),
            N,
        );
    }

    // A re-list while everything is in place: the peak is old store + new buffer +
    // re-list Vec, then index.reset.
    let before = heap();
    let relist = list(&mut writer);
    row(
        "re-list: buffer + re-list Vec on top of the old store",
        delta(before),
        N,
    );
    writer.apply_watcher_event(&watcher::Event::InitDone);
    row(
        "  after InitDone swap (old store dropped)",
        delta(before),
        N,
    );
    index.reset(&relist);
    row("  after index.reset", delta(before), N);
    drop(relist);
    row("  re-list Vec dropped", delta(before), N);
    let total = delta(base);
    row("store + index, steady after re-list", total, N);
    drop(writer);
    drop(store);
    row("  index alone", delta(base), N);
    drop(index);
}

fn schedule_memos() {
    let keys: Vec<AccountKey> = (0..N)
        .map(|i| AccountKey {
            namespace: "bench-scale".into(),
            name: format!("acct-{i:06}"),
        })
        .collect();
    let before = heap();
    let mut schedule = DelegationSchedule::default();
    let now = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let subject = (
            vec![format!("d{i:06}.scale.example.com")],
            format!("s{i:06}.{ZONE}."),
        );
        schedule.record(key, subject, false, now);
    }
    row(
        &format!("DelegationSchedule, {} memos", schedule.len()),
        delta(before),
        N,
    );
}

/// kube-runtime's scheduler holding every account's requeue (reconcile asks for one
/// within the hour, so in steady state every account is in it).
fn kube_scheduler() {
    let accounts: Vec<Arc<AcmeDnsAccount>> = (0..N).map(|i| Arc::new(account(i, true))).collect();
    let rt = runtime();
    let run_at = tokio::time::Instant::now() + Duration::from_secs(3600);
    let requests =
        futures::stream::iter(accounts.clone().into_iter().map(move |a| ScheduleRequest {
            message: ReconcileRequest {
                obj_ref: ObjectRef::from_obj(&*a),
                reason: ReconcileReason::ReconcilerRequestedRetry,
            },
            run_at,
        }))
        .chain(futures::stream::pending());
    let mut scheduler = Box::pin(rt.block_on(async { scheduler(requests) }));
    let before_poll = heap();
    rt.block_on(async {
        let polled = tokio::time::timeout(Duration::from_millis(50), scheduler.next()).await;
        assert!(polled.is_err(), "nothing is due yet");
    });
    row(
        "kube-runtime scheduler, one requeue per account (measured)",
        delta(before_poll),
        N,
    );
    drop(scheduler);
    drop(rt);
}

fn notices(account: &AcmeDnsAccount) -> [Event; 2] {
    let status = account.status.as_ref().unwrap();
    let cname = &status.cnames[0];
    [
        Event {
            type_: EventType::Normal,
            reason: "SubdomainAssigned".into(),
            note: Some(format!(
                "served at {}; publish: {} CNAME {}",
                status.fqdn.as_deref().unwrap(),
                cname.name,
                cname.target
            )),
            action: "Reconcile".into(),
            secondary: None,
        },
        Event {
            type_: EventType::Warning,
            reason: "NotDelegated".into(),
            note: Some(status.conditions[1].message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        },
    ]
}

/// kube-runtime's Recorder keeps every Event it published for 6 minutes, pruning only
/// when it publishes again. The controller publishes SubdomainAssigned and (for a
/// domain not delegated) NotDelegated as it gives each account its status.
fn recorder_cache() {
    // Every publish walks the whole cache, so this is quadratic: measure fewer.
    const M: usize = 10_000;
    let rt = runtime();
    let accounts: Vec<AcmeDnsAccount> = (0..M).map(|i| account(i, true)).collect();
    let recorder = rt.block_on(async {
        Recorder::new(
            echo_client(false),
            Reporter {
                controller: "kube-acme-dns".into(),
                instance: Some("kube-acme-dns-7c9f8d6b5d-x2k4q".into()),
            },
        )
    });
    let before = heap();
    let started = Instant::now();
    rt.block_on(async {
        for account in &accounts {
            let reference = account.object_ref(&());
            for event in notices(account) {
                recorder.publish(&event, &reference).await.unwrap();
            }
        }
    });
    row(
        &format!(
            "Recorder cache, 2 Events per account (measured at {M}, {:.1} s)",
            started.elapsed().as_secs_f64()
        ),
        delta(before),
        M,
    );
}

/// Reconciles started all at once (the controller's concurrency is unbounded), each
/// waiting for its status write: the API server answers far fewer at a time.
fn reconciles_in_flight() {
    const M: usize = 20_000;
    let rt = runtime();
    let accounts: Vec<Arc<AcmeDnsAccount>> = (0..M).map(|i| Arc::new(account(i, false))).collect();
    let index = Arc::new(AccountIndex::new(1));
    let ctx = rt.block_on(async {
        let client = echo_client(true);
        Arc::new(Context {
            identity: "probe".into(),
            client,
            zone: ZONE.into(),
            reserved: ["ns"]
                .iter()
                .map(|l| Label::new(l.as_bytes()).unwrap())
                .collect::<ReservedLabels>(),
            index,
            resolver: None,
            txt_max_age: SignedDuration::from_secs(3600),
            schedule: Mutex::new(DelegationSchedule::default()),
            metrics: ControllerMetrics::new(&Registry::new()).unwrap(),
        })
    });
    let future = reconcile(accounts[0].clone(), ctx.clone());
    println!(
        "size_of the reconcile future: {} B",
        std::mem::size_of_val(&future)
    );
    drop(future);
    let before = heap();
    let tasks = rt.block_on(async {
        let tasks: Vec<_> = accounts
            .iter()
            .map(|a| tokio::spawn(reconcile(a.clone(), ctx.clone())))
            .collect();
        let spawned = delta(before);
        row(
            &format!("reconcile tasks spawned, not yet run ({M})"),
            spawned,
            M,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        tasks
    });
    row(
        &format!("reconciles waiting on their status write, measured at {M} (no DNS)"),
        delta(before),
        M,
    );
    for task in &tasks {
        task.abort();
    }
    rt.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    drop(ctx);
    drop(rt);
}

/// What the store's objects would cost trimmed or in a compact form of only what
/// reconcile and the acme-dns API read.
#[test]
#[ignore = "a measurement: run alone with --ignored --nocapture --test-threads=1"]
fn trimmed_and_compact_forms() {
    use k8s_openapi::jiff::Timestamp;
    println!(
        "\nsize_of: events.v1 Event {}, ObjectReference {}, ReconcileRequest {}, Condition {}, TxtValue {}, CnameRecord {}",
        size_of::<k8s_openapi::api::events::v1::Event>(),
        size_of::<k8s_openapi::api::core::v1::ObjectReference>(),
        size_of::<ReconcileRequest<AcmeDnsAccount>>(),
        size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>(),
        size_of::<crate::api::TxtValue>(),
        size_of::<crate::api::CnameRecord>(),
    );
    measure("parsed, with status (as the watch yields it)", |i| {
        account(i, true)
    });
    measure("parsed, then every Vec shrunk to fit", |i| {
        let mut a = account(i, true);
        a.spec.domains.shrink_to_fit();
        let s = a.status.as_mut().unwrap();
        s.cnames.shrink_to_fit();
        s.txt.shrink_to_fit();
        s.conditions.shrink_to_fit();
        a
    });
    measure("clone of the parsed one (what the writer stores)", |i| {
        account(i, true).clone()
    });
    measure("clone, fqdn + cnames + Ready message dropped", |i| {
        let mut a = account(i, true).clone();
        let s = a.status.as_mut().unwrap();
        s.fqdn = None;
        s.cnames = Vec::new();
        s.conditions[0].message = String::new();
        a
    });
    measure("clone, with kubectl's last-applied annotation", |i| {
        let mut a = account(i, false);
        let applied = serde_json::to_string(&serde_json::json!({
            "apiVersion": "acmedns.io/v1alpha1", "kind": "AcmeDnsAccount",
            "metadata": {"annotations": {}, "name": a.metadata.name, "namespace": "bench-scale"},
            "spec": a.spec,
        }))
        .unwrap();
        a.metadata.annotations = Some(
            [(
                "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                applied + "\n",
            )]
            .into(),
        );
        a.status = account(i, true).status;
        a.clone()
    });

    // Everything reconcile and the acme-dns API read, nothing derivable: the key is the
    // index's Arc<AccountKey> (shared, not counted); fqdn, cnames and the Ready message
    // follow from the label, the zone and the domains.
    #[allow(dead_code)]
    struct CompactCondition {
        kind: u8,
        status: u8,
        reason: u8,
        observed_generation: Option<i64>,
        last_transition: Timestamp,
        /// Only when it is not the one derived from the rest.
        message: Option<Box<str>>,
    }
    #[allow(dead_code)]
    struct Compact {
        uid: Box<str>,
        resource_version: Box<str>,
        generation: Option<i64>,
        domains: Box<[Box<str>]>,
        pinned: Option<Box<str>>,
        allow_from: Box<[Box<str>]>,
        subdomain: Option<Box<str>>,
        txt: Box<[(Box<str>, Timestamp)]>,
        conditions: Box<[CompactCondition]>,
        observed_generation: Option<i64>,
        /// fqdn and cnames are the derived ones.
        derived: bool,
    }
    let b = |s: &str| Box::<str>::from(s);
    measure("compact form (Arc'd), Delegated message kept", |i| {
        let a = account(i, true);
        let s = a.status.as_ref().unwrap();
        Arc::new(Compact {
            uid: b(a.metadata.uid.as_deref().unwrap()),
            resource_version: b(a.metadata.resource_version.as_deref().unwrap()),
            generation: a.metadata.generation,
            domains: a.spec.domains.iter().map(|d| b(&d.0)).collect(),
            pinned: a.spec.subdomain.as_ref().map(|d| b(&d.0)),
            allow_from: Box::new([]),
            subdomain: s.subdomain.as_ref().map(|d| b(&d.0)),
            txt: s
                .txt
                .iter()
                .map(|t| (b(&t.value), t.updated_at.0))
                .collect(),
            conditions: s
                .conditions
                .iter()
                .enumerate()
                .map(|(n, c)| CompactCondition {
                    kind: n as u8,
                    status: 0,
                    reason: 0,
                    observed_generation: c.observed_generation,
                    last_transition: c.last_transition_time.0,
                    message: (n == 1).then(|| b(&c.message)),
                })
                .collect(),
            observed_generation: s.observed_generation,
            derived: true,
        })
    });
}
