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
};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::AcmeDnsAccount;

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
    /// Each TXT value as a complete answer record whose owner is a compression pointer
    /// to the question name (offset 12), so the responder copies these bytes as they are.
    pub txt_records: Box<[u8]>,
    pub txt_count: u16,
}

/// Order in which claims on one label are decided: oldest first, then by name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    created: Option<Timestamp>,
    account: AccountKey,
}

struct Entry {
    /// resourceVersion as a number, when it is one (etcd revisions are).
    version: Option<u64>,
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

pub struct AccountIndex {
    txt_ttl: u32,
    served: papaya::HashMap<Label, Arc<ServedName>>,
    writer: Mutex<WriterState>,
}

impl AccountIndex {
    /// An empty index whose TXT records carry `txt_ttl` seconds.
    pub fn new(txt_ttl: u32) -> Self {
        Self {
            txt_ttl,
            served: papaya::HashMap::new(),
            writer: Mutex::new(WriterState::default()),
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
    }

    /// Removes an account.
    pub fn delete(&self, account: &AcmeDnsAccount) {
        let mut state = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.remove_locked(&mut state, &AccountKey::of(account));
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
        let txt = served.iter().map(|(_, s)| s.txt_count as usize).sum();
        (state.accounts.len(), served.len(), txt)
    }

    fn apply_locked(&self, state: &mut WriterState, account: &AcmeDnsAccount) {
        let key = AccountKey::of(account);
        let version = account
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok());
        // The webhook applies what it wrote at once; a watch event for an older version
        // arriving after that must not take the value away again. resourceVersions are
        // opaque by contract, so this only applies when both are numbers.
        if let (Some(new), Some(Some(old))) = (version, state.accounts.get(&key).map(|e| e.version))
            && new < old
        {
            return;
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
            txt_records: encode_txt_records(
                status
                    .into_iter()
                    .flat_map(|s| s.txt.iter().map(|t| t.value.as_str())),
                self.txt_ttl,
            ),
            txt_count: status.map_or(0, |s| s.txt.len().min(u16::MAX as usize) as u16),
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
                version,
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

/// TXT answer records for `values`: owner = pointer to the question name, class IN.
/// A value longer than 255 bytes is split into several character-strings (RFC 1035
/// §3.3.14), so nothing a client wrote is cut off.
fn encode_txt_records<'a>(values: impl Iterator<Item = &'a str>, ttl: u32) -> Box<[u8]> {
    let mut out = Vec::new();
    for value in values {
        let bytes = value.as_bytes();
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(255).collect()
        };
        let rdlen: usize = chunks.iter().map(|c| c.len() + 1).sum();
        if rdlen > u16::MAX as usize {
            continue;
        }
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&crate::dns::wire::TYPE_TXT.to_be_bytes());
        out.extend_from_slice(&crate::dns::wire::CLASS_IN.to_be_bytes());
        out.extend_from_slice(&ttl.to_be_bytes());
        out.extend_from_slice(&(rdlen as u16).to_be_bytes());
        for chunk in chunks {
            out.push(chunk.len() as u8);
            out.extend_from_slice(chunk);
        }
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests;
