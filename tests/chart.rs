//! The Helm chart renders, and the real API server accepts everything it renders.

mod common;

#[test]
fn chart_renders_and_the_api_server_accepts_it() {
    let manifests = common::render_chart(&[]);
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
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
