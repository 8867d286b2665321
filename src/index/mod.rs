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
    collections::HashMap,
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

/// `namespace/name` of an account. The namespace is shared: the index keeps one copy of
/// each namespace's name for all its accounts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountKey {
    pub namespace: Arc<str>,
    pub name: Box<str>,
}

impl AccountKey {
    pub fn of(account: &AcmeDnsAccount) -> Self {
        let (namespace, name) = key_of(account);
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// `namespace` and name of an account as [`AccountKey::of`] takes them, borrowed.
fn key_of(account: &AcmeDnsAccount) -> (&str, &str) {
    let meta = &account.metadata;
    let name = meta.name.as_deref().or(meta.generate_name.as_deref());
    (
        meta.namespace.as_deref().unwrap_or_default(),
        name.unwrap_or_default(),
    )
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the responder serves for one account's name.
#[derive(Debug)]
pub struct ServedName {
    /// One allocation per account, shared with the writer's records of it.
    pub account: Arc<AccountKey>,
    /// The TXT values as answer records, copied by the responder as they are.
    pub txt: EncodedRrset,
    /// Where it is served. Kept here, and not as the key of the readers' map, so the
    /// map's entries hold two pointers instead of a 64-byte label.
    label: Label,
}

/// A served name as the key of the readers' map: it is found by its label.
struct Published(Arc<ServedName>);

impl std::borrow::Borrow<Label> for Published {
    fn borrow(&self) -> &Label {
        &self.0.label
    }
}
impl PartialEq for Published {
    fn eq(&self, other: &Self) -> bool {
        self.0.label == other.0.label
    }
}
impl Eq for Published {}
impl Hash for Published {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.label.hash(state);
    }
}

/// Order in which claims on one label are decided: oldest first, then by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    created: Option<Timestamp>,
    account: Arc<AccountKey>,
}

struct Entry {
    /// The resourceVersions applied for this account, newest last, so a writer can wait
    /// until the watch has delivered what it wrote (see [`AccountIndex::wait_for`]).
    versions: Versions,
    /// What the controller plans from, when the account's status needs no write.
    settled: Option<Settled>,
    created: Option<Timestamp>,
    /// Its `spec.domains` (lowercase), each shared with the key of `WriterState::domains`.
    domains: Box<[Arc<str>]>,
    /// What the account would serve, if it has a label; it claims that label.
    served: Option<Arc<ServedName>>,
    /// What only the acme-dns API reads, when there is any.
    api: Option<Box<ApiFields>>,
}

/// Fields of an account only the acme-dns API reads, kept apart so the many accounts
/// without them pay one pointer.
struct ApiFields {
    /// `spec.subdomain` while the status does not serve it yet (a new account): the API
    /// must accept an update right after registering.
    requested: Option<Box<str>>,
    /// `spec.allowFrom`.
    allow_from: Box<[Box<str>]>,
}

/// The last few resourceVersions applied to an account, each kept as a hash: eight bytes
/// each instead of a string, and only ever compared for equality. 0 is an empty slot.
#[derive(Default)]
struct Versions([u64; VERSIONS_KEPT]);

impl Versions {
    fn hash(version: &str) -> u64 {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default()
            .hash_one(version)
            .max(1)
    }

    /// Adds `version` as the newest, unless it is the newest already.
    fn push(&mut self, version: &str) {
        let hash = Self::hash(version);
        if self.0[VERSIONS_KEPT - 1] != hash {
            self.0.rotate_left(1);
            self.0[VERSIONS_KEPT - 1] = hash;
        }
    }

    fn contains(&self, version: &str) -> bool {
        let hash = Self::hash(version);
        self.0.contains(&hash)
    }
}

/// What the controller needs of an account whose status is settled (a reconcile would
/// write nothing) to plan its next reconcile without reading it again: when a TXT value
/// expires, and the outcome of its last delegation check. A replica that takes the Lease
/// plans every settled account from this and reads only the others, so a change of
/// leader costs the API server no list of every account. A delegation check that falls
/// due is made from this too, with the index's label and domains: only one whose outcome
/// differs from the status has the account read again. 40 bytes per account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// When its oldest TXT value is to be dropped, in Unix seconds, if it has one.
    pub txt_expires: Option<std::num::NonZeroI64>,
    /// Whether its last delegation check found every CNAME; `None` when it lists no
    /// domains, so there is nothing to check.
    pub delegated: Option<bool>,
    /// Since when (Unix seconds) that outcome has held.
    pub delegated_since: i64,
    /// A hash of what that check looked at (the domains and the FQDN), as the
    /// controller's delegation schedule keeps it.
    pub subject: u64,
    /// A hash of the Delegated condition's status, reason and message (0 without one),
    /// so a check that finds the same is seen to need no write.
    pub delegation_note: u64,
}

/// Decides whether an account is settled; given by the controller, see
/// [`AccountIndex::settling`].
type SettledFn = dyn Fn(&AcmeDnsAccount) -> Option<Settled> + Send + Sync;

/// What the acme-dns API needs of an account besides its credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiView {
    /// The label it is served under (`status.subdomain`, or `spec.subdomain` before the
    /// status says).
    pub subdomain: String,
    /// `spec.allowFrom` as written.
    pub allow_from: Vec<String>,
}

#[derive(Default)]
struct WriterState {
    accounts: HashMap<Arc<AccountKey>, Entry>,
    /// The namespaces of the accounts, each held once (the keys share them).
    namespaces: std::collections::HashSet<Arc<str>>,
    /// Labels claimed by more than one account → their claims, oldest first. A label
    /// with one claimant is not here: that claimant is the account published at it, so
    /// the common case costs no second map entry and no second copy of the label.
    contested: HashMap<Label, Vec<Claim>>,
    /// `spec.domains` (lowercase) → accounts listing it, oldest first, for the
    /// webhook's lookup.
    domains: HashMap<Arc<str>, Vec<Claim>>,
}

impl WriterState {
    fn claim_of(&self, account: &Arc<AccountKey>) -> Option<Claim> {
        self.accounts.get(account).map(|e| Claim {
            created: e.created,
            account: account.clone(),
        })
    }
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
    /// Set when this replica may run the controller.
    settle: Option<Box<SettledFn>>,
    /// The served name of every claimed label, keyed by the label inside it. The value
    /// is the same record as the key, so an answer never depends on which of two equal
    /// keys the map keeps on a replacement.
    served: papaya::HashMap<Published, Arc<ServedName>>,
    writer: Mutex<WriterState>,
    /// Bumped after every change, to wake writers waiting for their version.
    changed: tokio::sync::watch::Sender<u64>,
}

impl AccountIndex {
    /// An empty index whose TXT records carry `txt_ttl` seconds.
    pub fn new(txt_ttl: u32) -> Self {
        Self {
            txt_ttl,
            settle: None,
            served: papaya::HashMap::new(),
            writer: Mutex::new(WriterState::default()),
            changed: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Has every account applied from now on judged by `settled`, and what it returns
    /// kept for [`AccountIndex::settled`]. The function runs outside the writers' lock.
    pub fn settling(
        mut self,
        settled: impl Fn(&AcmeDnsAccount) -> Option<Settled> + Send + Sync + 'static,
    ) -> Self {
        self.settle = Some(Box::new(settled));
        self
    }

    fn judge(&self, account: &AcmeDnsAccount) -> Option<Settled> {
        self.settle.as_ref().and_then(|settled| settled(account))
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
        let settled = self.judge(account);
        let mut state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.apply_locked(&mut state, account, settled);
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
            .is_some_and(|e| e.versions.contains(version))
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

    /// Replaces the whole content with `accounts`, touching only what changed so answers
    /// for unchanged accounts never disappear in between.
    pub fn reset(&self, accounts: &[AcmeDnsAccount]) {
        let mut relist = self.relist();
        for account in accounts {
            relist.apply(account);
        }
        relist.finish();
    }

    /// Starts applying a watch re-list: each listed account as it arrives, then, at
    /// [`Relist::finish`], every account the list did not hold is removed. Unchanged
    /// accounts are answered throughout, and the list never has to be held whole.
    pub fn relist(&self) -> Relist<'_> {
        Relist {
            index: self,
            listed: std::collections::HashSet::new(),
        }
    }

    /// The account served at `label`, and every other account claiming it. The
    /// controller uses this to report collisions.
    pub fn claimants(&self, label: &Label) -> Vec<AccountKey> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        match state.contested.get(label) {
            Some(claims) => claims.iter().map(|c| (*c.account).clone()).collect(),
            None => self.account_for_label(label).into_iter().collect(),
        }
    }

    /// Accounts whose `spec.domains` lists `domain`, oldest first.
    pub fn accounts_for_domain(&self, domain: &str) -> Vec<AccountKey> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        state
            .domains
            .get(domain.as_str())
            .map(|c| c.iter().map(|claim| (*claim.account).clone()).collect())
            .unwrap_or_default()
    }

    /// The account as the acme-dns API sees it, if the index holds it and it has a label.
    pub fn api_view(&self, account: &AccountKey) -> Option<ApiView> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state.accounts.get(account)?;
        let api = entry.api.as_deref();
        let subdomain = match (&entry.served, api.and_then(|a| a.requested.as_deref())) {
            (Some(served), _) => String::from_utf8_lossy(served.label.as_bytes()).into_owned(),
            (None, Some(requested)) => requested.to_string(),
            (None, None) => return None,
        };
        Some(ApiView {
            subdomain,
            allow_from: api
                .map(|a| a.allow_from.iter().map(|c| c.to_string()).collect())
                .unwrap_or_default(),
        })
    }

    /// The index's own key of `account` (one allocation shared by everything that
    /// remembers the account), if it holds the account.
    pub fn key(&self, account: &AccountKey) -> Option<Arc<AccountKey>> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        state
            .accounts
            .get_key_value(account)
            .map(|(k, _)| k.clone())
    }

    /// The keys of every account held, as the index shares them.
    pub fn keys(&self) -> Vec<Arc<AccountKey>> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        state.accounts.keys().cloned().collect()
    }

    /// What the controller plans `account` from, if its status was settled when the
    /// watch last delivered it and no other account claims its label (then a reconcile
    /// decides between them).
    pub fn settled(&self, account: &AccountKey) -> Option<Settled> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state.accounts.get(account)?;
        let contested = entry
            .served
            .as_ref()
            .is_some_and(|served| state.contested.contains_key(&served.label));
        entry.settled.filter(|_| !contested)
    }

    /// What [`AccountIndex::settled`] gives, with what a delegation check of the account
    /// looks at: the label it is served under and its domains (lowercase, sorted, without
    /// repeats or a final dot).
    pub fn settled_subject(&self, account: &AccountKey) -> Option<(Settled, String, Vec<String>)> {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let entry = state.accounts.get(account)?;
        let served = entry.served.as_ref()?;
        if state.contested.contains_key(&served.label) {
            return None;
        }
        let label = String::from_utf8_lossy(served.label.as_bytes()).into_owned();
        let domains = entry.domains.iter().map(|d| d.to_string()).collect();
        Some((entry.settled?, label, domains))
    }

    /// The account served at `label`, if any.
    pub fn account_for_label(&self, label: &Label) -> Option<AccountKey> {
        self.with_served(label, |served| (*served.account).clone())
    }

    /// Accounts known, names served, TXT values served.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let served = self.served.pin();
        let txt = served.iter().map(|(_, s)| s.txt.count as usize).sum();
        (state.accounts.len(), served.len(), txt)
    }

    /// Applies `account`; returns its key as the index holds it.
    fn apply_locked(
        &self,
        state: &mut WriterState,
        account: &AcmeDnsAccount,
        settled: Option<Settled>,
    ) -> Arc<AccountKey> {
        let key = AccountKey::of(account);
        // The key already known is shared, not kept twice.
        let key = match state.accounts.get_key_value(&key) {
            Some((known, _)) => known.clone(),
            None => {
                let namespace = match state.namespaces.get(&key.namespace) {
                    Some(known) => known.clone(),
                    None => {
                        state.namespaces.insert(key.namespace.clone());
                        key.namespace
                    }
                };
                Arc::new(AccountKey {
                    namespace,
                    name: key.name,
                })
            }
        };
        // The watch is the only writer and delivers events in order, so what arrives
        // last is the newest state: no comparing of resourceVersions, which are opaque.
        let mut versions = state
            .accounts
            .get_mut(&key)
            .map(|e| std::mem::take(&mut e.versions))
            .unwrap_or_default();
        if let Some(version) = account.metadata.resource_version.as_deref() {
            versions.push(version);
        }
        let status = account.status.as_ref();
        let label = status
            .and_then(|s| s.subdomain.as_ref())
            .and_then(|s| Label::new(s.0.as_bytes()));
        let claim = Claim {
            created: account.creation_timestamp().map(|t| t.0),
            account: key.clone(),
        };
        let served = label.map(|label| {
            Arc::new(ServedName {
                account: key.clone(),
                txt: wire::encode_txt_rrset(
                    status
                        .into_iter()
                        .flat_map(|s| s.txt.iter().map(|t| t.value.as_str())),
                    self.txt_ttl,
                ),
                label,
            })
        });

        let mut listed: Vec<String> = account
            .spec
            .domains
            .iter()
            .map(|d| d.0.trim_end_matches('.').to_ascii_lowercase())
            .collect();
        listed.sort();
        listed.dedup();
        let mut domains = Vec::with_capacity(listed.len());
        for domain in listed {
            let domain = match state.domains.get_key_value(domain.as_str()) {
                Some((known, _)) => known.clone(),
                None => Arc::from(domain),
            };
            // Room for one: a domain is almost always listed by a single account, and
            // the first push would otherwise reserve four.
            let claims = state
                .domains
                .entry(domain.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            add_claim(claims, claim.clone());
            domains.push(domain);
        }
        let requested = account
            .spec
            .subdomain
            .as_ref()
            .filter(|s| label.is_none_or(|l| l.as_bytes() != s.0.as_bytes()))
            .map(|s| s.0.as_str().into());
        let allow_from: Box<[Box<str>]> = account
            .spec
            .allow_from
            .iter()
            .map(|c| c.0.as_str().into())
            .collect();
        let api = (requested.is_some() || !allow_from.is_empty()).then(|| {
            Box::new(ApiFields {
                requested,
                allow_from,
            })
        });
        let previous = state.accounts.insert(
            key.clone(),
            Entry {
                versions,
                settled,
                created: claim.created,
                domains: domains.into(),
                served,
                api,
            },
        );
        let old_claim = previous.as_ref().map(|old| Claim {
            created: old.created,
            account: key.clone(),
        });
        if let (Some(old), Some(old_claim)) = (&previous, &old_claim) {
            let current = &state.accounts[&key].domains;
            let stale: Vec<Arc<str>> = old
                .domains
                .iter()
                .filter(|d| !current.contains(d) || *old_claim != claim)
                .cloned()
                .collect();
            // The new claims are in already; drop the old ones no longer true.
            for domain in stale {
                release_domain(state, &domain, old_claim);
            }
        }
        if let Some(old) = previous
            && let Some(old_label) = old.served.as_ref().map(|s| s.label)
            && let Some(old_claim) = old_claim
            && (Some(old_label) != label || old_claim != claim)
        {
            self.release_label(state, &old_label, &old_claim);
        }
        if let Some(label) = label {
            self.claim_label(state, &label, claim);
        }
        key
    }

    fn remove_locked(&self, state: &mut WriterState, key: &AccountKey) {
        let Some((key, old)) = state.accounts.remove_entry(key) else {
            return;
        };
        let claim = Claim {
            created: old.created,
            account: key,
        };
        for domain in &old.domains {
            release_domain(state, domain, &claim);
        }
        if let Some(served) = &old.served {
            self.release_label(state, &served.label, &claim);
        }
    }

    /// Records `claim` (whose account is in `state.accounts` already, with this label)
    /// on `label` and publishes the label's winner.
    fn claim_label(&self, state: &mut WriterState, label: &Label, claim: Claim) {
        if let Some(claims) = state.contested.get_mut(label) {
            add_claim(claims, claim);
        } else {
            let holder = self
                .served
                .pin()
                .get(label)
                .map(|served| served.account.clone());
            if let Some(holder) = holder
                && holder != claim.account
                && let Some(held) = state.claim_of(&holder)
            {
                let mut claims = vec![held];
                add_claim(&mut claims, claim);
                state.contested.insert(*label, claims);
            } else {
                // The only claimant: publish it without going through `contested`.
                return self.publish(state, label, &claim.account);
            }
        }
        let winner = state.contested[label][0].account.clone();
        self.publish(state, label, &winner);
    }

    /// Takes `claim` off `label`, and publishes whoever holds it now, or nothing.
    fn release_label(&self, state: &mut WriterState, label: &Label, claim: &Claim) {
        if let Some(claims) = state.contested.get_mut(label) {
            claims.retain(|c| c != claim);
            let Some(winner) = claims.first().map(|c| c.account.clone()) else {
                state.contested.remove(label);
                self.served.pin().remove(label);
                return;
            };
            // A single claimant left is served without a `contested` entry.
            if claims.len() == 1 {
                state.contested.remove(label);
            }
            self.publish(state, label, &winner);
        } else {
            let served = self.served.pin();
            if served
                .get(label)
                .is_some_and(|held| held.account == claim.account)
            {
                served.remove(label);
            }
        }
    }

    /// Makes the readers see what `account` serves at `label`, or nothing if it serves
    /// nothing there.
    fn publish(&self, state: &WriterState, label: &Label, account: &AccountKey) {
        let winner = state
            .accounts
            .get(account)
            .and_then(|e| e.served.as_ref())
            .filter(|s| s.label == *label);
        let served = self.served.pin();
        match winner {
            Some(winner) => {
                served.insert(Published(winner.clone()), winner.clone());
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

/// A re-list being applied (see [`AccountIndex::relist`]).
pub struct Relist<'a> {
    index: &'a AccountIndex,
    /// The accounts listed so far, as the index holds their keys (no copies).
    listed: std::collections::HashSet<Arc<AccountKey>>,
}

impl Relist<'_> {
    /// Adds or updates a listed account.
    pub fn apply(&mut self, account: &AcmeDnsAccount) {
        let settled = self.index.judge(account);
        let mut state = self.index.writer.lock().unwrap_or_else(|p| p.into_inner());
        let key = self.index.apply_locked(&mut state, account, settled);
        drop(state);
        self.listed.insert(key);
        self.index.changed.send_modify(|n| *n += 1);
    }

    /// Removes every account the re-list did not hold; returns how many it held.
    pub fn finish(self) -> usize {
        let mut state = self.index.writer.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<Arc<AccountKey>> = state
            .accounts
            .keys()
            .filter(|k| !self.listed.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            self.index.remove_locked(&mut state, &key);
        }
        drop(state);
        self.index.changed.send_modify(|n| *n += 1);
        self.listed.len()
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
