//! The kind flow (`make e2e-kind`, `e2e/kind/`) cannot run here (no Docker engine); what
//! can be checked is: its scripts (and every other script) pass shellcheck, and the API
//! server accepts every manifest it applies, filled in as the flow fills them.

mod common;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Every shell script of the repository.
fn scripts() -> Vec<String> {
    let mut found = vec![format!("{REPO}/.ci/run")];
    let mut dirs = vec![format!("{REPO}/e2e"), format!("{REPO}/bench")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                dirs.push(path.display().to_string());
            } else if name.ends_with(".sh") {
                found.push(path.display().to_string());
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_script_passes_shellcheck() {
    let scripts = scripts();
    assert!(
        scripts.iter().any(|s| s.ends_with("e2e/kind/run.sh")),
        "{scripts:?}"
    );
    let out = std::process::Command::new("shellcheck")
        .current_dir(REPO)
        .arg("-x")
        .args(&scripts)
        .output()
        .expect("shellcheck is installed by e2e/deps.sh");
    assert!(
        out.status.success(),
        "shellcheck findings:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A manifest of the flow with its placeholders filled as `run.sh` fills them.
fn manifest(file: &str) -> String {
    let text = std::fs::read_to_string(format!("{REPO}/e2e/kind/manifests/{file}")).unwrap();
    let filled = text
        .replace("__DNS_IP__", "10.96.0.53")
        .replace("__RESOLVER_IP__", "10.96.0.54")
        .replace("__PEBBLE_CA__", "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==");
    assert!(!filled.contains("__"), "an unfilled placeholder in {file}");
    filled
}

#[tokio::test]
async fn the_api_server_accepts_every_manifest_of_the_kind_flow() {
    let client = common::client().await;
    common::install_crd(&client).await;
    let crds = common::run(
        &format!("{REPO}/e2e/cert-manager/build.sh"),
        &["crds"],
        None,
    );
    common::run(
        "kubectl",
        &["apply", "--server-side", "-f", crds.trim()],
        None,
    );
    common::wait_established(&[
        "certificates.cert-manager.io",
        "clusterissuers.cert-manager.io",
    ]);
    common::apply_namespace("cert-manager");
    common::apply_namespace("kad-e2e");
    for (file, expect) in [
        ("resolver.yaml", "deployment.apps/resolver"),
        ("pebble.yaml", "deployment.apps/pebble"),
        ("issuance.yaml", "acmednsaccount.acmedns.io/example-test"),
    ] {
        // The namespaces exist (above), so a server-side dry run checks everything.
        let out = common::run(
            "kubectl",
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&manifest(file)),
        );
        assert!(out.contains(expect), "{file}: {out}");
    }
    // The chart with the values the flow sets.
    let chart = common::render_chart(&[
        "--set",
        "zone=auth.example.test",
        "--set",
        "image.repository=kube-acme-dns",
        "--set",
        "image.tag=e2e",
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "dns.service.type=ClusterIP",
        "--set",
        "dns.nameserverAddresses={10.96.0.53}",
        "--set",
        "controller.delegationResolver=10.96.0.54:53",
    ]);
    common::apply_namespace(common::RELEASE_NAMESPACE);
    let out = common::run(
        "kubectl",
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&chart),
    );
    assert!(out.contains("deployment.apps/kad-kube-acme-dns"), "{out}");
}

#[test]
fn the_workflow_runs_the_flow_through_make() {
    let workflow =
        std::fs::read_to_string(format!("{REPO}/.github/workflows/e2e-kind.yml")).unwrap();
    let parsed: serde_yaml::Value = serde_yaml::from_str(&workflow).unwrap();
    let steps = serde_yaml::to_string(&parsed["jobs"]["kind"]["steps"]).unwrap();
    assert!(steps.contains("make e2e-kind"), "{steps}");
    let makefile = std::fs::read_to_string(format!("{REPO}/Makefile")).unwrap();
    assert!(makefile.contains("e2e-kind:\n\t@e2e/kind/run.sh"));
}
