//! Generated artefacts are produced by a command and never edited by hand: these tests
//! fail when a checked-in copy differs from what the code generates now.

use std::path::Path;

fn assert_generated(path: &str, expected: &str, regenerate: &str) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let actual = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; run `{regenerate}`", full.display()));
    assert!(
        actual == expected,
        "{path} differs from the generated output; run `{regenerate}` and commit the result"
    );
}

#[test]
fn crd_file_matches_the_rust_types() {
    assert_generated(
        "crd/acmednsaccounts.yaml",
        &kube_acme_dns::api::crd_yaml(),
        "make generate",
    );
}

#[test]
fn chart_crd_matches_the_rust_types() {
    assert_generated(
        "charts/kube-acme-dns/crds/acmednsaccounts.yaml",
        &kube_acme_dns::api::crd_yaml(),
        "make generate",
    );
}

#[test]
fn deploy_manifests_match_the_chart() {
    // helm comes from the local control plane's tools (make test puts it on PATH).
    let output = std::process::Command::new("helm")
        .args(["template", "kad"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/kube-acme-dns"))
        .args([
            "--namespace",
            "kube-acme-dns",
            "--kube-version",
            "1.37.2",
            "--include-crds",
        ])
        .output()
        .expect("helm on PATH: run `make test`, or `eval \"$(make -s cluster-env)\"`");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_generated(
        "deploy/kube-acme-dns.yaml",
        &String::from_utf8(output.stdout).unwrap(),
        "make generate",
    );
}
