//! A real certificate issuance: cert-manager's own controllers, Pebble as the ACME CA,
//! unbound as the resolver that holds the user's zone (`<unique>.test`) with the
//! `_acme-challenge` CNAME into our zone, and `serve` (DNS + controller + webhook)
//! behind the aggregation layer. Validation follows the CNAME exactly as on the
//! Internet, and every query stays on loopback.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use kube::{
    Api,
    api::{DynamicObject, PostParams},
    discovery::ApiResource,
};
use serde_json::json;

use common::aggregation;
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e");

/// Runs an e2e script and returns its stdout, trimmed.
fn script(path: &str, args: &[&str]) -> String {
    common::run(&format!("{E2E}/{path}"), args, None)
        .trim()
        .to_string()
}

struct Stop(&'static str, String);
impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(format!("{E2E}/{}", self.0))
            .args(["stop", &self.1])
            .output();
    }
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
    directory: &str,
    ca_bundle: &Path,
    pebble_root: &Path,
    accounts: &Api<AcmeDnsAccount>,
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
            "server": directory,
            "caBundle": aggregation::base64(&std::fs::read(ca_bundle).unwrap()),
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
    let chain = decode_base64(pem.trim());
    let dir = std::env::temp_dir().join(common::unique_name("issued"));
    std::fs::create_dir_all(&dir).unwrap();
    let chain_path = dir.join("chain.pem");
    std::fs::write(&chain_path, &chain).unwrap();
    let text = common::run(
        "openssl",
        &[
            "x509",
            "-in",
            chain_path.to_str().unwrap(),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        None,
    );
    assert!(
        text.contains(&format!("DNS:{domain}")) && text.contains(&format!("DNS:*.{domain}")),
        "{text}"
    );
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
        let account = accounts.get("example-test").await.ok()?;
        account.status?.txt.is_empty().then_some(())
    })
    .await;
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | (value(*c) << (18 - 6 * i)));
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
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
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), &namespace);
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(domain.clone())],
        subdomain: Some(DnsLabel(label.clone())),
        ..Default::default()
    };
    accounts
        .create(
            &PostParams::default(),
            &AcmeDnsAccount::new("example-test", spec),
        )
        .await
        .unwrap();
    let fqdn = format!("{label}.auth.example.test.");
    common::eventually("subdomain assigned", Duration::from_secs(20), || async {
        accounts.get("example-test").await.ok()?.status?.fqdn
    })
    .await;

    // The user's zone with the one CNAME they published, in a resolver that sends
    // auth.example.test to our responder.
    let work = std::env::temp_dir().join(common::unique_name("issuance"));
    std::fs::create_dir_all(&work).unwrap();
    let zone = work.join(format!("{domain}.zone"));
    std::fs::write(
        &zone,
        format!(
            "$ORIGIN {domain}.\n$TTL 60\n@ SOA ns.{domain}. hostmaster.{domain}. 1 60 60 600 60\n@ NS ns.{domain}.\nns A 127.0.0.1\n_acme-challenge CNAME {fqdn}\n"
        ),
    )
    .unwrap();
    let unbound_dir = work.join("unbound").to_string_lossy().into_owned();
    let stub = format!("auth.example.test={}", solver.serve.dns);
    let resolver_port = script(
        "unbound.sh",
        &["start", &unbound_dir, zone.to_str().unwrap(), "--", &stub],
    );
    let _unbound = Stop("unbound.sh", unbound_dir);
    let resolver = format!("127.0.0.1:{resolver_port}");

    let pebble_dir = work.join("pebble").to_string_lossy().into_owned();
    let pebble = script("pebble.sh", &["start", &pebble_dir, &resolver]);
    let _pebble = Stop("pebble.sh", pebble_dir.clone());
    let (directory, ca_bundle) = pebble
        .split_once(' ')
        .expect("DIRECTORY_URL CA_BUNDLE_PATH");
    let pebble_root = Path::new(&pebble_dir).join("pebble-root.pem");

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

    for (name, strategy) in [("pebble-plain", None), ("pebble-follow", Some("Follow"))] {
        issue(
            &domain,
            name,
            strategy,
            &namespace,
            directory,
            Path::new(ca_bundle),
            &pebble_root,
            &accounts,
        )
        .await;
    }
}
