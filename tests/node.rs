//! `helm install` of the chart on the real node (`e2e/node.sh`): the image built from this
//! checkout, a namespace that enforces the restricted Pod Security Standard, the chart's
//! defaults plus only what a user must set. Then what the user relies on, in order: both
//! replicas Ready; cert-manager's calls reaching the pods through the aggregation layer;
//! TXT answers on port 53 of the LoadBalancer address over UDP and TCP; a certificate
//! issued by Pebble through the installed chart; the Lease leader's pod killed, the other
//! taking over while answering; a `helm upgrade` rolling both pods under a steady stream
//! of queries with none unanswered; `helm uninstall` leaving only what is documented.
//!
//! The APIService `v1alpha1.acme.acmedns.io` is cluster-wide, so this is one test, its
//! behaviours in sequence.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, prelude::BASE64_STANDARD};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{DNSClass, RData, RecordType},
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{Namespace, Pod, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::{Value, json};

use common::{
    cert_manager, certificate, dns, knot::zone_text, node, pebble::Pebble, unbound::Unbound,
};
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

/// Runs `helm ARGS` off the async workers; fails the test with helm's error and what
/// the pods of `namespace` say.
async fn helm(args: Vec<String>, namespace: &str) {
    let verb = args[0].clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("helm")
            .args(&args)
            .output()
            .expect("run helm")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "helm {verb} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node::diagnose(namespace)
    );
}

/// A user's certificate for `domain` and `*.domain` through the installed chart: an
/// account delegated from the user's zone, an Issuer with our solver, a Certificate.
/// cert-manager calls kube-apiserver, whose aggregator reaches the pods through the
/// APIService and Service; Pebble validates through the LoadBalancer address.
async fn issue_certificate(
    admin: &Client,
    namespace: &str,
    label: &str,
    domain: &str,
    pebble: &Pebble,
) {
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin.clone(), namespace);
    let spec = AcmeDnsAccountSpec {
        domains: vec![DomainName(domain.to_string())],
        subdomain: Some(DnsLabel(label.to_string())),
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &AcmeDnsAccount::new("issued", spec))
        .await
        .unwrap();
    common::eventually(
        "the account's FQDN in its status",
        Duration::from_secs(30),
        || async { accounts.get("issued").await.ok()?.status?.fqdn },
    )
    .await;
    let issuer = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": { "name": "pebble", "namespace": namespace },
        "spec": { "acme": {
            "server": pebble.directory,
            "caBundle": BASE64_STANDARD.encode(&pebble.https_ca.cert.cert_pem),
            "privateKeySecretRef": { "name": "pebble-account-key" },
            "solvers": [ { "dns01": { "webhook": {
                "groupName": "acme.acmedns.io", "solverName": "acme-dns",
            } } } ],
        } },
    });
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": { "name": "issued", "namespace": namespace },
        "spec": {
            "secretName": "issued-tls",
            "dnsNames": [domain, format!("*.{domain}")],
            "issuerRef": { "kind": "Issuer", "name": "pebble" },
        },
    });
    for object in [&issuer, &certificate] {
        common::run("kubectl", &["apply", "-f", "-"], Some(&object.to_string()));
    }
    let elapsed =
        cert_manager::wait_certificate_ready(namespace, "issued", Duration::from_secs(360)).await;
    common::report(&format!(
        "Certificate for {domain} and *.{domain} Ready through the chart's pods in {:.1} s",
        elapsed.as_secs_f64()
    ));
    let chain = cert_manager::tls_chain(namespace, "issued-tls");
    certificate::assert_wildcard_issued_by(&chain, domain, pebble);
    common::eventually(
        "CleanUp through the pods removed the challenge values",
        Duration::from_secs(60),
        || async {
            let account = accounts.get("issued").await.ok()?;
            account.status?.txt.is_empty().then_some(())
        },
    )
    .await;
}

/// What a steady stream of queries saw.
#[derive(Debug, Default)]
struct StreamResult {
    sent: usize,
    answered: usize,
    /// UDP answers that came truncated (rate limiting's slip) and were asked again over
    /// TCP, as resolvers do; counted in `answered` when TCP answered.
    truncated: usize,
    /// Each query with no reply within 2 s: seconds into the stream and the transport.
    unanswered: Vec<(f64, &'static str)>,
    /// Each reply that was not the expected TXT: seconds, transport and what it was.
    wrong: Vec<(f64, &'static str, String)>,
}

/// Asks `server` for the TXT of `name` from inside the node's network namespace, about
/// 20 times a second (every fourth over TCP), each query once from a fresh socket (a
/// truncated UDP answer asked again over TCP, as a resolver does), until `stop`; then
/// returns what it saw.
fn query_stream(
    server: SocketAddr,
    name: &str,
    expected: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<StreamResult> {
    let (name, expected) = (name.to_string(), vec![expected.to_string()]);
    node::spawn_in_node(move || {
        let started = Instant::now();
        let mut result = StreamResult::default();
        while !stop.load(Ordering::Relaxed) {
            let tcp = result.sent % 4 == 3;
            let transport = if tcp { "TCP" } else { "UDP" };
            let query = dns::query(&name, RecordType::TXT, false, Some(1232));
            let timeout = Duration::from_secs(2);
            let reply = if tcp {
                dns::tcp(server, &query, timeout)
            } else {
                match dns::udp(server, &query, timeout) {
                    Ok(reply) if reply.metadata.truncation => {
                        result.truncated += 1;
                        dns::tcp(server, &query, timeout)
                    }
                    reply => reply,
                }
            };
            let at = started.elapsed().as_secs_f64();
            result.sent += 1;
            match reply {
                Ok(reply) if dns::txt_strings(&reply) == expected => result.answered += 1,
                Ok(reply) => result.wrong.push((
                    at,
                    transport,
                    format!(
                        "{} {:?}",
                        reply.metadata.response_code,
                        dns::txt_strings(&reply)
                    ),
                )),
                Err(_) => result.unanswered.push((at, transport)),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        result
    })
}

/// `helm upgrade` that replaces both pods (a new pod annotation) while a steady stream of
/// queries runs against the LoadBalancer address: every query is answered.
async fn rolling_upgrade(
    release: &Release,
    pods: &Api<Pod>,
    selector: &str,
    server: SocketAddr,
    name: &str,
    expected: &str,
) {
    let old: Vec<String> = ready_pods(pods, selector)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stream = query_stream(server, name, expected, stop.clone());
    let rollout = format!("podAnnotations.rollout={}", common::unique_name("r"));
    let upgrade = [
        "upgrade",
        &release.name,
        common::CHART,
        "--namespace",
        &release.namespace,
        "--reuse-values",
        "--set",
        &rollout,
        "--wait",
        "--timeout",
        "240s",
    ]
    .map(str::to_string);
    let started = Instant::now();
    helm(upgrade.to_vec(), &release.namespace).await;
    // Until both old pods are gone (their processes stop last) and two new ones Ready.
    let new = common::eventually(
        "both pods replaced and the old ones gone",
        Duration::from_secs(120),
        || async {
            let ready = ready_pods(pods, selector).await;
            for pod in &old {
                if pods.get_opt(pod).await.ok()?.is_some() {
                    return None;
                }
            }
            (ready.len() == 2
                && ready
                    .iter()
                    .all(|p| p.metadata.name.as_ref().is_some_and(|n| !old.contains(n))))
            .then_some(ready)
        },
    )
    .await;
    // A little longer, so queries after the last pod's exit count too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let result = tokio::task::spawn_blocking(move || stream.join().unwrap())
        .await
        .unwrap();
    common::report(&format!(
        "helm upgrade rolled {old:?} to {:?} in {:.1} s; queries meanwhile: {} sent, {} answered \
         ({} after a truncated UDP answer), {} unanswered, {} wrong",
        new.iter()
            .filter_map(|p| p.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        started.elapsed().as_secs_f64(),
        result.sent,
        result.answered,
        result.truncated,
        result.unanswered.len(),
        result.wrong.len()
    ));
    assert!(
        result.unanswered.is_empty() && result.wrong.is_empty(),
        "during the rolling upgrade: {result:?}"
    );
    assert!(result.sent >= 100, "too few queries to tell: {result:?}");
}

/// Names of everything in the release's namespace and kube-system, and of every
/// cluster-scoped object, that bears the release's full name or is its APIService.
/// Events are left out: they expire on their own.
fn ours_left(namespace: &str, fullname: &str) -> Vec<String> {
    let kinds = |namespaced: bool| {
        let namespaced = format!("--namespaced={namespaced}");
        common::run(
            "kubectl",
            &["api-resources", "--verbs=list", &namespaced, "-o", "name"],
            None,
        )
        .lines()
        .filter(|k| !k.starts_with("events"))
        .collect::<Vec<_>>()
        .join(",")
    };
    let namespaced = kinds(true);
    let cluster = kinds(false);
    let mut left = Vec::new();
    for args in [
        vec!["get", &namespaced, "-n", namespace, "-o", "name"],
        vec!["get", &namespaced, "-n", "kube-system", "-o", "name"],
        vec!["get", &cluster, "-o", "name"],
    ] {
        left.extend(
            common::run("kubectl", &args, None)
                .lines()
                .filter(|o| o.contains(fullname) || o.ends_with("/v1alpha1.acme.acmedns.io"))
                .map(str::to_string),
        );
    }
    left.sort();
    left
}

/// `helm uninstall`: of ours only the CRD and the users' accounts stay, with the two
/// Secrets cert-manager made for the webhook's certificate, which the README's command
/// (by the release's labels) then removes.
async fn uninstall(release: &Release, accounts: &Api<AcmeDnsAccount>) {
    let fullname = release.fullname();
    common::run(
        "helm",
        &[
            "uninstall",
            &release.name,
            "-n",
            &release.namespace,
            "--wait",
            "--timeout",
            "120s",
        ],
        None,
    );
    let expected = vec![
        format!("secret/{fullname}-ca"),
        format!("secret/{fullname}-webhook-tls"),
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut left = ours_left(&release.namespace, &fullname);
    while left != expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        left = ours_left(&release.namespace, &fullname);
    }
    assert_eq!(left, expected, "left after helm uninstall");
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    common::run(
        "kubectl",
        &[
            "delete",
            "secret",
            "-n",
            &release.namespace,
            "-l",
            &selector,
        ],
        None,
    );
    assert_eq!(
        ours_left(&release.namespace, &fullname),
        Vec::<String>::new()
    );
    // The CRD, and with it the users' accounts, stay for a later install.
    common::run(
        "kubectl",
        &["get", "crd", "acmednsaccounts.acmedns.io"],
        None,
    );
    assert!(accounts.get_opt("user").await.unwrap().is_some());
    common::report(
        "helm uninstall left the CRD, the accounts and cert-manager's two Secrets, then none",
    );
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
    // The Internet in miniature: a user's zone holding the one CNAME they publish, in a
    // resolver on loopback that reaches our zone through the LoadBalancer address.
    let issued_label = common::unique_name("cert");
    let issued_domain = format!("{issued_label}.test");
    let work = std::env::temp_dir().join(common::unique_name("node"));
    std::fs::create_dir_all(&work).unwrap();
    let user_zone = work.join(format!("{issued_domain}.zone"));
    let cname = format!("_acme-challenge CNAME {issued_label}.{ZONE}.");
    std::fs::write(&user_zone, zone_text(&issued_domain, &[cname])).unwrap();
    let load_balancer_dns: SocketAddr = format!("{LOAD_BALANCER_IP}:53").parse().unwrap();
    let relay = node::dns_relay(load_balancer_dns);
    let unbound = Unbound::start(&work.join("unbound"), &[user_zone], &[(ZONE, relay)]);
    let pebble = Pebble::start(&work.join("pebble"), unbound.addr);
    // cert-manager makes the chart's serving certificate, then the user's certificate;
    // every DNS-01 check goes through that resolver.
    let _cert_manager = cert_manager::start_controllers(unbound.addr, Some(&namespace));
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
        // The tag is a hash of the binary: all digits now and then, which --set would
        // make a number that the values schema refuses.
        "--set-string",
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
    helm(install.to_vec(), &namespace).await;
    load_balancer.await.unwrap();
    common::report(&format!(
        "helm install --wait: both replicas Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    ));

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
    let server = load_balancer_dns;
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

    // Which replica answered, for an operator: the chart gives each its pod's name, in
    // CHAOS TXT id.server (RFC 4892) and NSID.
    let pod_names: Vec<String> = ready_pods(&pods, &selector)
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let mut id_server = dns::query("id.server.", RecordType::TXT, false, None);
    id_server.queries[0].query_class = DNSClass::CH;
    let reply = node::in_node(move || dns::udp(server, &id_server, Duration::from_secs(2)))
        .expect("id.server CH TXT answered through the LoadBalancer");
    let identity = dns::txt_strings(&reply);
    assert!(
        identity.len() == 1 && pod_names.contains(&identity[0]),
        "id.server names a pod of {pod_names:?}: {identity:?}"
    );

    issue_certificate(&admin, &namespace, &issued_label, &issued_domain, &pebble).await;

    // Kill the pod holding the Lease: the other keeps answering and takes the Lease over,
    // and the Deployment brings a new pod.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &namespace);
    let lease = format!("{fullname}-controller");
    let holder = || common::lease_holder(&leases, &lease);
    let before = ready_pods(&pods, &selector).await;
    let leader =
        common::eventually("a replica holds the Lease", Duration::from_secs(60), holder).await;
    // A replica's identity in the Lease is its pod's name and a suffix of its own.
    let holds = |pod: &Pod, holder: &str| {
        holder.starts_with(&format!("{}_", pod.metadata.name.as_deref().unwrap()))
    };
    let victim = before
        .iter()
        .find(|p| holds(p, &leader))
        .unwrap_or_else(|| panic!("the Lease holder {leader} is not a Ready pod"))
        .clone();
    let survivor = before.iter().find(|p| !holds(p, &leader)).unwrap().clone();
    let victim = victim.metadata.name.unwrap();
    pods.delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut queries = 0;
    let mut takeover = None;
    let (replaced, takeover) = loop {
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
        // Taken over by a replica still running: the other one, or the replacement if
        // it asks first once the Lease is handed back.
        if takeover.is_none()
            && let Some(h) = holder().await
            && !h.starts_with(&format!("{victim}_"))
        {
            let by = if holds(&survivor, &h) {
                "the other replica"
            } else {
                "the replacement"
            };
            takeover = Some((deleted.elapsed(), by));
        }
        // Until the old pod is gone, not only replaced: its process stops last.
        let ready = ready_pods(&pods, &selector).await;
        let gone = pods.get_opt(&victim).await.unwrap().is_none();
        if let Some(took) = takeover
            && gone
            && ready.len() == 2
            && ready
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(&victim))
        {
            common::report(&format!(
                "{queries} queries answered while {victim} was replaced and stopped ({:.1} s); \
                 {} held the Lease {:.1} s after the delete",
                deleted.elapsed().as_secs_f64(),
                took.1,
                took.0.as_secs_f64()
            ));
            break (ready, took);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "within 120 s: replacement for {victim} Ready, Lease taken over ({takeover:?}, \
             holder {:?})\n{}",
            holder().await,
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
    // The leader's lease outlives neither the pod nor the shutdown delay plus the lease's
    // duration (15 s) and one retry (5 s).
    assert!(
        takeover.0 < Duration::from_secs(30),
        "Lease taken over after {takeover:?}"
    );

    rolling_upgrade(&release, &pods, &selector, server, &name, key).await;
    uninstall(&release, &accounts).await;
}
