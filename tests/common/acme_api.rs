//! The acme-dns HTTP API from a client's side, for tests of accounts that were not made
//! by `/register` (imported, or given credentials by `kube-acme-dns credentials`).

use std::{net::SocketAddr, time::Duration};

/// A DNS-01 value: 43 characters of base64url.
pub const TXT: &str = "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo";

/// POSTs `body` with `headers` through curl, as a client would; returns the status and
/// the body.
pub fn post(api: SocketAddr, path: &str, headers: &[String], body: &str) -> (u16, String) {
    let mut args = vec![
        "-s".to_string(),
        "-o".into(),
        "-".into(),
        "-w".into(),
        "\n%{http_code}".into(),
        "-X".into(),
        "POST".into(),
        "--data-binary".into(),
        body.into(),
    ];
    for header in headers {
        args.extend(["-H".to_string(), header.clone()]);
    }
    args.push(format!("http://{api}{path}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = super::run("curl", &args, None);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
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
