//! The real node of the local cluster (`e2e/node.sh`): its network namespace, images
//! built for it, a LoadBalancer, and cert-manager's controllers for the chart's PKI.

use std::{os::fd::AsRawFd, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

pub const E2E: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e");

/// Runs an `e2e/` script for the cluster of KUBECONFIG (its state dir is the
/// kubeconfig's); returns its trimmed stdout. Its progress goes to the test's stderr.
pub fn script(path: &str, args: &[&str]) -> String {
    let kubeconfig = PathBuf::from(std::env::var("KUBECONFIG").expect("KUBECONFIG is set"));
    let output = std::process::Command::new(format!("{E2E}/{path}"))
        .args(args)
        .env("KAD_CLUSTER_DIR", kubeconfig.parent().unwrap())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run e2e/{path}: {e}"));
    assert!(output.status.success(), "e2e/{path} {args:?} failed");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Runs `f` on a thread of its own inside the node's network namespace: the sockets it
/// opens live there, where the node, pod, Service and LoadBalancer addresses are.
pub fn in_node<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = script("node.sh", &["netns"]);
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("open {path} (is the node up? e2e/node.sh up): {e}"));
        // setns(2) with CLONE_NEWNET moves only the calling thread.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the thread in the node's network namespace")
}

/// Builds the image from this checkout's release binary (`e2e/image.sh`, cached by the
/// binary's hash) and loads it into the node; returns (repository, tag).
pub fn load_image() -> (String, String) {
    let reference = script("image.sh", &[]);
    let (repository, tag) = reference
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("e2e/image.sh printed {reference:?}, not REPOSITORY:TAG"));
    (repository.to_string(), tag.to_string())
}

/// What a cloud's load-balancer controller does: once the Service `namespace/name`
/// exists, publish `ip` (an address inside the node's namespace) in its
/// `status.loadBalancer`; kube-proxy then forwards that address to the Service's pods.
pub fn assign_load_balancer(
    client: Client,
    namespace: &str,
    name: &str,
    ip: &str,
) -> tokio::task::JoinHandle<()> {
    let services: Api<Service> = Api::namespaced(client, namespace);
    let (name, ip) = (name.to_string(), ip.to_string());
    tokio::spawn(async move {
        super::eventually(
            "the LoadBalancer Service exists",
            Duration::from_secs(120),
            || async { services.get_opt(&name).await.ok().flatten() },
        )
        .await;
        let status = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": ip }] } } });
        services
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("patch the Service's load-balancer status");
    })
}

/// cert-manager's controllers (out of cluster, as the other tests run them) for the
/// Issuers and Certificates of `namespace`; stopped when dropped.
pub fn start_cert_manager(namespace: &str) -> tokio::process::Child {
    let controller = script("cert-manager/build.sh", &["path"]);
    tokio::process::Command::new(controller)
        .args(["--kubeconfig", &std::env::var("KUBECONFIG").unwrap()])
        .args(["--namespace", namespace])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start cert-manager's controllers")
}

/// What a user looks at when pods do not come up: pods, events, the node's kubelet log.
pub fn diagnose(namespace: &str) -> String {
    let mut out = String::new();
    for args in [
        vec![
            "get",
            "pods,endpointslices,services",
            "-o",
            "wide",
            "-n",
            namespace,
        ],
        vec!["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
    ] {
        let output = std::process::Command::new("kubectl").args(&args).output();
        if let Ok(o) = output {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            out.push_str(&String::from_utf8_lossy(&o.stderr));
        }
    }
    out
}
