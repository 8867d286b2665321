//! Shared set-up for tests that run against the local control plane started by
//! `make cluster-up` (`e2e/cluster.sh up`). `make test` starts it and exports KUBECONFIG.

#![allow(dead_code)]

pub mod acme_api;
pub mod aggregation;
pub mod apiserver;
pub mod bind;
pub mod cert_manager;
pub mod certificate;
pub mod daemon;
pub mod dns;
pub mod https;
pub mod knot;
pub mod node;
pub mod pebble;
pub mod pki;
pub mod postgres;
pub mod unbound;

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{conditions, wait::await_condition},
};

/// A client for the local control plane. Fails with what to run when there is none:
/// these tests prove behaviour against a real API server and must not pass without one.
pub async fn client() -> Client {
    let Ok(path) = std::env::var("KUBECONFIG") else {
        panic!(
            "KUBECONFIG is not set: these tests need the local control plane. \
             Run `make test`, or `make cluster-up && eval $(make -s cluster-env)` first."
        );
    };
    let config = kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {path}: {e}"));
    Client::try_from(config).expect("client from kubeconfig")
}

/// Installs (or updates) the CRD exactly as `kube-acme-dns crd` prints it and waits until
/// the API server serves it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = kube_acme_dns::api::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply("kube-acme-dns-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the generated CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established within 30 s")
    .expect("watching the CRD");
}

/// Who holds the Lease `name` now, if anyone.
pub async fn lease_holder(
    leases: &Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
) -> Option<String> {
    leases
        .get(name)
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// A measurement a user would want to see from a passing test: on stderr, and appended
/// to the file `KAD_TEST_REPORT` names (`e2e/test.sh` prints it after the tests).
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Ok(path) = std::env::var("KAD_TEST_REPORT") {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(path) {
            let _ = writeln!(file, "{test}: {line}");
        }
    }
}

/// A name unique to this test run, so tests can run in parallel and be re-run against
/// the same control plane without cleaning up first.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a namespace of its own for a test. Namespaces are left behind for a look after
/// a failure; their names are unique, and `make cluster-down` removes everything.
pub async fn create_namespace(client: &Client, prefix: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    let name = unique_name(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name }
    }))
    .unwrap();
    namespaces
        .create(&Default::default(), &namespace)
        .await
        .expect("create a test namespace");
    name
}

/// Waits up to a minute until the CRDs named are Established. `kubectl wait` fails at
/// once, rather than waiting, on a CRD the API server has not yet given any condition
/// (one just created), so it is asked again until it waits.
pub fn wait_established(crds: &[&str]) {
    let mut args = vec!["wait", "--for", "condition=Established", "--timeout=60s"];
    let names: Vec<String> = crds.iter().map(|c| format!("crd/{c}")).collect();
    args.extend(names.iter().map(String::as_str));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let output = std::process::Command::new("kubectl")
            .args(&args)
            .output()
            .expect("run kubectl (is the cluster env loaded?)");
        if output.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "CRDs not Established: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs a command from PATH (kubectl and helm come from the local control plane's env)
/// and returns its stdout, failing the test with its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (is the cluster env loaded?): {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kube-acme-dns");
pub const RELEASE: &str = "kad";
pub const RELEASE_NAMESPACE: &str = "kube-acme-dns";

/// Renders the chart as `helm install kad -n kube-acme-dns` would.
pub fn render_chart(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        RELEASE,
        CHART,
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        "1.37.2",
    ];
    args.extend_from_slice(extra);
    run("helm", &args, None)
}

/// Applies the chart's ServiceAccount and RBAC and writes a kubeconfig that
/// authenticates as that ServiceAccount, so a process run with it proves the chart's
/// RBAC is enough for what it does.
pub fn chart_identity_kubeconfig() -> std::path::PathBuf {
    // Every role on, so the RBAC of each is applied.
    let identity = render_chart(&[
        "--set",
        "api.enabled=true",
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
        "--show-only",
        "templates/rbac-webhook.yaml",
        "--show-only",
        "templates/rbac-api.yaml",
    ]);
    apply_namespace(RELEASE_NAMESPACE);
    run("kubectl", &APPLY, Some(&identity));
    token_kubeconfig(RELEASE_NAMESPACE, &format!("{RELEASE}-kube-acme-dns"))
}

/// Applies the chart's Role and RoleBinding that let its ServiceAccount keep acme-dns API
/// accounts and their credential Secrets in `namespace` (`--api-namespace`).
pub fn apply_api_rbac(namespace: &str) {
    let api_rbac = render_chart(&[
        "--set",
        "api.enabled=true",
        "--set",
        &format!("api.namespace={namespace}"),
        "--show-only",
        "templates/rbac-api.yaml",
    ]);
    run("kubectl", &APPLY, Some(&api_rbac));
}

/// Server-side apply: create-or-update in one request, so tests applying the same object
/// at once do not race (client-side apply reads first, and the slower create fails with
/// AlreadyExists).
const APPLY: [&str; 5] = ["apply", "--server-side", "--force-conflicts", "-f", "-"];

/// Creates `namespace` unless it exists (applied, so tests sharing it do not race).
pub fn apply_namespace(namespace: &str) {
    let manifest = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
    run("kubectl", &APPLY, Some(&manifest));
}

/// Creates the ServiceAccount `namespace/name` (and its namespace) unless it exists.
pub fn apply_service_account(namespace: &str, name: &str) {
    apply_namespace(namespace);
    let manifest = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
    );
    run("kubectl", &APPLY, Some(&manifest));
}

/// A kubeconfig for the admin kubeconfig's cluster that authenticates with a token of
/// the ServiceAccount `namespace/name`.
pub fn token_kubeconfig(namespace: &str, name: &str) -> std::path::PathBuf {
    let token = run(
        "kubectl",
        &["create", "token", name, "-n", namespace, "--duration", "1h"],
        None,
    );
    let mut kubeconfig = kube::config::Kubeconfig::read().expect("read the admin kubeconfig");
    for auth in &mut kubeconfig.auth_infos {
        auth.auth_info = Some(kube::config::AuthInfo {
            token: Some(token.trim().to_string().into()),
            ..Default::default()
        });
    }
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique_name(name)));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// A client that uses `kubeconfig`.
pub async fn client_from(kubeconfig: &std::path::Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// `n` distinct ports, each free on 127.0.0.1 for both UDP and TCP at the time of
/// asking. Every fixture picks its ports here.
///
/// They come from below the kernel's ephemeral range (32768–60999 by default), from which
/// outgoing connections take their local ports: a port picked there and released could
/// be taken by some client's connection before the server binds it.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Each test process starts somewhere else in the span.
    let offset = std::process::id().wrapping_mul(7919);
    // Held until all are picked.
    let mut held = Vec::new();
    for _ in 0..SPAN {
        if held.len() == n {
            break;
        }
        let port =
            (FIRST + offset.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) else {
            continue;
        };
        if let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            held.push((port, udp, tcp));
        }
    }
    assert_eq!(held.len(), n, "no {n} free ports on 127.0.0.1 from {FIRST}");
    held.into_iter().map(|(port, _, _)| port).collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

pub const BIN: &str = env!("CARGO_BIN_EXE_kube-acme-dns");

/// A running `kube-acme-dns serve`, killed when dropped.
pub struct Serve {
    pub child: tokio::process::Child,
    pub dns: std::net::SocketAddr,
    pub metrics: std::net::SocketAddr,
    /// When the process was started.
    pub started: std::time::Instant,
}

/// Starts `serve` with the chart's ServiceAccount, watching one namespace, on free
/// ports, with a leader election lease of its own in the release namespace.
pub fn spawn_serve(namespace: &str, lease: &str, extra: &[&str]) -> Serve {
    let mut args = vec!["--leader-election-namespace", RELEASE_NAMESPACE];
    args.extend_from_slice(extra);
    spawn_serve_as(chart_identity_kubeconfig(), namespace, lease, &args)
}

/// Starts `serve` watching every namespace.
pub fn spawn_serve_all_namespaces(kubeconfig: std::path::PathBuf, extra: &[&str]) -> Serve {
    spawn(kubeconfig, extra, None)
}

/// Where a `serve` logs, for a test that reads its log: a file, and the `RUST_LOG` filter.
/// Without one, it logs to the test's stderr at `info`.
#[derive(Clone, Copy)]
pub struct ServeLog<'a> {
    pub path: &'a std::path::Path,
    pub filter: &'a str,
}

/// Starts `serve` watching every namespace, logging to `log`.
pub fn spawn_serve_all_namespaces_logging(
    kubeconfig: std::path::PathBuf,
    extra: &[&str],
    log: ServeLog,
) -> Serve {
    spawn(kubeconfig, extra, Some(log))
}

pub fn spawn_serve_as(
    kubeconfig: std::path::PathBuf,
    namespace: &str,
    lease: &str,
    extra: &[&str],
) -> Serve {
    spawn_watching(kubeconfig, namespace, lease, extra, None)
}

/// [`spawn_serve`], logging to `log`.
pub fn spawn_serve_logging(namespace: &str, lease: &str, extra: &[&str], log: ServeLog) -> Serve {
    let mut args = vec!["--leader-election-namespace", RELEASE_NAMESPACE];
    args.extend_from_slice(extra);
    spawn_watching(
        chart_identity_kubeconfig(),
        namespace,
        lease,
        &args,
        Some(log),
    )
}

fn spawn_watching(
    kubeconfig: std::path::PathBuf,
    namespace: &str,
    lease: &str,
    extra: &[&str],
    log: Option<ServeLog>,
) -> Serve {
    let mut args = vec![
        "--watch-namespace",
        namespace,
        "--leader-election-lease",
        lease,
    ];
    args.extend_from_slice(extra);
    spawn(kubeconfig, &args, log)
}

fn spawn(kubeconfig: std::path::PathBuf, extra: &[&str], log: Option<ServeLog>) -> Serve {
    let ports = free_ports(2);
    let (dns, metrics): (std::net::SocketAddr, std::net::SocketAddr) = (
        format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
        format!("127.0.0.1:{}", ports[1]).parse().unwrap(),
    );
    let started = std::time::Instant::now();
    // Benchmarks may measure another build (KAD_SERVE_BIN), e.g. to compare two.
    let bin = std::env::var("KAD_SERVE_BIN").unwrap_or_else(|_| BIN.to_string());
    let (filter, stderr) = match log {
        Some(log) => (
            log.filter,
            std::process::Stdio::from(
                std::fs::File::create(log.path)
                    .unwrap_or_else(|e| panic!("create {}: {e}", log.path.display())),
            ),
        ),
        None => ("info", std::process::Stdio::inherit()),
    };
    let child = tokio::process::Command::new(bin)
        .args(["serve", "--zone", "auth.example.test"])
        .args(["--dns-addr", &dns.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .args(["--nameserver-address", "127.0.0.1"])
        .args(extra)
        .env("KUBECONFIG", kubeconfig)
        // Never the machine's resolver: delegation checks of tests that do not give a
        // resolver of their own (the flag wins over this) go to a closed loopback port.
        .env("KUBE_ACME_DNS_DELEGATION_RESOLVER", "127.0.0.1:9")
        // Tests ask from loopback far faster than one network asks a real server: the
        // rate limit stays on, so its path runs, but out of reach (the flag wins over
        // this). Its own tests are in src/dns/rrl.rs and src/dns/server.rs.
        .env("KUBE_ACME_DNS_RRL_RATE", "1000000")
        .env("KUBE_ACME_DNS_RRL_BURST", "1000000")
        .env("RUST_LOG", filter)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start kube-acme-dns serve");
    Serve {
        child,
        dns,
        metrics,
        started,
    }
}

/// A plain HTTP/1.0 GET, enough for the health and metrics endpoints.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what} did not happen within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled metric in a /metrics body.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until `serve` reports ready; how long after its start that was.
pub async fn wait_ready(serve: &Serve) -> Duration {
    eventually("serve ready", Duration::from_secs(120), || async {
        (http_get(serve.metrics, "/readyz").await?.0 == 200).then_some(())
    })
    .await;
    serve.started.elapsed()
}

/// The reasons of every Event recorded in `namespace`, space-separated.
pub fn event_reasons(namespace: &str) -> String {
    run(
        "kubectl",
        &[
            "get",
            "events.events.k8s.io",
            "-n",
            namespace,
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        None,
    )
}

/// The commit being measured, and whether the tree had changes on top of it. Read it
/// when a benchmark starts: the tree may change while it runs, the binary does not.
pub fn revision() -> String {
    let head = run("git", &["rev-parse", "--short", "HEAD"], None);
    let changes = run("git", &["status", "--porcelain"], None);
    if changes.trim().is_empty() {
        head.trim().to_string()
    } else {
        format!("{} + uncommitted changes", head.trim())
    }
}
