//! The Helm chart renders, and the real API server accepts everything it renders.

mod common;

use serde::Deserialize;
use serde_yaml::Value;

/// The rendered chart as parsed documents (empty ones dropped).
fn documents(manifests: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(manifests)
        .map(|doc| Value::deserialize(doc).expect("the chart renders valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// cert-manager's own kinds (Issuer, Certificate), which this API server only knows once
/// cert-manager's CRDs are installed.
fn is_cert_manager_kind(doc: &Value) -> bool {
    doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

#[test]
fn chart_renders_and_the_api_server_accepts_it() {
    let all = documents(&common::render_chart(&[]));
    let cert_manager_kinds: Vec<&str> = all
        .iter()
        .filter(|d| is_cert_manager_kind(d))
        .map(kind)
        .collect();
    for expected in ["Issuer", "Certificate"] {
        assert!(
            cert_manager_kinds.contains(&expected),
            "{expected} missing: {cert_manager_kinds:?}"
        );
    }
    let ours: Vec<&Value> = all.iter().filter(|d| !is_cert_manager_kind(d)).collect();
    let kinds: Vec<&str> = ours.iter().map(|d| kind(d)).collect();
    for expected in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "APIService",
    ] {
        assert!(
            kinds.contains(&expected),
            "{expected} missing from the rendered chart: {kinds:?}"
        );
    }
    common::apply_namespace(common::RELEASE_NAMESPACE);
    let manifests: Vec<String> = ours
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    let applied = common::run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&manifests.join("---\n")),
    );
    assert!(
        applied.contains("deployment.apps/kad-kube-acme-dns"),
        "{applied}"
    );
}

#[test]
fn chart_passes_values_to_the_flags_serve_reads() {
    let all = documents(&common::render_chart(&["--set", "zone=acme.example.net"]));
    let deployment = all
        .iter()
        .find(|d| kind(d) == "Deployment")
        .expect("a Deployment");
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let serve = containers
        .iter()
        .find(|c| {
            c["args"]
                .as_sequence()
                .is_some_and(|a| a.iter().any(|a| a.as_str() == Some("serve")))
        })
        .unwrap_or_else(|| panic!("a container running `serve`: {containers:?}"));
    let env = serve["env"].as_sequence().expect("env");
    let zone = env
        .iter()
        .find(|e| e["name"].as_str() == Some("KUBE_ACME_DNS_ZONE"))
        .unwrap_or_else(|| panic!("KUBE_ACME_DNS_ZONE in env: {env:?}"));
    assert_eq!(zone["value"].as_str(), Some("acme.example.net"));
    assert_eq!(
        serve["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{serve:?}"
    );
}

#[test]
fn every_setting_the_chart_passes_is_one_serve_reads() {
    let all = documents(&common::render_chart(&[
        "--set",
        "zone=acme.example.net",
        "--set",
        "api.enabled=true",
        "--set",
        "api.tls.secretName=api-cert",
        "--set",
        "api.registration.tokenSecret.name=api-token",
        "--set",
        "api.trustedProxies={10.0.0.0/8}",
        "--set",
        "watchNamespace=acme",
        "--set",
        "controller.delegationResolver=10.96.0.10:53",
    ]));
    let deployment = all
        .iter()
        .find(|d| kind(d) == "Deployment")
        .expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let help = common::run(
        env!("CARGO_BIN_EXE_kube-acme-dns"),
        &["serve", "--help"],
        None,
    );
    let names: Vec<&str> = pod["containers"][0]["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|name| name.starts_with("KUBE_ACME_DNS_"))
        .collect();
    assert!(names.len() > 15, "{names:?}");
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}")),
            "the chart sets {name}, which `serve` does not read"
        );
    }
    // The API's certificate is mounted where its flags point.
    let mounts = serde_yaml::to_string(&pod["containers"][0]["volumeMounts"]).unwrap();
    assert!(mounts.contains("mountPath: /api-tls"), "{mounts}");
    let volumes = serde_yaml::to_string(&pod["volumes"]).unwrap();
    assert!(volumes.contains("secretName: api-cert"), "{volumes}");
}

#[test]
fn helm_lint_is_clean() {
    let out = common::run("helm", &["lint", "--strict", common::CHART], None);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn bad_values_fail_at_install_naming_the_value() {
    for (value, says) in [
        ("replicaCount=two", "/replicaCount"),
        ("zone=not a zone", "/zone"),
        ("dns.service.type=Ingress", "/dns/service/type"),
        (
            "dns.nameserverAddresses={ns1}",
            "/dns/nameserverAddresses/0",
        ),
        ("api.bcryptCost=3", "/api/bcryptCost"),
        ("webhook.maxTxtValues=100", "/webhook/maxTxtValues"),
        ("dns.rateLimit.slip=11", "/dns/rateLimit/slip"),
        (
            "dns.rateLimit.ipv4PrefixLength=0",
            "/dns/rateLimit/ipv4PrefixLength",
        ),
        ("image.repository=", "/image/repository"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
    ] {
        let out = std::process::Command::new("helm")
            .args(["template", "kad", common::CHART, "--kube-version", "1.37.2"])
            .args(["--set", value])
            .output()
            .expect("run helm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{value} was accepted");
        assert!(
            stderr.contains("don't meet the specifications") && stderr.contains(says),
            "{value}: {stderr}"
        );
    }
}

#[test]
fn optional_parts_render_and_the_api_server_accepts_them() {
    let all = documents(&common::render_chart(&[
        "--set",
        "api.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "metrics.serviceMonitor.enabled=true",
    ]));
    let find = |k: &str| {
        all.iter()
            .find(|d| kind(d) == k)
            .unwrap_or_else(|| panic!("a {k}"))
    };
    let pdb = find("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"].as_i64(), Some(1));
    // Every port the pod serves is admitted by the NetworkPolicy, and only those.
    let policy = serde_yaml::to_string(&find("NetworkPolicy")["spec"]["ingress"]).unwrap();
    for port in ["dns-udp", "dns-tcp", "webhook", "api", "metrics"] {
        assert!(
            policy.contains(&format!("port: {port}")),
            "{port}: {policy}"
        );
    }
    let monitor = find("ServiceMonitor");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("metrics")
    );
    let pod = &find("Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["topologySpreadConstraints"][0]["topologyKey"].as_str(),
        Some("kubernetes.io/hostname")
    );

    // The API server takes all but the ServiceMonitor (its CRD is the Prometheus
    // Operator's) and cert-manager's kinds.
    common::apply_namespace(common::RELEASE_NAMESPACE);
    let manifests: Vec<String> = all
        .iter()
        .filter(|d| !is_cert_manager_kind(d) && kind(d) != "ServiceMonitor")
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect();
    let applied = common::run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&manifests.join("---\n")),
    );
    for object in [
        "poddisruptionbudget.policy/kad-kube-acme-dns",
        "networkpolicy.networking.k8s.io/kad-kube-acme-dns",
        "service/kad-kube-acme-dns-metrics",
    ] {
        assert!(applied.contains(object), "{object}: {applied}");
    }

    // One replica: no budget that would block every drain.
    let single = documents(&common::render_chart(&["--set", "replicaCount=1"]));
    assert!(!single.iter().any(|d| kind(d) == "PodDisruptionBudget"));
}

#[test]
fn install_notes_say_what_to_publish_at_the_parent_zone() {
    // Without the webhook, nothing of cert-manager's is needed for a client-side dry run.
    let out = common::run(
        "helm",
        &[
            "install",
            "notes",
            common::CHART,
            "--dry-run=client",
            "--namespace",
            common::RELEASE_NAMESPACE,
            "--set",
            "zone=auth.example.org",
            "--set",
            "webhook.enabled=false",
            "--set",
            "dns.nameserverAddresses={203.0.113.53,2001:db8::53}",
        ],
        None,
    );
    let notes = out.split_once("NOTES:").expect("NOTES in the output").1;
    for line in [
        "auth.example.org.  NS  ns.auth.example.org.",
        "ns.auth.example.org.  A  203.0.113.53",
        "ns.auth.example.org.  AAAA  2001:db8::53",
        "kubectl -n kube-acme-dns get service notes-kube-acme-dns-dns",
        "_acme-challenge.example.com.  CNAME  <status.fqdn>.",
    ] {
        assert!(
            notes.contains(line),
            "{line:?} missing from NOTES:\n{notes}"
        );
    }
    assert!(
        !notes.contains("groupName"),
        "no webhook steps when it is off"
    );
}
