//! `make soak` (`e2e/soak.sh`): two replicas of the release binary against the local
//! control plane for up to 30 minutes (`SOAK_MINUTES`, default 30), under
//!
//! - DNS load on both replicas (TXT at account names, the apex SOA, names that do not
//!   exist), every query expected to be answered;
//! - Present/CleanUp cycles through the webhook behind the aggregation layer, each value
//!   checked to be answered by both replicas after Present and by neither after CleanUp;
//! - account churn: accounts created, served by both replicas, deleted, gone from both.
//!
//! Every 30 s it samples each replica's resident memory, open file descriptors, threads
//! and async tasks. It fails when an update is lost (a value not served, or served after
//! its CleanUp, within 10 s; an account not assigned or not gone within 30 s), a DNS
//! query goes unanswered, or a resource keeps growing: the last third of the run may not
//! go above the middle third's peak by more than a small margin. Writes
//! `bench/results/soak-<date>.md` (or `SOAK_RESULTS`).
//!
//! Not part of `make test` (ignored there): it is long by design.

mod common;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::{op::ResponseCode, rr::RecordType};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};

use common::{aggregation, dns};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

const ZONE: &str = "auth.example.test";
const SOLVER_PATH: &str = "/apis/acme.acmedns.io/v1alpha1/acme-dns";
/// Accounts that Present/CleanUp cycles run on, one worker each.
const CYCLE_ACCOUNTS: usize = 4;
/// DNS queries per second to each replica.
const DNS_RATE: u64 = 200;
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// How long a change may take to be answered (or to stop being answered) by both.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    churned: AtomicU64,
    lost: AtomicU64,
    dns_asked: AtomicU64,
    dns_unanswered: AtomicU64,
}

/// One sample of one replica.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
}

fn sample(pid: u32, metrics: SocketAddr, body: Option<String>) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    let tasks = body
        .as_deref()
        .and_then(|b| common::metric(b, "kube_acme_dns_runtime_tasks"))
        .unwrap_or_else(|| panic!("no runtime task count from {metrics}"));
    Sample {
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        tasks: tasks as u64,
    }
}

/// A webhook call through kube-apiserver, as cert-manager makes it; whether the solver
/// said it succeeded.
async fn solve(client: &Client, action: &str, domain: &str, namespace: &str, key: &str) -> bool {
    let body = json!({
        "request": {
            "uid": "", "action": action, "type": "dns-01",
            "dnsName": domain, "key": key, "resourceNamespace": namespace,
            "resolvedFQDN": format!("_acme-challenge.{domain}."),
            "resolvedZone": format!("{domain}."),
            "allowAmbientCredentials": false, "config": null,
        }
    });
    let request = http::Request::post(SOLVER_PATH)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    match client.request_text(request).await {
        Ok(text) => serde_json::from_str::<Value>(&text)
            .is_ok_and(|reply| reply["response"]["success"] == json!(true)),
        Err(_) => false,
    }
}

/// Polls until `check` holds for every server, up to `within`.
async fn on_every_replica(
    servers: &[SocketAddr],
    within: Duration,
    check: impl Fn(SocketAddr) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if servers.iter().all(|s| check(*s)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn serves(server: SocketAddr, fqdn: &str, value: &str) -> bool {
    dns::txt_values(server, fqdn).is_some_and(|v| v.iter().any(|x| x == value))
}

fn rcode(server: SocketAddr, fqdn: &str) -> Option<ResponseCode> {
    let query = dns::query(fqdn, RecordType::TXT, false, Some(1232));
    dns::udp(server, &query, dns::TIMEOUT)
        .ok()
        .map(|r| r.metadata.response_code)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long by design: run by `make soak`"]
async fn soak() {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(30)
        .clamp(1, 30);
    let run_for = Duration::from_secs(minutes * 60);
    let admin = common::client().await;
    common::install_crd(&admin).await;
    let namespace = common::create_namespace(&admin, "soak").await;
    let lease = common::unique_name("soak");

    // Replica A serves DNS and the webhook (the APIService points at it); both run the
    // controller under one Lease and answer DNS for every namespace.
    let a = aggregation::start_all_roles(&lease).await;
    let b = common::spawn_serve_all_namespaces(
        common::chart_identity_kubeconfig(),
        &[
            "--roles",
            "dns,controller",
            "--leader-election-namespace",
            common::RELEASE_NAMESPACE,
            "--leader-election-lease",
            &lease,
            "--delegation-resolver",
            "127.0.0.1:9",
        ],
    );
    common::wait_ready(&b).await;
    let replicas = [("A", &a.serve), ("B", &b)];
    let servers: Vec<SocketAddr> = replicas.iter().map(|(_, r)| r.dns).collect();
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), &namespace);

    // The accounts the cycles run on, pinned so their names are known.
    let mut cycle_accounts = Vec::new();
    for i in 0..CYCLE_ACCOUNTS {
        let label = common::unique_name("soak-cycle");
        let domain = format!("cycle-{i}.soak.example.com");
        let spec = AcmeDnsAccountSpec {
            domains: vec![DomainName(domain.clone())],
            subdomain: Some(DnsLabel(label.clone())),
            ..Default::default()
        };
        accounts
            .create(&PostParams::default(), &AcmeDnsAccount::new(&label, spec))
            .await
            .unwrap();
        let fqdn = format!("{label}.{ZONE}.");
        assert!(
            on_every_replica(&servers, Duration::from_secs(30), |s| dns::txt_values(
                s, &fqdn
            )
            .is_some())
            .await,
            "{fqdn} is not served by both replicas"
        );
        cycle_accounts.push((domain, fqdn));
    }

    let counts = Arc::new(Counts::default());
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let deadline = started + run_for;
    eprintln!("[soak] {minutes} min: DNS load, Present/CleanUp cycles, account churn");

    // DNS load: one thread per replica.
    let mut dns_load = Vec::new();
    for server in servers.clone() {
        let (counts, running, names) = (
            counts.clone(),
            running.clone(),
            cycle_accounts
                .iter()
                .map(|(_, f)| f.clone())
                .collect::<Vec<_>>(),
        );
        dns_load.push(std::thread::spawn(move || {
            let mut n = 0usize;
            let pace = Duration::from_micros(1_000_000 / DNS_RATE);
            while running.load(Ordering::Relaxed) {
                let (name, rtype) = match n % 4 {
                    0 => (format!("{ZONE}."), RecordType::SOA),
                    1 => (format!("nobody-{n}.{ZONE}."), RecordType::TXT),
                    _ => (names[n % names.len()].clone(), RecordType::TXT),
                };
                n += 1;
                counts.dns_asked.fetch_add(1, Ordering::Relaxed);
                let query = dns::query(&name, rtype, false, Some(1232));
                if dns::udp(server, &query, Duration::from_secs(1)).is_err() {
                    counts.dns_unanswered.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(pace);
            }
        }));
    }

    // Present/CleanUp cycles.
    let mut workers = Vec::new();
    for (worker, (domain, fqdn)) in cycle_accounts.into_iter().enumerate() {
        let (client, counts, servers, namespace) = (
            admin.clone(),
            counts.clone(),
            servers.clone(),
            namespace.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let key = format!("soak-{worker}-{n:08}-{}", "k".repeat(20));
                n += 1;
                let presented = solve(&client, "Present", &domain, &namespace, &key).await
                    && on_every_replica(&servers, SERVED_WITHIN, |s| serves(s, &fqdn, &key)).await;
                let cleaned = solve(&client, "CleanUp", &domain, &namespace, &key).await
                    && on_every_replica(&servers, SERVED_WITHIN, |s| !serves(s, &fqdn, &key)).await;
                if !(presented && cleaned) {
                    eprintln!("[soak] lost: {key} presented {presented}, cleaned up {cleaned}");
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                }
                counts.cycles.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Account churn.
    workers.push(tokio::spawn({
        let (accounts, counts, servers) = (accounts.clone(), counts.clone(), servers.clone());
        async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let name = format!("churn-{n:06}");
                n += 1;
                let created = accounts
                    .create(
                        &PostParams::default(),
                        &AcmeDnsAccount::new(&name, AcmeDnsAccountSpec::default()),
                    )
                    .await
                    .is_ok();
                let mut fqdn = None;
                let assign_by = Instant::now() + Duration::from_secs(30);
                while created && fqdn.is_none() && Instant::now() < assign_by {
                    fqdn = accounts
                        .get(&name)
                        .await
                        .ok()
                        .and_then(|a| a.status?.fqdn);
                    if fqdn.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let served = match &fqdn {
                    Some(f) => {
                        on_every_replica(&servers, SERVED_WITHIN, |s| {
                            rcode(s, f) == Some(ResponseCode::NoError)
                        })
                        .await
                    }
                    None => false,
                };
                let deleted = accounts.delete(&name, &DeleteParams::default()).await.is_ok();
                let gone = match &fqdn {
                    Some(f) => {
                        on_every_replica(&servers, Duration::from_secs(30), |s| {
                            rcode(s, f) == Some(ResponseCode::NXDomain)
                        })
                        .await
                    }
                    None => false,
                };
                if !(created && served && deleted && gone) {
                    eprintln!(
                        "[soak] lost: account {name} created {created}, assigned {}, served {served}, \
                         deleted {deleted}, gone {gone}",
                        fqdn.is_some()
                    );
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                }
                counts.churned.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));

    // Samples, every SAMPLE_EVERY until the deadline, and once more at the end.
    let mut samples: Vec<(Duration, Vec<Sample>)> = Vec::new();
    loop {
        let mut row = Vec::new();
        for (name, replica) in &replicas {
            let pid = replica
                .child
                .id()
                .unwrap_or_else(|| panic!("replica {name} exited"));
            let body = common::http_get(replica.metrics, "/metrics")
                .await
                .map(|(_, b)| b);
            row.push(sample(pid, replica.metrics, body));
        }
        let at = started.elapsed();
        eprintln!(
            "[soak] {:>5.0} s: {} cycles, {} accounts churned, {} lost; {}",
            at.as_secs_f64(),
            counts.cycles.load(Ordering::Relaxed),
            counts.churned.load(Ordering::Relaxed),
            counts.lost.load(Ordering::Relaxed),
            row.iter()
                .zip(&replicas)
                .map(|(s, (n, _))| format!(
                    "{n}: {} MiB, {} fds, {} threads, {} tasks",
                    s.rss_kib / 1024,
                    s.fds,
                    s.threads,
                    s.tasks
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        samples.push((at, row));
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(SAMPLE_EVERY.min(deadline - Instant::now())).await;
    }
    for worker in workers {
        worker.await.unwrap();
    }
    running.store(false, Ordering::Relaxed);
    for thread in dns_load {
        thread.join().unwrap();
    }

    // Growth: the last third of the samples against the peak of the middle third (the
    // first third is warm-up: caches filling, connections opening).
    let third = samples.len() / 3;
    let mut growth = Vec::new();
    if third >= 1 {
        type Measure = (&'static str, fn(&Sample) -> u64, f64, u64);
        let measures: [Measure; 4] = [
            // Name, value, allowed ratio over the middle peak, and allowed absolute slack.
            ("resident memory (KiB)", |s| s.rss_kib, 1.10, 4096),
            ("file descriptors", |s| s.fds, 1.0, 8),
            ("threads", |s| s.threads, 1.0, 4),
            ("async tasks", |s| s.tasks, 1.0, 32),
        ];
        for (i, (replica, _)) in replicas.iter().enumerate() {
            for (what, value, ratio, slack) in measures {
                let middle = samples[third..2 * third]
                    .iter()
                    .map(|(_, row)| value(&row[i]))
                    .max()
                    .unwrap();
                let last = samples[2 * third..]
                    .iter()
                    .map(|(_, row)| value(&row[i]))
                    .max()
                    .unwrap();
                let allowed = (middle as f64 * ratio) as u64 + slack;
                if last > allowed {
                    growth.push(format!(
                        "replica {replica}: {what} rose to {last} in the last third, from a peak of {middle} in the middle third"
                    ));
                }
            }
        }
    }

    let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
    let mut report = String::new();
    let date = common::run("date", &["-u", "+%F"], None).trim().to_string();
    let _ = writeln!(report, "# Soak — {date}\n");
    let _ = writeln!(
        report,
        "Written by `tests/soak.rs` (`make soak`), {minutes} minutes, finished {} UTC.\n",
        common::run("date", &["-u", "+%F %H:%M"], None).trim()
    );
    let _ = writeln!(report, "## Machine\n");
    let _ = writeln!(
        report,
        "- `uname -sr`: {}\n- `nproc`: {}\n- Load average at the end: {}\n",
        common::run("uname", &["-sr"], None).trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(report, "## Load\n");
    let _ = writeln!(
        report,
        "- Two replicas of the release binary against the local control plane (etcd + kube-apiserver): \
         A with `--roles dns,controller,webhook` behind the aggregation layer, B with `--roles dns,controller`, \
         one Lease.\n\
         - DNS: {DNS_RATE} queries/s to each replica, one at a time (TXT at account names, the apex SOA, \
         names that do not exist).\n\
         - {CYCLE_ACCOUNTS} workers, each on its own account: Present through kube-apiserver, the value \
         answered by both replicas, CleanUp, the value gone from both (each within {} s).\n\
         - One worker churning accounts: create, subdomain assigned and answered by both, delete, NXDOMAIN on both.\n",
        SERVED_WITHIN.as_secs()
    );
    let _ = writeln!(report, "## Results\n");
    let _ = writeln!(
        report,
        "| Present/CleanUp cycles | accounts churned | lost updates | DNS queries | unanswered |\n|---|---|---|---|---|\n| {} | {} | {} | {} | {} |\n",
        c(&counts.cycles),
        c(&counts.churned),
        c(&counts.lost),
        c(&counts.dns_asked),
        c(&counts.dns_unanswered)
    );
    let _ = writeln!(
        report,
        "| minute | A RSS MiB | A fds | A threads | A tasks | B RSS MiB | B fds | B threads | B tasks |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (at, row) in &samples {
        let _ = write!(report, "| {:.1} |", at.as_secs_f64() / 60.0);
        for s in row {
            let _ = write!(
                report,
                " {:.1} | {} | {} | {} |",
                s.rss_kib as f64 / 1024.0,
                s.fds,
                s.threads,
                s.tasks
            );
        }
        report.push('\n');
    }
    let _ = writeln!(
        report,
        "\nGrowth check (the last third of the samples against the middle third's peak: memory within \
         10 % + 4 MiB, descriptors + 8, threads + 4, tasks + 32): {}",
        if growth.is_empty() {
            "nothing grew.".to_string()
        } else {
            growth.join("; ")
        }
    );
    let path = std::env::var("SOAK_RESULTS").unwrap_or_else(|_| {
        format!(
            "{}/bench/results/soak-{date}.md",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    std::fs::write(&path, &report).unwrap();
    eprintln!("{report}\n[soak] results: {path}");

    assert_eq!(c(&counts.lost), 0, "lost updates; see the log above");
    assert_eq!(c(&counts.dns_unanswered), 0, "unanswered DNS queries");
    assert!(
        c(&counts.cycles) > 0 && c(&counts.churned) > 0,
        "no load ran"
    );
    assert!(growth.is_empty(), "{}", growth.join("\n"));
}
