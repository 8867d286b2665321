//! When to check an account's CNAME delegation again. A delegation that holds is
//! rechecked hourly; one that does not is rechecked with backoff from 10 s, doubling up to
//! an hour, so a user who just published the CNAME sees `Delegated=True` soon while a
//! domain nobody will ever delegate costs one lookup an hour. A change of what is checked
//! (the domains or the FQDN) starts over.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher, Hash},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::index::AccountKey;

/// Recheck after this while the delegation holds, and never later than this.
pub const RECHECK_MAX: Duration = Duration::from_secs(3600);
/// First recheck after a failed check.
pub const RECHECK_MIN: Duration = Duration::from_secs(10);

/// What was checked: the account's domains and the FQDN they must point to.
pub type Subject = (Vec<String>, String);

/// What is remembered of each account: 32 bytes, and its key shared with the index.
struct Memo {
    /// A hash of the subject checked: only ever compared, so a changed one is seen.
    subject: u64,
    next_check: Instant,
    failures: u32,
}

/// A hash of `value` that is the same for equal values throughout the process: what the
/// controller keeps of a thing it only ever compares.
pub fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// The hash of `subject` the schedule keeps, for [`DelegationSchedule::adopt`].
pub fn subject_hash(subject: &Subject) -> u64 {
    hash_of(subject)
}

#[derive(Default)]
pub struct DelegationSchedule {
    memos: HashMap<Arc<AccountKey>, Memo>,
}

impl DelegationSchedule {
    /// Whether `subject` of `account` should be checked at `now`.
    pub fn due(&self, account: &AccountKey, subject: &Subject, now: Instant) -> bool {
        match self.memos.get(account) {
            Some(memo) => memo.subject != subject_hash(subject) || memo.next_check <= now,
            None => true,
        }
    }

    /// Records a check's outcome; returns when the next one is due.
    pub fn record(
        &mut self,
        account: &Arc<AccountKey>,
        subject: &Subject,
        delegated: bool,
        now: Instant,
    ) -> Instant {
        let subject = subject_hash(subject);
        let failures = match self.memos.get(&**account) {
            _ if delegated => 0,
            Some(memo) if memo.subject == subject => memo.failures.saturating_add(1),
            _ => 1,
        };
        let wait = if delegated {
            RECHECK_MAX
        } else {
            RECHECK_MIN
                .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
                .min(RECHECK_MAX)
        };
        self.plan(account, subject, now + wait, failures)
    }

    /// Whether a check of `account` was made or planned by this replica.
    pub fn knows(&self, account: &AccountKey) -> bool {
        self.memos.contains_key(account)
    }

    /// Plans the first check of an account whose status already holds the outcome of
    /// an earlier check (made before this replica led, or before a restart), so that a
    /// replica taking the Lease does not look up every account's CNAMEs at once. The
    /// check falls at a point spread over as long as that outcome has held, at least
    /// RECHECK_MIN and at most RECHECK_MAX, as the backoff would have spread it; a
    /// failing account carries on with the backoff from there. `subject` is the hash of
    /// what that check looked at ([`subject_hash`]). Returns when it is due.
    pub fn adopt(
        &mut self,
        account: &Arc<AccountKey>,
        subject: u64,
        delegated: bool,
        held_for: Duration,
        now: Instant,
    ) -> Instant {
        let span = held_for.clamp(RECHECK_MIN, RECHECK_MAX);
        let next_check = now + span.mul_f64(spread(account));
        // The failures after which the backoff waits about `span`.
        let failures = if delegated {
            0
        } else {
            (span.as_secs() / RECHECK_MIN.as_secs()).max(1).ilog2() + 1
        };
        self.plan(account, subject, next_check, failures)
    }

    /// Remembers when `account` is checked next and after how many failures.
    fn plan(
        &mut self,
        account: &Arc<AccountKey>,
        subject: u64,
        next_check: Instant,
        failures: u32,
    ) -> Instant {
        self.memos.insert(
            account.clone(),
            Memo {
                subject,
                next_check,
                failures,
            },
        );
        next_check
    }

    /// When the next check of `account` is due, if one was made.
    pub fn next_check(&self, account: &AccountKey) -> Option<Instant> {
        self.memos.get(account).map(|m| m.next_check)
    }

    /// Forgets every account for which `exists` is false (deleted accounts), so the
    /// schedule stays as large as the set of accounts.
    pub fn retain(&mut self, mut exists: impl FnMut(&AccountKey) -> bool) {
        self.memos.retain(|account, _| exists(account));
    }

    pub fn len(&self) -> usize {
        self.memos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memos.is_empty()
    }
}

/// Where in a span an account's first check falls, in [0, 1): from a hash of its key,
/// so the checks of many accounts spread evenly, and each replica places an account at
/// the same point.
fn spread(account: &AccountKey) -> f64 {
    let hash = hash_of(account);
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<AccountKey> {
        Arc::new(AccountKey {
            namespace: "team".into(),
            name: "a".into(),
        })
    }

    fn subject(domain: &str) -> Subject {
        (vec![domain.into()], "abc.auth.example.test.".into())
    }

    #[test]
    fn an_account_never_checked_is_due() {
        let schedule = DelegationSchedule::default();
        assert!(schedule.due(&key(), &subject("example.test"), Instant::now()));
    }

    #[test]
    fn failures_back_off_from_ten_seconds_doubling_to_an_hour() {
        let mut schedule = DelegationSchedule::default();
        let start = Instant::now();
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let next = schedule.record(&key(), &subject("example.test"), false, now);
            waits.push((next - now).as_secs());
            assert!(!schedule.due(&key(), &subject("example.test"), now));
            assert!(schedule.due(&key(), &subject("example.test"), next));
            now = next;
        }
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600, 3600]
        );
    }

    #[test]
    fn success_rechecks_hourly_and_resets_the_backoff() {
        let mut schedule = DelegationSchedule::default();
        let now = Instant::now();
        for _ in 0..5 {
            schedule.record(&key(), &subject("example.test"), false, now);
        }
        let next = schedule.record(&key(), &subject("example.test"), true, now);
        assert_eq!(next - now, RECHECK_MAX);
        let next = schedule.record(&key(), &subject("example.test"), false, now);
        assert_eq!(
            next - now,
            RECHECK_MIN,
            "a new failure starts from the shortest wait"
        );
    }

    #[test]
    fn a_changed_subject_is_checked_at_once_and_starts_over() {
        let mut schedule = DelegationSchedule::default();
        let now = Instant::now();
        for _ in 0..5 {
            schedule.record(&key(), &subject("example.test"), false, now);
        }
        assert!(schedule.due(&key(), &subject("other.test"), now));
        let next = schedule.record(&key(), &subject("other.test"), false, now);
        assert_eq!(next - now, RECHECK_MIN);
    }

    #[test]
    fn adopted_outcomes_spread_the_first_checks_over_as_long_as_they_held() {
        let mut schedule = DelegationSchedule::default();
        let now = Instant::now();
        let accounts: Vec<Arc<AccountKey>> = (0..1000)
            .map(|i| {
                Arc::new(AccountKey {
                    namespace: "team".into(),
                    name: format!("a{i}").into(),
                })
            })
            .collect();
        let waits: Vec<Duration> = accounts
            .iter()
            .map(|a| {
                schedule.adopt(
                    a,
                    subject_hash(&subject("example.test")),
                    true,
                    Duration::from_secs(86400),
                    now,
                ) - now
            })
            .collect();
        assert!(
            waits.iter().all(|w| *w < RECHECK_MAX),
            "never later than an hour"
        );
        // Spread evenly: each quarter of the hour holds about a quarter of the checks.
        for quarter in 0..4 {
            let from = RECHECK_MAX / 4 * quarter;
            let n = waits
                .iter()
                .filter(|w| **w >= from && **w < from + RECHECK_MAX / 4)
                .count();
            assert!((200..300).contains(&n), "quarter {quarter}: {n} of 1000");
        }
        assert!(
            schedule.due(&accounts[0], &subject("other.test"), now),
            "a changed subject is still checked at once"
        );
    }

    #[test]
    fn an_adopted_failure_backs_off_from_how_long_it_held() {
        let mut schedule = DelegationSchedule::default();
        let now = Instant::now();
        let next = schedule.adopt(
            &key(),
            subject_hash(&subject("example.test")),
            false,
            Duration::from_secs(3),
            now,
        );
        assert!(
            next - now <= RECHECK_MIN,
            "a fresh failure is rechecked soon"
        );
        // Failing for 5 min: the next wait is that of the fifth failure or so (160 s),
        // not the first one's 10 s.
        schedule.adopt(
            &key(),
            subject_hash(&subject("example.test")),
            false,
            Duration::from_secs(300),
            now,
        );
        let later = now + Duration::from_secs(400);
        let next = schedule.record(&key(), &subject("example.test"), false, later);
        assert_eq!(next - later, Duration::from_secs(320));
        assert!(schedule.knows(&key()));
    }

    #[test]
    fn forgotten_accounts_are_due_again() {
        let mut schedule = DelegationSchedule::default();
        let now = Instant::now();
        schedule.record(&key(), &subject("example.test"), true, now);
        schedule.retain(|_| false);
        assert!(schedule.due(&key(), &subject("example.test"), now));
        assert_eq!(schedule.next_check(&key()), None);
    }

    #[test]
    fn deleted_accounts_are_forgotten() {
        let mut schedule = DelegationSchedule::default();
        let other = Arc::new(AccountKey {
            namespace: "team".into(),
            name: "b".into(),
        });
        let now = Instant::now();
        schedule.record(&key(), &subject("example.test"), false, now);
        schedule.record(&other, &subject("other.test"), false, now);
        schedule.retain(|account| *account == *other);
        assert_eq!(schedule.len(), 1);
        assert!(schedule.next_check(&key()).is_none());
        assert!(schedule.next_check(&other).is_some());
    }
}
