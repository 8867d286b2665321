//! The acme-dns compatible API through the running binary, against the local control
//! plane: what a client that speaks acme-dns sees (`curl` stands in for it here).

mod common;

use std::{net::SocketAddr, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use serde_json::Value;

use kube_acme_dns::api::AcmeDnsAccount;

use common::acme_api::{TXT, post, request};

/// Starts `serve` with the API on `api` and the extra flags; returns once it is ready and
/// the API listens.
async fn spawn_api(lease: &str, api: SocketAddr, extra: &[&str]) -> common::Serve {
    let api_addr = api.to_string();
    let mut args = vec![
        "--roles",
        "dns,controller,api",
        "--api-addr",
        &api_addr,
        "--api-namespace",
        common::RELEASE_NAMESPACE,
        "--api-bcrypt-cost",
        "4",
    ];
    args.extend_from_slice(extra);
    // Runs as the chart's ServiceAccount, so this also proves the chart's RBAC.
    let serve = common::spawn_serve(common::RELEASE_NAMESPACE, lease, &args);
    common::wait_ready(&serve).await;
    common::eventually("the API listens", Duration::from_secs(20), || async {
        std::net::TcpStream::connect(api).ok()
    })
    .await;
    serve
}

fn loopback_api() -> SocketAddr {
    format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap()
}

/// The headers `/update` authenticates with.
fn credentials(account: &Value) -> Vec<String> {
    vec![
        format!("X-Api-User: {}", account["username"].as_str().unwrap()),
        format!("X-Api-Key: {}", account["password"].as_str().unwrap()),
    ]
}

fn update_body(account: &Value, txt: &str) -> String {
    serde_json::json!({"subdomain": account["subdomain"], "txt": txt}).to_string()
}

fn register(api: SocketAddr, body: &str) -> Value {
    let (code, body) = post(api, "/register", &[], body);
    assert_eq!(code, 201, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn fqdn(account: &Value) -> String {
    format!(
        "{}.auth.example.test.",
        account["subdomain"].as_str().unwrap()
    )
}

const FORBIDDEN: &str = r#"{"error": "forbidden"}"#;

/// A DNS-01 value: 43 characters of base64url.
fn txt(n: u8) -> String {
    let mut value = TXT.to_string();
    value.replace_range(..1, &((b'A' + n) as char).to_string());
    value
}

#[tokio::test]
async fn register_update_answered_by_dns_wrong_keys_refused_and_deregister() {
    let client = common::client().await;
    common::install_crd(&client).await;
    // The chart's RBAC lets the API register in the release namespace.
    let namespace = common::RELEASE_NAMESPACE;
    let api = loopback_api();
    let serve = spawn_api(&common::unique_name("compat"), api, &[]).await;

    // lego's client library registers with a `null` body.
    let (code, body) = post(api, "/register", &[], "null");
    assert_eq!(code, 201, "{body}");
    assert!(!body.contains('\n'), "one line: {body}");
    let account: Value = serde_json::from_str(&body).unwrap();
    let subdomain = account["subdomain"].as_str().unwrap();
    let password = account["password"].as_str().unwrap();
    assert_eq!(
        account["fulldomain"],
        format!("{subdomain}.auth.example.test")
    );

    // The account is an AcmeDnsAccount with its subdomain pinned; the Secret it owns
    // holds the username and a bcrypt hash, never the key itself.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), namespace);
    let created = accounts.get(subdomain).await.unwrap();
    assert_eq!(created.spec.subdomain.as_ref().unwrap().0, subdomain);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get(&format!("{subdomain}-credentials"))
        .await
        .unwrap();
    assert_eq!(secret.owner_references()[0].uid, created.uid().unwrap());
    let data = secret.data.unwrap();
    assert_eq!(
        data["username"].0,
        account["username"].as_str().unwrap().as_bytes()
    );
    let hash = String::from_utf8(data["key-hash"].0.clone()).unwrap();
    assert!(hash.starts_with("$2"), "a bcrypt hash: {hash}");
    assert!(bcrypt::verify(password, &hash).unwrap());
    assert!(!data.values().any(|v| v.0 == password.as_bytes()));

    // acme.sh sends its default form content type with a JSON body.
    let credentials = [
        format!("X-Api-User: {}", account["username"].as_str().unwrap()),
        format!("X-Api-Key: {password}"),
        "Content-Type: application/x-www-form-urlencoded".to_string(),
    ];
    let update = format!(r#"{{"subdomain": "{subdomain}", "txt": "{TXT}"}}"#);
    // The controller assigns the pinned subdomain within moments of registration.
    let (code, body) = common::eventually("update accepted", Duration::from_secs(10), || async {
        let reply = post(api, "/update", &credentials, &update);
        (reply.0 == 200).then_some(reply)
    })
    .await;
    assert_eq!(
        (code, body.as_str()),
        (200, format!(r#"{{"txt": "{TXT}"}}"#).as_str())
    );
    // Answered by this replica as soon as /update returns.
    let fqdn = format!("{subdomain}.auth.example.test.");
    assert_eq!(
        common::dns::txt_values(serve.dns, &fqdn),
        Some(vec![TXT.to_string()])
    );

    let wrong = [
        credentials[0].clone(),
        format!("X-Api-Key: {}", "A".repeat(40)),
    ];
    let (code, body) = post(api, "/update", &wrong, &update);
    assert_eq!((code, body.as_str()), (401, r#"{"error": "forbidden"}"#));
    let (code, body) = post(api, "/nothing", &[], "");
    assert_eq!((code, body.as_str()), (404, "404 page not found\n"));

    // Deregistration with the account's own credentials removes the account and the
    // Secret, and the credentials stop working.
    let (code, body) = post(api, "/deregister", &credentials, "");
    assert_eq!(code, 200, "{body}");
    assert!(accounts.get_opt(subdomain).await.unwrap().is_none());
    assert!(
        secrets
            .get_opt(&format!("{subdomain}-credentials"))
            .await
            .unwrap()
            .is_none()
    );
    common::eventually("credentials refused", Duration::from_secs(5), || async {
        (post(api, "/update", &credentials, &update).0 == 401).then_some(())
    })
    .await;
}

/// Updates until accepted (the controller assigns a new account's pinned subdomain
/// within moments), through `from` with `extra` headers.
async fn first_update(api: SocketAddr, account: &Value, value: &str, from: Option<&str>) {
    let body = update_body(account, value);
    common::eventually("update accepted", Duration::from_secs(10), || async {
        let reply = request(api, "POST", "/update", &credentials(account), &body, from);
        (reply.code == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn every_row_of_the_acme_dns_api_through_the_binary() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let api = loopback_api();
    // 127.0.0.2 plays a proxy in front of the API; the registration limit is tested
    // on its own below.
    let serve = spawn_api(
        &common::unique_name("compat-rows"),
        api,
        &[
            "--api-trusted-proxies",
            "127.0.0.2/32",
            "--api-register-burst",
            "0",
        ],
    )
    .await;

    // Routes: /health, unknown paths, wrong methods.
    let health = request(api, "GET", "/health", &[], "", None);
    assert_eq!((health.code, health.body.as_str()), (200, ""));
    let unknown = request(api, "GET", "/api/v1/accounts", &[], "", None);
    assert_eq!(
        (unknown.code, unknown.body.as_str()),
        (404, "404 page not found\n")
    );
    assert!(
        unknown
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    for path in ["/register", "/update"] {
        let wrong = request(api, "GET", path, &[], "", None);
        assert_eq!(
            (wrong.code, wrong.header("allow")),
            (405, Some("POST")),
            "{path}"
        );
    }

    // /register: an empty body, `{}` and `null` all register; keys in any case; one line
    // with the keys in acme-dns's order.
    for body in ["", "{}", "null"] {
        let reply = request(api, "POST", "/register", &[], body, None);
        assert_eq!(reply.code, 201, "{body:?}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert!(!reply.body.contains('\n'));
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&reply.body)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let order: Vec<usize> = [
            "username",
            "password",
            "fulldomain",
            "subdomain",
            "allowfrom",
        ]
        .iter()
        .map(|k| reply.body.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(order.is_sorted(), "{}", reply.body);
        assert_eq!(keys.len(), 5, "{}", reply.body);
    }
    let mixed = register(
        api,
        r#"{"AllowFrom": ["[::1]/128", "192.0.2.0/24"], "txt": "x"}"#,
    );
    assert_eq!(
        mixed["allowfrom"],
        serde_json::json!(["::1/128", "192.0.2.0/24"])
    );
    for (body, code) in [
        ("{", "malformed_json_payload"),
        (r#"{"allowfrom": "192.0.2.0/24"}"#, "malformed_json_payload"),
        (r#"{"allowfrom": ["invalid"]}"#, "invalid_allowfrom_cidr"),
        (
            r#"{"allowfrom": ["192.0.2.0/24", "1.2.3.4/33"]}"#,
            "invalid_allowfrom_cidr",
        ),
        (r#"{"allowfrom": ["192.0.2.1"]}"#, "invalid_allowfrom_cidr"),
    ] {
        let reply = request(api, "POST", "/register", &[], body, None);
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (400, format!(r#"{{"error": "{code}"}}"#).as_str()),
            "{body}"
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    // A body over the limit is refused before it is read.
    let huge = format!(r#"{{"allowfrom": [], "pad": "{}"}}"#, "x".repeat(64 * 1024));
    assert_eq!(
        request(api, "POST", "/register", &[], &huge, None).code,
        413
    );

    // /update: every failure to authenticate is the same 401, and writes nothing.
    let account = register(api, "");
    first_update(api, &account, &txt(0), None).await;
    let user = account["username"].as_str().unwrap().to_string();
    let key = account["password"].as_str().unwrap().to_string();
    let other = register(api, "");
    let body = update_body(&account, &txt(1));
    let refused: Vec<(&str, Vec<String>, String)> = vec![
        (
            "user not a UUID",
            vec!["X-Api-User: admin".into(), format!("X-Api-Key: {key}")],
            body.clone(),
        ),
        (
            "key not 40 characters",
            vec![
                format!("X-Api-User: {user}"),
                format!("X-Api-Key: {}", &key[1..]),
            ],
            body.clone(),
        ),
        (
            "unknown user",
            vec![
                format!("X-Api-User: {}", uuid_like(9)),
                format!("X-Api-Key: {key}"),
            ],
            body.clone(),
        ),
        (
            "wrong key",
            vec![
                format!("X-Api-User: {user}"),
                format!("X-Api-Key: {}", "k".repeat(40)),
            ],
            body.clone(),
        ),
        (
            "another account's subdomain",
            credentials(&account),
            update_body(&other, &txt(1)),
        ),
        ("malformed JSON", credentials(&account), "{".into()),
        ("no credentials", vec![], body.clone()),
    ];
    for (case, headers, body) in &refused {
        let reply = request(api, "POST", "/update", headers, body, None);
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (401, FORBIDDEN),
            "{case}"
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    // Upper case and braces around the user are the same user.
    let braced = [
        format!("X-Api-User: {{{}}}", user.to_uppercase()),
        format!("X-Api-Key: {key}"),
    ];
    let reply = request(
        api,
        "POST",
        "/update",
        &braced,
        &update_body(&account, &txt(2)),
        None,
    );
    assert_eq!(reply.code, 200, "{}", reply.body);
    // Keys in any case.
    let mixed_case = format!(
        r#"{{"SubDomain": "{}", "Txt": "{}"}}"#,
        account["subdomain"].as_str().unwrap(),
        txt(3)
    );
    let reply = request(
        api,
        "POST",
        "/update",
        &credentials(&account),
        &mixed_case,
        None,
    );
    assert_eq!(
        (reply.code, reply.body.as_str()),
        (200, format!(r#"{{"txt": "{}"}}"#, txt(3)).as_str())
    );
    // A value that is not a DNS-01 digest: 400 bad_txt, nothing written.
    for bad in [
        "short",
        &format!("{}=", &txt(4)[..42]),
        &format!("{}.", &txt(4)[..42]),
    ] {
        let reply = request(
            api,
            "POST",
            "/update",
            &credentials(&account),
            &update_body(&account, bad),
            None,
        );
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (400, r#"{"error": "bad_txt"}"#),
            "{bad}"
        );
    }
    let huge_update = format!(
        r#"{{"subdomain": "{}", "txt": "{}", "pad": "{}"}}"#,
        account["subdomain"].as_str().unwrap(),
        txt(5),
        "x".repeat(64 * 1024)
    );
    let reply = request(
        api,
        "POST",
        "/update",
        &credentials(&account),
        &huge_update,
        None,
    );
    assert_eq!(reply.code, 413);
    // Every accepted value is served, newest last, and nothing refused is.
    let mut served = common::dns::txt_values(serve.dns, &fqdn(&account)).unwrap();
    served.sort();
    let mut expected = vec![txt(0), txt(2), txt(3)];
    expected.sort();
    assert_eq!(served, expected);

    // allowfrom against the TCP peer; X-Forwarded-For only from the trusted proxy, and
    // then its right-most address that is not the proxy.
    let local = register(api, r#"{"allowfrom": ["127.0.0.3/32"]}"#);
    first_update(api, &local, &txt(0), Some("127.0.0.3")).await;
    let reply = request(
        api,
        "POST",
        "/update",
        &credentials(&local),
        &update_body(&local, &txt(1)),
        Some("127.0.0.1"),
    );
    assert_eq!(
        (reply.code, reply.body.as_str()),
        (401, FORBIDDEN),
        "wrong source"
    );

    let remote = register(api, r#"{"allowfrom": ["192.0.2.0/24"]}"#);
    let forwarded = |xff: &str, from: &str| {
        let mut headers = credentials(&remote);
        headers.push(format!("X-Forwarded-For: {xff}"));
        request(
            api,
            "POST",
            "/update",
            &headers,
            &update_body(&remote, &txt(1)),
            Some(from),
        )
        .code
    };
    common::eventually(
        "update through the proxy",
        Duration::from_secs(10),
        || async { (forwarded("192.0.2.5", "127.0.0.2") == 200).then_some(()) },
    )
    .await;
    assert_eq!(forwarded("198.51.100.1, 192.0.2.5", "127.0.0.2"), 200);
    assert_eq!(
        forwarded("192.0.2.5", "127.0.0.1"),
        401,
        "header from an untrusted peer"
    );
    assert_eq!(
        forwarded("192.0.2.5, 198.51.100.1", "127.0.0.2"),
        401,
        "right-most counts"
    );

    // The requests were counted by route and result.
    let (_, metrics) = common::http_get(serve.metrics, "/metrics").await.unwrap();
    for series in [
        r#"kube_acme_dns_api_requests_total{result="ok",route="/register"}"#,
        r#"kube_acme_dns_api_requests_total{result="bad_request",route="/register"}"#,
        r#"kube_acme_dns_api_requests_total{result="too_large",route="/register"}"#,
        r#"kube_acme_dns_api_requests_total{result="forbidden",route="/update"}"#,
        r#"kube_acme_dns_api_requests_total{result="bad_request",route="/update"}"#,
    ] {
        assert!(
            common::metric(&metrics, series).unwrap_or(0.0) >= 1.0,
            "{series}"
        );
    }
}

/// A canonical UUID nobody registered.
fn uuid_like(n: u8) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

#[tokio::test]
async fn registration_disabled_token_rate_limit_and_ipv6_allowfrom() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let lease = common::unique_name("compat-reg");
    let guarded = loopback_api();
    let _serve = spawn_api(
        &lease,
        guarded,
        &[
            "--api-registration-token",
            "let-me-in",
            "--api-register-burst",
            "2",
            "--api-register-refill",
            "3600",
        ],
    )
    .await;
    let token = ["X-Registration-Token: let-me-in".to_string()];
    for headers in [vec![], vec!["X-Registration-Token: nope".to_string()]] {
        let reply = request(guarded, "POST", "/register", &headers, "", None);
        assert_eq!(
            (reply.code, reply.body.as_str()),
            (401, FORBIDDEN),
            "{headers:?}"
        );
    }
    // Refused attempts count against the source's limit too: two were spent above.
    let limited = request(guarded, "POST", "/register", &token, "", None);
    assert_eq!(limited.code, 429, "{}", limited.body);
    assert_eq!(limited.body, r#"{"error": "rate_limited"}"#);
    let wait: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&wait), "{wait}");
    // Another source has its own allowance.
    let reply = request(
        guarded,
        "POST",
        "/register",
        &token,
        r#"{"allowfrom": ["::1/128"]}"#,
        Some("127.0.0.4"),
    );
    assert_eq!(reply.code, 201, "{}", reply.body);
    let v6_only: Value = serde_json::from_str(&reply.body).unwrap();
    let reply = request(
        guarded,
        "POST",
        "/register",
        &token,
        r#"{"allowfrom": ["127.0.0.0/8"]}"#,
        Some("127.0.0.4"),
    );
    assert_eq!(reply.code, 201, "{}", reply.body);
    let v4_only: Value = serde_json::from_str(&reply.body).unwrap();

    // A replica with registration off: /register does not exist, /update works for the
    // accounts the other one registered, over IPv6 here.
    let open: SocketAddr = format!("[::1]:{}", common::free_port()).parse().unwrap();
    let _closed = spawn_api(&lease, open, &["--api-disable-registration"]).await;
    let reply = request(open, "POST", "/register", &token, "", None);
    assert_eq!(
        (reply.code, reply.body.as_str()),
        (404, "404 page not found\n")
    );
    first_update(open, &v6_only, &txt(0), None).await;
    let reply = request(
        open,
        "POST",
        "/update",
        &credentials(&v4_only),
        &update_body(&v4_only, &txt(0)),
        None,
    );
    assert_eq!(
        (reply.code, reply.body.as_str()),
        (401, FORBIDDEN),
        "an IPv4 allowfrom from ::1"
    );
}

#[tokio::test]
async fn an_update_to_one_replica_is_answered_by_both_within_a_second() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let lease = common::unique_name("compat-pair");
    let (a, b) = (loopback_api(), loopback_api());
    let first = spawn_api(&lease, a, &[]).await;
    let second = spawn_api(&lease, b, &[]).await;
    let account = register(a, "");
    let name = fqdn(&account);
    first_update(a, &account, &txt(0), None).await;
    common::eventually("both replicas answer", Duration::from_secs(10), || async {
        [&first, &second]
            .iter()
            .all(|s| common::dns::txt_values(s.dns, &name).is_some_and(|v| v.contains(&txt(0))))
            .then_some(())
    })
    .await;

    // Alternate replicas; each update must be answered by the other within a second of
    // the first one returning.
    let mut slowest = Duration::ZERO;
    for n in 1..=6u8 {
        let (to, other) = if n % 2 == 1 {
            (a, &second)
        } else {
            (b, &first)
        };
        let value = txt(n);
        let reply = request(
            to,
            "POST",
            "/update",
            &credentials(&account),
            &update_body(&account, &value),
            None,
        );
        assert_eq!(reply.code, 200, "{}", reply.body);
        let returned = std::time::Instant::now();
        let [me, _] = if to == a {
            [&first, &second]
        } else {
            [&second, &first]
        };
        assert!(
            common::dns::txt_values(me.dns, &name)
                .unwrap()
                .contains(&value),
            "the replica that took the update answers it when /update returns"
        );
        loop {
            if common::dns::txt_values(other.dns, &name).is_some_and(|v| v.contains(&value)) {
                break;
            }
            assert!(
                returned.elapsed() < Duration::from_secs(1),
                "the other replica did not answer {value} within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slowest = slowest.max(returned.elapsed());
    }
    println!("slowest update → answer on the other replica: {slowest:?}");
}
