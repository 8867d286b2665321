//! The cert-manager webhook solver through the real aggregation layer: kube-apiserver
//! proxies `POST /apis/acme.acmedns.io/v1alpha1/acme-dns` to `serve` on loopback, the
//! caller authenticated as cert-manager's ServiceAccount with the chart's RBAC.
//!
//! The APIService is cluster-wide, so the behaviours run in sequence in one test, each
//! in a function named after it.

mod common;

use common::{aggregation, dns, https, pki};

use std::time::Duration;

use kube::{Api, Client, api::PostParams};
use serde_json::{Value, json};

use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

const SOLVER_PATH: &str = "/apis/acme.acmedns.io/v1alpha1/acme-dns";
/// Presents at once on one account; the solver keeps up to 64 values per account.
const CONCURRENT: usize = 50;

struct Fixture {
    /// cert-manager's ServiceAccount, bound by the chart's domain-solver role.
    cert_manager: Client,
    admin: Client,
    dns: std::net::SocketAddr,
    webhook: std::net::SocketAddr,
    webhook_ca: pki::Ca,
    webhook_name: String,
    tenant_a: String,
    tenant_b: String,
    _processes: Vec<common::Serve>,
}

async fn fixture() -> Fixture {
    let admin = common::client().await;
    common::install_crd(&admin).await;
    let tenant_a = common::create_namespace(&admin, "tenant-a").await;
    let tenant_b = common::create_namespace(&admin, "tenant-b").await;

    // One process serves DNS and the webhook for every namespace; one controller per
    // tenant namespace assigns subdomains there.
    let solver = aggregation::start_solver(&[
        "--roles",
        "dns,webhook",
        "--webhook-authorize",
        "--max-txt-values",
        "64",
    ])
    .await;
    let controllers: Vec<common::Serve> = [&tenant_a, &tenant_b]
        .iter()
        .map(|ns| common::spawn_serve(ns, ns, &["--roles", "controller"]))
        .collect();
    let dns = solver.serve.dns;
    common::apply_service_account("cert-manager", "cert-manager");
    let cert_manager =
        common::client_from(&common::token_kubeconfig("cert-manager", "cert-manager")).await;
    let mut processes = controllers;
    processes.push(solver.serve);
    Fixture {
        cert_manager,
        admin,
        dns,
        webhook: solver.webhook,
        webhook_ca: solver.ca,
        webhook_name: solver.server_name,
        tenant_a,
        tenant_b,
        _processes: processes,
    }
}

/// POSTs a body to the solver through kube-apiserver; returns the HTTP status and body.
async fn post(client: &Client, body: Vec<u8>) -> (u16, Value) {
    let request = http::Request::post(SOLVER_PATH)
        .header("Content-Type", "application/json")
        .body(body)
        .unwrap();
    match client.request_text(request).await {
        Ok(text) => (
            200,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ),
        Err(kube::Error::Api(status)) => (status.code, json!({ "message": status.message })),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// A DNS-01 challenge as cert-manager describes it to a solver.
struct Challenge {
    dns_name: String,
    namespace: String,
    resolved_fqdn: String,
    config: Value,
}

impl Challenge {
    /// The challenge for `dns_name` from an Issuer in `namespace`, no solver config,
    /// the CNAME not followed.
    fn new(dns_name: &str, namespace: &str) -> Challenge {
        Challenge {
            dns_name: dns_name.into(),
            namespace: namespace.into(),
            resolved_fqdn: format!("_acme-challenge.{dns_name}."),
            config: Value::Null,
        }
    }

    fn resolved_to(mut self, fqdn: &str) -> Challenge {
        self.resolved_fqdn = fqdn.into();
        self
    }

    fn with_config(mut self, config: Value) -> Challenge {
        self.config = config;
        self
    }

    /// The ChallengePayload body for `action` with `key`, as cert-manager sends it:
    /// empty uid, no apiVersion/kind.
    fn payload(&self, action: &str, key: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "request": {
                "uid": "",
                "action": action,
                "type": "dns-01",
                "dnsName": self.dns_name,
                "key": key,
                "resourceNamespace": self.namespace,
                "resolvedFQDN": self.resolved_fqdn,
                "resolvedZone": format!("{}.", self.dns_name),
                "allowAmbientCredentials": false,
                "config": self.config,
            }
        }))
        .unwrap()
    }
}

/// Present through kube-apiserver as `client`; returns the HTTP status and reply.
async fn present(client: &Client, challenge: &Challenge, key: &str) -> (u16, Value) {
    post(client, challenge.payload("Present", key)).await
}

async fn clean_up(client: &Client, challenge: &Challenge, key: &str) -> (u16, Value) {
    post(client, challenge.payload("CleanUp", key)).await
}

/// Asserts the solver succeeded, showing its message when it did not.
fn assert_solved((code, reply): &(u16, Value)) {
    assert_eq!(*code, 200, "{reply}");
    assert!(
        success(reply),
        "the solver failed: {}",
        reply["response"]["status"]["message"]
    );
}

fn success(reply: &Value) -> bool {
    reply["response"]["success"] == json!(true)
}

fn failure_message(reply: &Value) -> String {
    assert_eq!(reply["response"]["success"], json!(false), "{reply}");
    reply["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn account_with(
    f: &Fixture,
    namespace: &str,
    name: &str,
    domain: &str,
) -> (Api<AcmeDnsAccount>, String) {
    let api: Api<AcmeDnsAccount> = Api::namespaced(f.admin.clone(), namespace);
    let label = common::unique_name("wh");
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(domain.into())],
        subdomain: Some(DnsLabel(label.clone())),
        ..Default::default()
    };
    api.create(&PostParams::default(), &AcmeDnsAccount::new(name, spec))
        .await
        .unwrap();
    common::eventually("subdomain assigned", Duration::from_secs(20), || async {
        api.get(name).await.ok()?.status?.subdomain
    })
    .await;
    // The solver finds accounts in its own index, fed by its watch. Its DNS responder
    // reads the same index: once the name exists there (NOERROR, not NXDOMAIN), a
    // single Present must find the account.
    let fqdn = format!("{label}.auth.example.test.");
    common::eventually(
        "the solver's index has the account",
        Duration::from_secs(10),
        || async { dns::txt_values(f.dns, &fqdn) },
    )
    .await;
    (api, fqdn)
}

async fn txt_values(api: &Api<AcmeDnsAccount>, name: &str) -> Vec<String> {
    let account = api.get(name).await.unwrap();
    account
        .status
        .unwrap_or_default()
        .txt
        .into_iter()
        .map(|t| t.value)
        .collect()
}

/// The TXT values the solver's DNS responder answers for `fqdn`, sorted.
fn served_txt(f: &Fixture, fqdn: &str) -> Vec<String> {
    dns::txt_values(f.dns, fqdn).unwrap_or_else(|| panic!("{fqdn} TXT not answered NOERROR"))
}

#[tokio::test]
async fn webhook_through_the_aggregation_layer() {
    let f = fixture().await;
    discovery_is_served_through_the_aggregator(&f).await;
    present_is_answered_by_dns_at_once_and_clean_up_removes_exactly_its_key(&f).await;
    concurrent_presents_on_one_account_all_land(&f).await;
    unknown_domain_fails_with_how_to_create_an_account(&f).await;
    followed_cname_finds_the_account_by_its_fqdn(&f).await;
    namespaced_issuers_reach_only_their_own_namespace(&f).await;
    bad_input_gets_a_clear_error_and_writes_nothing(&f).await;
    callers_without_the_front_proxy_certificate_are_refused(&f).await;
    users_without_rbac_are_refused_by_the_api_server(&f).await;
}

async fn discovery_is_served_through_the_aggregator(_f: &Fixture) {
    let out = common::run(
        "kubectl",
        &["get", "--raw", "/apis/acme.acmedns.io/v1alpha1"],
        None,
    );
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "APIResourceList");
    assert_eq!(list["resources"][0]["name"], "acme-dns");
    assert_eq!(list["resources"][0]["verbs"], json!(["create"]));
}

async fn present_is_answered_by_dns_at_once_and_clean_up_removes_exactly_its_key(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("present"));
    let (api, fqdn) = account_with(f, &f.tenant_a, "present", &domain).await;
    let challenge = Challenge::new(&domain, &f.tenant_a);
    const KEY_ONE: &str = "key-one-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KEY_TWO: &str = "key-two-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    assert_solved(&present(&f.cert_manager, &challenge, KEY_ONE).await);
    // The replica that wrote answers as soon as Present returns: Present waits until
    // the account watch, the index's only writer, has delivered its write.
    assert_eq!(
        served_txt(f, &fqdn),
        [KEY_ONE],
        "answered right after Present"
    );

    // Idempotent: the same Present again changes nothing.
    assert_solved(&present(&f.cert_manager, &challenge, KEY_ONE).await);
    assert_eq!(txt_values(&api, "present").await, [KEY_ONE]);

    let reply = present(&f.cert_manager, &challenge, KEY_TWO).await;
    assert_solved(&reply);
    assert_eq!(reply.1["kind"], "ChallengePayload");
    assert_eq!(reply.1["response"]["uid"], "");
    assert_eq!(txt_values(&api, "present").await.len(), 2);

    // CleanUp of one key keeps the other (cert-manager's strict mode).
    assert_solved(&clean_up(&f.cert_manager, &challenge, KEY_ONE).await);
    assert_eq!(txt_values(&api, "present").await, [KEY_TWO]);
    assert_eq!(served_txt(f, &fqdn), [KEY_TWO]);
    // CleanUp of a key that is not there succeeds and changes nothing.
    assert_solved(&clean_up(&f.cert_manager, &challenge, "never-presented").await);
    assert_eq!(txt_values(&api, "present").await, [KEY_TWO]);
}

/// 50 Presents on one account at once (a certificate with many names, or many
/// certificates sharing one delegation), then 50 CleanUps: none fails for contention,
/// all 50 values are answered, then none.
async fn concurrent_presents_on_one_account_all_land(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("concurrent"));
    let (api, fqdn) = account_with(f, &f.tenant_a, "concurrent", &domain).await;
    let challenge = Challenge::new(&domain, &f.tenant_a);
    let mut keys: Vec<String> = (0..CONCURRENT)
        .map(|i| format!("concurrent-key-{i:02}-{}", "k".repeat(30)))
        .collect();
    keys.sort();

    let started = std::time::Instant::now();
    let replies =
        futures::future::join_all(keys.iter().map(|k| present(&f.cert_manager, &challenge, k)))
            .await;
    let presented = started.elapsed();
    for reply in &replies {
        assert_solved(reply);
    }
    let mut values = txt_values(&api, "concurrent").await;
    values.sort();
    assert_eq!(values, keys, "every value stored, once");
    assert_eq!(served_txt(f, &fqdn), keys, "every value answered");

    let started = std::time::Instant::now();
    let replies = futures::future::join_all(
        keys.iter()
            .map(|k| clean_up(&f.cert_manager, &challenge, k)),
    )
    .await;
    let cleaned = started.elapsed();
    for reply in &replies {
        assert_solved(reply);
    }
    assert_eq!(txt_values(&api, "concurrent").await, Vec::<String>::new());
    assert_eq!(served_txt(f, &fqdn), Vec::<String>::new());
    common::report(&format!(
        "{CONCURRENT} concurrent Presents on one account in {:.2} s, {CONCURRENT} CleanUps in {:.2} s",
        presented.as_secs_f64(),
        cleaned.as_secs_f64()
    ));
}

async fn unknown_domain_fails_with_how_to_create_an_account(f: &Fixture) {
    let challenge = Challenge::new("nobody.example.test", &f.tenant_a);
    let (code, reply) = present(&f.cert_manager, &challenge, "k").await;
    assert_eq!(code, 200, "a solver failure is not an HTTP error");
    let message = failure_message(&reply);
    assert!(message.contains("nobody.example.test"), "{message}");
    assert!(message.contains("spec.domains"), "{message}");
}

async fn followed_cname_finds_the_account_by_its_fqdn(f: &Fixture) {
    // cnameStrategy: Follow — cert-manager resolved the user's CNAME to our name; the
    // account lists some other domain.
    let (api, fqdn) = account_with(f, &f.tenant_a, "followed", "unrelated.example.test").await;
    let challenge = Challenge::new("cname-only.example.test", &f.tenant_a).resolved_to(&fqdn);
    assert_solved(&present(&f.cert_manager, &challenge, "followed-key").await);
    assert_eq!(txt_values(&api, "followed").await, ["followed-key"]);
}

async fn namespaced_issuers_reach_only_their_own_namespace(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("tenant"));
    let (api, _) = account_with(f, &f.tenant_b, "theirs", &domain).await;
    let account_ref = json!({ "accountRef": { "name": "theirs", "namespace": f.tenant_b } });
    let challenge = Challenge::new(&domain, &f.tenant_a)
        .resolved_to("")
        .with_config(account_ref.clone());
    let (_, reply) = present(&f.cert_manager, &challenge, "intruder").await;
    let message = failure_message(&reply);
    assert!(message.contains("own namespace"), "{message}");
    // Nor by domain: an Issuer in tenant-a does not see tenant-b's accounts.
    let challenge = Challenge::new(&domain, &f.tenant_a).resolved_to("");
    let (_, reply) = present(&f.cert_manager, &challenge, "intruder").await;
    let message = failure_message(&reply);
    assert!(message.contains(&domain), "{message}");
    assert!(
        txt_values(&api, "theirs").await.is_empty(),
        "nothing written"
    );
    // A ClusterIssuer (cert-manager's cluster resource namespace) reaches it.
    let challenge = Challenge::new(&domain, "cert-manager")
        .resolved_to("")
        .with_config(account_ref);
    assert_solved(&present(&f.cert_manager, &challenge, "cluster-issuer").await);
    assert_eq!(txt_values(&api, "theirs").await, ["cluster-issuer"]);
}

async fn bad_input_gets_a_clear_error_and_writes_nothing(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("bad"));
    let (api, _) = account_with(f, &f.tenant_a, "bad-input", &domain).await;
    let challenge = Challenge::new(&domain, &f.tenant_a).resolved_to("");

    let (code, reply) = post(&f.cert_manager, b"{not json".to_vec()).await;
    assert_eq!(code, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not a ChallengePayload"),
        "{reply}"
    );

    let (code, reply) = post(&f.cert_manager, b"{}".to_vec()).await;
    assert_eq!(code, 400, "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no request"),
        "{reply}"
    );

    let mut oversized = challenge.payload("Present", "k");
    oversized.splice(
        1..1,
        format!("\"padding\":\"{}\",", "x".repeat(100 * 1024)).into_bytes(),
    );
    let (code, _) = post(&f.cert_manager, oversized).await;
    assert_eq!(code, 413, "oversized body");

    let (code, reply) = post(&f.cert_manager, challenge.payload("Destroy", "k")).await;
    assert_eq!(code, 200);
    assert!(
        failure_message(&reply).contains("Present or CleanUp"),
        "{reply}"
    );

    let misspelt = Challenge::new(&domain, &f.tenant_a)
        .resolved_to("")
        .with_config(json!({"acountRef": {}}));
    let (_, reply) = present(&f.cert_manager, &misspelt, "k").await;
    assert!(failure_message(&reply).contains("accountRef"), "{reply}");

    let (_, reply) = present(&f.cert_manager, &challenge, "").await;
    assert!(failure_message(&reply).contains("no key"), "{reply}");

    assert!(
        txt_values(&api, "bad-input").await.is_empty(),
        "nothing written by bad input"
    );
}

async fn callers_without_the_front_proxy_certificate_are_refused(f: &Fixture) {
    // Straight to the webhook, skipping kube-apiserver, verifying the serving
    // certificate for the Service name the aggregator checks.
    let ca = f.webhook_ca.cert.cert_der();
    let send = |client: Option<&pki::Identity>, request: &https::Request| {
        https::send(f.webhook, &f.webhook_name, &ca, client, request)
    };
    let body = Challenge::new("x.example.test", &f.tenant_a).payload("Present", "k");
    let forged = https::Request {
        method: "POST",
        path: SOLVER_PATH,
        headers: &[
            ("Content-Type", "application/json"),
            ("X-Remote-User", "system:admin"),
            ("X-Remote-Group", "system:masters"),
        ],
        body: &body,
    };

    // Forged user headers without the front proxy's certificate.
    let (status, reply) = send(None, &forged).expect("an HTTP answer");
    assert_eq!(
        status, 401,
        "forged headers without the certificate: {reply}"
    );
    let discovery = https::Request::get("/apis/acme.acmedns.io/v1alpha1");
    let (status, reply) = send(None, &discovery).expect("an HTTP answer");
    assert_eq!(status, 401, "discovery too: {reply}");

    // A client certificate from another CA: the TLS handshake itself refuses it (the
    // server trusts only the request-header CA), before any header is read.
    https::handshake(f.webhook, &f.webhook_name, &ca, None)
        .expect("without a client certificate the handshake completes");
    let rogue = pki::self_signed_client("front-proxy-client");
    let refused = https::handshake(f.webhook, &f.webhook_name, &ca, Some(&rogue))
        .expect_err("a rogue certificate is refused");
    assert!(
        matches!(
            https::tls_error(&refused),
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))
        ),
        "refused with the unknown_ca alert, got {refused:?}"
    );

    // Probes stay open.
    let (status, body) = send(None, &https::Request::get("/healthz")).expect("an HTTP answer");
    assert_eq!((status, body.as_str()), (200, "ok"));
}

async fn users_without_rbac_are_refused_by_the_api_server(f: &Fixture) {
    common::apply_service_account(&f.tenant_a, "stranger");
    let stranger = common::client_from(&common::token_kubeconfig(&f.tenant_a, "stranger")).await;
    let challenge = Challenge::new("x.example.test", &f.tenant_a).resolved_to("");
    let (code, _) = present(&stranger, &challenge, "k").await;
    assert_eq!(code, 403, "the aggregator authorizes before proxying");
}
