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
