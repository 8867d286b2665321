//! The Helm chart renders, and the real API server accepts everything it renders.

mod common;

/// The rendered documents, without cert-manager's own kinds (Issuer, Certificate), which
/// this API server only knows once cert-manager's CRDs are installed.
fn without_cert_manager_kinds(manifests: &str) -> String {
    manifests
        .split("\n---")
        .filter(|doc| !doc.contains("apiVersion: cert-manager.io/"))
        .collect::<Vec<_>>()
        .join("\n---")
}

#[test]
fn chart_renders_and_the_api_server_accepts_it() {
    let all = common::render_chart(&[]);
    for kind in ["Issuer", "Certificate"] {
        assert!(all.contains(&format!("kind: {kind}\n")), "{kind} missing");
    }
    let manifests = without_cert_manager_kinds(&all);
    for kind in [
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
            manifests.contains(&format!("kind: {kind}\n")),
            "{kind} missing from the rendered chart"
        );
    }
    let namespace = common::run(
        "kubectl",
        &[
            "create",
            "namespace",
            common::RELEASE_NAMESPACE,
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        None,
    );
    common::run("kubectl", &["apply", "-f", "-"], Some(&namespace));
    let applied = common::run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&manifests),
    );
    assert!(
        applied.contains("deployment.apps/kad-kube-acme-dns"),
        "{applied}"
    );
}

#[test]
fn chart_passes_values_to_the_flags_serve_reads() {
    let manifests = common::render_chart(&["--set", "zone=acme.example.net"]);
    assert!(
        manifests.contains("name: KUBE_ACME_DNS_ZONE\n              value: \"acme.example.net\"")
    );
    assert!(manifests.contains("readOnlyRootFilesystem: true"));
}
