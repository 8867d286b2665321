//! The acme-dns HTTP API from a client's side, for tests of accounts that were not made
//! by `/register` (imported, or given credentials by `kube-acme-dns credentials`).

use std::{net::SocketAddr, time::Duration};

/// A DNS-01 value: 43 characters of base64url.
pub const TXT: &str = "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo";

/// What curl saw.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    /// Response headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `method path` with `headers` and `body` through curl; `from` binds the client to a
/// loopback address of its own, as a client elsewhere would have.
pub fn request(
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
    from: Option<&str>,
) -> Reply {
    let mut args: Vec<String> = ["-s", "-i", "-X", method, "-H", "Expect:"]
        .map(String::from)
        .to_vec();
    if method == "POST" {
        args.extend(["--data-binary".to_string(), body.to_string()]);
    }
    if let Some(from) = from {
        args.extend(["--interface".to_string(), from.to_string()]);
    }
    for header in headers {
        args.extend(["-H".to_string(), header.clone()]);
    }
    let host = match api {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    args.push(format!("http://{host}{path}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = super::run("curl", &args, None);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("an HTTP answer from curl {args:?}: {out:?}"));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        code,
        headers,
        body: body.to_string(),
    }
}

/// POSTs `body` with `headers` through curl, as a client would; returns the status and
/// the body.
pub fn post(api: SocketAddr, path: &str, headers: &[String], body: &str) -> (u16, String) {
    let reply = request(api, "POST", path, headers, body, None);
    (reply.code, reply.body)
}

/// `/update` with acme-dns credentials; `forwarded_for` is sent as X-Forwarded-For.
pub fn update(
    api: SocketAddr,
    username: &str,
    key: &str,
    subdomain: &str,
    txt: &str,
    forwarded_for: Option<&str>,
) -> (u16, String) {
    let mut headers = vec![
        format!("X-Api-User: {username}"),
        format!("X-Api-Key: {key}"),
    ];
    if let Some(address) = forwarded_for {
        headers.push(format!("X-Forwarded-For: {address}"));
    }
    let body = format!(r#"{{"subdomain": "{subdomain}", "txt": "{txt}"}}"#);
    post(api, "/update", &headers, &body)
}

/// `serve` with the DNS, controller and API roles for `namespace` only, as the admin
/// kubeconfig's user (the chart's RBAC is proven by the compat test), believing
/// X-Forwarded-For from loopback so a test can speak for another address. Returns once
/// it is ready and the API listens.
pub async fn serve(namespace: &str) -> (super::Serve, SocketAddr) {
    let kubeconfig = std::env::var("KUBECONFIG").expect("KUBECONFIG (see common::client)");
    let api: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
    let serve = super::spawn_serve_as(
        kubeconfig.into(),
        namespace,
        "kube-acme-dns-leader",
        &[
            "--leader-election-namespace",
            namespace,
            "--roles",
            "dns,controller,api",
            "--api-addr",
            &api.to_string(),
            "--api-namespace",
            namespace,
            "--api-bcrypt-cost",
            "4",
            "--api-trusted-proxies",
            "127.0.0.0/8",
        ],
    );
    super::wait_ready(&serve).await;
    super::eventually("the API listens", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(api).ok()
    })
    .await;
    (serve, api)
}
