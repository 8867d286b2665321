use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{Router, body::Bytes, routing::get, routing::post};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
    task::JoinHandle,
};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("kube-acme-dns-http-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct TestCert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn test_cert() -> TestCert {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    TestCert {
        der: generated.cert.der().clone(),
        cert_pem: generated.cert.pem(),
        key_pem: generated.signing_key.serialize_pem(),
    }
}

/// Writes the pair the way a Secret volume does: a new file renamed into place.
fn install(dir: &TempDir, cert: &TestCert) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    for (path, contents) in [(&cert_path, &cert.cert_pem), (&key_path, &cert.key_pem)] {
        let staged = path.with_extension("new");
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(&staged, path).unwrap();
    }
    (cert_path, key_path)
}

/// The leaf certificate a fresh TLS connection is served.
async fn served_certificate(
    addr: std::net::SocketAddr,
    trusted: &[&TestCert],
) -> CertificateDer<'static> {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.der.clone()).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One HTTP/1.1 request on a new connection; the whole response as text.
async fn request(addr: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = format!(
        "{head} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

async fn start_plain(
    router: Router,
    limits: Limits,
) -> (std::net::SocketAddr, CancellationToken, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(listener, router, limits, shutdown.clone()));
    (addr, shutdown, server)
}

#[tokio::test]
async fn new_connections_get_the_certificate_written_after_start() {
    let dir = TempDir::new();
    let (first, second) = (test_cert(), test_cert());
    let (cert_path, key_path) = install(&dir, &first);
    let serving = ServingCert::load(&cert_path, &key_path).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(
        serving
            .clone()
            .keep_current(Duration::from_millis(50), shutdown.clone()),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().route("/", get(|| async { "ok" }));
    tokio::spawn(serve_tls(
        listener,
        TlsConfig::new(serving.server_config()),
        router,
        Limits::default(),
        shutdown.clone(),
    ));

    assert_eq!(
        served_certificate(addr, &[&first, &second]).await,
        first.der
    );
    install(&dir, &second);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while served_certificate(addr, &[&first, &second]).await != second.der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
}

#[test]
fn a_key_that_does_not_match_keeps_the_previous_pair() {
    let dir = TempDir::new();
    let (first, second) = (test_cert(), test_cert());
    let (cert_path, key_path) = install(&dir, &first);
    let serving = ServingCert::load(&cert_path, &key_path).unwrap();
    std::fs::write(&key_path, &second.key_pem).unwrap();
    let err = serving.reload().unwrap_err().to_string();
    assert!(err.contains("does not belong"), "{err}");
    std::fs::write(&cert_path, &second.cert_pem).unwrap();
    assert!(serving.reload().unwrap(), "the matching pair is taken");
}

#[test]
fn a_missing_certificate_file_names_the_path() {
    let err = ServingCert::load("/nonexistent/tls.crt", "/nonexistent/tls.key")
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tls.crt"), "{err}");
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish_and_refuses_new_ones() {
    let entered = Arc::new(Notify::new());
    let router = Router::new().route(
        "/slow",
        get({
            let entered = entered.clone();
            move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "finished"
            }
        }),
    );
    let (addr, shutdown, server) = start_plain(router, Limits::default()).await;

    let in_flight = tokio::spawn(async move { request(addr, "GET /slow", b"").await });
    entered.notified().await;
    shutdown.cancel();
    let response = in_flight.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("finished"), "{response}");

    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server returns once drained")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}

#[tokio::test]
async fn shutdown_waits_no_longer_than_the_drain_bound() {
    let entered = Arc::new(Notify::new());
    let router = Router::new().route(
        "/stuck",
        get({
            let entered = entered.clone();
            move || async move {
                entered.notify_one();
                std::future::pending::<()>().await;
            }
        }),
    );
    let limits = Limits {
        drain_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (addr, shutdown, server) = start_plain(router, limits).await;
    tokio::spawn(async move { request(addr, "GET /stuck", b"").await });
    entered.notified().await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server gives up on the stuck request")
        .unwrap();
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let router = Router::new().route("/echo", post(|body: Bytes| async move { body }));
    let limits = Limits {
        max_body: 1024,
        ..Limits::default()
    };
    let (addr, shutdown, _) = start_plain(router, limits).await;
    let response = request(addr, "POST /echo", &[b'x'; 1000]).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let response = request(addr, "POST /echo", &[b'x'; 2000]).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    shutdown.cancel();
}

#[tokio::test]
async fn requests_over_the_time_limit_get_503() {
    let router = Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let limits = Limits {
        request_timeout: Duration::from_millis(100),
        ..Limits::default()
    };
    let (addr, shutdown, _) = start_plain(router, limits).await;
    let response = request(addr, "GET /slow", b"").await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    shutdown.cancel();
}

/// One raw HTTP/1.1 request with an extra header of `pad` bytes; the response's first line.
async fn status_line_with_header(addr: std::net::SocketAddr, pad: usize) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\nx-pad: {}\r\n\r\n",
        "a".repeat(pad)
    );
    // The server may answer and close before reading all of a large head.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn request_heads_over_the_limit_get_431() {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let (addr, shutdown, _) = start_plain(router, Limits::default()).await;
    assert!(
        status_line_with_header(addr, 1000)
            .await
            .starts_with("HTTP/1.1 200")
    );
    let status = status_line_with_header(addr, 200 * 1024).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status:?}");
    shutdown.cancel();
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_the_others_served() {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let (addr, shutdown, _) = start_plain(router, limits).await;
    // Two idle connections take both slots.
    let idle = [
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let _ = third.read_to_end(&mut response).await;
    assert!(response.is_empty(), "closed unanswered: {response:?}");
    // Once one goes, a new connection is served.
    drop(idle);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = request(addr, "GET /", b"").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    shutdown.cancel();
}
