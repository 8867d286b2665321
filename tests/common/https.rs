//! A small HTTPS/1.0 client on rustls, so a test sees the exact outcome of a request:
//! the status code, or the TLS error (an alert the server sent, a certificate refused).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName},
};

use super::pki::Identity;

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Request<'a> {
        Request {
            method: "GET",
            path,
            headers: &[],
            body: &[],
        }
    }
}

fn connect(
    addr: SocketAddr,
    server_name: &str,
    ca: &CertificateDer<'static>,
    client: Option<&Identity>,
) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let config = match client {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert_der()], id.key_der())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let connection = ClientConnection::new(Arc::new(config), name).unwrap();
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(connection, socket);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Completes a TLS handshake and waits a moment for what the server says next. In
/// TLS 1.3 the server judges the client's certificate after the client has finished its
/// side of the handshake, so a refusal arrives as an alert just after it: that alert is
/// the error. Ok when the server stays silent, waiting for a request.
pub fn handshake(
    addr: SocketAddr,
    server_name: &str,
    ca: &CertificateDer<'static>,
    client: Option<&Identity>,
) -> std::io::Result<()> {
    let mut tls = connect(addr, server_name, ca, client)?;
    tls.sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut byte = [0u8; 1];
    match tls.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}

/// Sends `request` to `addr`, verifying the server as `server_name` against `ca`, with
/// `client` as the client certificate if given. Returns the status and body, or the I/O
/// error (a TLS failure is an `io::Error` wrapping a `rustls::Error`: see `tls_error`).
pub fn send(
    addr: SocketAddr,
    server_name: &str,
    ca: &CertificateDer<'static>,
    client: Option<&Identity>,
    request: &Request,
) -> std::io::Result<(u16, String)> {
    let mut tls = connect(addr, server_name, ca, client)?;

    let mut head = format!(
        "{} {} HTTP/1.0\r\nHost: {server_name}\r\nUser-Agent: kube-acme-dns-tests\r\nContent-Length: {}\r\n",
        request.method,
        request.path,
        request.body.len()
    );
    for (name, value) in request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    tls.write_all(request.body)?;
    tls.flush()?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // Servers may close without close_notify once the response is complete.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// The TLS error inside an I/O error, if that is what it is.
pub fn tls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}
