//! `helm install` of the chart on the real node (`e2e/node.sh`): the image built from this
//! checkout, a namespace that enforces the restricted Pod Security Standard, the chart's
//! defaults plus only what a user must set. Then what the user relies on: both replicas
//! Ready, cert-manager's calls reaching the pods through the aggregation layer, and TXT
//! answers on port 53 of the LoadBalancer address, over UDP and TCP, through the loss of
//! a pod.
//!
//! The APIService `v1alpha1.acme.acmedns.io` is cluster-wide, so this is one test, its
//! behaviours in sequence.

mod common;

use std::{net::SocketAddr, time::Duration};

use base64::{Engine, prelude::BASE64_STANDARD};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{RData, RecordType},
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Namespace, Pod, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

use common::{dns, node};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel, DomainName};

const ZONE: &str = "auth.example.test";
/// The DNS Service's LoadBalancer address: inside the node's network namespace, in the
/// node's own range (e2e/lib.sh KAD_NODE_CIDR), where kube-proxy serves it.
const LOAD_BALANCER_IP: &str = "10.200.0.53";
const SOLVER_PATH: &str = "/apis/acme.acmedns.io/v1alpha1/acme-dns";

/// A Helm release in a namespace of its own, uninstalled (and the namespace deleted)
/// when dropped, pass or fail.
struct Release {
    name: String,
    namespace: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::process::Command::new("helm")
            .args(["uninstall", &self.name, "-n", &self.namespace, "--wait"])
            .output();
        let _ = std::process::Command::new("kubectl")
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .output();
    }
}

impl Release {
    fn fullname(&self) -> String {
        format!("{}-kube-acme-dns", self.name)
    }
}

/// A namespace whose pods must meet the restricted Pod Security Standard.
async fn restricted_namespace(client: &Client) -> String {
    let name = common::unique_name("node");
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            },
        },
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the release namespace");
    name
}

/// One exchange with `server` from inside the node's network namespace, as a resolver
/// does it: up to three tries, a second each.
fn ask(server: SocketAddr, name: &str, tcp: bool) -> Option<Message> {
    let name = name.to_string();
    node::in_node(move || {
        (0..3).find_map(|_| {
            let query = dns::query(&name, RecordType::TXT, false, Some(1232));
            let timeout = Duration::from_secs(1);
            if tcp {
                dns::tcp(server, &query, timeout).ok()
            } else {
                dns::udp(server, &query, timeout).ok()
            }
        })
    })
}

/// The TXT values answered over `tcp` or UDP, when the answer is authoritative NOERROR.
fn served_txt(server: SocketAddr, name: &str, tcp: bool) -> Option<Vec<String>> {
    let reply = ask(server, name, tcp)?;
    (reply.metadata.response_code == ResponseCode::NoError && reply.metadata.authoritative)
        .then(|| dns::txt_strings(&reply))
}

async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    let list = pods
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chart_runs_on_the_node_and_answers_through_the_load_balancer() {
    let admin = common::client().await;
    let (repository, tag) = node::load_image();
    common::cert_manager::install();

    let namespace = restricted_namespace(&admin).await;
    let release = Release {
        name: common::unique_name("kad"),
        namespace: namespace.clone(),
    };
    let fullname = release.fullname();
    // Other tests register this cluster-wide APIService for solvers on loopback.
    common::run(
        "kubectl",
        &[
            "delete",
            "apiservice",
            "v1alpha1.acme.acmedns.io",
            "--ignore-not-found",
        ],
        None,
    );
    // The chart's serving certificate comes from cert-manager.
    let _cert_manager = node::start_cert_manager(&namespace);
    let load_balancer = node::assign_load_balancer(
        admin.clone(),
        &namespace,
        &format!("{fullname}-dns"),
        LOAD_BALANCER_IP,
    );

    // What a user sets: the zone, where the image is, the nameserver's address.
    let nameservers = format!("dns.nameserverAddresses={{{LOAD_BALANCER_IP}}}");
    let install = [
        "install",
        &release.name,
        common::CHART,
        "--namespace",
        &namespace,
        "--set",
        &format!("zone={ZONE}"),
        "--set",
        &format!("image.repository={repository}"),
        "--set",
        &format!("image.tag={tag}"),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        &nameservers,
        "--wait",
        "--timeout",
        "240s",
    ]
    .map(str::to_string);
    let started = std::time::Instant::now();
    let helm = tokio::task::spawn_blocking(move || {
        std::process::Command::new("helm")
            .args(&install)
            .output()
            .expect("run helm")
    })
    .await
    .unwrap();
    assert!(
        helm.status.success(),
        "helm install failed: {}\n{}",
        String::from_utf8_lossy(&helm.stderr),
        node::diagnose(&namespace)
    );
    load_balancer.await.unwrap();
    eprintln!(
        "helm install --wait: both replicas Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Both replicas Ready under the restricted profile.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &namespace);
    let deployment = deployments.get(&fullname).await.unwrap();
    let status = deployment.status.unwrap_or_default();
    assert_eq!(
        status.ready_replicas,
        Some(2),
        "{}",
        node::diagnose(&namespace)
    );
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    assert_eq!(ready_pods(&pods, &selector).await.len(), 2);

    // cert-manager's cainjector (not run here) puts the serving certificate's CA into the
    // APIService; do what it does, then the aggregator reaches the pods.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &namespace);
    let tls = secrets
        .get(&format!("{fullname}-webhook-tls"))
        .await
        .unwrap();
    let ca = tls.data.unwrap()["ca.crt"].0.clone();
    let patch = json!({ "spec": { "caBundle": BASE64_STANDARD.encode(&ca) } });
    common::run(
        "kubectl",
        &[
            "patch",
            "apiservice",
            "v1alpha1.acme.acmedns.io",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ],
        None,
    );
    common::eventually(
        "the APIService Available through the pods",
        Duration::from_secs(60),
        || async {
            let out = common::run(
                "kubectl",
                &[
                    "get",
                    "apiservice",
                    "v1alpha1.acme.acmedns.io",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Available\")].status}",
                ],
                None,
            );
            (out.trim() == "True").then_some(())
        },
    )
    .await;

    // A user's account; the controller in the pods assigns it its name in the zone.
    let label = common::unique_name("n");
    let domain = format!("{label}.test");
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), &namespace);
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(domain.clone())],
        subdomain: Some(DnsLabel(label.clone())),
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &AcmeDnsAccount::new("user", spec))
        .await
        .unwrap();
    let fqdn = common::eventually(
        "the account's FQDN in its status",
        Duration::from_secs(30),
        || async { accounts.get("user").await.ok()?.status?.fqdn },
    )
    .await;
    assert_eq!(fqdn.trim_end_matches('.'), format!("{label}.{ZONE}"));

    // cert-manager's Present, through kube-apiserver's aggregator to the pods.
    let key = "node-challenge-key-1";
    let payload = json!({
        "request": {
            "uid": "",
            "action": "Present",
            "type": "dns-01",
            "dnsName": domain,
            "key": key,
            "resourceNamespace": namespace,
            "resolvedFQDN": format!("_acme-challenge.{domain}."),
            "resolvedZone": format!("{domain}."),
            "allowAmbientCredentials": false,
            "config": null,
        }
    });
    let request = http::Request::post(SOLVER_PATH)
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&payload).unwrap())
        .unwrap();
    let reply: Value = serde_json::from_str(
        &admin
            .request_text(request)
            .await
            .expect("Present through the aggregator"),
    )
    .unwrap();
    assert_eq!(reply["response"]["success"], json!(true), "{reply}");

    // The TXT answer on port 53 of the LoadBalancer address (the pods listen on 5353).
    let name = format!("{label}.{ZONE}.");
    let server: SocketAddr = format!("{LOAD_BALANCER_IP}:53").parse().unwrap();
    for tcp in [false, true] {
        let transport = if tcp { "TCP" } else { "UDP" };
        let answered = common::eventually(
            &format!("the TXT answered over {transport} through the LoadBalancer"),
            Duration::from_secs(30),
            || {
                let name = name.clone();
                async move { served_txt(server, &name, tcp).filter(|v| !v.is_empty()) }
            },
        )
        .await;
        assert_eq!(answered, vec![key.to_string()], "over {transport}");
    }

    // The zone's name server is at the address the user gave the chart.
    let ns_query = dns::query(&format!("ns.{ZONE}."), RecordType::A, false, None);
    let reply = node::in_node(move || dns::udp(server, &ns_query, Duration::from_secs(2)))
        .expect("ns A answered through the LoadBalancer");
    let addresses: Vec<String> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(addresses, vec![LOAD_BALANCER_IP.to_string()]);

    // Kill one pod: the other keeps answering, and the Deployment brings a new one.
    let before = ready_pods(&pods, &selector).await;
    let victim = before[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut queries = 0;
    let replaced = loop {
        for tcp in [false, true] {
            let answer = tokio::task::spawn_blocking({
                let name = name.clone();
                move || served_txt(server, &name, tcp)
            })
            .await
            .unwrap();
            assert_eq!(
                answer,
                Some(vec![key.to_string()]),
                "query {queries} after deleting {victim} (tcp: {tcp})"
            );
            queries += 1;
        }
        // Until the old pod is gone, not only replaced: its process stops last.
        let ready = ready_pods(&pods, &selector).await;
        let gone = pods.get_opt(&victim).await.unwrap().is_none();
        if gone
            && ready.len() == 2
            && ready
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(&victim))
        {
            eprintln!(
                "{queries} queries answered while {victim} was replaced and stopped ({:.1} s)",
                deleted.elapsed().as_secs_f64()
            );
            break ready;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replacement for {victim} Ready within 120 s\n{}",
            node::diagnose(&namespace)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // The new pod answers too: ask each pod on its own address.
    for pod in &replaced {
        let ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
        let direct: SocketAddr = format!("{ip}:5353").parse().unwrap();
        let pod_name = pod.metadata.name.clone().unwrap();
        let answered = common::eventually(
            &format!("{pod_name} answers the TXT"),
            Duration::from_secs(30),
            || {
                let name = name.clone();
                async move { served_txt(direct, &name, false).filter(|v| !v.is_empty()) }
            },
        )
        .await;
        assert_eq!(answered, vec![key.to_string()], "{pod_name}");
    }
    drop(release);
}
