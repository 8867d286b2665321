//! The DNS responder serving synthetic accounts, for `make bench-dns`: the same answer
//! path and sockets as `serve`, fed directly instead of from the API server, so the
//! benchmark measures DNS and nothing else.
//!
//!     bench_server --names 1000 --listen 127.0.0.1:5300 --zone auth.bench.test
//!
//! Serves `a<i>.<zone>` for i in 0..names, each with one TXT value `v` + i padded to
//! 42 digits, TTL 1 — the names bench/dns.sh loads into Knot and BIND.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
};

use clap::Parser;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube_acme_dns::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, TxtValue},
    dns::{Zone, ZoneConfig, metrics::DnsMetrics, rrl::RrlConfig, server::DnsSockets},
    index::{self, AccountIndex},
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    names: usize,
    #[arg(long, default_value = "127.0.0.1:5300")]
    listen: SocketAddr,
    #[arg(long, default_value = "auth.bench.test")]
    zone: String,
    /// UDP sockets/threads; 0 = one per CPU.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ZoneConfig::new(&args.zone);
    config.nameserver_addresses = vec!["127.0.0.1".parse()?];
    let zone = Arc::new(Zone::new(&config)?);
    let index = Arc::new(AccountIndex::new(1));
    eprintln!("memory at start: {}", memory());
    let started = std::time::Instant::now();
    let accounts: Vec<AcmeDnsAccount> = (0..args.names).map(synthetic_account).collect();
    eprintln!("memory with the accounts built: {}", memory());
    index.reset(&accounts);
    eprintln!("memory with the accounts indexed: {}", memory());
    drop(accounts);
    eprintln!("indexed {} names in {:?}", args.names, started.elapsed());
    eprintln!("memory with the accounts dropped: {}", memory());
    // As the account watch does after a re-list.
    let trimming = std::time::Instant::now();
    index::release_freed_memory();
    eprintln!(
        "memory after releasing freed memory ({:?}): {}",
        trimming.elapsed(),
        memory()
    );

    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let sockets = DnsSockets::bind(args.listen, threads)?;
    eprintln!(
        "answering on {} with {threads} UDP threads",
        sockets.local_addr
    );
    eprintln!("memory serving: {}", memory());
    let registry = prometheus::Registry::new();
    let tcp = sockets.serve(
        zone,
        index,
        DnsMetrics::new(&registry)?,
        // dnsperf asks from one address far beyond any limit, as it does of Knot and
        // BIND, which run without one too.
        RrlConfig::OFF,
        Arc::new(AtomicBool::new(false)),
    )?;
    tokio::select! {
        () = tcp => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn synthetic_account(i: usize) -> AcmeDnsAccount {
    let label = format!("a{i}");
    let mut account = AcmeDnsAccount::new(&label, AcmeDnsAccountSpec::default());
    account.metadata.namespace = Some("bench".into());
    account.status = Some(AcmeDnsAccountStatus {
        subdomain: Some(DnsLabel(label)),
        txt: vec![TxtValue {
            value: format!("v{i:042}"),
            updated_at: Time(Timestamp::UNIX_EPOCH),
        }],
        ..Default::default()
    });
    account
}

/// Heap in use and held free by the allocator, next to the resident set, so a benchmark
/// log shows where memory goes (the allocator's counters exist only with glibc).
fn memory() -> String {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    format!("RSS {rss}{}", heap())
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> String {
    // SAFETY: mallinfo2 only reads the allocator's counters.
    let m = unsafe { libc::mallinfo2() };
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    format!(
        ", heap in use {:.1} MiB (mmapped {:.1}), held free {:.1} MiB",
        mib(m.uordblks + m.hblkhd),
        mib(m.hblkhd),
        mib(m.fordblks)
    )
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> String {
    String::new()
}
