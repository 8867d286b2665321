//! Which label an account is served under. The label already held is kept (so the
//! CNAMEs users published stay valid); a pinned label is taken as it is; a new account
//! gets a random UUID. A label the zone itself uses, or one an older account holds, is
//! refused rather than served twice.

use super::status::Subdomain;
use crate::{
    api::AcmeDnsAccount,
    index::{AccountIndex, AccountKey, Label, ReservedLabels},
};

/// Decides the subdomain of `account` against the zone's own names and the other
/// accounts in `index`. `new_label` makes the label for an account that has none.
pub fn decide(
    account: &AcmeDnsAccount,
    reserved: &ReservedLabels,
    index: &AccountIndex,
    new_label: impl FnOnce() -> String,
) -> Subdomain {
    let pinned = account.spec.subdomain.as_ref().map(|s| s.0.clone());
    let held = account
        .status
        .as_ref()
        .and_then(|s| s.subdomain.as_ref())
        .map(|s| s.0.clone());
    let wanted = pinned.or(held).unwrap_or_else(new_label);
    let Some(label) = Label::new(wanted.as_bytes()) else {
        // The CRD validates spec.subdomain; this only guards hand-written status.
        return Subdomain::Reserved { label: wanted };
    };
    if reserved.contains(&label) {
        return Subdomain::Reserved { label: wanted };
    }
    let me = AccountKey::of(account);
    match index.claimants(&label).into_iter().next() {
        Some(first) if first != me => Subdomain::Taken {
            label: wanted,
            by: first,
        },
        _ => Subdomain::Assigned(wanted),
    }
}

/// A fresh random label: a UUID, as acme-dns uses, so migrated and new accounts look
/// alike.
pub fn random_label() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

    use super::*;
    use crate::api::{AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel};

    fn account(
        name: &str,
        created: i64,
        pinned: Option<&str>,
        held: Option<&str>,
    ) -> AcmeDnsAccount {
        let mut account = AcmeDnsAccount::new(
            name,
            AcmeDnsAccountSpec {
                subdomain: pinned.map(|p| DnsLabel(p.into())),
                ..Default::default()
            },
        );
        account.metadata.namespace = Some("team".into());
        account.metadata.creation_timestamp = Some(Time(
            Timestamp::from_second(1_700_000_000 + created).unwrap(),
        ));
        account.status = held.map(|h| AcmeDnsAccountStatus {
            subdomain: Some(DnsLabel(h.into())),
            ..Default::default()
        });
        account
    }

    fn reserved() -> ReservedLabels {
        ["ns", "api"]
            .iter()
            .map(|l| Label::new(l.as_bytes()).unwrap())
            .collect()
    }

    #[test]
    fn new_account_gets_the_generated_label() {
        let index = AccountIndex::new(1);
        let decided = decide(&account("a", 0, None, None), &reserved(), &index, || {
            "fresh".into()
        });
        assert_eq!(decided, Subdomain::Assigned("fresh".into()));
    }

    #[test]
    fn held_label_is_kept_and_no_new_one_is_made() {
        let index = AccountIndex::new(1);
        let decided = decide(
            &account("a", 0, None, Some("held")),
            &reserved(),
            &index,
            || panic!("an account that holds a label needs no new one"),
        );
        assert_eq!(decided, Subdomain::Assigned("held".into()));
    }

    #[test]
    fn pinned_label_wins_over_the_held_one() {
        let index = AccountIndex::new(1);
        let decided = decide(
            &account("a", 0, Some("pinned"), Some("held")),
            &reserved(),
            &index,
            random_label,
        );
        assert_eq!(decided, Subdomain::Assigned("pinned".into()));
    }

    #[test]
    fn label_the_zone_uses_is_reserved_in_any_case() {
        let index = AccountIndex::new(1);
        let decided = decide(
            &account("a", 0, Some("NS"), None),
            &reserved(),
            &index,
            random_label,
        );
        assert_eq!(decided, Subdomain::Reserved { label: "NS".into() });
    }

    #[test]
    fn label_an_older_account_holds_is_taken_and_the_older_keeps_it() {
        let index = AccountIndex::new(1);
        let older = account("older", 0, None, Some("shared"));
        let newer = account("newer", 10, Some("shared"), None);
        index.apply(&older);
        index.apply(&newer);
        assert_eq!(
            decide(&newer, &reserved(), &index, random_label),
            Subdomain::Taken {
                label: "shared".into(),
                by: AccountKey::of(&older),
            }
        );
        assert_eq!(
            decide(&older, &reserved(), &index, random_label),
            Subdomain::Assigned("shared".into())
        );
    }

    #[test]
    fn random_labels_are_uuids_and_differ() {
        let (a, b) = (random_label(), random_label());
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
