//! The pure part of reconciling: from an account and what was found out about it, the
//! status it should have. No client, no clock of its own, so it is tested from
//! fixtures.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};

use super::{
    delegation::{Finding, challenge_name},
    schedule::{hash_of, subject_hash},
};
use crate::{
    api::{AcmeDnsAccount, AcmeDnsAccountStatus, CnameRecord, DnsLabel},
    index::{AccountKey, Label, ReservedLabels, Settled},
};

pub const READY: &str = "Ready";
pub const DELEGATED: &str = "Delegated";

/// Which label the account is served under, as decided against the other accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subdomain {
    Assigned(String),
    /// An older account already holds the label.
    Taken {
        label: String,
        by: AccountKey,
    },
    /// The label is a name the zone itself uses (the name server, a static record).
    Reserved {
        label: String,
    },
}

/// What the delegation check has to say, per domain, if it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DelegationState {
    /// Nothing to check: the account lists no domains.
    NoDomains,
    /// Not checked this time; keep the condition as it is.
    Unchanged,
    Checked(Vec<(String, Finding)>),
}

pub struct Facts<'a> {
    pub account: &'a AcmeDnsAccount,
    pub zone: &'a str,
    pub subdomain: &'a Subdomain,
    pub delegation: &'a DelegationState,
    pub now: Timestamp,
    /// TXT values older than this are dropped.
    pub txt_max_age: SignedDuration,
}

/// The status the account should have.
pub fn desired_status(facts: &Facts<'_>) -> AcmeDnsAccountStatus {
    let account = facts.account;
    let current = account.status.clone().unwrap_or_default();
    let generation = account.metadata.generation;
    let mut status = AcmeDnsAccountStatus {
        observed_generation: generation,
        conditions: current.conditions.clone(),
        ..Default::default()
    };
    let zone = facts.zone.trim_end_matches('.');

    match facts.subdomain {
        Subdomain::Assigned(label) => {
            let fqdn = format!("{label}.{zone}.");
            status.subdomain = Some(DnsLabel(label.clone()));
            status.cnames = account
                .spec
                .domains
                .iter()
                .map(|d| CnameRecord {
                    name: challenge_name(&d.0),
                    target: fqdn.clone(),
                })
                .collect();
            let cutoff = facts.now - facts.txt_max_age;
            status.txt = current
                .txt
                .iter()
                .filter(|t| t.updated_at.0 >= cutoff)
                .cloned()
                .collect();
            set_condition(
                &mut status.conditions,
                condition(
                    READY,
                    "True",
                    "Served",
                    &format!("TXT values are served at {fqdn}"),
                    generation,
                    facts.now,
                ),
            );
            match facts.delegation {
                DelegationState::NoDomains => set_condition(
                    &mut status.conditions,
                    condition(
                        DELEGATED,
                        "Unknown",
                        "NoDomains",
                        "spec.domains is empty, so there is no delegation to check",
                        generation,
                        facts.now,
                    ),
                ),
                DelegationState::Unchanged => {}
                DelegationState::Checked(findings) => set_condition(
                    &mut status.conditions,
                    delegation_condition(findings, &fqdn, generation, facts.now),
                ),
            }
            status.fqdn = Some(fqdn);
        }
        Subdomain::Taken { label, by } => {
            set_condition(
                &mut status.conditions,
                condition(
                    READY,
                    "False",
                    "SubdomainTaken",
                    &format!(
                        "subdomain {label} already belongs to {by}; set a different spec.subdomain, or remove it to get a random one"
                    ),
                    generation,
                    facts.now,
                ),
            );
            status.conditions.retain(|c| c.type_ != DELEGATED);
        }
        Subdomain::Reserved { label } => {
            set_condition(
                &mut status.conditions,
                condition(
                    READY,
                    "False",
                    "SubdomainReserved",
                    &format!(
                        "subdomain {label} is a name the zone {zone} itself uses; set a different spec.subdomain"
                    ),
                    generation,
                    facts.now,
                ),
            );
            status.conditions.retain(|c| c.type_ != DELEGATED);
        }
    }
    status
}

/// Whether a reconcile of `account` at `now` would leave its status as it is, provided no
/// other account claims its label and its delegation is not due for a check: then what
/// the controller plans it from. `None` means it needs a reconcile: no subdomain yet, a
/// spec newer than the status, a TXT value past its age, a status from another zone or
/// another version of this controller.
pub fn settled(
    account: &AcmeDnsAccount,
    zone: &str,
    reserved: &ReservedLabels,
    txt_max_age: SignedDuration,
    now: Timestamp,
) -> Option<Settled> {
    let status = account.status.as_ref()?;
    let held = status.subdomain.as_ref()?;
    if account.spec.subdomain.as_ref().is_some_and(|p| p != held)
        || reserved.contains(&Label::new(held.0.as_bytes())?)
    {
        return None;
    }
    let domains: Vec<String> = account.spec.domains.iter().map(|d| d.0.clone()).collect();
    let (delegation, checked) = if domains.is_empty() {
        (DelegationState::NoDomains, None)
    } else {
        // Never checked, or checked for an older spec: a reconcile checks it now.
        let checked = status
            .conditions
            .iter()
            .find(|c| c.type_ == DELEGATED && c.reason != "NoDomains")
            .filter(|c| c.observed_generation == account.metadata.generation)?;
        (DelegationState::Unchanged, Some(checked))
    };
    let desired = desired_status(&Facts {
        account,
        zone,
        subdomain: &Subdomain::Assigned(held.0.clone()),
        delegation: &delegation,
        now,
        txt_max_age,
    });
    if desired != *status {
        return None;
    }
    let fqdn = desired.fqdn.unwrap_or_default();
    Some(Settled {
        txt_expires: next_txt_expiry(status, txt_max_age)
            .and_then(|t| std::num::NonZeroI64::new(t.as_second())),
        delegated: checked.map(|c| c.status == "True"),
        delegated_since: checked.map_or(0, |c| c.last_transition_time.0.as_second()),
        subject: subject_hash(&(domains, fqdn)),
        delegation_note: checked.map_or(0, note),
    })
}

/// The hash [`Settled::delegation_note`] keeps of a Delegated condition: of what a
/// reconcile writes of it, besides its generation and transition time.
fn note(condition: &Condition) -> u64 {
    hash_of(&(&condition.status, &condition.reason, &condition.message))
}

/// Whether a delegation check that found `findings` leaves a settled account's status as
/// it is: the Delegated condition it would write is the one the status holds.
pub fn same_delegation(settled: &Settled, findings: &[(String, Finding)], fqdn: &str) -> bool {
    let found = delegation_condition(findings, fqdn, None, Timestamp::UNIX_EPOCH);
    settled.delegated.is_some() && note(&found) == settled.delegation_note
}

/// When the oldest TXT value will be dropped, if there is one.
pub fn next_txt_expiry(
    status: &AcmeDnsAccountStatus,
    max_age: SignedDuration,
) -> Option<Timestamp> {
    status.txt.iter().map(|t| t.updated_at.0 + max_age).min()
}

/// Something a user would want to hear about, recorded as a Kubernetes Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl Notice {
    fn normal(reason: &'static str, note: String) -> Self {
        Self {
            warning: false,
            reason,
            note,
        }
    }

    fn warning(reason: &'static str, note: String) -> Self {
        Self {
            warning: true,
            reason,
            note,
        }
    }
}

/// The Events a status change deserves: a subdomain assigned or refused, delegation
/// found or lost, TXT values expired. Unchanged conditions say nothing again.
pub fn events(
    old: &AcmeDnsAccountStatus,
    new: &AcmeDnsAccountStatus,
    txt_max_age: SignedDuration,
) -> Vec<Notice> {
    let mut events = Vec::new();
    if new.subdomain.is_some() && old.subdomain != new.subdomain {
        let fqdn = new.fqdn.clone().unwrap_or_default();
        let records: Vec<String> = new
            .cnames
            .iter()
            .map(|c| format!("{} CNAME {}", c.name, c.target))
            .collect();
        events.push(Notice::normal(
            "SubdomainAssigned",
            if records.is_empty() {
                format!("served at {fqdn}")
            } else {
                format!("served at {fqdn}; publish: {}", records.join(", "))
            },
        ));
    }
    let find =
        |s: &AcmeDnsAccountStatus, t: &str| s.conditions.iter().find(|c| c.type_ == t).cloned();
    if let Some(ready) = find(new, READY)
        && ready.status == "False"
        && find(old, READY).map(|c| (c.status, c.reason))
            != Some((ready.status.clone(), ready.reason.clone()))
    {
        events.push(Notice::warning("SubdomainRefused", ready.message));
    }
    if let Some(delegated) = find(new, DELEGATED)
        && find(old, DELEGATED).map(|c| (c.status, c.message))
            != Some((delegated.status.clone(), delegated.message.clone()))
    {
        match delegated.status.as_str() {
            "True" => events.push(Notice::normal("Delegated", delegated.message)),
            "False" => events.push(Notice::warning("NotDelegated", delegated.message)),
            _ => {}
        }
    }
    let expired = old.txt.iter().filter(|t| !new.txt.contains(t)).count();
    if expired > 0 && old.subdomain == new.subdomain {
        events.push(Notice::normal(
            "TxtExpired",
            format!(
                "dropped {expired} TXT value(s) older than {}s",
                txt_max_age.as_secs()
            ),
        ));
    }
    events
}

fn delegation_condition(
    findings: &[(String, Finding)],
    fqdn: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let problems: Vec<String> = findings
        .iter()
        .filter(|(_, f)| *f != Finding::Delegated)
        .map(|(_, f)| f.explain(fqdn))
        .collect();
    if problems.is_empty() {
        return condition(
            DELEGATED,
            "True",
            "CnameFound",
            &format!("every _acme-challenge name points to {fqdn}"),
            generation,
            now,
        );
    }
    let unresolvable = findings
        .iter()
        .all(|(_, f)| matches!(f, Finding::Delegated | Finding::Unresolvable { .. }));
    let (status, reason) = if unresolvable {
        ("Unknown", "CheckFailed")
    } else if findings
        .iter()
        .any(|(_, f)| matches!(f, Finding::WrongTarget { .. }))
    {
        ("False", "CnameWrongTarget")
    } else {
        ("False", "CnameMissing")
    };
    condition(
        DELEGATED,
        status,
        reason,
        &problems.join("; "),
        generation,
        now,
    )
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

/// Replaces the condition of the same type, keeping its transition time when its status
/// did not change (the Kubernetes API conventions).
fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(existing) => {
            if existing.status == new.status {
                new.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = new;
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AcmeDnsAccountSpec, DomainName, TxtValue};

    fn account(domains: &[&str], txt_ages_secs: &[i64], now: Timestamp) -> AcmeDnsAccount {
        let mut account = AcmeDnsAccount::new(
            "a",
            AcmeDnsAccountSpec {
                domains: domains.iter().map(|d| DomainName(d.to_string())).collect(),
                ..Default::default()
            },
        );
        account.metadata.generation = Some(3);
        account.status = Some(AcmeDnsAccountStatus {
            txt: txt_ages_secs
                .iter()
                .map(|age| TxtValue {
                    value: format!("age{age}"),
                    updated_at: Time(now - SignedDuration::from_secs(*age)),
                })
                .collect(),
            ..Default::default()
        });
        account
    }

    fn facts<'a>(
        account: &'a AcmeDnsAccount,
        subdomain: &'a Subdomain,
        delegation: &'a DelegationState,
        now: Timestamp,
    ) -> Facts<'a> {
        Facts {
            account,
            zone: "auth.example.test",
            subdomain,
            delegation,
            now,
            txt_max_age: SignedDuration::from_secs(3600),
        }
    }

    fn get<'a>(status: &'a AcmeDnsAccountStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn assigned_account_gets_fqdn_cnames_and_ready() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test", "other.test"], &[], now);
        let sub = Subdomain::Assigned("abc".into());
        let status = desired_status(&facts(&account, &sub, &DelegationState::Unchanged, now));
        assert_eq!(status.fqdn.as_deref(), Some("abc.auth.example.test."));
        assert_eq!(status.cnames[0].name, "_acme-challenge.example.test.");
        assert_eq!(status.cnames[1].target, "abc.auth.example.test.");
        assert_eq!(get(&status, READY).status, "True");
        assert_eq!(status.observed_generation, Some(3));
    }

    #[test]
    fn stale_txt_values_are_dropped_and_fresh_ones_kept() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&[], &[10, 3599, 3601, 90_000], now);
        let sub = Subdomain::Assigned("abc".into());
        let status = desired_status(&facts(&account, &sub, &DelegationState::NoDomains, now));
        let kept: Vec<&str> = status.txt.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(kept, ["age10", "age3599"]);
        assert_eq!(
            next_txt_expiry(&status, SignedDuration::from_secs(3600)),
            Some(now + SignedDuration::from_secs(1))
        );
    }

    #[test]
    fn taken_subdomain_is_not_served_and_says_who_has_it() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test"], &[], now);
        let sub = Subdomain::Taken {
            label: "abc".into(),
            by: AccountKey {
                namespace: "other".into(),
                name: "first".into(),
            },
        };
        let status = desired_status(&facts(&account, &sub, &DelegationState::Unchanged, now));
        assert_eq!(status.subdomain, None, "not served twice");
        assert_eq!(status.fqdn, None);
        let ready = get(&status, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "SubdomainTaken")
        );
        assert!(ready.message.contains("other/first"), "{}", ready.message);
    }

    #[test]
    fn delegation_findings_become_a_condition_that_says_what_to_publish() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test", "other.test"], &[], now);
        let sub = Subdomain::Assigned("abc".into());
        let checked = DelegationState::Checked(vec![
            ("example.test".into(), Finding::Delegated),
            (
                "other.test".into(),
                Finding::Missing {
                    name: "_acme-challenge.other.test.".into(),
                },
            ),
        ]);
        let status = desired_status(&facts(&account, &sub, &checked, now));
        let delegated = get(&status, DELEGATED);
        assert_eq!(
            (delegated.status.as_str(), delegated.reason.as_str()),
            ("False", "CnameMissing")
        );
        assert!(
            delegated
                .message
                .contains("publish `_acme-challenge.other.test. CNAME abc.auth.example.test.`"),
            "{}",
            delegated.message
        );

        let all = DelegationState::Checked(vec![("example.test".into(), Finding::Delegated)]);
        let status = desired_status(&facts(&account, &sub, &all, now));
        assert_eq!(get(&status, DELEGATED).status, "True");
    }

    #[test]
    fn transition_time_is_kept_while_the_status_stays() {
        let then = Timestamp::from_second(2_000_000_000).unwrap();
        let later = then + SignedDuration::from_secs(600);
        let mut account = account(&[], &[], then);
        let sub = Subdomain::Assigned("abc".into());
        account.status = Some(desired_status(&facts(
            &account,
            &sub,
            &DelegationState::NoDomains,
            then,
        )));
        let again = desired_status(&facts(&account, &sub, &DelegationState::NoDomains, later));
        assert_eq!(get(&again, READY).last_transition_time.0, then);
        assert_eq!(
            Some(&again),
            account.status.as_ref(),
            "nothing to write when nothing changed"
        );
    }

    fn reasons(events: &[Notice]) -> Vec<&str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn first_assignment_tells_the_user_what_to_publish_and_nothing_repeats() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test"], &[], now);
        let sub = Subdomain::Assigned("abc".into());
        let old = AcmeDnsAccountStatus::default();
        let new = desired_status(&facts(&account, &sub, &DelegationState::Unchanged, now));
        let events = events(&old, &new, SignedDuration::from_secs(3600));
        assert_eq!(reasons(&events), ["SubdomainAssigned"]);
        assert!(!events[0].warning);
        assert_eq!(
            events[0].note,
            "served at abc.auth.example.test.; publish: _acme-challenge.example.test. CNAME abc.auth.example.test."
        );
        // The same status again is not news.
        assert!(super::events(&new, &new, SignedDuration::from_secs(3600)).is_empty());
    }

    #[test]
    fn refused_subdomain_is_a_warning_once() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test"], &[], now);
        let sub = Subdomain::Taken {
            label: "abc".into(),
            by: AccountKey {
                namespace: "n".into(),
                name: "older".into(),
            },
        };
        let new = desired_status(&facts(&account, &sub, &DelegationState::Unchanged, now));
        let events = events(
            &AcmeDnsAccountStatus::default(),
            &new,
            SignedDuration::from_secs(3600),
        );
        assert_eq!(reasons(&events), ["SubdomainRefused"]);
        assert!(events[0].warning);
        assert!(events[0].note.contains("n/older"), "{}", events[0].note);
        assert!(super::events(&new, &new, SignedDuration::from_secs(3600)).is_empty());
    }

    #[test]
    fn delegation_found_and_lost_are_announced_and_unknown_is_not() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test"], &[], now);
        let sub = Subdomain::Assigned("abc".into());
        let base = desired_status(&facts(&account, &sub, &DelegationState::Unchanged, now));
        let with = |finding: Finding| {
            let delegation = DelegationState::Checked(vec![("example.test".into(), finding)]);
            desired_status(&facts(&account, &sub, &delegation, now))
        };
        let found = with(Finding::Delegated);
        let lost = with(Finding::Missing {
            name: "_acme-challenge.example.test.".into(),
        });
        let unknown = with(Finding::Unresolvable {
            name: "_acme-challenge.example.test.".into(),
            reason: "timeout".into(),
        });
        let age = SignedDuration::from_secs(3600);
        assert_eq!(reasons(&events(&base, &found, age)), ["Delegated"]);
        let lost_events = events(&found, &lost, age);
        assert_eq!(reasons(&lost_events), ["NotDelegated"]);
        assert!(lost_events[0].warning);
        assert!(
            lost_events[0]
                .note
                .contains("publish `_acme-challenge.example.test. CNAME abc.auth.example.test.`")
        );
        assert!(events(&found, &unknown, age).is_empty());
    }

    #[test]
    fn expired_txt_values_are_counted_in_one_event() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let account = account(&["example.test"], &[10, 4000, 5000], now);
        let sub = Subdomain::Assigned("abc".into());
        let old = desired_status(&facts(&account, &sub, &DelegationState::Unchanged, now)).clone();
        let mut old_with_all = old.clone();
        old_with_all.txt = account.status.clone().unwrap().txt;
        let events = events(&old_with_all, &old, SignedDuration::from_secs(3600));
        assert_eq!(reasons(&events), ["TxtExpired"]);
        assert_eq!(events[0].note, "dropped 2 TXT value(s) older than 3600s");
    }

    /// `account` as a reconcile at `now` leaves it, its delegation found to hold or
    /// not (`None`: it lists no domains).
    fn reconciled(
        mut account: AcmeDnsAccount,
        delegated: Option<bool>,
        now: Timestamp,
    ) -> AcmeDnsAccount {
        let sub = Subdomain::Assigned("abc".into());
        let delegation = match delegated {
            None => DelegationState::NoDomains,
            Some(found) => DelegationState::Checked(
                account
                    .spec
                    .domains
                    .iter()
                    .map(|d| {
                        let finding = if found {
                            Finding::Delegated
                        } else {
                            Finding::Missing {
                                name: challenge_name(&d.0),
                            }
                        };
                        (d.0.clone(), finding)
                    })
                    .collect(),
            ),
        };
        let status = desired_status(&facts(&account, &sub, &delegation, now));
        account.status = Some(status);
        account
    }

    fn judge(account: &AcmeDnsAccount, now: Timestamp) -> Option<Settled> {
        settled(
            account,
            "auth.example.test",
            &["ns1"]
                .iter()
                .filter_map(|l| Label::new(l.as_bytes()))
                .collect(),
            SignedDuration::from_secs(3600),
            now,
        )
    }

    #[test]
    fn a_reconciled_account_is_settled_with_what_to_plan_it_from() {
        let checked = Timestamp::from_second(2_000_000_000).unwrap();
        let checked_account = reconciled(
            account(&["example.test"], &[100, 10], checked),
            Some(true),
            checked,
        );
        let later = checked + SignedDuration::from_secs(60);
        let settled = judge(&checked_account, later).expect("settled");
        assert_eq!(settled.delegated, Some(true));
        assert_eq!(settled.delegated_since, checked.as_second());
        // The older value expires first: written 100 s before the check, 3600 s to live.
        assert_eq!(
            settled.txt_expires.map(|t| t.get()),
            Some(checked.as_second() - 100 + 3600)
        );
        assert_eq!(
            settled.subject,
            subject_hash(&(vec!["example.test".into()], "abc.auth.example.test.".into()))
        );

        let failing = reconciled(
            account(&["example.test"], &[], checked),
            Some(false),
            checked,
        );
        let settled = judge(&failing, later).expect("settled");
        assert_eq!(
            (settled.delegated, settled.txt_expires),
            (Some(false), None)
        );
        let no_domains = reconciled(account(&[], &[], checked), None, checked);
        assert_eq!(judge(&no_domains, later).unwrap().delegated, None);
    }

    #[test]
    fn a_check_is_seen_to_leave_a_settled_status_as_it_is_only_when_it_finds_the_same() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let fqdn = "abc.auth.example.test.";
        let missing = vec![(
            "example.test".to_string(),
            Finding::Missing {
                name: challenge_name("example.test"),
            },
        )];
        let failing = reconciled(account(&["example.test"], &[], now), Some(false), now);
        let settled = judge(&failing, now).expect("settled");
        assert!(same_delegation(&settled, &missing, fqdn));
        let found = vec![("example.test".to_string(), Finding::Delegated)];
        assert!(!same_delegation(&settled, &found, fqdn), "now delegated");
        let elsewhere = vec![(
            "example.test".to_string(),
            Finding::WrongTarget {
                name: challenge_name("example.test"),
                target: "other.example.net.".into(),
            },
        )];
        assert!(
            !same_delegation(&settled, &elsewhere, fqdn),
            "still not delegated, but for another reason the message tells"
        );
        assert!(
            !same_delegation(&settled, &missing, "def.auth.example.test."),
            "the message names the FQDN"
        );

        let delegated = reconciled(account(&["example.test"], &[], now), Some(true), now);
        let settled = judge(&delegated, now).expect("settled");
        assert!(same_delegation(&settled, &found, fqdn));
        assert!(!same_delegation(&settled, &missing, fqdn));

        let no_domains = reconciled(account(&[], &[], now), None, now);
        let settled = judge(&no_domains, now).expect("settled");
        assert!(!same_delegation(&settled, &[], fqdn), "nothing was checked");
    }

    #[test]
    fn an_account_a_reconcile_would_change_is_not_settled() {
        let now = Timestamp::from_second(2_000_000_000).unwrap();
        let fresh = account(&["example.test"], &[], now);
        assert_eq!(judge(&fresh, now), None, "no subdomain yet");

        let done = reconciled(account(&["example.test"], &[10], now), Some(true), now);
        assert!(judge(&done, now).is_some());

        let mut spec_changed = done.clone();
        spec_changed.metadata.generation = Some(4);
        assert_eq!(judge(&spec_changed, now), None, "a newer spec");

        let later = now + SignedDuration::from_secs(3600);
        assert_eq!(judge(&done, later), None, "a TXT value past its age");

        let mut other_zone = done.clone();
        other_zone.status.as_mut().unwrap().fqdn = Some("abc.old.example.test.".into());
        assert_eq!(judge(&other_zone, now), None, "a status from another zone");

        let mut never_checked = done.clone();
        never_checked
            .status
            .as_mut()
            .unwrap()
            .conditions
            .retain(|c| c.type_ != DELEGATED);
        assert_eq!(judge(&never_checked, now), None, "delegation never checked");

        let mut pinned_elsewhere = done.clone();
        pinned_elsewhere.spec.subdomain = Some(DnsLabel("other".into()));
        assert_eq!(
            judge(&pinned_elsewhere, now),
            None,
            "spec.subdomain differs"
        );

        let mut reserved = done;
        reserved.status.as_mut().unwrap().subdomain = Some(DnsLabel("ns1".into()));
        assert_eq!(judge(&reserved, now), None, "a label the zone uses");
    }
}
