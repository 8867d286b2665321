//! The cert-manager webhook solver through the real aggregation layer: kube-apiserver
//! proxies `POST /apis/acme.acmedns.io/v1alpha1/acme-dns` to `serve` on loopback, the
//! caller authenticated as cert-manager's ServiceAccount with the chart's RBAC.
//!
//! The APIService is cluster-wide, so the behaviours run in sequence in one test, each
//! in a function named after it.

mod common;

use common::aggregation;

use std::time::Duration;

use kube::{Api, Client, api::PostParams};
use serde_json::{Value, json};

use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

const SOLVER_PATH: &str = "/apis/acme.acmedns.io/v1alpha1/acme-dns";

struct Fixture {
    /// cert-manager's ServiceAccount, bound by the chart's domain-solver role.
    cert_manager: Client,
    admin: Client,
    dns: std::net::SocketAddr,
    webhook: std::net::SocketAddr,
    pki: std::path::PathBuf,
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
    let solver =
        aggregation::start_solver(&["--roles", "dns,webhook", "--webhook-authorize"]).await;
    let controllers: Vec<common::Serve> = [&tenant_a, &tenant_b]
        .iter()
        .map(|ns| common::spawn_serve(ns, ns, &["--roles", "controller"]))
        .collect();
    let (dns, webhook, pki) = (solver.serve.dns, solver.webhook, solver.pki.clone());

    let cert_manager = aggregation::client_from(&aggregation::service_account_kubeconfig(
        "cert-manager",
        "cert-manager",
    ))
    .await;
    let mut processes = controllers;
    processes.push(solver.serve);
    Fixture {
        cert_manager,
        admin,
        dns,
        webhook,
        pki,
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

fn payload(
    action: &str,
    dns_name: &str,
    key: &str,
    namespace: &str,
    resolved_fqdn: &str,
    config: Value,
) -> Vec<u8> {
    // As cert-manager sends it: empty uid, no apiVersion/kind.
    serde_json::to_vec(&json!({
        "request": {
            "uid": "",
            "action": action,
            "type": "dns-01",
            "dnsName": dns_name,
            "key": key,
            "resourceNamespace": namespace,
            "resolvedFQDN": resolved_fqdn,
            "resolvedZone": format!("{dns_name}."),
            "allowAmbientCredentials": false,
            "config": config,
        }
    }))
    .unwrap()
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
    // The solver's own index must have seen it too before lookups by domain work.
    let fqdn = format!("{label}.auth.example.test.");
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

fn dig_txt(f: &Fixture, fqdn: &str) -> String {
    common::run(
        "dig",
        &[
            &format!("@{}", f.dns.ip()),
            "-p",
            &f.dns.port().to_string(),
            "+short",
            fqdn,
            "TXT",
        ],
        None,
    )
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
    let ns = &f.tenant_a;
    let resolved = format!("_acme-challenge.{domain}.");
    // Wait for the solver's index to list the domain (it watches on its own).
    common::eventually(
        "solver sees the account",
        Duration::from_secs(10),
        || async {
            let (_, reply) = post(
                &f.cert_manager,
                payload(
                    "Present",
                    &domain,
                    "key-one-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    ns,
                    &resolved,
                    Value::Null,
                ),
            )
            .await;
            success(&reply).then_some(())
        },
    )
    .await;
    // The replica that wrote answers at once: no waiting for the watch.
    assert!(
        dig_txt(f, &fqdn).contains("key-one"),
        "answered right after Present"
    );

    // Idempotent: the same Present again changes nothing.
    let (code, reply) = post(
        &f.cert_manager,
        payload(
            "Present",
            &domain,
            "key-one-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ns,
            &resolved,
            Value::Null,
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert!(success(&reply), "{reply}");
    let (_, reply) = post(
        &f.cert_manager,
        payload(
            "Present",
            &domain,
            "key-two-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            ns,
            &resolved,
            Value::Null,
        ),
    )
    .await;
    assert!(success(&reply), "{reply}");
    assert_eq!(txt_values(&api, "present").await.len(), 2);
    assert_eq!(reply["kind"], "ChallengePayload");
    assert_eq!(reply["response"]["uid"], "");

    // CleanUp of one key keeps the other (cert-manager's strict mode).
    let (_, reply) = post(
        &f.cert_manager,
        payload(
            "CleanUp",
            &domain,
            "key-one-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ns,
            &resolved,
            Value::Null,
        ),
    )
    .await;
    assert!(success(&reply), "{reply}");
    assert_eq!(
        txt_values(&api, "present").await,
        ["key-two-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]
    );
    let answer = dig_txt(f, &fqdn);
    assert!(
        !answer.contains("key-one") && answer.contains("key-two"),
        "{answer}"
    );
    // CleanUp of a key that is not there succeeds and changes nothing.
    let (_, reply) = post(
        &f.cert_manager,
        payload(
            "CleanUp",
            &domain,
            "never-presented",
            ns,
            &resolved,
            Value::Null,
        ),
    )
    .await;
    assert!(success(&reply), "{reply}");
    assert_eq!(txt_values(&api, "present").await.len(), 1);
}

async fn concurrent_presents_on_one_account_all_land(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("concurrent"));
    let (api, _) = account_with(f, &f.tenant_a, "concurrent", &domain).await;
    let ns = f.tenant_a.clone();
    let resolved = format!("_acme-challenge.{domain}.");
    common::eventually(
        "solver sees the account",
        Duration::from_secs(10),
        || async {
            let (_, reply) = post(
                &f.cert_manager,
                payload("Present", &domain, "warm-up", &ns, &resolved, Value::Null),
            )
            .await;
            success(&reply).then_some(())
        },
    )
    .await;
    let keys: Vec<String> = (0..6).map(|i| format!("concurrent-key-{i}")).collect();
    let replies = futures::future::join_all(keys.iter().map(|k| {
        post(
            &f.cert_manager,
            payload("Present", &domain, k, &ns, &resolved, Value::Null),
        )
    }))
    .await;
    for (_, reply) in &replies {
        assert!(success(reply), "{reply}");
    }
    let values = txt_values(&api, "concurrent").await;
    for k in &keys {
        assert!(values.contains(k), "{k} lost among {values:?}");
    }
}

async fn unknown_domain_fails_with_how_to_create_an_account(f: &Fixture) {
    let (code, reply) = post(
        &f.cert_manager,
        payload(
            "Present",
            "nobody.example.test",
            "k",
            &f.tenant_a,
            "_acme-challenge.nobody.example.test.",
            Value::Null,
        ),
    )
    .await;
    assert_eq!(code, 200, "a solver failure is not an HTTP error");
    let message = failure_message(&reply);
    assert!(message.contains("nobody.example.test"), "{message}");
    assert!(message.contains("spec.domains"), "{message}");
}

async fn followed_cname_finds_the_account_by_its_fqdn(f: &Fixture) {
    // cnameStrategy: Follow — cert-manager resolved the user's CNAME to our name; the
    // account lists some other domain.
    let (api, fqdn) = account_with(f, &f.tenant_a, "followed", "unrelated.example.test").await;
    common::eventually("found by FQDN", Duration::from_secs(10), || async {
        let (_, reply) = post(
            &f.cert_manager,
            payload(
                "Present",
                "cname-only.example.test",
                "followed-key",
                &f.tenant_a,
                &fqdn,
                Value::Null,
            ),
        )
        .await;
        success(&reply).then_some(())
    })
    .await;
    assert_eq!(txt_values(&api, "followed").await, ["followed-key"]);
}

async fn namespaced_issuers_reach_only_their_own_namespace(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("tenant"));
    let (api, _) = account_with(f, &f.tenant_b, "theirs", &domain).await;
    let config = json!({ "accountRef": { "name": "theirs", "namespace": f.tenant_b } });
    let (_, reply) = post(
        &f.cert_manager,
        payload("Present", &domain, "intruder", &f.tenant_a, "", config),
    )
    .await;
    let message = failure_message(&reply);
    assert!(message.contains("own namespace"), "{message}");
    // Nor by domain: an Issuer in tenant-a does not see tenant-b's accounts.
    let (_, reply) = post(
        &f.cert_manager,
        payload("Present", &domain, "intruder", &f.tenant_a, "", Value::Null),
    )
    .await;
    failure_message(&reply);
    assert!(
        txt_values(&api, "theirs").await.is_empty(),
        "nothing written"
    );
    // A ClusterIssuer (cert-manager's cluster resource namespace) reaches it.
    let config = json!({ "accountRef": { "name": "theirs", "namespace": f.tenant_b } });
    let (_, reply) = post(
        &f.cert_manager,
        payload(
            "Present",
            &domain,
            "cluster-issuer",
            "cert-manager",
            "",
            config,
        ),
    )
    .await;
    assert!(success(&reply), "{reply}");
}

async fn bad_input_gets_a_clear_error_and_writes_nothing(f: &Fixture) {
    let domain = format!("{}.example.test", common::unique_name("bad"));
    let (api, _) = account_with(f, &f.tenant_a, "bad-input", &domain).await;
    let ns = &f.tenant_a;

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

    let mut oversized = payload("Present", &domain, "k", ns, "", Value::Null);
    oversized.splice(
        1..1,
        format!("\"padding\":\"{}\",", "x".repeat(100 * 1024)).into_bytes(),
    );
    let (code, _) = post(&f.cert_manager, oversized).await;
    assert_eq!(code, 413, "oversized body");

    let (code, reply) = post(
        &f.cert_manager,
        payload("Destroy", &domain, "k", ns, "", Value::Null),
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        failure_message(&reply).contains("Present or CleanUp"),
        "{reply}"
    );

    let (_, reply) = post(
        &f.cert_manager,
        payload("Present", &domain, "k", ns, "", json!({"acountRef": {}})),
    )
    .await;
    assert!(failure_message(&reply).contains("accountRef"), "{reply}");

    let (_, reply) = post(
        &f.cert_manager,
        payload("Present", &domain, "", ns, "", Value::Null),
    )
    .await;
    assert!(failure_message(&reply).contains("no key"), "{reply}");

    assert!(
        txt_values(&api, "bad-input").await.is_empty(),
        "nothing written by bad input"
    );
}

async fn callers_without_the_front_proxy_certificate_are_refused(f: &Fixture) {
    // Straight to the webhook, skipping kube-apiserver. The serving certificate names
    // the Service, as the aggregator expects, so curl resolves that name to loopback.
    let host = format!(
        "{}-kube-acme-dns.{}.svc",
        common::RELEASE,
        common::RELEASE_NAMESPACE
    );
    let port = f.webhook.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let ca = f.pki.join("ca.crt").to_string_lossy().into_owned();
    let curl = |extra: &[&str], path: &str| -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "--resolve", &resolve, "--cacert", &ca])
            .args(extra)
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let body = String::from_utf8(payload(
        "Present",
        "x.example.test",
        "k",
        &f.tenant_a,
        "",
        Value::Null,
    ))
    .unwrap();
    let status_only = ["-o", "/dev/null", "-w", "%{http_code}"];

    // Forged user headers without the front proxy's certificate.
    let mut args = status_only.to_vec();
    args.extend([
        "-H",
        "X-Remote-User: system:admin",
        "-H",
        "X-Remote-Group: system:masters",
        "--data",
        &body,
    ]);
    assert_eq!(
        curl(&args, SOLVER_PATH),
        "401",
        "forged headers without the certificate"
    );
    assert_eq!(
        curl(&status_only, "/apis/acme.acmedns.io/v1alpha1"),
        "401",
        "discovery too"
    );

    // A client certificate from another CA does not get through either.
    aggregation::openssl(
        &f.pki,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "rogue.key",
            "-out",
            "rogue.crt",
            "-days",
            "1",
            "-subj",
            "/CN=front-proxy-client",
        ],
    );
    let rogue_cert = f.pki.join("rogue.crt").to_string_lossy().into_owned();
    let rogue_key = f.pki.join("rogue.key").to_string_lossy().into_owned();
    let mut args = status_only.to_vec();
    args.extend([
        "--cert",
        &rogue_cert,
        "--key",
        &rogue_key,
        "-H",
        "X-Remote-User: system:admin",
        "--data",
        &body,
    ]);
    let code = curl(&args, SOLVER_PATH);
    assert!(
        code == "000" || code == "401",
        "a rogue certificate is refused, got {code}"
    );

    // Probes stay open.
    assert_eq!(curl(&[], "/healthz"), "ok");
}

async fn users_without_rbac_are_refused_by_the_api_server(f: &Fixture) {
    let stranger = aggregation::client_from(&aggregation::service_account_kubeconfig(
        &f.tenant_a,
        "stranger",
    ))
    .await;
    let (code, _) = post(
        &stranger,
        payload(
            "Present",
            "x.example.test",
            "k",
            &f.tenant_a,
            "",
            Value::Null,
        ),
    )
    .await;
    assert_eq!(code, 403, "the aggregator authorizes before proxying");
}
