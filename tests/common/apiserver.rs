//! A second kube-apiserver on the local control plane's etcd, as a cluster with several
//! API servers has them: started the way `e2e/cluster.sh` started the first, on a port of
//! its own and with extra flags (a feature gate turned off, say), and stopped, killed or
//! started again by the test. Also the etcd underneath, for compacting it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::Duration,
};

use super::daemon::Daemon;

/// The local control plane's state directory (`e2e/cluster.sh`).
pub fn state_dir() -> PathBuf {
    std::env::var("KAD_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/.state"))
}

/// The first API server's command line, as `e2e/cluster.sh up` kept it.
fn first_args() -> Vec<String> {
    let path = state_dir().join("kube-apiserver.args");
    let kept = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e}; start the local control plane with `make cluster-up`",
            path.display()
        )
    });
    kept.split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8(arg.to_vec()).unwrap())
        .collect()
}

pub struct ApiServer {
    daemon: Option<Daemon>,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
}

impl ApiServer {
    /// Starts a second API server with `extra` flags and waits until it is ready.
    pub fn start(name: &str, extra: &[&str]) -> ApiServer {
        let port = super::free_port();
        let dir = std::env::temp_dir().join(super::unique_name(name));
        let mut args: Vec<String> = first_args()
            .into_iter()
            .map(|arg| {
                if arg.starts_with("--secure-port=") {
                    format!("--secure-port={port}")
                } else if arg.starts_with("--cert-dir=") {
                    format!("--cert-dir={}", dir.join("certs").display())
                } else {
                    arg
                }
            })
            .collect();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let mut server = ApiServer {
            daemon: None,
            port,
            dir,
            args,
        };
        server.start_again();
        server
    }

    /// Starts it again after [`ApiServer::kill`], on the same port and flags.
    pub fn start_again(&mut self) {
        assert!(self.daemon.is_none(), "already running");
        let mut command = std::process::Command::new(&self.args[0]);
        command.args(&self.args[1..]);
        let mut daemon = Daemon::spawn("kube-apiserver", command, &self.dir);
        let kubeconfig = self.kubeconfig(&state_dir().join("kubeconfig"));
        daemon
            .wait_ready(Duration::from_secs(90), || ready(&kubeconfig))
            .unwrap_or_else(|failure| panic!("second kube-apiserver: {}", failure.message));
        self.daemon = Some(daemon);
    }

    /// Kills it at once, as a crashed or lost API server goes.
    pub fn kill(&mut self) {
        drop(self.daemon.take());
    }

    /// `kubeconfig` with its cluster's server moved to this API server.
    pub fn kubeconfig(&self, kubeconfig: &Path) -> PathBuf {
        let mut config = kube::config::Kubeconfig::read_from(kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", kubeconfig.display()));
        for cluster in &mut config.clusters {
            if let Some(cluster) = cluster.cluster.as_mut() {
                cluster.server = Some(format!("https://127.0.0.1:{}", self.port));
            }
        }
        std::fs::create_dir_all(&self.dir).unwrap();
        let path = self.dir.join(format!(
            "{}.kubeconfig",
            super::unique_name("second-apiserver")
        ));
        std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
        path
    }
}

/// Whether the API server `kubeconfig` points at answers /readyz with "ok".
fn ready(kubeconfig: &Path) -> Result<(), String> {
    let out = std::process::Command::new("kubectl")
        .args(["get", "--raw", "/readyz", "--request-timeout", "2s"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() && out.stdout.starts_with(b"ok") {
        return Ok(());
    }
    std::thread::sleep(Duration::from_millis(250));
    Err(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The control plane's etcd, from the first API server's `--etcd-servers`.
fn etcd() -> SocketAddr {
    let args = first_args();
    let url = args
        .iter()
        .find_map(|arg| arg.strip_prefix("--etcd-servers="))
        .expect("--etcd-servers in the API server's command line");
    url.trim_start_matches("http://")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// A POST of JSON to etcd's HTTP gateway; the reply's body.
fn etcd_post(path: &str, body: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&etcd(), Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: etcd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    assert_eq!(
        head.split(' ').nth(1),
        Some("200"),
        "etcd {path}: {head}\n{body}"
    );
    body.to_string()
}

/// Compacts etcd's history up to now, as kube-apiserver does every five minutes: a watch
/// from any earlier resourceVersion is then told it expired (410 Gone).
pub fn compact_etcd() -> u64 {
    // The store's current revision is in the header of any read.
    let read = etcd_post("/v3/kv/range", r#"{"key":"AA==","limit":1}"#);
    let reply: serde_json::Value = serde_json::from_str(&read).unwrap();
    let revision: u64 = reply["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("etcd's revision in {read}"));
    etcd_post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    );
    revision
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
