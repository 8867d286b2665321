//! `kube-acme-dns serve` as a process against the local control plane.

mod common;

use std::time::Duration;

use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use tokio::process::Command;

use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DomainName};

#[tokio::test]
async fn serve_turns_ready_after_sync_and_counts_accounts() {
    let client = common::client().await;
    common::install_crd(&client).await;
    // A namespace of its own, so the counts are exact while other tests run.
    let namespace = common::create_namespace(&client, "serve").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client, &namespace);
    let name = common::unique_name("serve");
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(format!("{name}.example.test"))],
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &AcmeDnsAccount::new(&name, spec))
        .await
        .unwrap();

    // Runs as the chart's ServiceAccount, so this also proves the chart's RBAC.
    let serve = common::spawn_serve(&namespace, &namespace, &["--roles", "dns"]);
    common::wait_ready(&serve).await;
    let count = || async {
        let (_, body) = common::http_get(serve.metrics, "/metrics").await?;
        common::metric(&body, "kube_acme_dns_accounts")
    };
    common::eventually("the account counted", Duration::from_secs(10), || async {
        (count().await? == 1.0).then_some(())
    })
    .await;

    accounts
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    common::eventually(
        "the deleted account uncounted",
        Duration::from_secs(10),
        || async { (count().await? == 0.0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn serve_without_a_reachable_cluster_fails_with_what_to_do() {
    let output = Command::new(common::BIN)
        .args([
            "serve",
            "--metrics-addr",
            "127.0.0.1:0",
            "--dns-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach Kubernetes"), "{stderr}");
    assert!(stderr.contains("KUBECONFIG"), "{stderr}");
}

#[tokio::test]
async fn bad_static_record_fails_before_anything_starts() {
    let output = Command::new(common::BIN)
        .args(["serve", "--record", "api MX 10 mail.example.test."])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("NAME TYPE DATA"), "{stderr}");
}

#[tokio::test]
async fn rate_limit_out_of_range_fails_before_anything_starts() {
    let output = Command::new(common::BIN)
        .args(["serve"])
        .env("KUBE_ACME_DNS_RRL_SLIP", "11")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rrl-slip is 11: set it (KUBE_ACME_DNS_RRL_SLIP) to 0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn api_registering_outside_the_watched_namespace_fails_before_anything_starts() {
    let output = Command::new(common::BIN)
        .args(["serve", "--roles", "dns,api"])
        .args([
            "--watch-namespace",
            "tenants",
            "--api-namespace",
            "acme-dns",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"set --api-namespace to "tenants""#),
        "{stderr}"
    );
}

#[tokio::test]
async fn at_sigterm_it_stops_being_ready_but_answers_until_the_delay_is_over() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "drain").await;
    let mut serve = common::spawn_serve(
        &namespace,
        &namespace,
        &["--roles", "dns", "--shutdown-delay", "3"],
    );
    common::wait_ready(&serve).await;
    let pid = serve.child.id().expect("running") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let signalled = std::time::Instant::now();
    common::eventually("/readyz failing", Duration::from_secs(2), || async {
        let (code, body) = common::http_get(serve.metrics, "/readyz").await?;
        (code == 503 && body == "shutting down").then_some(())
    })
    .await;
    // Still answering DNS, over UDP and TCP, and still alive, during the delay.
    assert!(common::dns::answers_soa(
        serve.dns,
        "auth.example.test.",
        false
    ));
    let over_tcp = common::dns::tcp(
        serve.dns,
        &common::dns::query(
            "auth.example.test.",
            hickory_proto::rr::RecordType::SOA,
            false,
            None,
        ),
        common::dns::TIMEOUT,
    );
    assert!(over_tcp.is_ok(), "{over_tcp:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "checked within the delay"
    );
    assert!(serve.child.try_wait().unwrap().is_none());
    // Then it exits cleanly, soon after the delay.
    let status = tokio::time::timeout(Duration::from_secs(15), serve.child.wait())
        .await
        .expect("exited after the delay")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn at_sigterm_the_leader_hands_the_lease_to_the_other_replica_at_once() {
    use k8s_openapi::api::coordination::v1::Lease;

    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "handover").await;
    let lease = common::unique_name("handover");
    let start = |identity: &str| {
        common::spawn_serve(
            &namespace,
            &lease,
            &["--roles", "dns,controller", "--identity", identity],
        )
    };
    let mut first = start("first");
    common::wait_ready(&first).await;
    let leases: Api<Lease> = Api::namespaced(client, common::RELEASE_NAMESPACE);
    let holder = || common::lease_holder(&leases, &lease);
    let held = common::eventually("first holds the Lease", Duration::from_secs(30), || {
        holder()
    })
    .await;
    assert_eq!(held, "first");
    let second = start("second");
    common::wait_ready(&second).await;

    let pid = first.child.id().expect("running") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let signalled = std::time::Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), first.child.wait())
        .await
        .expect("the leader exits")
        .unwrap();
    assert!(status.success(), "{status}");
    // Handed back, the Lease is the other's at its next try (every 5 s). Left to expire,
    // it would take 15 s without renewal, at least 10 s after the last one.
    common::eventually("second holds the Lease", Duration::from_secs(8), || async {
        (holder().await? == "second").then_some(())
    })
    .await;
    common::report(&format!(
        "the other replica held the Lease {:.1} s after SIGTERM",
        signalled.elapsed().as_secs_f64()
    ));
}

/// Fault: the replica holding the Lease is killed (SIGKILL, no handover) while accounts
/// are being created and DNS queries flow. The other replica takes the Lease once it has
/// gone unrenewed for its duration and reconciles what was created meanwhile; every
/// account gets its status exactly once (no account's subdomain is assigned twice, or
/// its status lost), and every DNS query to the survivor is answered throughout.
#[tokio::test]
async fn killing_the_lease_holder_under_load_loses_no_status_and_writes_none_twice() {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
        time::Instant,
    };

    use futures::StreamExt as _;
    use hickory_proto::rr::RecordType;
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::{WatchStreamExt as _, watcher};
    use kube_acme_dns::api::AcmeDnsAccountStatus;

    const ACCOUNTS: usize = 40;
    // Short, so the test is: a lease of 6 s renewed every 2 s.
    const LEASE_SECONDS: u64 = 6;

    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "leader-kill").await;
    let lease = common::unique_name("leader-kill");
    let duration = LEASE_SECONDS.to_string();
    let start = |identity: &str| {
        common::spawn_serve(
            &namespace,
            &lease,
            &[
                "--roles",
                "dns,controller",
                "--identity",
                identity,
                "--leader-election-duration",
                &duration,
            ],
        )
    };
    let mut replicas = HashMap::from([("a", start("a")), ("b", start("b"))]);
    for serve in replicas.values() {
        common::wait_ready(serve).await;
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), common::RELEASE_NAMESPACE);
    let holder = || common::lease_holder(&leases, &lease);
    let first = common::eventually("a replica holds the Lease", Duration::from_secs(30), || {
        holder()
    })
    .await;
    let survivor = if first == "a" { "b" } else { "a" };
    let survivor_dns = replicas[survivor].dns;

    // Every status each account is seen with, in order (repeats of the same one dropped).
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let seen: Arc<Mutex<HashMap<String, Vec<Option<AcmeDnsAccountStatus>>>>> = Arc::default();
    let watch = tokio::spawn({
        let (accounts, seen) = (accounts.clone(), seen.clone());
        async move {
            let mut stream =
                std::pin::pin!(watcher(accounts, watcher::Config::default()).applied_objects());
            while let Some(Ok(account)) = stream.next().await {
                let name = account.metadata.name.clone().unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                let history = seen.entry(name).or_default();
                if history.last() != Some(&account.status) {
                    history.push(account.status);
                }
            }
        }
    });

    // DNS load on the survivor for the whole run: a query every 5 ms, each must be answered.
    let querying = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let dns_load = tokio::task::spawn_blocking({
        let querying = querying.clone();
        move || {
            let (mut asked, mut unanswered) = (0u32, 0u32);
            while querying.load(std::sync::atomic::Ordering::Relaxed) {
                let query =
                    common::dns::query("auth.example.test.", RecordType::SOA, false, Some(1232));
                asked += 1;
                if common::dns::udp(survivor_dns, &query, Duration::from_secs(1)).is_err() {
                    unanswered += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (asked, unanswered)
        }
    });

    // Accounts are created one every 250 ms; the holder is killed after a quarter of them.
    let mut killed_at = None;
    let mut created_after_kill = Vec::new();
    for i in 0..ACCOUNTS {
        if i == ACCOUNTS / 4 {
            let mut holder_process = replicas.remove(first.as_str()).expect("the holder");
            holder_process
                .child
                .start_kill()
                .expect("SIGKILL the holder");
            holder_process.child.wait().await.unwrap();
            killed_at = Some(Instant::now());
        }
        let name = format!("load-{i:02}");
        accounts
            .create(
                &PostParams::default(),
                &AcmeDnsAccount::new(&name, AcmeDnsAccountSpec::default()),
            )
            .await
            .unwrap();
        if killed_at.is_some() {
            created_after_kill.push(name);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let killed_at = killed_at.expect("the holder was killed");

    // The survivor takes the Lease and reconciles everything.
    common::eventually(
        "the survivor holds the Lease",
        Duration::from_secs(4 * LEASE_SECONDS),
        || async { (holder().await? == survivor).then_some(()) },
    )
    .await;
    let took_over = killed_at.elapsed();
    let ready = |status: &Option<AcmeDnsAccountStatus>| {
        status.as_ref().is_some_and(|s| {
            s.subdomain.is_some()
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    };
    let first_reconcile = common::eventually(
        "every account has its status",
        Duration::from_secs(60),
        || async {
            let seen = seen.lock().unwrap();
            let all = (0..ACCOUNTS).all(|i| {
                seen.get(&format!("load-{i:02}"))
                    .and_then(|h| h.last())
                    .is_some_and(ready)
            });
            all.then(|| killed_at.elapsed())
        },
    )
    .await;
    // Statuses that would come late (a second write) have time to arrive.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    querying.store(false, std::sync::atomic::Ordering::Relaxed);
    let (asked, unanswered) = dns_load.await.unwrap();
    watch.abort();

    let seen = seen.lock().unwrap();
    for i in 0..ACCOUNTS {
        let name = format!("load-{i:02}");
        let statuses: Vec<_> = seen[&name].iter().flatten().collect();
        assert_eq!(
            statuses.len(),
            1,
            "{name}: its status was written {} times: {statuses:#?}",
            statuses.len()
        );
        assert!(ready(&Some(statuses[0].clone())), "{name}: {statuses:#?}");
    }
    assert_eq!(
        unanswered, 0,
        "{unanswered} of {asked} DNS queries to the surviving replica went unanswered"
    );
    // The Lease expires LEASE_SECONDS after its last renewal; the survivor tries every
    // third of that, and judges expiry from when it saw the last renewal.
    assert!(
        took_over <= Duration::from_secs(LEASE_SECONDS + 2 * LEASE_SECONDS / 3 + 2),
        "the survivor took the Lease {took_over:?} after the holder was killed"
    );
    common::report(&format!(
        "Lease holder killed: the other replica held the Lease {:.1} s later (lease {LEASE_SECONDS} s) \
         and all {ACCOUNTS} accounts ({} created after the kill) had their status, each written once, \
         {:.1} s after the kill; {asked} DNS queries to it meanwhile, all answered",
        took_over.as_secs_f64(),
        created_after_kill.len(),
        first_reconcile.as_secs_f64(),
    ));
}

/// A replica taking the Lease does not read again the accounts whose status is in order:
/// it plans them from what its index kept, and reads only the others. Their work is
/// still done on time: a TXT value written before the handover is dropped once it is
/// older than `--txt-max-age` (and not before), and a status edited by hand while no
/// replica led is written back.
#[tokio::test]
async fn a_new_leader_plans_accounts_in_order_from_its_index_and_keeps_their_deadlines() {
    use k8s_openapi::{
        api::coordination::v1::Lease,
        apimachinery::pkg::apis::meta::v1::Time,
        jiff::{SignedDuration, Timestamp},
    };
    use kube_acme_dns::api::{AcmeDnsAccountStatus, TxtValue};

    const MAX_AGE: i64 = 30;
    // The TXT value is written this long before it is too old.
    const LEFT: i64 = 20;

    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "new-leader").await;
    let lease = common::unique_name("new-leader");
    let max_age = MAX_AGE.to_string();
    let args = |identity: &'static str| {
        [
            "--roles",
            "dns,controller",
            "--identity",
            identity,
            "--txt-max-age",
            &max_age,
            "--shutdown-delay",
            "0",
        ]
        .map(String::from)
    };
    let first_args = args("first");
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = common::spawn_serve(&namespace, &lease, &first_args);
    common::wait_ready(&first).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), common::RELEASE_NAMESPACE);
    let holder = || common::lease_holder(&leases, &lease);
    common::eventually("first holds the Lease", Duration::from_secs(30), || async {
        (holder().await? == "first").then_some(())
    })
    .await;

    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName("new-leader.example.test".into())],
        ..Default::default()
    };
    // The one with a TXT value lists no domains: no delegation check wakes it, only the
    // value's expiry.
    for (name, spec) in [
        ("quiet", spec.clone()),
        ("with-txt", AcmeDnsAccountSpec::default()),
        ("edited", spec),
    ] {
        accounts
            .create(&PostParams::default(), &AcmeDnsAccount::new(name, spec))
            .await
            .unwrap();
    }
    let status_of = |name: &'static str| {
        let accounts = accounts.clone();
        async move { accounts.get(name).await.ok()?.status }
    };
    // In order: served, and the delegation checked (it fails: nothing answers the
    // resolver's port), or found to have nothing to check.
    let settled = |s: &AcmeDnsAccountStatus| {
        s.fqdn.is_some() && s.conditions.iter().any(|c| c.type_ == "Delegated")
    };
    let mut statuses = Vec::new();
    for name in ["quiet", "with-txt", "edited"] {
        statuses.push(
            common::eventually("the status is written", Duration::from_secs(30), || async {
                status_of(name).await.filter(settled)
            })
            .await,
        );
    }
    let fqdn = statuses[2].fqdn.clone().unwrap();

    // A TXT value, as the webhook writes it, with LEFT seconds until it is too old.
    let written = Timestamp::now() - SignedDuration::from_secs(MAX_AGE - LEFT);
    let mut with_txt = accounts.get("with-txt").await.unwrap();
    with_txt.status.as_mut().unwrap().txt = vec![TxtValue {
        value: "written-before-the-handover".into(),
        updated_at: Time(written),
    }];
    accounts
        .replace_status("with-txt", &PostParams::default(), &with_txt)
        .await
        .unwrap();

    // The leader hands the Lease back; with nobody leading, a status is edited by hand.
    let pid = first.child.id().expect("running") as libc::pid_t;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(30), first.child.wait())
        .await
        .expect("the leader exits")
        .unwrap();
    assert!(status.success(), "{status}");
    let mut edited = accounts.get("edited").await.unwrap();
    edited.status.as_mut().unwrap().fqdn = Some("elsewhere.example.test.".into());
    accounts
        .replace_status("edited", &PostParams::default(), &edited)
        .await
        .unwrap();

    let log = std::env::temp_dir().join(common::unique_name("new-leader-log"));
    let second_args = args("second");
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let second = common::spawn_serve_logging(
        &namespace,
        &lease,
        &second_args,
        common::ServeLog {
            path: &log,
            filter: "info",
        },
    );
    common::wait_ready(&second).await;
    common::eventually(
        "second holds the Lease",
        Duration::from_secs(30),
        || async { (holder().await? == "second").then_some(()) },
    )
    .await;

    common::eventually(
        "the edited status is written back",
        Duration::from_secs(30),
        || async { (status_of("edited").await?.fqdn? == fqdn).then_some(()) },
    )
    .await;
    let pass = common::eventually(
        "the new leader went over every account",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(&log).ok()?;
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| {
                    l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("went over every account"))
                })
        },
    )
    .await;
    assert_eq!(
        (&pass["fields"]["planned"], &pass["fields"]["read"]),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "the two accounts in order are planned, only the edited one read: {pass}"
    );

    // The TXT value stays until it is MAX_AGE seconds old, then goes.
    let too_old = written + SignedDuration::from_secs(MAX_AGE);
    assert!(
        Timestamp::now() < too_old,
        "the handover took longer than the test allows for"
    );
    let dropped = common::eventually(
        "the TXT value is dropped",
        Duration::from_secs(LEFT as u64 + 10),
        || async {
            status_of("with-txt")
                .await?
                .txt
                .is_empty()
                .then(Timestamp::now)
        },
    )
    .await;
    assert!(
        dropped >= too_old,
        "dropped at {dropped}, before it was {MAX_AGE} s old ({too_old})"
    );
    let late = dropped.duration_since(too_old);
    assert!(
        late < SignedDuration::from_secs(5),
        "dropped {late:?} after it was too old"
    );
    // The account left alone was not written again.
    assert_eq!(status_of("quiet").await.as_ref(), Some(&statuses[0]));
    let _ = std::fs::remove_file(&log);
}

/// A leader that finds many accounts needing work (here 600 made while no replica led,
/// as an import makes them) lists them page by page instead of reading each, and gives
/// every one its status.
#[tokio::test]
async fn a_new_leader_lists_accounts_when_many_need_work_and_reconciles_them_all() {
    const ACCOUNTS: usize = 600;

    let client = common::client().await;
    common::install_crd(&client).await;
    let namespace = common::create_namespace(&client, "many-new").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);
    futures::future::join_all((0..ACCOUNTS).map(|i| {
        let accounts = accounts.clone();
        async move {
            accounts
                .create(
                    &PostParams::default(),
                    &AcmeDnsAccount::new(&format!("new-{i:03}"), AcmeDnsAccountSpec::default()),
                )
                .await
                .unwrap()
        }
    }))
    .await;

    let lease = common::unique_name("many-new");
    let log = std::env::temp_dir().join(common::unique_name("many-new-log"));
    let serve = common::spawn_serve_logging(
        &namespace,
        &lease,
        &["--roles", "dns,controller"],
        common::ServeLog {
            path: &log,
            filter: "info",
        },
    );
    common::wait_ready(&serve).await;
    common::eventually(
        "every account has its status",
        Duration::from_secs(120),
        || async {
            let listed = accounts.list(&Default::default()).await.ok()?;
            (listed.items.len() == ACCOUNTS
                && listed
                    .items
                    .iter()
                    .all(|a| a.status.as_ref().is_some_and(|s| s.fqdn.is_some())))
            .then_some(())
        },
    )
    .await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    let listed = log_text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "listed every account for reconciling")
        .unwrap_or_else(|| panic!("no list of every account in the log:\n{log_text}"));
    assert_eq!(listed["fields"]["accounts"], serde_json::json!(ACCOUNTS));
    let _ = std::fs::remove_file(&log);
}
