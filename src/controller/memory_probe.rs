//! Heap per account of what `serve` keeps for 100 000 accounts: the objects as parsed
//! (held only while one is handled), the index, and on the leader the delegation
//! schedule and the reconcile queue's timers. Ignored: it is a
//! measurement, not a check. Run alone, so no other test allocates meanwhile:
//!
//! `cargo test --lib controller::memory_probe -- --ignored --nocapture --test-threads=1`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    queue::Queue,
    schedule::DelegationSchedule,
    status::{DELEGATED, READY},
};
use crate::{
    api::AcmeDnsAccount,
    index::{AccountIndex, AccountKey},
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
    measure("AccountKey", |i| AccountKey::of(&sample[i]));
    drop(sample);

    println!("\n== the index, filled as src/watch.rs fills it ==");
    index_as_watched();

    println!("\n== controller (leader only) ==");
    let keys: Vec<Arc<AccountKey>> = (0..N)
        .map(|i| {
            Arc::new(AccountKey {
                namespace: "bench-scale".into(),
                name: format!("acct-{i:06}").into(),
            })
        })
        .collect();
    schedule_memos(&keys);
    queue_timers(&keys);
}

/// The watch's path (src/watch.rs): each listed account is applied to the index as it
/// arrives and dropped; then status writes arrive one Apply per account.
fn index_as_watched() {
    let base = heap();
    let index = AccountIndex::new(1);
    let mut relist = index.relist();
    for i in 0..N {
        relist.apply(&account(i, true));
    }
    row(
        "first list, before its end (re-list's key set)",
        delta(base),
        N,
    );
    relist.finish();
    crate::index::release_freed_memory();
    row(
        "index after the first list (1 version each)",
        delta(base),
        N,
    );

    // Status writes as the controller's make them: one Apply per account, each a new
    // resourceVersion.
    for round in 1..=3 {
        for i in 0..N {
            let mut account = account(i, true);
            account.metadata.resource_version = Some(format!("{}", 48_213_000 + 2 * N * round + i));
            index.apply(&account);
        }
        row(
            &format!("  after {round} Apply per account (versions kept)"),
            delta(base),
            N,
        );
    }
    let mut relist = index.relist();
    for i in 0..N {
        relist.apply(&account(i, true));
    }
    relist.finish();
    crate::index::release_freed_memory();
    row("index after a re-list", delta(base), N);
    drop(index);
}

fn schedule_memos(keys: &[Arc<AccountKey>]) {
    let before = heap();
    let mut schedule = DelegationSchedule::default();
    let now = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let subject = (
            vec![format!("d{i:06}.scale.example.com")],
            format!("s{i:06}.{ZONE}."),
        );
        schedule.record(key, &subject, false, now);
    }
    row(
        &format!(
            "DelegationSchedule, {} memos (keys shared, not counted)",
            schedule.len()
        ),
        delta(before),
        N,
    );
}

/// The reconcile queue with every account's wake-up in it (reconcile asks for one
/// within the hour, so in steady state every account has one).
fn queue_timers(keys: &[Arc<AccountKey>]) {
    let rt = runtime();
    let before = heap();
    let queue = rt.block_on(async {
        let mut queue = Queue::default();
        for key in keys {
            queue.finished(key.clone(), Some(Duration::from_secs(3600)));
        }
        queue
    });
    row(
        "reconcile queue, one timer per account (keys shared, not counted)",
        delta(before),
        N,
    );
    drop(queue);
    drop(rt);
}
