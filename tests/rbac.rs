//! The chart's RBAC grants what kube-acme-dns needs and nothing more, asked of the real
//! API server with `kubectl auth can-i` as the chart's ServiceAccount (every role on).

mod common;

/// `kubectl auth can-i ARGS` as the chart's ServiceAccount.
fn can(args: &[&str]) -> bool {
    let user = format!(
        "system:serviceaccount:{}:{}-kube-acme-dns",
        common::RELEASE_NAMESPACE,
        common::RELEASE
    );
    let out = std::process::Command::new("kubectl")
        .args(["auth", "can-i"])
        .args(args)
        .args(["--as", &user])
        .output()
        .expect("run kubectl");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl auth can-i {args:?}: {answer} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn the_chart_grants_what_is_needed_and_nothing_more() {
    common::chart_identity_kubeconfig();
    let release = common::RELEASE_NAMESPACE;
    // The Lease the chart makes for leader election (templates/lease.yaml).
    let lease = format!(
        "leases.coordination.k8s.io/{}-kube-acme-dns-controller",
        common::RELEASE
    );
    let lease = lease.as_str();
    let needed: &[&[&str]] = &[
        // The watch of every account, and the controller's status writes.
        &["list", "acmednsaccounts.acmedns.io", "--all-namespaces"],
        &["watch", "acmednsaccounts.acmedns.io", "--all-namespaces"],
        &[
            "update",
            "acmednsaccounts.acmedns.io",
            "--subresource=status",
            "-n",
            "default",
        ],
        &["create", "events.events.k8s.io", "-n", "default"],
        // Leader election on the chart's Lease in the release namespace.
        &["get", lease, "-n", release],
        &["update", lease, "-n", release],
        &["create", "leases.coordination.k8s.io", "-n", release],
        // The webhook: front-proxy trust and delegated authorization.
        &[
            "get",
            "configmaps/extension-apiserver-authentication",
            "-n",
            "kube-system",
        ],
        &["create", "subjectaccessreviews.authorization.k8s.io"],
        // The acme-dns API, in its namespace only.
        &["create", "acmednsaccounts.acmedns.io", "-n", release],
        &["delete", "acmednsaccounts.acmedns.io", "-n", release],
        &["watch", "secrets", "-n", release],
        &["create", "secrets", "-n", release],
    ];
    for args in needed {
        assert!(can(args), "the chart must grant {args:?}");
    }
    let refused: &[&[&str]] = &[
        // No Secrets anywhere but the API's namespace, and no changing them there.
        &["list", "secrets", "--all-namespaces"],
        &["get", "secrets", "-n", "default"],
        &["get", "secrets", "-n", "kube-system"],
        &["create", "secrets", "-n", "default"],
        &["update", "secrets", "-n", release],
        &["patch", "secrets", "-n", release],
        // Accounts' specs belong to their owners.
        &["update", "acmednsaccounts.acmedns.io", "-n", "default"],
        &["patch", "acmednsaccounts.acmedns.io", "-n", "default"],
        &["delete", "acmednsaccounts.acmedns.io", "-n", "default"],
        &["create", "acmednsaccounts.acmedns.io", "-n", "default"],
        // No writes outside our resources.
        &["update", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["delete", lease, "-n", release],
        &["create", "configmaps", "-n", release],
        &["get", "configmaps", "-n", "default"],
        &["create", "pods", "-n", release],
        &["delete", "deployments.apps", "-n", release],
        &["patch", "services", "-n", release],
        &["update", "customresourcedefinitions.apiextensions.k8s.io"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["*", "*", "--all-namespaces"],
    ];
    for args in refused {
        assert!(!can(args), "the chart must not grant {args:?}");
    }
}
