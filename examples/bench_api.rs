//! The load of `make bench-api`: registers accounts through the acme-dns API of one
//! replica, then sends `/update`s to the replicas in turn from several clients at once,
//! and watches every replica's DNS for each new value.
//!
//!     bench_api --api 127.0.0.1:8080 --api 127.0.0.1:8081 \
//!               --dns 127.0.0.1:5353 --dns 127.0.0.1:5354 --zone auth.example.test
//!
//! Prints a Markdown table: `/update` throughput and latency, and the time from sending
//! an update until each replica answers the value (the replica that took it, and the
//! other one).
//!
//! Then a second table: DNS latency on the first replica, from one client querying at a
//! fixed pace, while the API is quiet and then during a storm of `/update`s with bad
//! credentials (known users with wrong keys, and unknown users) sent to that replica.

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use hickory_proto::{
    op::{Edns, Message, Query},
    rr::{Name, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    sync::Mutex,
};

#[derive(Parser)]
struct Args {
    /// The replicas' API addresses; updates go to them in turn.
    #[arg(long, required = true)]
    api: Vec<SocketAddr>,
    /// The replicas' DNS addresses, in the same order.
    #[arg(long, required = true)]
    dns: Vec<SocketAddr>,
    #[arg(long, default_value = "auth.example.test")]
    zone: String,
    /// Accounts registered and updated.
    #[arg(long, default_value_t = 40)]
    accounts: usize,
    /// Clients sending updates at once, each on its own keep-alive connection.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Seconds of measured load.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of each phase of the bad-credential storm measurement (quiet, then
    /// storm); 0 skips it.
    #[arg(long, default_value_t = 20)]
    storm_seconds: u64,
    /// Clients sending bad credentials at once during the storm.
    #[arg(long, default_value_t = 32)]
    storm_clients: usize,
    /// DNS queries per second during the storm measurement, one at a time.
    #[arg(long, default_value_t = 500)]
    probe_rate: u32,
}

struct Account {
    username: String,
    password: String,
    subdomain: String,
}

/// One HTTP/1.1 connection, kept alive.
struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl Connection {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None }
    }

    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        // One retry on a fresh connection if the kept-alive one was closed.
        for attempt in 0..2 {
            if self.stream.is_none() {
                let stream = TcpStream::connect(self.addr).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            match self.exchange(path, headers, body).await {
                Ok(reply) => return Ok(reply),
                Err(e) if attempt == 0 => {
                    self.stream = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    async fn exchange(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let stream = self.stream.as_mut().context("not connected")?;
        let mut request = format!("POST {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status")?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
        Ok((code, body))
    }
}

/// A fresh DNS-01-shaped value: 43 characters of base64url.
fn value(n: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    (0..43)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// Whether `server` answers `value` for `name` (the value's bytes appear in the TXT
/// answer; they are unique per update).
async fn answers(socket: &UdpSocket, server: SocketAddr, name: &Name, value: &str) -> bool {
    let mut query = Message::query();
    query.metadata.id = rand_id();
    query.add_query(Query::query(name.clone(), RecordType::TXT));
    // An account holds up to 16 values: more than a 512-byte answer without EDNS.
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    query.set_edns(edns);
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    if socket.send_to(&bytes, server).await.is_err() {
        return false;
    }
    let mut reply = [0u8; 4096];
    match tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut reply)).await {
        Ok(Ok((n, _))) => reply[..n]
            .windows(value.len())
            .any(|w| w == value.as_bytes()),
        _ => false,
    }
}

fn rand_id() -> u16 {
    let mut id = [0u8; 2];
    getrandom::fill(&mut id).expect("random bytes");
    u16::from_ne_bytes(id)
}

/// Polls `server` every 2 ms until it answers `value`; the time since `sent`.
async fn answered_after(server: SocketAddr, name: Name, value: String, sent: Instant) -> Duration {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    loop {
        if answers(&socket, server, &name, &value).await {
            return sent.elapsed();
        }
        if sent.elapsed() > Duration::from_secs(30) {
            return Duration::MAX;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Default)]
struct Samples {
    update: Vec<Duration>,
    own: Vec<Duration>,
    other: Vec<Duration>,
    /// From `/update` returning to the other replica answering.
    other_after_return: Vec<Duration>,
    errors: Vec<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    if d == Duration::MAX {
        "never".into()
    } else {
        format!("{:.1}", d.as_secs_f64() * 1000.0)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.api.len() != args.dns.len() {
        bail!("give one --dns per --api, in the same order");
    }
    eprintln!("[bench-api] registering {} accounts", args.accounts);
    let mut register = Connection::new(args.api[0]);
    let mut accounts = Vec::new();
    for _ in 0..args.accounts {
        let (code, body) = register.post("/register", &[], "").await?;
        if code != 201 {
            bail!("/register answered {code}: {body}");
        }
        let json: serde_json::Value = serde_json::from_str(&body)?;
        let text = |k: &str| json[k].as_str().unwrap_or_default().to_string();
        accounts.push(Account {
            username: text("username"),
            password: text("password"),
            subdomain: text("subdomain"),
        });
    }
    // Every replica accepts an update for every account before the clock starts.
    eprintln!("[bench-api] waiting until every replica accepts updates for every account");
    for (i, account) in accounts.iter().enumerate() {
        for api in &args.api {
            let mut connection = Connection::new(*api);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let body = format!(
                    r#"{{"subdomain": "{}", "txt": "{}"}}"#,
                    account.subdomain,
                    value(i as u64)
                );
                let headers = [
                    ("X-Api-User", account.username.as_str()),
                    ("X-Api-Key", account.password.as_str()),
                ];
                let (code, reply) = connection.post("/update", &headers, &body).await?;
                if code == 200 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{api} did not accept an update for {}: {code} {reply}",
                        account.subdomain
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    eprintln!(
        "[bench-api] {} clients sending updates for {} s",
        args.clients, args.seconds
    );
    let accounts = Arc::new(accounts);
    let samples = Arc::new(Mutex::new(Samples::default()));
    let zone = args.zone.trim_end_matches('.').to_string();
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    let stride = args.clients;
    for client in 0..args.clients {
        let (accounts, samples, apis, dns, zone) = (
            accounts.clone(),
            samples.clone(),
            args.api.clone(),
            args.dns.clone(),
            zone.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut connections: Vec<Connection> =
                apis.iter().map(|a| Connection::new(*a)).collect();
            let mut watchers = Vec::new();
            let mut n = client;
            let mut round = 0;
            while Instant::now() < end {
                // Clients take accounts in turn, no two the same one at once (with at
                // least as many accounts as clients), and replicas in turn.
                let account = &accounts[n % accounts.len()];
                let replica = (round + client) % apis.len();
                let txt = value(1_000_000 + (round * stride + client) as u64);
                let body = format!(
                    r#"{{"subdomain": "{}", "txt": "{txt}"}}"#,
                    account.subdomain
                );
                let headers = [
                    ("X-Api-User", account.username.as_str()),
                    ("X-Api-Key", account.password.as_str()),
                ];
                let sent = Instant::now();
                let result = connections[replica].post("/update", &headers, &body).await;
                let returned = Instant::now();
                let took = returned - sent;
                match result {
                    Ok((200, _)) => {
                        samples.lock().await.update.push(took);
                        let name = Name::from_str(&format!("{}.{zone}.", account.subdomain))
                            .expect("a DNS name");
                        for (i, server) in dns.iter().enumerate() {
                            let (name, txt, samples) = (name.clone(), txt.clone(), samples.clone());
                            let server = *server;
                            watchers.push(tokio::spawn(async move {
                                let after = answered_after(server, name, txt, sent).await;
                                let mut samples = samples.lock().await;
                                if i == replica {
                                    samples.own.push(after);
                                } else {
                                    samples.other.push(after);
                                    samples
                                        .other_after_return
                                        .push(after.saturating_sub(returned - sent));
                                }
                            }));
                        }
                    }
                    Ok((code, body)) => samples.lock().await.errors.push(format!("{code} {body}")),
                    Err(e) => samples.lock().await.errors.push(e.to_string()),
                }
                n += stride;
                round += 1;
            }
            for watcher in watchers {
                let _ = watcher.await;
            }
        }));
    }
    for client in clients {
        client.await?;
    }
    let elapsed = Instant::now().min(end).duration_since(start);
    let mut samples = Arc::try_unwrap(samples)
        .map_err(|_| anyhow::anyhow!("clients still running"))?
        .into_inner();
    for list in [
        &mut samples.update,
        &mut samples.own,
        &mut samples.other,
        &mut samples.other_after_return,
    ] {
        list.sort();
    }
    let count = samples.update.len();
    println!(
        "| updates | errors | updates/s | /update p50 ms | /update p99 ms | sent → answered by the replica that took it, p50 / p99 ms | sent → answered by the other replica, p50 / p99 / max ms | returned → answered by the other replica, p50 / p99 / max ms |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {count} | {} | {:.1} | {} | {} | {} / {} | {} / {} / {} | {} / {} / {} |",
        samples.errors.len(),
        count as f64 / elapsed.as_secs_f64(),
        ms(percentile(&samples.update, 50.0)),
        ms(percentile(&samples.update, 99.0)),
        ms(percentile(&samples.own, 50.0)),
        ms(percentile(&samples.own, 99.0)),
        ms(percentile(&samples.other, 50.0)),
        ms(percentile(&samples.other, 99.0)),
        ms(samples.other.last().copied().unwrap_or_default()),
        ms(percentile(&samples.other_after_return, 50.0)),
        ms(percentile(&samples.other_after_return, 99.0)),
        ms(samples
            .other_after_return
            .last()
            .copied()
            .unwrap_or_default()),
    );
    if let Some(first) = samples.errors.first() {
        eprintln!(
            "[bench-api] {} errors, the first: {first}",
            samples.errors.len()
        );
    }
    if args.storm_seconds > 0 {
        storm(&args, &accounts, &zone).await?;
    }
    Ok(())
}

/// What one client querying at a fixed pace saw.
struct Probe {
    latencies: Vec<Duration>,
    /// Queries with no answer within a second.
    unanswered: usize,
}

/// Queries `server` for the accounts' TXT names in turn, `rate` per second for `seconds`,
/// one at a time on a thread of its own (blocking socket, so the client's scheduling is
/// the kernel's, not a runtime's).
fn probe(server: SocketAddr, queries: Vec<Vec<u8>>, rate: u32, seconds: u64) -> Probe {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    socket.connect(server).expect("connect the probe");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("a read timeout");
    let pace = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut result = Probe {
        latencies: Vec::new(),
        unanswered: 0,
    };
    let mut reply = [0u8; 4096];
    let mut next = start;
    let mut n: usize = 0;
    while Instant::now() < end {
        let mut query = queries[n % queries.len()].clone();
        let id = (n as u16).to_be_bytes();
        query[..2].copy_from_slice(&id);
        n += 1;
        let sent = Instant::now();
        if socket.send(&query).is_err() {
            result.unanswered += 1;
            continue;
        }
        loop {
            match socket.recv(&mut reply) {
                // A late answer to an earlier query is skipped.
                Ok(len) if len >= 2 && reply[..2] != id => continue,
                Ok(_) => {
                    result.latencies.push(sent.elapsed());
                    break;
                }
                Err(_) => {
                    result.unanswered += 1;
                    break;
                }
            }
        }
        next += pace;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    result
}

/// DNS latency on the first replica while the API is quiet, then while clients send it
/// `/update`s with bad credentials as fast as it answers them.
async fn storm(args: &Args, accounts: &[Account], zone: &str) -> anyhow::Result<()> {
    let queries: Vec<Vec<u8>> = accounts
        .iter()
        .map(|a| {
            let mut query = Message::query();
            query.add_query(Query::query(
                Name::from_str(&format!("{}.{zone}.", a.subdomain)).expect("a DNS name"),
                RecordType::TXT,
            ));
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            query.set_edns(edns);
            query.to_vec().expect("a query")
        })
        .collect();
    let (server, rate, seconds) = (args.dns[0], args.probe_rate, args.storm_seconds);
    eprintln!("[bench-api] DNS latency with the API quiet: {rate} queries/s for {seconds} s");
    let quiet = {
        let queries = queries.clone();
        tokio::task::spawn_blocking(move || probe(server, queries, rate, seconds)).await?
    };

    eprintln!(
        "[bench-api] DNS latency during a storm of bad credentials from {} clients",
        args.storm_clients
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rejected = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for client in 0..args.storm_clients {
        let (stop, rejected, other) = (stop.clone(), rejected.clone(), other.clone());
        let api = args.api[0];
        // Half the clients are known users with a wrong key, half unknown users: both
        // cost the server one bcrypt check.
        let account = &accounts[client % accounts.len()];
        let (user, subdomain) = if client % 2 == 0 {
            (account.username.clone(), account.subdomain.clone())
        } else {
            (uuid::Uuid::new_v4().to_string(), account.subdomain.clone())
        };
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::new(api);
            let wrong_key = "x".repeat(40);
            let body = format!(r#"{{"subdomain": "{subdomain}", "txt": "{}"}}"#, value(7));
            let headers = [
                ("X-Api-User", user.as_str()),
                ("X-Api-Key", wrong_key.as_str()),
            ];
            while !stop.load(Ordering::Relaxed) {
                match connection.post("/update", &headers, &body).await {
                    Ok((401, _)) => rejected.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Let the storm fill the server's queue before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rejected.load(Ordering::Relaxed);
    let stormy = tokio::task::spawn_blocking(move || probe(server, queries, rate, seconds)).await?;
    let during = rejected.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }

    println!();
    println!(
        "| API | DNS queries | unanswered (1 s) | DNS p50 ms | DNS p99 ms | DNS p99.9 ms | DNS max ms | rejected /update per s |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (phase, mut result, rejected_per_second) in [
        ("quiet", quiet, 0.0),
        (
            "bad-credential storm",
            stormy,
            during as f64 / seconds as f64,
        ),
    ] {
        result.latencies.sort();
        let l = &result.latencies;
        println!(
            "| {phase} | {} | {} | {} | {} | {} | {} | {rejected_per_second:.1} |",
            l.len() + result.unanswered,
            result.unanswered,
            ms3(percentile(l, 50.0)),
            ms3(percentile(l, 99.0)),
            ms3(percentile(l, 99.9)),
            ms3(l.last().copied().unwrap_or_default()),
        );
    }
    let other = other.load(Ordering::Relaxed);
    if other > 0 {
        eprintln!("[bench-api] {other} storm requests were answered with something other than 401");
    }
    Ok(())
}

fn ms3(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}
