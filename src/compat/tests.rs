//! The API's answers for every row of the acme-dns facts, through the router with an
//! in-memory account store.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode},
};
use serde_json::Value;
use tower::ServiceExt as _;

use super::{
    limit::RateLimit,
    metrics::ApiMetrics,
    protocol::RegisterRequest,
    server::{self, AccountStore, Credentials, Registered, Settings},
};
use crate::{http::Peer, index::AccountKey};

const ZONE: &str = "auth.example.test";
const TXT: &str = "LPsIwTo7o8BoG0-vjCyGQGBWSVIPxI-i_X336eUOQZo";

#[derive(Clone, Default)]
struct MemoryStore {
    accounts: Arc<Mutex<HashMap<String, Credentials>>>,
    updates: Arc<Mutex<Vec<(AccountKey, String)>>>,
}

impl AccountStore for MemoryStore {
    fn credentials(&self, username: &str) -> Option<Credentials> {
        self.accounts.lock().unwrap().get(username).cloned()
    }

    async fn register(
        &self,
        username: &str,
        key_hash: &str,
        request: &RegisterRequest,
    ) -> Result<Registered, String> {
        let subdomain = uuid::Uuid::new_v4().to_string();
        self.accounts.lock().unwrap().insert(
            username.to_string(),
            Credentials {
                account: AccountKey {
                    namespace: "acme-dns".into(),
                    name: subdomain.as_str().into(),
                },
                subdomain: subdomain.clone(),
                key_hash: key_hash.to_string(),
                allow_from: request.allow_from.clone(),
            },
        );
        Ok(Registered {
            fulldomain: format!("{subdomain}.{ZONE}"),
            subdomain,
        })
    }

    async fn update(&self, account: &AccountKey, txt: &str) -> Result<(), String> {
        self.updates
            .lock()
            .unwrap()
            .push((account.clone(), txt.to_string()));
        Ok(())
    }

    async fn deregister(&self, credentials: &Credentials) -> Result<(), String> {
        self.accounts
            .lock()
            .unwrap()
            .retain(|_, c| c.account != credentials.account);
        Ok(())
    }
}

fn settings() -> Settings {
    Settings {
        registration: true,
        registration_token: None,
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
        bcrypt_cost: 4,
        bcrypt_concurrency: 2,
        register_limit: None,
    }
}

fn router(store: MemoryStore, settings: Settings) -> Router {
    router_with_metrics(store, settings).0
}

fn router_with_metrics(store: MemoryStore, settings: Settings) -> (Router, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = ApiMetrics::new(&registry).unwrap();
    (server::router(store, settings, metrics).unwrap(), registry)
}

/// The value of one sample in the registry's text exposition.
fn sample(registry: &prometheus::Registry, series: &str) -> Option<f64> {
    use prometheus::Encoder as _;
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .unwrap();
    String::from_utf8(text).unwrap().lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().unwrap())
    })
}

struct Reply {
    status: StatusCode,
    content_type: String,
    allow: String,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    from: &str,
) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::from(body.to_string())).unwrap();
    request.extensions_mut().insert(Peer {
        addr: SocketAddr::new(from.parse().unwrap(), 40000),
        certificates: Vec::new(),
    });
    let response = router.clone().oneshot(request).await.unwrap();
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (content_type, allow) = (header("content-type"), header("allow"));
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        content_type,
        allow,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

async fn register(router: &Router, body: &str) -> Value {
    let reply = call(router, Method::POST, "/register", &[], body, "192.0.2.1").await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.content_type, "application/json");
    assert!(!reply.body.contains('\n'), "one line: {}", reply.body);
    reply.json()
}

async fn update(router: &Router, account: &Value, body: &str, from: &str) -> Reply {
    call(
        router,
        Method::POST,
        "/update",
        &[
            ("X-Api-User", account["username"].as_str().unwrap()),
            ("X-Api-Key", account["password"].as_str().unwrap()),
            // acme.sh's default content type, with a JSON body.
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        body,
        from,
    )
    .await
}

fn update_body(account: &Value, txt: &str) -> String {
    serde_json::json!({"subdomain": account["subdomain"], "txt": txt}).to_string()
}

#[tokio::test]
async fn register_answers_one_line_with_the_keys_in_order_and_null_body_works() {
    let router = router(MemoryStore::default(), settings());
    for body in ["", "{}", "null"] {
        let account = register(&router, body).await;
        let keys: Vec<&String> = account.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5);
        assert!(uuid::Uuid::parse_str(account["username"].as_str().unwrap()).is_ok());
        assert_eq!(account["password"].as_str().unwrap().len(), 40);
        assert_eq!(
            account["fulldomain"],
            format!("{}.{ZONE}", account["subdomain"].as_str().unwrap())
        );
        assert_eq!(account["allowfrom"], serde_json::json!([]));
    }
    let account = register(&router, r#"{"AllowFrom": ["192.0.2.0/24"]}"#).await;
    assert_eq!(account["allowfrom"], serde_json::json!(["192.0.2.0/24"]));
}

#[tokio::test]
async fn register_errors_are_acme_dns_bodies() {
    let router = router(MemoryStore::default(), settings());
    for (body, expected) in [
        ("{", r#"{"error": "malformed_json_payload"}"#),
        (
            r#"{"allowfrom": ["1.2.3.4"]}"#,
            r#"{"error": "invalid_allowfrom_cidr"}"#,
        ),
    ] {
        let reply = call(&router, Method::POST, "/register", &[], body, "192.0.2.1").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.body, expected);
        assert_eq!(reply.content_type, "application/json");
    }
}

#[tokio::test]
async fn update_with_the_registered_credentials_writes_and_echoes_the_value() {
    let store = MemoryStore::default();
    let router = router(store.clone(), settings());
    let account = register(&router, "null").await;
    let reply = update(
        &router,
        &account,
        &update_body(&account, TXT),
        "198.51.100.4",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, format!(r#"{{"txt": "{TXT}"}}"#));
    let updates = store.updates.lock().unwrap();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].1, TXT);
    assert_eq!(&*updates[0].0.name, account["subdomain"].as_str().unwrap());
}

/// What is tried, the headers, the body, and the caller's address.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, &'a str);

#[tokio::test]
async fn every_authentication_failure_is_the_same_401_and_writes_nothing() {
    let store = MemoryStore::default();
    let router = router(store.clone(), settings());
    let account = register(
        &router,
        r#"{"allowfrom": ["192.0.2.0/24", "2001:db8::/32"]}"#,
    )
    .await;
    let user = account["username"].as_str().unwrap();
    let key = account["password"].as_str().unwrap();
    let body = update_body(&account, TXT);
    let wrong_key = "A".repeat(40);
    let unknown_user = uuid::Uuid::new_v4().to_string();
    let foreign = serde_json::json!({"subdomain": "someone-else", "txt": TXT}).to_string();
    let cases: Vec<Case> = vec![
        (
            "user not a UUID",
            vec![("X-Api-User", "nobody"), ("X-Api-Key", key)],
            &body,
            "192.0.2.9",
        ),
        (
            "key too short",
            vec![("X-Api-User", user), ("X-Api-Key", &key[1..])],
            &body,
            "192.0.2.9",
        ),
        (
            "unknown user",
            vec![("X-Api-User", &unknown_user), ("X-Api-Key", key)],
            &body,
            "192.0.2.9",
        ),
        (
            "wrong key",
            vec![("X-Api-User", user), ("X-Api-Key", &wrong_key)],
            &body,
            "192.0.2.9",
        ),
        ("no headers", vec![], &body, "192.0.2.9"),
        (
            "source not allowed",
            vec![("X-Api-User", user), ("X-Api-Key", key)],
            &body,
            "198.51.100.4",
        ),
        (
            "foreign subdomain",
            vec![("X-Api-User", user), ("X-Api-Key", key)],
            &foreign,
            "192.0.2.9",
        ),
        (
            "malformed JSON",
            vec![("X-Api-User", user), ("X-Api-Key", key)],
            "{",
            "192.0.2.9",
        ),
        (
            "untrusted forwarded header",
            vec![
                ("X-Api-User", user),
                ("X-Api-Key", key),
                ("X-Forwarded-For", "192.0.2.9"),
            ],
            &body,
            "198.51.100.4",
        ),
    ];
    for (what, headers, body, from) in cases {
        let reply = call(&router, Method::POST, "/update", &headers, body, from).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(reply.body, r#"{"error": "forbidden"}"#, "{what}");
    }
    assert!(store.updates.lock().unwrap().is_empty());

    // The same credentials from an allowed address, IPv6 too, and through a trusted proxy.
    for (extra, from) in [
        (None, "192.0.2.9"),
        (None, "2001:db8::7"),
        (
            Some(("X-Forwarded-For", "203.0.113.1, 192.0.2.9")),
            "10.1.2.3",
        ),
    ] {
        let mut headers = vec![("X-Api-User", user), ("X-Api-Key", key)];
        headers.extend(extra);
        let reply = call(&router, Method::POST, "/update", &headers, &body, from).await;
        assert_eq!(reply.status, StatusCode::OK, "from {from}: {}", reply.body);
    }
    assert_eq!(store.updates.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_txt_value_that_is_not_a_dns01_digest_is_refused_after_authentication() {
    let store = MemoryStore::default();
    let router = router(store.clone(), settings());
    let account = register(&router, "").await;
    for txt in ["", "short", &format!("{TXT}="), &TXT.replace('-', "+")] {
        let reply = update(&router, &account, &update_body(&account, txt), "192.0.2.1").await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{txt:?}");
        assert_eq!(reply.body, r#"{"error": "bad_txt"}"#);
    }
    assert!(store.updates.lock().unwrap().is_empty());
}

#[tokio::test]
async fn health_unknown_paths_and_wrong_methods_answer_like_acme_dns() {
    let router = router(MemoryStore::default(), settings());
    let health = call(&router, Method::GET, "/health", &[], "", "192.0.2.1").await;
    assert_eq!((health.status, health.body.as_str()), (StatusCode::OK, ""));

    let missing = call(&router, Method::GET, "/nothing", &[], "", "192.0.2.1").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body, "404 page not found\n");
    assert!(missing.content_type.starts_with("text/plain"));

    let wrong = call(&router, Method::GET, "/update", &[], "", "192.0.2.1").await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong.allow, "POST");
}

#[tokio::test]
async fn registration_can_be_switched_off_or_require_a_token() {
    let off = router(
        MemoryStore::default(),
        Settings {
            registration: false,
            ..settings()
        },
    );
    let reply = call(&off, Method::POST, "/register", &[], "", "192.0.2.1").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, "404 page not found\n");

    let guarded = router(
        MemoryStore::default(),
        Settings {
            registration_token: Some("s3cret".into()),
            ..settings()
        },
    );
    for token in [None, Some("wrong")] {
        let headers: Vec<(&str, &str)> = token
            .map(|t| vec![(server::REGISTRATION_TOKEN_HEADER, t)])
            .unwrap_or_default();
        let reply = call(
            &guarded,
            Method::POST,
            "/register",
            &headers,
            "",
            "192.0.2.1",
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(reply.body, r#"{"error": "forbidden"}"#);
    }
    let reply = call(
        &guarded,
        Method::POST,
        "/register",
        &[(server::REGISTRATION_TOKEN_HEADER, "s3cret")],
        "",
        "192.0.2.1",
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn deregistration_needs_the_accounts_own_credentials_and_ends_them() {
    let store = MemoryStore::default();
    let router = router(store.clone(), settings());
    let account = register(&router, r#"{"allowfrom": ["192.0.2.0/24"]}"#).await;
    let other = register(&router, "").await;
    let user = account["username"].as_str().unwrap();
    let key = account["password"].as_str().unwrap();
    let wrong_key = "A".repeat(40);
    for (headers, from) in [
        (
            vec![("X-Api-User", user), ("X-Api-Key", wrong_key.as_str())],
            "192.0.2.9",
        ),
        (
            vec![("X-Api-User", user), ("X-Api-Key", key)],
            "198.51.100.4",
        ),
    ] {
        let reply = call(&router, Method::POST, "/deregister", &headers, "", from).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.body, r#"{"error": "forbidden"}"#);
    }
    assert_eq!(store.accounts.lock().unwrap().len(), 2);

    let headers = [("X-Api-User", user), ("X-Api-Key", key)];
    let reply = call(
        &router,
        Method::POST,
        "/deregister",
        &headers,
        "",
        "192.0.2.9",
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["deregistered"], account["subdomain"]);
    // Gone, and its credentials with it; the other account is untouched.
    let update = update(&router, &account, &update_body(&account, TXT), "192.0.2.9").await;
    assert_eq!(update.status, StatusCode::UNAUTHORIZED);
    assert!(
        store
            .accounts
            .lock()
            .unwrap()
            .contains_key(other["username"].as_str().unwrap())
    );
}

#[tokio::test]
async fn registrations_are_limited_per_source_behind_proxies_too_and_counted() {
    let (router, registry) = router_with_metrics(
        MemoryStore::default(),
        Settings {
            register_limit: Some(RateLimit {
                burst: 2,
                refill: std::time::Duration::from_secs(600),
            }),
            ..settings()
        },
    );
    let from = |router: &Router, peer: &'static str, forwarded: Option<&'static str>| {
        let router = router.clone();
        async move {
            let headers: Vec<(&str, &str)> = forwarded
                .map(|f| vec![("X-Forwarded-For", f)])
                .unwrap_or_default();
            call(&router, Method::POST, "/register", &headers, "", peer).await
        }
    };
    for _ in 0..2 {
        assert_eq!(
            from(&router, "192.0.2.1", None).await.status,
            StatusCode::CREATED
        );
    }
    let limited = from(&router, "192.0.2.1", None).await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body, r#"{"error": "rate_limited"}"#);
    // Another source is not affected, and neither are clients behind a trusted proxy,
    // who are told apart by the forwarded address.
    assert_eq!(
        from(&router, "192.0.2.2", None).await.status,
        StatusCode::CREATED
    );
    for _ in 0..2 {
        let reply = from(&router, "10.0.0.1", Some("198.51.100.7")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    let reply = from(&router, "10.0.0.1", Some("198.51.100.7")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        from(&router, "10.0.0.1", Some("198.51.100.8")).await.status,
        StatusCode::CREATED
    );
    // An untrusted peer cannot escape its limit with a forwarded header.
    let reply = from(&router, "192.0.2.1", Some("198.51.100.9")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);

    assert_eq!(
        sample(
            &registry,
            r#"kube_acme_dns_api_requests_total{result="ok",route="/register"}"#
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &registry,
            r#"kube_acme_dns_api_requests_total{result="rate_limited",route="/register"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &registry,
            r#"kube_acme_dns_api_request_seconds_count{route="/register"}"#
        ),
        Some(9.0)
    );
}

#[tokio::test]
async fn updates_are_counted_by_result_and_unknown_paths_are_not() {
    let (router, registry) = router_with_metrics(MemoryStore::default(), settings());
    let account = register(&router, "").await;
    let ok = update(&router, &account, &update_body(&account, TXT), "192.0.2.1").await;
    assert_eq!(ok.status, StatusCode::OK);
    let bad = update(
        &router,
        &account,
        &update_body(&account, "short"),
        "192.0.2.1",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let mut stranger = account.clone();
    stranger["password"] = Value::String("B".repeat(40));
    let refused = update(&router, &stranger, &update_body(&account, TXT), "192.0.2.1").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    call(&router, Method::GET, "/wp-login.php", &[], "", "192.0.2.1").await;

    for (result, count) in [("ok", 1.0), ("bad_request", 1.0), ("forbidden", 1.0)] {
        let series =
            format!(r#"kube_acme_dns_api_requests_total{{result="{result}",route="/update"}}"#);
        assert_eq!(sample(&registry, &series), Some(count), "{series}");
    }
    assert_eq!(
        sample(
            &registry,
            r#"kube_acme_dns_api_request_seconds_count{route="/update"}"#
        ),
        Some(3.0)
    );
    let mut text = Vec::new();
    prometheus::Encoder::encode(
        &prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .unwrap();
    assert!(!String::from_utf8(text).unwrap().contains("wp-login"));
}
