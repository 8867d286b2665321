//! The in-memory index the DNS responder answers from: account label → the TXT
//! records to serve, already encoded in wire format.
//!
//! Writers (the AcmeDnsAccount watch) call [`AccountIndex::apply`],
//! [`AccountIndex::delete`] and [`AccountIndex::reset`]; they serialise on a mutex that
//! readers never touch. Readers (the DNS answer path) call [`AccountIndex::lookup`],
//! which reads a lock-free concurrent map and never waits on a writer or on the API
//! server, so every replica keeps answering from the last state it saw.
//!
//! Two accounts may claim one label (a pinned `spec.subdomain` copied from elsewhere,
//! or status written by hand). Only one is served: the oldest by creation time, then by
//! namespace/name, so every replica picks the same one.

use std::{
    collections::{HashMap, VecDeque},
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::{
    api::AcmeDnsAccount,
    wire::{self, EncodedRrset},
};

/// One DNS label in lowercase, stored inline so lookups never allocate.
#[derive(Clone, Copy)]
pub struct Label {
    len: u8,
    bytes: [u8; 63],
}

impl Label {
    /// The label lowercased (ASCII), or `None` when it is empty or longer than 63 bytes.
    pub fn new(label: &[u8]) -> Option<Self> {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        let mut bytes = [0u8; 63];
        for (dst, src) in bytes.iter_mut().zip(label) {
            *dst = src.to_ascii_lowercase();
        }
        Some(Self {
            len: label.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl PartialEq for Label {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}
impl Eq for Label {}
impl Hash for Label {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}
impl std::fmt::Debug for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Labels right below the apex that the zone itself uses (a name server, a static
/// record, or a name above one), so no account may take them.
#[derive(Clone, Debug, Default)]
pub struct ReservedLabels(std::collections::HashSet<Label>);

impl ReservedLabels {
    pub fn contains(&self, label: &Label) -> bool {
        self.0.contains(label)
    }
}

impl FromIterator<Label> for ReservedLabels {
    fn from_iter<I: IntoIterator<Item = Label>>(labels: I) -> Self {
        Self(labels.into_iter().collect())
    }
}

/// `namespace/name` of an account.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountKey {
    pub namespace: String,
    pub name: String,
}

impl AccountKey {
    pub fn of(account: &AcmeDnsAccount) -> Self {
        Self {
            namespace: account.namespace().unwrap_or_default(),
            name: account.name_any(),
        }
    }
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the responder serves for one account's name.
#[derive(Debug)]
pub struct ServedName {
    pub account: AccountKey,
    /// The TXT values as answer records, copied by the responder as they are.
    pub txt: EncodedRrset,
}

/// Order in which claims on one label are decided: oldest first, then by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    created: Option<Timestamp>,
    account: AccountKey,
}

struct Entry {
    /// The resourceVersions applied for this account, newest last, so a writer can wait
    /// until the watch has delivered what it wrote (see [`AccountIndex::wait_for`]).
    versions: VecDeque<Box<str>>,
    label: Option<Label>,
    claim: Claim,
    domains: Vec<String>,
    served: Arc<ServedName>,
}

#[derive(Default)]
struct WriterState {
    accounts: HashMap<AccountKey, Entry>,
    /// Label → accounts claiming it, oldest first (almost always exactly one, so a
    /// sorted Vec: a BTreeMap node would cost ~700 bytes per label).
    claims: HashMap<Label, Vec<Claim>>,
    /// `spec.domains` (lowercase) → accounts listing it, oldest first, for the
    /// webhook's lookup.
    domains: HashMap<String, Vec<Claim>>,
}

/// Inserts `claim` keeping the list sorted and free of duplicates.
fn add_claim(claims: &mut Vec<Claim>, claim: Claim) {
    if let Err(at) = claims.binary_search(&claim) {
        claims.insert(at, claim);
    }
}

/// resourceVersions remembered per account. A writer waits for its own version right
/// after writing it, while at most a few other writes to the same account can overtake.
const VERSIONS_KEPT: usize = 4;

pub struct AccountIndex {
    txt_ttl: u32,
    served: papaya::HashMap<Label, Arc<ServedName>>,
    writer: Mutex<WriterState>,
    /// Bumped after every change, to wake writers waiting for their version.
    changed: tokio::sync::watch::Sender<u64>,
}

impl AccountIndex {
    /// An empty index whose TXT records carry `txt_ttl` seconds.
    pub fn new(txt_ttl: u32) -> Self {
        Self {
            txt_ttl,
            served: papaya::HashMap::new(),
            writer: Mutex::new(WriterState::default()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The records served at `<label>.<zone>`, if an account holds that label.
    #[inline]
    pub fn lookup(&self, label: &Label) -> Option<Arc<ServedName>> {
        self.served.pin().get(label).cloned()
    }

    /// Runs `f` on the records served at `label` without taking a reference count:
    /// the DNS threads all read the same few hot names, and an Arc clone per query
    /// would bounce its cache line between cores.
    #[inline]
    pub fn with_served<R>(&self, label: &Label, f: impl FnOnce(&ServedName) -> R) -> Option<R> {
        self.served.pin().get(label).map(|served| f(served))
    }

    /// Adds or updates an account.
    pub fn apply(&self, account: &AcmeDnsAccount) {
        let mut state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.apply_locked(&mut state, account);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Removes an account.
    pub fn delete(&self, account: &AcmeDnsAccount) {
        let mut state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(&mut state, &AccountKey::of(account));
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Whether the index has applied `version` of `account`: it is among the last few
    /// versions delivered for it, so later events may have arrived since.
    pub fn has_applied(&self, account: &AccountKey, version: &str) -> bool {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        state
            .accounts
            .get(account)
            .is_some_and(|e| e.versions.iter().any(|v| &**v == version))
    }

    /// Waits up to `bound` until the index has applied `version` of `account` (what a
    /// writer just wrote), so the writer can promise that this replica answers it.
    /// Returns whether it did; a watch that lags longer than `bound` makes it `false`.
    pub async fn wait_for(&self, account: &AccountKey, version: &str, bound: Duration) -> bool {
        // Subscribe before the first check, so a change in between is not missed.
        let mut changes = self.changed.subscribe();
        let seen = async {
            loop {
                if self.has_applied(account, version) {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(bound, seen).await.is_ok()
    }

    /// Replaces the whole content with `accounts` (after a watch re-list), touching only
    /// what changed so answers for unchanged accounts never disappear in between.
    pub fn reset(&self, accounts: &[AcmeDnsAccount]) {
        let mut state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let keep: std::collections::HashSet<AccountKey> =
            accounts.iter().map(AccountKey::of).collect();
        let gone: Vec<AccountKey> = state
            .accounts
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove_locked(&mut state, &key);
        }
        for account in accounts {
            self.apply_locked(&mut state, account);
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The account served at `label`, and every other account claiming it. The
    /// controller uses this to report collisions.
    pub fn claimants(&self, label: &Label) -> Vec<AccountKey> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        state
            .claims
            .get(label)
            .map(|c| c.iter().map(|claim| claim.account.clone()).collect())
            .unwrap_or_default()
    }

    /// Accounts whose `spec.domains` lists `domain`, oldest first.
    pub fn accounts_for_domain(&self, domain: &str) -> Vec<AccountKey> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        state
            .domains
            .get(&domain)
            .map(|c| c.iter().map(|claim| claim.account.clone()).collect())
            .unwrap_or_default()
    }

    /// The account served at `label`, if any.
    pub fn account_for_label(&self, label: &Label) -> Option<AccountKey> {
        self.lookup(label).map(|served| served.account.clone())
    }

    /// Accounts known, names served, TXT values served.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let served = self.served.pin();
        let txt = served.iter().map(|(_, s)| s.txt.count as usize).sum();
        (state.accounts.len(), served.len(), txt)
    }

    fn apply_locked(&self, state: &mut WriterState, account: &AcmeDnsAccount) {
        let key = AccountKey::of(account);
        // The watch is the only writer and delivers events in order, so what arrives
        // last is the newest state: no comparing of resourceVersions, which are opaque.
        let mut versions = state
            .accounts
            .get_mut(&key)
            .map(|e| std::mem::take(&mut e.versions))
            .unwrap_or_default();
        if let Some(version) = account.metadata.resource_version.as_deref()
            && versions.back().map(|v| &**v) != Some(version)
        {
            if versions.len() == VERSIONS_KEPT {
                versions.pop_front();
            }
            versions.push_back(version.into());
        }
        let status = account.status.as_ref();
        let label = status
            .and_then(|s| s.subdomain.as_ref())
            .and_then(|s| Label::new(s.0.as_bytes()));
        let claim = Claim {
            created: account.creation_timestamp().map(|t| t.0),
            account: key.clone(),
        };
        let served = Arc::new(ServedName {
            account: key.clone(),
            txt: wire::encode_txt_rrset(
                status
                    .into_iter()
                    .flat_map(|s| s.txt.iter().map(|t| t.value.as_str())),
                self.txt_ttl,
            ),
        });

        let mut domains: Vec<String> = account
            .spec
            .domains
            .iter()
            .map(|d| d.0.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        domains.sort();
        domains.dedup();
        for domain in &domains {
            add_claim(
                state.domains.entry(domain.clone()).or_default(),
                claim.clone(),
            );
        }
        let previous = state.accounts.insert(
            key.clone(),
            Entry {
                versions,
                label,
                claim: claim.clone(),
                domains,
                served,
            },
        );
        if let Some(old) = &previous {
            let current = &state.accounts[&key].domains;
            let stale: Vec<String> = old
                .domains
                .iter()
                .filter(|d| !current.contains(d) || old.claim != claim)
                .cloned()
                .collect();
            // The new claims are in already; drop the old ones no longer true.
            for domain in stale {
                release_domain(state, &domain, &old.claim);
            }
        }
        if let Some(old) = previous
            && let Some(old_label) = old.label
            && (Some(old_label) != label || old.claim != claim)
        {
            release_claim(state, &old_label, &old.claim);
            self.publish(state, &old_label);
        }
        if let Some(label) = label {
            add_claim(state.claims.entry(label).or_default(), claim);
            self.publish(state, &label);
        }
    }

    fn remove_locked(&self, state: &mut WriterState, key: &AccountKey) {
        let Some(old) = state.accounts.remove(key) else {
            return;
        };
        for domain in &old.domains {
            release_domain(state, domain, &old.claim);
        }
        if let Some(label) = old.label {
            release_claim(state, &label, &old.claim);
            self.publish(state, &label);
        }
    }

    /// Makes the readers see the current winner of `label`, or nothing.
    fn publish(&self, state: &WriterState, label: &Label) {
        let winner = state
            .claims
            .get(label)
            .and_then(|claims| claims.first())
            .and_then(|claim| state.accounts.get(&claim.account));
        let served = self.served.pin();
        match winner {
            Some(entry) => {
                served.insert(*label, entry.served.clone());
            }
            None => {
                served.remove(label);
            }
        }
    }
}

fn release_domain(state: &mut WriterState, domain: &str, claim: &Claim) {
    if let Some(claims) = state.domains.get_mut(domain) {
        claims.retain(|c| c != claim);
        if claims.is_empty() {
            state.domains.remove(domain);
        }
    }
}

fn release_claim(state: &mut WriterState, label: &Label, claim: &Claim) {
    if let Some(claims) = state.claims.get_mut(label) {
        claims.retain(|c| c != claim);
        if claims.is_empty() {
            state.claims.remove(label);
        }
    }
}

/// Hands memory the allocator holds free back to the system. Call it after a large
/// [`AccountIndex::reset`] once the listed objects are dropped: they were allocated
/// before the index's own records, which now sit above them, so glibc keeps their pages
/// (it only returns the top of its heap by itself) and the process would stay at its
/// peak for good. Takes a few milliseconds per 100 MB of heap.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests;
