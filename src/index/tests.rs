//! The index fed objects directly, without an API server.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use super::*;
use crate::api::{AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, DomainName, TxtValue};

fn account(name: &str, created: i64, label: Option<&str>, values: &[&str]) -> AcmeDnsAccount {
    let mut account = AcmeDnsAccount::new(name, AcmeDnsAccountSpec::default());
    account.metadata.namespace = Some("tenant".into());
    account.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    account.status = Some(AcmeDnsAccountStatus {
        subdomain: label.map(|l| DnsLabel(l.into())),
        txt: values
            .iter()
            .map(|v| TxtValue {
                value: v.to_string(),
                updated_at: Time(Timestamp::UNIX_EPOCH),
            })
            .collect(),
        ..Default::default()
    });
    account
}

fn served(index: &AccountIndex, label: &str) -> Option<(String, u16)> {
    index
        .lookup(&Label::new(label.as_bytes()).unwrap())
        .map(|s| (s.account.name.to_string(), s.txt.count))
}

#[test]
fn applied_account_is_served_at_its_label_in_any_case() {
    let index = AccountIndex::new(1);
    index.apply(&account("a", 1, Some("abc"), &["v1", "v2"]));
    assert_eq!(served(&index, "abc"), Some(("a".into(), 2)));
    assert_eq!(served(&index, "ABC"), Some(("a".into(), 2)));
    assert_eq!(index.counts(), (1, 1, 2));
}

#[test]
fn txt_values_are_served_as_the_wire_layer_encodes_them_with_the_index_ttl() {
    let index = AccountIndex::new(7);
    index.apply(&account("a", 1, Some("abc"), &["xyz", "second"]));
    let served = index.lookup(&Label::new(b"abc").unwrap()).unwrap();
    assert_eq!(
        served.txt,
        crate::wire::encode_txt_rrset(["xyz", "second"], 7)
    );
}

#[test]
fn account_without_assigned_subdomain_is_not_served() {
    let index = AccountIndex::new(1);
    index.apply(&account("a", 1, None, &["v"]));
    assert_eq!(index.counts(), (1, 0, 0));
}

#[test]
fn update_replaces_values_and_label_change_moves_the_name() {
    let index = AccountIndex::new(1);
    index.apply(&account("a", 1, Some("old"), &["v1"]));
    index.apply(&account("a", 1, Some("old"), &["v1", "v2"]));
    assert_eq!(served(&index, "old"), Some(("a".into(), 2)));
    index.apply(&account("a", 1, Some("new"), &["v3"]));
    assert_eq!(served(&index, "old"), None);
    assert_eq!(served(&index, "new"), Some(("a".into(), 1)));
}

#[test]
fn delete_removes_the_name() {
    let index = AccountIndex::new(1);
    let a = account("a", 1, Some("abc"), &["v"]);
    index.apply(&a);
    index.delete(&a);
    assert_eq!(served(&index, "abc"), None);
    assert_eq!(index.counts(), (0, 0, 0));
}

#[test]
fn on_a_collision_the_oldest_account_is_served_and_the_next_takes_over() {
    let index = AccountIndex::new(1);
    let younger = account("younger", 20, Some("shared"), &["young"]);
    let older = account("older", 10, Some("shared"), &["old"]);
    index.apply(&younger);
    index.apply(&older);
    assert_eq!(served(&index, "shared"), Some(("older".into(), 1)));
    let claimants: Vec<String> = index
        .claimants(&Label::new(b"shared").unwrap())
        .into_iter()
        .map(|k| k.name.into())
        .collect();
    assert_eq!(claimants, ["older", "younger"]);
    // The younger one changing its values does not displace the older one.
    index.apply(&account("younger", 20, Some("shared"), &["young2"]));
    assert_eq!(served(&index, "shared"), Some(("older".into(), 1)));
    index.delete(&older);
    assert_eq!(served(&index, "shared"), Some(("younger".into(), 1)));
}

fn claimants(index: &AccountIndex, label: &str) -> Vec<String> {
    index
        .claimants(&Label::new(label.as_bytes()).unwrap())
        .into_iter()
        .map(|k| k.name.into())
        .collect()
}

#[test]
fn a_label_with_one_claimant_names_it_and_an_unclaimed_one_nobody() {
    let index = AccountIndex::new(1);
    index.apply(&account("a", 1, Some("abc"), &["v"]));
    assert_eq!(claimants(&index, "abc"), ["a"]);
    assert!(claimants(&index, "other").is_empty());
    index.apply(&account("a", 1, None, &["v"]));
    assert!(claimants(&index, "abc").is_empty());
    assert_eq!(served(&index, "abc"), None);
}

#[test]
fn three_claimants_take_over_in_age_order_whoever_leaves() {
    let index = AccountIndex::new(1);
    index.apply(&account("c", 30, Some("shared"), &["c"]));
    index.apply(&account("a", 10, Some("shared"), &["a"]));
    index.apply(&account("b", 20, Some("shared"), &["b"]));
    assert_eq!(claimants(&index, "shared"), ["a", "b", "c"]);
    assert_eq!(served(&index, "shared"), Some(("a".into(), 1)));
    // A claimant that is not served leaving changes nothing served.
    index.apply(&account("b", 20, Some("elsewhere"), &["b"]));
    assert_eq!(claimants(&index, "shared"), ["a", "c"]);
    assert_eq!(served(&index, "shared"), Some(("a".into(), 1)));
    assert_eq!(served(&index, "elsewhere"), Some(("b".into(), 1)));
    // The served one moving away hands the label to the next.
    index.apply(&account("a", 10, Some("moved"), &["a"]));
    assert_eq!(claimants(&index, "shared"), ["c"]);
    assert_eq!(served(&index, "shared"), Some(("c".into(), 1)));
    // Coming back, the older one takes the label again.
    index.apply(&account("a", 10, Some("shared"), &["a", "a2"]));
    assert_eq!(claimants(&index, "shared"), ["a", "c"]);
    assert_eq!(served(&index, "shared"), Some(("a".into(), 2)));
    assert_eq!(served(&index, "moved"), None);
    index.delete(&account("c", 30, None, &[]));
    assert_eq!(claimants(&index, "shared"), ["a"]);
    index.delete(&account("a", 10, None, &[]));
    assert!(claimants(&index, "shared").is_empty());
    assert_eq!(served(&index, "shared"), None);
    assert_eq!(index.counts(), (1, 1, 1));
}

#[test]
fn a_claim_whose_age_changes_is_ordered_again() {
    let index = AccountIndex::new(1);
    index.apply(&account("a", 10, Some("shared"), &["a"]));
    index.apply(&account("b", 20, Some("shared"), &["b"]));
    index.apply(&account("a", 30, Some("shared"), &["a"]));
    assert_eq!(claimants(&index, "shared"), ["b", "a"]);
    assert_eq!(served(&index, "shared"), Some(("b".into(), 1)));
    // Alone on its label, an account whose age changes stays served.
    index.apply(&account("c", 1, Some("alone"), &["c"]));
    index.apply(&account("c", 2, Some("alone"), &["c", "d"]));
    assert_eq!(claimants(&index, "alone"), ["c"]);
    assert_eq!(served(&index, "alone"), Some(("c".into(), 2)));
}

#[test]
fn a_reset_to_nothing_empties_the_index() {
    let index = AccountIndex::new(1);
    index.apply(&account("a", 10, Some("shared"), &["a"]));
    index.apply(&account("b", 20, Some("shared"), &["b"]));
    index.apply(&account("c", 20, Some("own"), &["c"]));
    index.reset(&[]);
    assert_eq!(index.counts(), (0, 0, 0));
    assert!(claimants(&index, "shared").is_empty());
}

#[test]
fn reset_keeps_unchanged_accounts_and_drops_vanished_ones() {
    let index = AccountIndex::new(1);
    index.apply(&account("stays", 1, Some("stays"), &["v"]));
    index.apply(&account("goes", 1, Some("goes"), &["v"]));
    index.reset(&[
        account("stays", 1, Some("stays"), &["v", "w"]),
        account("new", 1, Some("new"), &[]),
    ]);
    assert_eq!(served(&index, "stays"), Some(("stays".into(), 2)));
    assert_eq!(served(&index, "goes"), None);
    assert_eq!(served(&index, "new"), Some(("new".into(), 0)));
}

#[test]
fn labels_longer_than_63_bytes_are_not_labels() {
    assert!(Label::new(&[b'a'; 64]).is_none());
    assert!(Label::new(b"").is_none());
}

fn with_domains(mut account: AcmeDnsAccount, domains: &[&str]) -> AcmeDnsAccount {
    account.spec.domains = domains
        .iter()
        .map(|d| crate::api::DomainName(d.to_string()))
        .collect();
    account
}

#[test]
fn accounts_are_found_by_the_domains_they_list() {
    let index = AccountIndex::new(1);
    index.apply(&with_domains(
        account("a", 1, Some("x"), &[]),
        &["example.test", "b.test"],
    ));
    index.apply(&with_domains(
        account("b", 2, Some("y"), &[]),
        &["Example.Test"],
    ));
    let names = |d: &str| -> Vec<String> {
        index
            .accounts_for_domain(d)
            .into_iter()
            .map(|k| k.name.into())
            .collect()
    };
    assert_eq!(names("example.test."), ["a", "b"]);
    assert_eq!(names("b.test"), ["a"]);
    // Changing the list moves the account; deleting removes it.
    index.apply(&with_domains(account("a", 1, Some("x"), &[]), &["c.test"]));
    assert_eq!(names("example.test"), ["b"]);
    assert!(names("b.test").is_empty());
    assert_eq!(names("c.test"), ["a"]);
    index.delete(&account("b", 2, Some("y"), &[]));
    assert!(names("example.test").is_empty());
}

fn versioned(version: &str, values: &[&str]) -> AcmeDnsAccount {
    let mut account = account("a", 1, Some("abc"), values);
    account.metadata.resource_version = Some(version.into());
    account
}

/// The writer's view: it wrote version "20" with a new value; the watch first delivers
/// the controller's earlier write "19" (without the value), then "20".
#[tokio::test]
async fn a_writer_waits_until_the_watch_delivers_its_version_and_then_it_is_served() {
    let index = Arc::new(AccountIndex::new(1));
    index.apply(&versioned("18", &[]));
    let key = AccountKey {
        namespace: "tenant".into(),
        name: "a".into(),
    };
    let waiter = tokio::spawn({
        let (index, key) = (index.clone(), key.clone());
        async move { index.wait_for(&key, "20", Duration::from_secs(10)).await }
    });
    index.apply(&versioned("19", &[]));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "version 19 is not the one written");
    assert_eq!(served(&index, "abc"), Some(("a".into(), 0)));

    index.apply(&versioned("20", &["new"]));
    assert!(waiter.await.unwrap(), "version 20 arrived");
    assert_eq!(served(&index, "abc"), Some(("a".into(), 1)));
    // Once applied, a version stays known while later events arrive.
    index.apply(&versioned("21", &["new", "newer"]));
    assert!(index.has_applied(&key, "20"));
}

#[tokio::test]
async fn a_writer_whose_version_never_arrives_gives_up_after_the_bound() {
    let index = AccountIndex::new(1);
    index.apply(&versioned("5", &[]));
    let key = AccountKey {
        namespace: "tenant".into(),
        name: "a".into(),
    };
    let started = std::time::Instant::now();
    assert!(!index.wait_for(&key, "6", Duration::from_millis(100)).await);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn a_version_already_applied_needs_no_wait() {
    let index = AccountIndex::new(1);
    index.apply(&versioned("7", &["v"]));
    let key = AccountKey {
        namespace: "tenant".into(),
        name: "a".into(),
    };
    assert!(index.wait_for(&key, "7", Duration::ZERO).await);
}

/// A re-list is applied whole: the versions it carries count as delivered too.
#[tokio::test]
async fn a_relist_delivers_versions_as_well() {
    let index = AccountIndex::new(1);
    index.reset(&[versioned("30", &["v"])]);
    let key = AccountKey {
        namespace: "tenant".into(),
        name: "a".into(),
    };
    assert!(index.wait_for(&key, "30", Duration::from_secs(1)).await);
}

#[test]
fn what_the_controller_plans_from_is_kept_unless_the_label_is_contested() {
    let plan = Settled {
        txt_expires: std::num::NonZeroI64::new(1_000),
        delegated: Some(true),
        delegated_since: 10,
        subject: 7,
        delegation_note: 9,
    };
    let index = AccountIndex::new(1).settling(move |account| {
        (account.metadata.name.as_deref() != Some("unsettled")).then_some(plan)
    });
    index.apply(&account("a", 1, Some("abc"), &[]));
    index.apply(&account("unsettled", 1, Some("def"), &[]));
    let key = |name: &str| AccountKey {
        namespace: "tenant".into(),
        name: name.into(),
    };
    assert_eq!(index.settled(&key("a")), Some(plan));
    assert_eq!(index.settled(&key("unsettled")), None);
    assert_eq!(index.keys().len(), 2);
    // With what a delegation check looks at: the label, and the domains as the index
    // keeps them.
    let mut listed = account("a", 1, Some("abc"), &[]);
    listed.spec.domains = ["Web.Example.", "api.example", "web.example"]
        .map(|d| DomainName(d.into()))
        .into();
    index.apply(&listed);
    assert_eq!(
        index.settled_subject(&key("a")),
        Some((
            plan,
            "abc".to_string(),
            vec!["api.example".to_string(), "web.example".to_string()]
        ))
    );
    assert_eq!(index.settled_subject(&key("unsettled")), None);
    // Another account claims the label: a reconcile decides between them.
    index.apply(&account("b", 2, Some("abc"), &[]));
    assert_eq!(index.settled(&key("a")), None);
    assert_eq!(index.settled(&key("b")), None);
    assert_eq!(index.settled_subject(&key("a")), None);
    index.delete(&account("b", 2, Some("abc"), &[]));
    assert_eq!(index.settled(&key("a")), Some(plan));
    // Without a judge (no controller role), nothing is settled.
    let plain = AccountIndex::new(1);
    plain.apply(&account("a", 1, Some("abc"), &[]));
    assert_eq!(plain.settled(&key("a")), None);
}
