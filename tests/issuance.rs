//! A real certificate issuance: cert-manager's own controllers, Pebble as the ACME CA,
//! unbound as the resolver that holds the user's zone (`<unique>.test`) with the
//! `_acme-challenge` CNAME into our zone, and `serve` (DNS + controller + webhook)
//! behind the aggregation layer. Validation follows the CNAME exactly as on the
//! Internet, and every query stays on loopback.

mod common;

use std::{process::Stdio, time::Duration};

use kube::{
    Api,
    api::{DynamicObject, PostParams},
    discovery::ApiResource,
};
use serde_json::json;

use base64::{Engine, prelude::BASE64_STANDARD};
use common::{aggregation, knot::zone_text, pebble::Pebble, unbound::Unbound};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e");

/// Runs an e2e script and returns its stdout, trimmed.
fn script(path: &str, args: &[&str]) -> String {
    common::run(&format!("{E2E}/{path}"), args, None)
        .trim()
        .to_string()
}

fn certificate_resource() -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: "cert-manager.io/v1".into(),
        kind: "Certificate".into(),
        plural: "certificates".into(),
    }
}

/// Issues a certificate for `domain` and `*.domain` through a ClusterIssuer
/// with the given cnameStrategy, and checks what the user would: Ready, both names in
/// the certificate, signed by Pebble, no TXT value left behind.
#[allow(clippy::too_many_arguments)]
async fn issue(
    domain: &str,
    name: &str,
    cname_strategy: Option<&str>,
    namespace: &str,
    pebble: &Pebble,
    accounts: &Api<AcmeDnsAccount>,
    account: &str,
) {
    let mut dns01 = json!({
        "webhook": { "groupName": "acme.acmedns.io", "solverName": "acme-dns" }
    });
    if let Some(strategy) = cname_strategy {
        dns01["cnameStrategy"] = json!(strategy);
    }
    let issuer = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": { "name": name },
        "spec": { "acme": {
            "server": pebble.directory,
            "caBundle": BASE64_STANDARD.encode(&pebble.https_ca.cert.cert_pem),
            "privateKeySecretRef": { "name": format!("{name}-account-key") },
            "solvers": [ { "dns01": dns01 } ],
        } },
    });
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "secretName": format!("{name}-tls"),
            "dnsNames": [domain, format!("*.{domain}")],
            "issuerRef": { "kind": "ClusterIssuer", "name": name },
        },
    });
    for object in [&issuer, &certificate] {
        common::run("kubectl", &["apply", "-f", "-"], Some(&object.to_string()));
    }

    let certificates: Api<DynamicObject> =
        Api::namespaced_with(common::client().await, namespace, &certificate_resource());
    let started = std::time::Instant::now();
    common::eventually(
        &format!("Certificate {name} Ready"),
        Duration::from_secs(360),
        || async {
            let cert = certificates.get(name).await.ok()?;
            let conditions = cert.data["status"]["conditions"].as_array()?.clone();
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        },
    )
    .await;
    eprintln!("Certificate {name} Ready after {:?}", started.elapsed());

    // The Secret holds a certificate for both names, signed by Pebble.
    let pem = common::run(
        "kubectl",
        &[
            "get",
            "secret",
            &format!("{name}-tls"),
            "-n",
            namespace,
            "-o",
            "jsonpath={.data.tls\\.crt}",
        ],
        None,
    );
    let chain = BASE64_STANDARD
        .decode(pem.trim())
        .expect("tls.crt is base64");
    assert_eq!(
        dns_names(&chain),
        [format!("*.{domain}"), domain.to_string()],
        "the certificate names exactly the requested names"
    );
    let dir = std::env::temp_dir().join(common::unique_name("issued"));
    std::fs::create_dir_all(&dir).unwrap();
    let chain_path = dir.join("chain.pem");
    std::fs::write(&chain_path, &chain).unwrap();
    let pebble_root = dir.join("pebble-root.pem");
    std::fs::write(&pebble_root, pebble.root_pem()).unwrap();
    // openssl, an independent verifier, checks the chain up to Pebble's root.
    let verify = std::process::Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            pebble_root.to_str().unwrap(),
            "-untrusted",
        ])
        .arg(&chain_path)
        .arg(&chain_path)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "signed by Pebble: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // CleanUp removed every challenge value.
    common::eventually("no stale TXT values", Duration::from_secs(60), || async {
        let account = accounts.get(account).await.ok()?;
        account.status?.txt.is_empty().then_some(())
    })
    .await;
}

/// The DNS names of the first certificate in a PEM chain, sorted.
fn dns_names(chain_pem: &[u8]) -> Vec<String> {
    use x509_parser::{extensions::GeneralName, pem::parse_x509_pem};
    let (_, pem) = parse_x509_pem(chain_pem).expect("a PEM certificate");
    let cert = pem.parse_x509().expect("an X.509 certificate");
    let san = cert
        .subject_alternative_name()
        .expect("a valid SAN extension")
        .expect("a SAN extension");
    let mut names: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn wildcard_certificate_is_issued_through_pebble_with_and_without_cname_follow() {
    let admin = common::client().await;
    common::install_crd(&admin).await;

    // cert-manager: its CRDs, and its controllers running against our API server.
    script("cert-manager/build.sh", &[]);
    let crds = script("cert-manager/build.sh", &["crds"]);
    common::run("kubectl", &["apply", "--server-side", "-f", &crds], None);
    common::run(
        "kubectl",
        &[
            "wait",
            "--for",
            "condition=Established",
            "--timeout=60s",
            "crd/certificates.cert-manager.io",
            "crd/clusterissuers.cert-manager.io",
            "crd/challenges.acme.cert-manager.io",
        ],
        None,
    );
    let namespace = common::create_namespace(&admin, "issuance").await;
    let manifest = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cert-manager\n";
    common::run("kubectl", &["apply", "-f", "-"], Some(manifest));

    // Our side: DNS + controller + webhook, the account the user created.
    let label = common::unique_name("issue");
    // A domain of its own, so no account elsewhere in the cluster lists it too.
    let domain = format!("{label}.test");
    let solver = aggregation::start_all_roles(&label).await;
    // With cert-manager's CRDs in place the API server accepts the whole chart,
    // including its serving-certificate PKI (Issuers, Certificates).
    let chart = common::render_chart(&[]);
    let applied = common::run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&chart),
    );
    assert!(
        applied.contains("certificate.cert-manager.io/kad-kube-acme-dns-webhook-tls"),
        "{applied}"
    );
    // Two users' domains, each delegated to an account of its own: one issuer follows
    // the CNAME, the other does not. cert-manager solves the challenges of one domain
    // one after the other, so two domains let both certificates be issued at once.
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), &namespace);
    let follow_label = format!("{label}-f");
    let follow_domain = format!("{follow_label}.test");
    let work = std::env::temp_dir().join(common::unique_name("issuance"));
    std::fs::create_dir_all(&work).unwrap();
    let mut zones = Vec::new();
    for (account, label, domain) in [
        ("example-test", &label, &domain),
        ("follow-test", &follow_label, &follow_domain),
    ] {
        let spec = AcmeDnsAccountSpec {
            domains: vec![DomainName(domain.clone())],
            subdomain: Some(DnsLabel(label.clone())),
            ..Default::default()
        };
        accounts
            .create(&PostParams::default(), &AcmeDnsAccount::new(account, spec))
            .await
            .unwrap();
        common::eventually("subdomain assigned", Duration::from_secs(20), || async {
            accounts.get(account).await.ok()?.status?.fqdn
        })
        .await;
        // The user's zone with the one CNAME they published.
        let zone = work.join(format!("{domain}.zone"));
        let cname = format!("_acme-challenge CNAME {label}.auth.example.test.");
        std::fs::write(&zone, zone_text(domain, &[cname])).unwrap();
        zones.push(zone);
    }

    // A resolver holding the users' zones that sends auth.example.test to our responder.
    let unbound = Unbound::start(
        &work.join("unbound"),
        &zones,
        &[("auth.example.test", solver.serve.dns)],
    );
    let resolver = unbound.addr.to_string();
    let pebble = Pebble::start(&work.join("pebble"), unbound.addr);

    let controller = script("cert-manager/build.sh", &["path"]);
    let _cert_manager = tokio::process::Command::new(controller)
        .args(["--kubeconfig", &std::env::var("KUBECONFIG").unwrap()])
        .args(["--cluster-resource-namespace", "cert-manager"])
        .args([
            "--dns01-recursive-nameservers",
            &resolver,
            "--dns01-recursive-nameservers-only",
        ])
        .args(["--dns01-check-retry-period", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start cert-manager's controllers");

    tokio::join!(
        issue(
            &domain,
            "pebble-plain",
            None,
            &namespace,
            &pebble,
            &accounts,
            "example-test"
        ),
        issue(
            &follow_domain,
            "pebble-follow",
            Some("Follow"),
            &namespace,
            &pebble,
            &accounts,
            "follow-test"
        ),
    );
}
