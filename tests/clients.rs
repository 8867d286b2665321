//! Unmodified clients of the acme-dns API obtain certificates through our `api` role:
//! lego (its `acme-dns` DNS provider, built by `e2e/tools.sh lego`) and cert-manager's
//! built-in `acmeDNS` solver. As on the Internet: the user's zone is served by Knot, the
//! `_acme-challenge` CNAME into our zone is published there once the account exists, and
//! Pebble validates by resolving through unbound, which follows the CNAME to our
//! responder. Every resolver either client uses is that unbound on loopback.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use base64::{Engine, prelude::BASE64_STANDARD};
use kube::Api;
use serde_json::{Value, json};

use common::{
    Serve, cert_manager, certificate,
    knot::{Knot, zone_text},
    pebble::Pebble,
    unbound::Unbound,
};
use kube_acme_dns::api::AcmeDnsAccount;

/// Our side (DNS, controller and the acme-dns API) and the user's side (a zone in Knot,
/// a recursive resolver, an ACME CA), all on loopback.
struct Setup {
    namespace: String,
    /// The user's domain, `<unique>.test`: its own zone in Knot.
    domain: String,
    work: PathBuf,
    zone_file: PathBuf,
    knot: Knot,
    /// The acme-dns API, `http://<api>`.
    api: SocketAddr,
    _serve: Serve,
    unbound: Unbound,
    pebble: Pebble,
}

impl Setup {
    async fn start(prefix: &str) -> Setup {
        let admin = common::client().await;
        common::install_crd(&admin).await;
        let namespace = common::create_namespace(&admin, prefix).await;
        let domain = format!("{}.test", common::unique_name(prefix));
        let work = std::env::temp_dir().join(common::unique_name(prefix));
        std::fs::create_dir_all(&work).unwrap();

        // The user's zone, with no CNAME yet: it is published once the account exists.
        let zone_file = work.join(format!("{domain}.zone"));
        std::fs::write(&zone_file, zone_text(&domain, &[])).unwrap();
        let knot = Knot::start(&work.join("knot"), std::slice::from_ref(&zone_file));

        // The chart's RBAC for the API, for this test's namespace; `serve` runs as the
        // chart's ServiceAccount. Delegation checks ask Knot, never the system resolver.
        common::apply_api_rbac(&namespace);
        let api: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let serve = common::spawn_serve(
            &namespace,
            &common::unique_name(prefix),
            &[
                "--roles",
                "dns,controller,api",
                "--api-addr",
                &api.to_string(),
                "--api-namespace",
                &namespace,
                "--api-bcrypt-cost",
                "4",
                "--delegation-resolver",
                &knot.addr.to_string(),
            ],
        );
        common::wait_ready(&serve).await;
        common::eventually("the API listens", Duration::from_secs(20), || async {
            std::net::TcpStream::connect(api).ok()
        })
        .await;

        // A resolver as on the Internet: the user's zone from Knot, our zone from us.
        let unbound = Unbound::start(
            &work.join("unbound"),
            &[],
            &[(&domain, knot.addr), ("auth.example.test", serve.dns)],
        );
        common::eventually(
            "the user's zone resolves",
            Duration::from_secs(20),
            || async {
                common::dns::answers_soa(unbound.addr, &format!("{domain}."), true).then_some(())
            },
        )
        .await;
        let pebble = Pebble::start(&work.join("pebble"), unbound.addr);
        Setup {
            namespace,
            domain,
            work,
            zone_file,
            knot,
            api,
            _serve: serve,
            unbound,
            pebble,
        }
    }

    /// Publishes `_acme-challenge.<domain> CNAME <target>` in the user's zone, as the user
    /// does once (unbound keeps negative answers for 1 s at most).
    fn publish_cname(&self, target: &str) {
        let target = format!("{}.", target.trim_end_matches('.'));
        let cname = format!("_acme-challenge CNAME {target}");
        std::fs::write(&self.zone_file, zone_text(&self.domain, &[cname])).unwrap();
        self.knot.reload();
    }

    fn api_base(&self) -> String {
        format!("http://{}", self.api)
    }

    /// The AcmeDnsAccount the API registered for `subdomain`.
    async fn account(&self, subdomain: &str) -> AcmeDnsAccount {
        let accounts: Api<AcmeDnsAccount> =
            Api::namespaced(common::client().await, &self.namespace);
        accounts
            .get(subdomain)
            .await
            .unwrap_or_else(|e| panic!("no AcmeDnsAccount {subdomain}: {e}"))
    }
}

/// The lego binary `e2e/tools.sh lego` built.
fn lego_binary() -> PathBuf {
    let path = common::run(
        concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/tools.sh"),
        &["path", "lego"],
        None,
    );
    let path = PathBuf::from(path.trim());
    assert!(
        path.is_file(),
        "no lego at {}: run `e2e/tools.sh lego` (make test does)",
        path.display()
    );
    path
}

/// `lego run` for `domains` with the acme-dns provider, as its docs show, against Pebble.
/// Every DNS lookup lego makes goes to unbound on loopback: its resolvers are set, and its
/// check of the zone's authoritative servers (which it would find and ask directly, on
/// port 53) is off; its check through the resolver stays on.
fn run_lego(setup: &Setup, lego: &Path, storage: &Path, domains: &[&str]) -> Output {
    let pebble_ca = setup.work.join("pebble-https-ca.pem");
    std::fs::write(&pebble_ca, &setup.pebble.https_ca.cert.cert_pem).unwrap();
    let resolver = setup.unbound.addr.to_string();
    let path = setup.work.join("lego");
    let mut args = vec![
        "run",
        "--server",
        &setup.pebble.directory,
        "--accept-tos",
        "--email",
        "admin@example.org",
        "--path",
        path.to_str().unwrap(),
        "--dns",
        "acme-dns",
        "--dns.resolvers",
        &resolver,
        "--dns.propagation.disable-ans",
        "--log.format",
        "text",
    ];
    for domain in domains {
        args.extend(["--domains", domain]);
    }
    Command::new(lego)
        .args(args)
        .env("ACME_DNS_API_BASE", setup.api_base())
        .env("ACME_DNS_STORAGE_PATH", storage)
        .env("LEGO_CA_CERTIFICATES", &pebble_ca)
        .output()
        .expect("run lego")
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn lego_registers_then_obtains_a_wildcard_certificate_through_the_cname() {
    let lego = lego_binary();
    let setup = Setup::start("lego").await;
    let domain = &setup.domain;
    let storage = setup.work.join("lego-acme-dns.json");
    let started = Instant::now();
    assert!(!storage.exists());

    // First run: lego registers an account with /register, saves it, and stops to ask
    // for the CNAME (its provider does so for every domain it has no account for). For
    // the name alone: asked for the wildcard too, lego would also present the wildcard's
    // challenge with the new account and wait out its 60 s propagation timeout for it.
    let first = run_lego(&setup, &lego, &storage, &[domain]);
    let log = output_text(&first);
    assert!(
        !first.status.success(),
        "stops before the CNAME exists: {log}"
    );
    assert!(
        log.contains("CNAME"),
        "asks the user to publish the CNAME: {log}"
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&storage).unwrap())
        .expect("lego saved its accounts as JSON");
    let account = &saved[domain.as_str()];
    let subdomain = account["subdomain"].as_str().expect("a saved account");
    let fulldomain = account["fulldomain"].as_str().unwrap();
    assert_eq!(fulldomain, format!("{subdomain}.auth.example.test"));
    // That account is ours: an AcmeDnsAccount with the subdomain lego was given.
    let registered = setup.account(subdomain).await;
    assert_eq!(
        registered.spec.subdomain.as_ref().map(|s| s.0.as_str()),
        Some(subdomain)
    );

    // The user publishes the CNAME lego printed; the second run obtains the certificate.
    assert!(
        log.contains(fulldomain),
        "lego names the CNAME target: {log}"
    );
    setup.publish_cname(fulldomain);
    // The wildcard is the same account: lego and acme-dns key accounts by the bare name.
    let wildcard = format!("*.{domain}");
    let second_started = Instant::now();
    let second = run_lego(&setup, &lego, &storage, &[domain, &wildcard]);
    assert!(
        second.status.success(),
        "lego obtains the certificate: {}",
        output_text(&second)
    );
    eprintln!(
        "lego: certificate {:?} after the test started, the second run took {:?}",
        started.elapsed(),
        second_started.elapsed()
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&storage).unwrap()).unwrap();
    assert_eq!(
        saved.as_object().unwrap().len(),
        1,
        "no second registration for the wildcard: {saved}"
    );

    let certificate = setup
        .work
        .join("lego/certificates")
        .join(format!("{domain}.crt"));
    let chain = std::fs::read(&certificate)
        .unwrap_or_else(|e| panic!("lego wrote {}: {e}", certificate.display()));
    certificate::assert_wildcard_issued_by(&chain, domain, &setup.pebble);
}

/// `POST /register` with no body, as cert-manager's docs tell users to; returns the
/// answer as the JSON value the Secret's map holds.
fn register(api: SocketAddr) -> Value {
    let body = common::run(
        "curl",
        &["-sf", "-X", "POST", &format!("http://{api}/register")],
        None,
    );
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("register answer {body:?}: {e}"))
}

#[tokio::test]
async fn cert_manager_acme_dns_solver_issues_a_wildcard_certificate() {
    cert_manager::install();
    let setup = Setup::start("acmedns").await;
    let domain = &setup.domain;
    let namespace = &setup.namespace;

    // The user registers once, publishes the CNAME, and stores the answer in a Secret:
    // a JSON map from each domain to its account, as cert-manager's docs describe.
    let account = register(setup.api);
    let fulldomain = account["fulldomain"].as_str().unwrap();
    setup.publish_cname(fulldomain);
    let accounts = json!({ domain.as_str(): account });
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": "acme-dns", "namespace": namespace },
        "stringData": { "acmedns.json": accounts.to_string() },
    });
    let issuer = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": { "name": "acme-dns", "namespace": namespace },
        "spec": { "acme": {
            "server": setup.pebble.directory,
            "caBundle": BASE64_STANDARD.encode(&setup.pebble.https_ca.cert.cert_pem),
            "privateKeySecretRef": { "name": "acme-dns-account-key" },
            "solvers": [ { "dns01": { "acmeDNS": {
                "host": setup.api_base(),
                "accountSecretRef": { "name": "acme-dns", "key": "acmedns.json" },
            } } } ],
        } },
    });
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": { "name": "acme-dns", "namespace": namespace },
        "spec": {
            "secretName": "acme-dns-tls",
            "dnsNames": [domain, format!("*.{domain}")],
            "issuerRef": { "kind": "Issuer", "name": "acme-dns" },
        },
    });
    for object in [&secret, &issuer, &certificate] {
        common::run("kubectl", &["apply", "-f", "-"], Some(&object.to_string()));
    }
    // Scoped to this namespace: Certificates other tests left in the cluster are not
    // its business.
    let _controllers = cert_manager::start_controllers(setup.unbound.addr, Some(namespace));

    let elapsed =
        cert_manager::wait_certificate_ready(namespace, "acme-dns", Duration::from_secs(360)).await;
    eprintln!("cert-manager acmeDNS: Certificate Ready after {elapsed:?}");
    let chain = cert_manager::tls_chain(namespace, "acme-dns-tls");
    certificate::assert_wildcard_issued_by(&chain, domain, &setup.pebble);
}
