//! The account watch against real API servers: a second kube-apiserver on the local
//! control plane's etcd, one without streaming lists, and one that is killed while the
//! store's history is compacted under it, for each way of listing.

mod common;

use std::{net::SocketAddr, time::Duration};

use futures::{StreamExt, TryStreamExt};
use hickory_proto::{op::ResponseCode, rr::RecordType};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use common::{apiserver::ApiServer, dns};
use kube_acme_dns::api::{AcmeDnsAccount, AcmeDnsAccountSpec};

/// More than one page of a paged list (`LIST_PAGE`).
const PAGED_ACCOUNTS: usize = 620;

async fn create_accounts(accounts: &Api<AcmeDnsAccount>, names: impl Iterator<Item = String>) {
    futures::stream::iter(names)
        .map(|name| async move {
            accounts
                .create(
                    &PostParams::default(),
                    &AcmeDnsAccount::new(&name, AcmeDnsAccountSpec::default()),
                )
                .await
                .map(|_| ())
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("create accounts");
}

/// Waits for the controller to assign the account's subdomain; returns its FQDN.
async fn assigned_fqdn(accounts: &Api<AcmeDnsAccount>, name: &str) -> String {
    common::eventually("subdomain assigned", Duration::from_secs(30), || async {
        accounts.get(name).await.ok()?.status?.fqdn
    })
    .await
}

async fn set_txt(accounts: &Api<AcmeDnsAccount>, name: &str, value: &str) {
    let now = Timestamp::now().to_string();
    let patch = json!({ "status": { "txt": [{ "value": value, "updatedAt": now }] } });
    accounts
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("write status.txt");
}

fn value(i: usize) -> String {
    format!("{i:0>43}")
}

async fn answered(server: SocketAddr, fqdn: &str, value: &str) {
    common::eventually(
        &format!("{value} answered at {fqdn}"),
        Duration::from_secs(30),
        || async { (dns::txt_values(server, fqdn)? == [value]).then_some(()) },
    )
    .await;
}

async fn metrics(serve: &common::Serve) -> String {
    common::http_get(serve.metrics, "/metrics")
        .await
        .expect("metrics")
        .1
}

fn lists(body: &str, by: &str) -> f64 {
    common::metric(
        body,
        &format!("kube_acme_dns_account_lists_total{{by=\"{by}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Starts `serve` as the chart's ServiceAccount through `server`, watching `namespace`,
/// listing the way `by` says first.
fn spawn_through(server: &ApiServer, namespace: &str, by: &str) -> common::Serve {
    let kubeconfig = server.kubeconfig(&common::chart_identity_kubeconfig());
    let lease = common::unique_name(by);
    common::spawn_serve_as(
        kubeconfig,
        namespace,
        &lease,
        &[
            "--leader-election-namespace",
            common::RELEASE_NAMESPACE,
            "--account-list",
            by,
        ],
    )
}

#[tokio::test]
async fn a_replica_lists_page_by_page_where_the_api_server_refuses_a_streaming_list() {
    let admin = common::client().await;
    common::install_crd(&admin).await;
    let namespace = common::create_namespace(&admin, "paged").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin, &namespace);
    create_accounts(
        &accounts,
        (0..PAGED_ACCOUNTS).map(|i| format!("before-{i}")),
    )
    .await;

    // An API server as one before Kubernetes 1.32, or with the feature turned off.
    let server = ApiServer::start("no-watchlist", &["--feature-gates=WatchList=false"]);
    let serve = spawn_through(&server, &namespace, "stream");
    common::wait_ready(&serve).await;
    let body = metrics(&serve).await;
    assert_eq!(
        common::metric(&body, "kube_acme_dns_accounts"),
        Some(PAGED_ACCOUNTS as f64),
        "ready only with every page listed"
    );
    assert_eq!(lists(&body, "pages"), 1.0, "listed page by page once");
    assert_eq!(
        lists(&body, "stream"),
        0.0,
        "the streaming list was refused"
    );

    // The watch from the list's version goes on: new accounts and values are served.
    create_accounts(&accounts, std::iter::once("after".to_string())).await;
    let fqdn = assigned_fqdn(&accounts, "after").await;
    set_txt(&accounts, "after", &value(1)).await;
    answered(serve.dns, &fqdn, &value(1)).await;
    let listed = assigned_fqdn(&accounts, "before-7").await;
    set_txt(&accounts, "before-7", &value(2)).await;
    answered(serve.dns, &listed, &value(2)).await;
    assert_eq!(
        lists(&metrics(&serve).await, "pages"),
        1.0,
        "changes came by the watch, without another list"
    );
}

#[tokio::test]
async fn after_its_api_server_lost_the_history_a_replica_lists_again_and_drops_what_was_deleted() {
    lists_again_after_the_history_is_lost("whole").await;
}

#[tokio::test]
async fn with_streaming_lists_too_a_replica_lists_again_after_the_history_is_lost() {
    lists_again_after_the_history_is_lost("stream").await;
}

async fn lists_again_after_the_history_is_lost(by: &str) {
    let admin = common::client().await;
    common::install_crd(&admin).await;
    let namespace = common::create_namespace(&admin, "expired").await;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(admin, &namespace);

    // The replica's own API server; the test writes through the first.
    let mut server = ApiServer::start("expired", &[]);
    let mut serve = spawn_through(&server, &namespace, by);
    common::wait_ready(&serve).await;
    assert_eq!(lists(&metrics(&serve).await, by), 1.0, "one list, {by}");
    create_accounts(&accounts, ["kept", "gone"].map(String::from).into_iter()).await;
    let kept = assigned_fqdn(&accounts, "kept").await;
    let gone = assigned_fqdn(&accounts, "gone").await;
    set_txt(&accounts, "kept", &value(1)).await;
    set_txt(&accounts, "gone", &value(2)).await;
    answered(serve.dns, &kept, &value(1)).await;
    answered(serve.dns, &gone, &value(2)).await;

    // Its API server dies. Meanwhile a value changes and an account is deleted, and
    // etcd's history is compacted past both, as the API servers do every five minutes:
    // the replica's watch cannot resume from where it was.
    server.kill();
    set_txt(&accounts, "kept", &value(3)).await;
    accounts
        .delete("gone", &DeleteParams::default())
        .await
        .expect("delete an account");
    common::apiserver::compact_etcd();
    assert_eq!(
        dns::txt_values(serve.dns, &kept),
        Some(vec![value(1)]),
        "the last state seen is served while the API server is away"
    );

    server.start_again();
    answered(serve.dns, &kept, &value(3)).await;
    common::eventually(
        "the deleted account no longer answered",
        Duration::from_secs(30),
        || async {
            let reply = dns::udp(
                serve.dns,
                &dns::query(&gone, RecordType::TXT, false, Some(1232)),
                Duration::from_secs(2),
            )
            .ok()?;
            (reply.metadata.response_code == ResponseCode::NXDomain).then_some(())
        },
    )
    .await;
    let body = metrics(&serve).await;
    assert_eq!(
        lists(&body, by),
        2.0,
        "a second list ({by}), after the watch expired"
    );
    assert_eq!(common::metric(&body, "kube_acme_dns_accounts"), Some(1.0));
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "the same process throughout"
    );
}
