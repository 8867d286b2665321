//! `make bench-issuance` (`bench/issuance.sh`): seconds from creating a Certificate to
//! Ready through Pebble, for our webhook solver and for cert-manager's own RFC 2136
//! solver writing to BIND, in the same run, on the same flow: cert-manager's real
//! controllers, one Pebble, one unbound as the only resolver (of Pebble and of
//! cert-manager's self check), one ClusterIssuer per solver, every Certificate for a
//! domain and its wildcard.
//!
//! - ours: the user's zone (in unbound) has `_acme-challenge.<d> CNAME <label>.auth.example.test.`,
//!   and unbound sends `auth.example.test` to `serve` (DNS + controller + webhook behind
//!   the aggregation layer), as in tests/issuance.rs;
//! - RFC 2136: the user's zone lives in BIND (`named`), which takes updates signed with a
//!   TSIG key; unbound sends the zone to BIND.
//!
//! The Certificates are issued in rounds, one of each solver at the same time, so a change
//! in the machine's load hits both alike. Besides the total, it measures the part each DNS
//! server adds: from the Present reaching it (serve's log line on receiving the Present;
//! named's log line of the update) until that server, polled directly every 2 ms,
//! answers the value.
//!
//! Writes `bench/results/issuance-<date>.md` (or `ISSUANCE_RESULTS`).
//! `ISSUANCE_CERTIFICATES` (default 5) Certificates per solver.
//!
//! Not part of `make test` (ignored there): a benchmark, minutes long by design.

mod common;

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::{Value, json};

use common::{
    aggregation, bind::Bind, bind::TsigKey, cert_manager, certificate, knot::zone_text,
    pebble::Pebble, unbound::Unbound,
};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

/// How long one Certificate may take before the benchmark fails: cert-manager alone waits
/// 60 s after each of its two challenges propagates.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

/// What cert-manager's DNS-01 check sleeps once the value resolves (its `Check` in
/// `pkg/issuer/acme/dns/dns.go`, a constant there).
const CERT_MANAGER_SLEEP: Duration = Duration::from_secs(60);

/// How often the pollers ask the authoritative servers.
const POLL: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, PartialEq)]
enum Solver {
    Webhook,
    Rfc2136,
}

impl Solver {
    fn title(self) -> &'static str {
        match self {
            Solver::Webhook => "ours (webhook)",
            Solver::Rfc2136 => "RFC 2136 → BIND",
        }
    }
}

/// One Certificate's issuance as measured.
struct Issued {
    domain: String,
    /// The Certificate's name, and of its Secret with `-tls`.
    name: String,
    /// From the create request until the Ready condition was seen (polled every 50 ms).
    ready_after: Duration,
    /// From the create request until each Present reached the DNS side, in order.
    presents_after: Vec<Duration>,
    /// Present reaching the DNS side → the authoritative server answers the value, per
    /// challenge value; None for a value whose Present was not found in the log.
    present_to_answer: Vec<Option<Duration>>,
    /// Ours only: the webhook finished the Present (its log line after the status write,
    /// just before it replies) → our server answers the value, ms, negative when the
    /// answer came first. cert-manager checks the value right after the Present returns.
    done_to_answer: Vec<Option<f64>>,
}

/// Polls `server` for the TXT values of `name` every [`POLL`] until `stop`; returns when
/// each value was first answered.
fn poll_answers(
    server: SocketAddr,
    name: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashMap<String, SystemTime>> {
    std::thread::spawn(move || {
        let mut first = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(values) = common::dns::txt_values(server, &name) {
                let now = SystemTime::now();
                for value in values {
                    first.entry(value).or_insert(now);
                }
            }
            std::thread::sleep(POLL);
        }
        first
    })
}

/// When serve logged `message` for `domain` (JSON log lines): "Present received" when the
/// webhook received a Present, "presented a TXT value" when it finished one.
fn serve_logged(log: &Path, message: &str, domain: &str) -> Vec<SystemTime> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut times: Vec<SystemTime> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["message"] == message && l["fields"]["domain"] == domain)
        .filter_map(|l| {
            let ts: k8s_openapi::jiff::Timestamp = l["timestamp"].as_str()?.parse().ok()?;
            Some(SystemTime::from(ts))
        })
        .collect();
    times.sort();
    times
}

fn since(later: SystemTime, earlier: SystemTime) -> Option<Duration> {
    later.duration_since(earlier).ok()
}

/// Creates the Certificate for `domain` and `*.domain` from `issuer`, waits until Ready
/// (failing the benchmark otherwise), and measures.
#[allow(clippy::too_many_arguments)]
async fn issue(
    solver: Solver,
    domain: String,
    issuer: &str,
    namespace: &str,
    dns: SocketAddr,
    polled_name: String,
    serve_log: &Path,
    bind: &Bind,
) -> Issued {
    let name = domain.replace('.', "-");
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_answers(dns, polled_name.clone(), stop.clone());
    let certificates: Api<DynamicObject> = Api::namespaced_with(
        common::client().await,
        namespace,
        &cert_manager::certificate_resource(),
    );
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "secretName": format!("{name}-tls"),
            "dnsNames": [domain, format!("*.{domain}")],
            "issuerRef": { "kind": "ClusterIssuer", "name": issuer },
        },
    }))
    .unwrap();
    let created_at = SystemTime::now();
    let created = Instant::now();
    certificates
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("create Certificate {name}: {e}"));
    loop {
        let ready = certificates.get(&name).await.ok().is_some_and(|c| {
            c.data["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        });
        if ready {
            break;
        }
        assert!(
            created.elapsed() < READY_TIMEOUT,
            "Certificate {namespace}/{name} ({}) not Ready within {READY_TIMEOUT:?}: see \
             `kubectl describe certificate,challenge -n {namespace}` and cert-manager's log",
            solver.title()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_after = created.elapsed();
    stop.store(true, Ordering::Relaxed);
    let answered = poller.join().expect("the DNS poller");
    eprintln!(
        "[issuance] {}: {domain} Ready after {:.1} s",
        solver.title(),
        ready_after.as_secs_f64()
    );

    // Each value's first answer, matched with the Present that carried it.
    let mut answered: Vec<(String, SystemTime)> = answered.into_iter().collect();
    answered.sort_by_key(|(_, at)| *at);
    let mut done_to_answer = Vec::new();
    let (presents, present_to_answer) = match solver {
        Solver::Webhook => {
            // serve logs the domain, not the value; cert-manager presents the two
            // challenges of one domain one after the other (the second only after the
            // first is valid), so a value belongs to the last Present received before it
            // was answered.
            let received = serve_logged(serve_log, "Present received", &domain);
            let done = serve_logged(serve_log, "presented a TXT value", &domain);
            for (_, at) in &answered {
                let lag = received
                    .iter()
                    .rev()
                    .find(|r| *r <= at)
                    .and_then(|r| done.iter().find(|d| *d >= r))
                    .map(|d| match at.duration_since(*d) {
                        Ok(after) => after.as_secs_f64() * 1000.0,
                        Err(before) => -before.duration().as_secs_f64() * 1000.0,
                    });
                done_to_answer.push(lag);
            }
            let matched = answered
                .iter()
                .map(|(_, at)| {
                    received
                        .iter()
                        .rev()
                        .find(|r| *r <= at)
                        .and_then(|r| since(*at, *r))
                })
                .collect();
            (received, matched)
        }
        Solver::Rfc2136 => {
            let updates: Vec<_> = bind
                .updates()
                .into_iter()
                .filter(|u| u.name == polled_name.trim_end_matches('.'))
                .collect();
            let matched = answered
                .iter()
                .map(|(value, at)| {
                    updates
                        .iter()
                        .find(|u| &u.value == value)
                        .and_then(|u| since(*at, u.at))
                })
                .collect();
            let mut at: Vec<SystemTime> = updates.iter().map(|u| u.at).collect();
            at.sort();
            (at, matched)
        }
    };
    assert_eq!(
        answered.len(),
        2,
        "{}: {domain}: the poller saw {} challenge values, expected two (apex and wildcard)",
        solver.title(),
        answered.len()
    );
    Issued {
        domain,
        name,
        ready_after,
        presents_after: presents
            .iter()
            .filter_map(|p| since(*p, created_at))
            .collect(),
        present_to_answer,
        done_to_answer,
    }
}

/// Creates a ClusterIssuer for Pebble with one DNS-01 solver and waits until its ACME
/// account is registered, so no issuance measured includes the registration.
async fn cluster_issuer(name: &str, pebble: &Pebble, dns01: Value) {
    let issuer = pebble.cluster_issuer(name, dns01);
    common::run("kubectl", &["apply", "-f", "-"], Some(&issuer.to_string()));
    common::eventually(
        &format!("ClusterIssuer {name} Ready"),
        Duration::from_secs(60),
        || async {
            let status = common::run(
                "kubectl",
                &[
                    "get",
                    "clusterissuer",
                    name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
                None,
            );
            (status.trim() == "True").then_some(())
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "a benchmark of about ten minutes: make bench-issuance"]
async fn issuance_time_webhook_against_rfc2136() {
    let revision = common::revision();
    let count: usize = std::env::var("ISSUANCE_CERTIFICATES")
        .ok()
        .map(|n| {
            n.parse()
                .expect("ISSUANCE_CERTIFICATES is a number, e.g. 5")
        })
        .unwrap_or(5);
    let load_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let busy_start = machine_busy();
    let started = Instant::now();

    let admin = common::client().await;
    common::install_crd(&admin).await;
    eprintln!("[issuance] cert-manager's CRDs and controllers");
    cert_manager::install();
    let namespace = common::create_namespace(&admin, "bench-issuance").await;
    let label = common::unique_name("bi");
    let work = std::env::temp_dir().join(common::unique_name("bench-issuance"));
    std::fs::create_dir_all(&work).unwrap();
    eprintln!("[issuance] work directory {}", work.display());

    // Ours: serve with every role behind the aggregation layer; one account per domain.
    let serve_log = work.join("serve.log");
    let solver = aggregation::start_all_roles_with_log(
        &label,
        Some(common::ServeLog {
            path: &serve_log,
            filter: "info,kube_acme_dns::webhook=debug",
        }),
    )
    .await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), &namespace);
    let ours: Vec<String> = (0..count).map(|i| format!("{label}-o{i}")).collect();
    let mut user_zones = Vec::new();
    for sub in &ours {
        let domain = format!("{sub}.test");
        let spec = AcmeDnsAccountSpec {
            domains: vec![DomainName(domain.clone())],
            subdomain: Some(DnsLabel(sub.clone())),
            ..Default::default()
        };
        accounts
            .create(&PostParams::default(), &AcmeDnsAccount::new(sub, spec))
            .await
            .unwrap();
        let zone = work.join(format!("{domain}.zone"));
        let cname = format!("_acme-challenge CNAME {sub}.auth.example.test.");
        std::fs::write(&zone, zone_text(&domain, &[cname])).unwrap();
        user_zones.push(zone);
    }
    for sub in &ours {
        common::eventually("subdomain assigned", Duration::from_secs(30), || async {
            accounts.get(sub).await.ok()?.status?.fqdn
        })
        .await;
    }

    // RFC 2136: the users' zones in BIND, updated with a TSIG key cert-manager holds in
    // its cluster resource namespace.
    let theirs: Vec<String> = (0..count).map(|i| format!("{label}-b{i}.test")).collect();
    let key = TsigKey::generate(&format!("{label}-key"));
    let bind = Bind::start(&work.join("bind"), &theirs, &key);
    let tsig_secret = format!("{label}-tsig");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": tsig_secret, "namespace": "cert-manager" },
        "stringData": { "secret": key.secret },
    });
    common::run("kubectl", &["apply", "-f", "-"], Some(&secret.to_string()));

    // The one resolver, for Pebble and for cert-manager's self check.
    let mut stubs: Vec<(&str, SocketAddr)> = vec![("auth.example.test", solver.serve.dns)];
    stubs.extend(theirs.iter().map(|d| (d.as_str(), bind.addr)));
    let unbound = Unbound::start(&work.join("unbound"), &user_zones, &stubs);
    let pebble = Pebble::start(&work.join("pebble"), unbound.addr);
    let _cert_manager = cert_manager::start_controllers(unbound.addr, None);

    let webhook_issuer = format!("{label}-webhook");
    let rfc2136_issuer = format!("{label}-rfc2136");
    cluster_issuer(
        &webhook_issuer,
        &pebble,
        json!({ "webhook": { "groupName": "acme.acmedns.io", "solverName": "acme-dns" } }),
    )
    .await;
    cluster_issuer(
        &rfc2136_issuer,
        &pebble,
        json!({ "rfc2136": {
            "nameserver": bind.addr.to_string(),
            "tsigKeyName": key.name,
            "tsigAlgorithm": "HMACSHA256",
            "tsigSecretSecretRef": { "name": tsig_secret, "key": "secret" },
        } }),
    )
    .await;
    let set_up = started.elapsed();

    let mut webhook = Vec::new();
    let mut rfc2136 = Vec::new();
    for round in 0..count {
        eprintln!(
            "[issuance] round {}/{count}: one Certificate of each solver at once",
            round + 1
        );
        let (a, b) = tokio::join!(
            issue(
                Solver::Webhook,
                format!("{}.test", ours[round]),
                &webhook_issuer,
                &namespace,
                solver.serve.dns,
                format!("{}.auth.example.test.", ours[round]),
                &serve_log,
                &bind,
            ),
            issue(
                Solver::Rfc2136,
                theirs[round].clone(),
                &rfc2136_issuer,
                &namespace,
                bind.addr,
                format!("_acme-challenge.{}.", theirs[round]),
                &serve_log,
                &bind,
            ),
        );
        // Checked once both are Ready, so neither wait is held up by the other's checks.
        for issued in [&a, &b] {
            let chain = cert_manager::tls_chain(&namespace, &format!("{}-tls", issued.name));
            certificate::assert_wildcard_issued_by(&chain, &issued.domain, &pebble);
        }
        webhook.push(a);
        rfc2136.push(b);
    }

    let busy = machine_busy().since(&busy_start);
    let report = report(&Report {
        revision,
        count,
        webhook: &webhook,
        rfc2136: &rfc2136,
        set_up,
        load_start: load_start.trim(),
        busy,
    });
    let date = common::run("date", &["-u", "+%F"], None).trim().to_string();
    let path = std::env::var("ISSUANCE_RESULTS").unwrap_or_else(|_| {
        format!(
            "{}/bench/results/issuance-{date}.md",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    std::fs::write(&path, &report).unwrap_or_else(|e| panic!("write {path}: {e}"));
    eprintln!("{report}\n[issuance] results: {path}");
    // Every value answered was matched with its Present: the measurement is complete.
    for issued in webhook.iter().chain(&rfc2136) {
        assert!(
            issued.present_to_answer.iter().all(Option::is_some),
            "{}: a challenge value with no Present in the log (see {})",
            issued.domain,
            work.display()
        );
    }
}

/// CPU time of the whole machine, from /proc/stat.
struct Busy {
    busy: u64,
    total: u64,
}

fn machine_busy() -> Busy {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    Busy {
        busy: total - idle,
        total,
    }
}

impl Busy {
    /// The share of all cores busy between `earlier` and now.
    fn since(&self, earlier: &Busy) -> f64 {
        let total = self.total.saturating_sub(earlier.total).max(1);
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

struct Report<'a> {
    /// The commit measured (read at the start).
    revision: String,
    count: usize,
    webhook: &'a [Issued],
    rfc2136: &'a [Issued],
    set_up: Duration,
    load_start: &'a str,
    busy: f64,
}

/// min, median, max of `values` (seconds); the median of an even count is the mean of
/// the two middle ones.
fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (v[0], median, v[n - 1])
}

fn report(r: &Report) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    let date = common::run("date", &["-u", "+%F %H:%M"], None);
    let _ = writeln!(
        out,
        "# Certificate to Ready: our webhook against RFC 2136 to BIND — {}\n",
        &date.trim()[..10]
    );
    let _ = writeln!(
        out,
        "Written by `tests/bench_issuance.rs` (`make bench-issuance`), finished {} UTC, at {}.\n",
        date.trim(),
        r.revision
    );
    let _ = writeln!(out, "## Machine\n");
    let _ = writeln!(
        out,
        "- CPU: {}, `nproc` = {cores}\n- Kernel: {}\n- Load average at the start: {}; at the end: {}\n\
         - The whole machine's CPU busy over the run: {:.0} % of {cores} cores (everything on it: the \
         control plane, cert-manager, Pebble, the DNS servers, and any other work)\n",
        common::run(
            "sh",
            &["-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"],
            None
        )
        .trim(),
        common::run("uname", &["-r"], None).trim(),
        r.load_start,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        r.busy * 100.0,
    );
    let _ = writeln!(out, "## Set-up\n");
    let _ = writeln!(
        out,
        "- The local control plane (etcd, kube-apiserver), cert-manager's own controllers \
         (`e2e/cert-manager/build.sh`, out of cluster, `--dns01-recursive-nameservers-only`, \
         `--dns01-check-retry-period 1s`), Pebble (`PEBBLE_VA_NOSLEEP=1`, no authorization reuse) \
         and one unbound resolver, which alone answers Pebble's and cert-manager's lookups \
         (cache at most 1 s); everything on 127.0.0.1.\n\
         - ours: ClusterIssuer with the webhook solver; each user's zone (in unbound) holds \
         `_acme-challenge.<d> CNAME <d-label>.auth.example.test.`, an AcmeDnsAccount per domain; \
         `serve --roles dns,controller,webhook` (release build) behind kube-apiserver's aggregation layer.\n\
         - RFC 2136: ClusterIssuer with cert-manager's rfc2136 solver (HMAC-SHA256 TSIG key in a \
         Secret) updating BIND {} (Debian's bind9; `named -g -n 1`, primary for each user's zone, \
         `allow-update {{ key … }}`); unbound sends those zones to BIND.\n\
         - {} Certificates per solver, each for `d` and `*.d` (two DNS-01 challenges), in {} rounds of \
         one Certificate of each solver created at the same moment. Time: from the create request \
         until the Ready condition is seen (polled every 50 ms). Both ClusterIssuers had their ACME \
         account before the first Certificate. Set-up took {:.0} s.\n",
        common::run("sh", &["-c", "/usr/sbin/named -v | cut -d' ' -f2"], None).trim(),
        r.count,
        r.count,
        r.set_up.as_secs_f64(),
    );

    let _ = writeln!(out, "## Certificate created → Ready (s)\n");
    let _ = writeln!(
        out,
        "| round | ours (webhook) | RFC 2136 → BIND | ours − RFC 2136 |\n|---|---|---|---|"
    );
    for (i, (a, b)) in r.webhook.iter().zip(r.rfc2136).enumerate() {
        let (a, b) = (a.ready_after.as_secs_f64(), b.ready_after.as_secs_f64());
        let _ = writeln!(out, "| {} | {a:.2} | {b:.2} | {:+.2} |", i + 1, a - b);
    }
    let secs =
        |v: &[Issued]| -> Vec<f64> { v.iter().map(|i| i.ready_after.as_secs_f64()).collect() };
    let (a_min, a_med, a_max) = stats(&secs(r.webhook));
    let (b_min, b_med, b_max) = stats(&secs(r.rfc2136));
    // cert-manager sleeps 60 s in the check of each of the two challenges.
    let fixed = 2.0 * CERT_MANAGER_SLEEP.as_secs_f64();
    let _ = writeln!(
        out,
        "\n| | median | min | max | median without cert-manager's {fixed:.0} s of sleep |\n|---|---|---|---|---|\n\
         | ours (webhook) | {a_med:.2} | {a_min:.2} | {a_max:.2} | {:.2} |\n\
         | RFC 2136 → BIND | {b_med:.2} | {b_min:.2} | {b_max:.2} | {:.2} |\n",
        a_med - fixed,
        b_med - fixed,
    );
    let ratio = a_med / b_med;
    let _ = writeln!(
        out,
        "Ratio of the medians, ours / RFC 2136: **{ratio:.4}×** (target ≤ 1.0×: {}); without the \
         {fixed:.0} s of sleep: {:.2}×.\n",
        if ratio <= 1.0 { "met" } else { "not met" },
        (a_med - fixed) / (b_med - fixed)
    );

    let _ = writeln!(
        out,
        "Where the time goes: cert-manager's DNS-01 check, once the value resolves, sleeps a fixed \
         60 s before it lets the ACME server validate (`pkg/issuer/acme/dns/dns.go`, `Check`), and it \
         works on the two challenges of one domain one after the other (its scheduler starts the \
         second once the first is done, on its next pass), so every Certificate here waits 120 s \
         whatever the solver. Medians, s, from when each Present reached the DNS side (serve's or \
         named's log, as below):\n"
    );
    let _ = writeln!(
        out,
        "| | created → 1st Present | 1st → 2nd Present | 2nd Present → Ready |\n|---|---|---|---|"
    );
    for (solver, issued) in [(Solver::Webhook, r.webhook), (Solver::Rfc2136, r.rfc2136)] {
        let phase = |f: &dyn Fn(&Issued) -> Option<f64>| -> String {
            let v: Vec<f64> = issued.iter().filter_map(f).collect();
            if v.is_empty() {
                "-".into()
            } else {
                format!("{:.2}", stats(&v).1)
            }
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            solver.title(),
            phase(&|i| Some(i.presents_after.first()?.as_secs_f64())),
            phase(&|i| Some(
                (*i.presents_after.get(1)? - *i.presents_after.first()?).as_secs_f64()
            )),
            phase(&|i| Some((i.ready_after.checked_sub(*i.presents_after.get(1)?)?).as_secs_f64())),
        );
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Present → answerable (ms)\n");
    let _ = writeln!(
        out,
        "The part the DNS side adds, per challenge value. Start: ours, serve's log line written when \
         the webhook receives the Present (before it finds the account and writes the value to its \
         status; JSON log time, µs); RFC 2136, named's log line of the update adding the value (ms). \
         End: the first answer with the value from that server itself (our DNS port, or BIND's), \
         asked directly (no resolver cache) every {} ms by a poller in the test; both clocks are this \
         machine's. The poll interval and the query's own time are in the numbers (a few ms at most).\n",
        POLL.as_millis()
    );
    let _ = writeln!(
        out,
        "| | values | median | min | max |\n|---|---|---|---|---|"
    );
    for (solver, issued) in [(Solver::Webhook, r.webhook), (Solver::Rfc2136, r.rfc2136)] {
        let ms: Vec<f64> = issued
            .iter()
            .flat_map(|i| i.present_to_answer.iter().flatten())
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        let missing = issued
            .iter()
            .flat_map(|i| &i.present_to_answer)
            .filter(|d| d.is_none())
            .count();
        if ms.is_empty() {
            let _ = writeln!(out, "| {} | 0 (none matched) | - | - | - |", solver.title());
            continue;
        }
        let (min, med, max) = stats(&ms);
        let unmatched = if missing > 0 {
            format!(" ({missing} not matched)")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {} | {}{unmatched} | {med:.0} | {min:.0} | {max:.0} |",
            solver.title(),
            ms.len()
        );
    }
    let lags: Vec<f64> = r
        .webhook
        .iter()
        .flat_map(|i| i.done_to_answer.iter().flatten())
        .copied()
        .collect();
    if !lags.is_empty() {
        let (min, med, max) = stats(&lags);
        let late = lags.iter().filter(|l| **l > 0.0).count();
        let _ = writeln!(
            out,
            "\nOurs, from the webhook finishing the Present (its log line after the status write, just \
             before the reply) to our answer: median {med:.1} ms, min {min:.1}, max {max:.1}; {late} of {} \
             values were answered only after that (negative: before). cert-manager checks right after \
             the Present returns; when that check misses, it checks again after \
             `--dns01-check-retry-period` (1 s here). BIND replies to the update after applying it.",
            lags.len()
        );
    }
    let _ = writeln!(out, "\nEach value, ms, in the order they were answered:\n");
    for (solver, issued) in [(Solver::Webhook, r.webhook), (Solver::Rfc2136, r.rfc2136)] {
        let values: Vec<String> = issued
            .iter()
            .flat_map(|i| &i.present_to_answer)
            .map(|d| d.map_or("-".into(), |d| format!("{:.0}", d.as_secs_f64() * 1000.0)))
            .collect();
        let _ = writeln!(out, "- {}: {}", solver.title(), values.join(", "));
    }
    out
}
