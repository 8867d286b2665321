//! Writing an account's TXT values (`status.txt`), for every writer: the webhook's
//! Present and CleanUp, and the acme-dns API's `/update`.
//!
//! Changes to one account made at once in this replica are written together: the first
//! starts a writer task for the account, and every change that arrives while it writes
//! joins the next batch, so 50 Presents at once cost a few writes, not 50 writers
//! contending for one object. Each write reads, applies the batch's changes in order and
//! writes with the resourceVersion read, retrying on conflict (another replica wrote);
//! then waits until this replica's index (fed only by the account watch) holds it, so
//! the callers can promise their values are answered.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, api::PostParams};
use tokio::sync::oneshot;
use tracing::warn;

use crate::{
    api::{AcmeDnsAccount, TxtValue},
    index::{AccountIndex, AccountKey},
};

#[derive(Clone, Debug, thiserror::Error)]
pub enum TxtError {
    #[error("AcmeDnsAccount {0} does not exist: create it, or point this client at one that does")]
    AccountMissing(AccountKey),
    #[error(
        "AcmeDnsAccount {0} has no subdomain yet: the kube-acme-dns controller assigns it within seconds; if it stays unassigned, check `kubectl describe acmedns` and the controller's logs"
    )]
    NotAssigned(AccountKey),
    #[error("cannot update AcmeDnsAccount {account}: {source}")]
    Write {
        account: AccountKey,
        #[source]
        source: Arc<kube::Error>,
    },
    #[error("AcmeDnsAccount {0} kept changing under us; try again")]
    Contended(AccountKey),
}

/// Attempts at a read-modify-write before giving up to the caller's own retry.
const WRITE_ATTEMPTS: u32 = 12;
/// How long a write waits for the account watch to deliver it. The watch normally takes
/// milliseconds; past this the write has still succeeded, and ACME clients' own DNS
/// checks wait for the value.
const WATCH_DELIVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct TxtWriter {
    client: Client,
    index: Arc<AccountIndex>,
    /// Most values kept per account; the oldest is dropped beyond it.
    max_values: usize,
    /// Changes waiting for their account's writer; an account is here while its writer
    /// task runs.
    pending: Arc<Mutex<HashMap<AccountKey, Vec<Pending>>>>,
}

#[derive(Debug)]
enum Change {
    Add(String),
    Remove(String),
}

struct Pending {
    change: Change,
    done: oneshot::Sender<Result<(), TxtError>>,
}

impl TxtWriter {
    pub fn new(client: Client, index: Arc<AccountIndex>, max_values: usize) -> Self {
        Self {
            client,
            index,
            max_values: max_values.max(1),
            pending: Arc::default(),
        }
    }

    /// Adds `value` as the newest; nothing changes if it is there already. Beyond the
    /// most values kept, the oldest goes: acme-dns keeps only two, which breaks as soon
    /// as two certificates cover one name.
    pub async fn add(&self, account: &AccountKey, value: &str) -> Result<(), TxtError> {
        self.submit(account, Change::Add(value.to_string())).await
    }

    /// Removes exactly `value`, leaving every other value in place.
    pub async fn remove(&self, account: &AccountKey, value: &str) -> Result<(), TxtError> {
        self.submit(account, Change::Remove(value.to_string()))
            .await
    }

    /// Queues `change` for the account's writer (starting one if none runs) and waits
    /// for the write that carries it.
    async fn submit(&self, account: &AccountKey, change: Change) -> Result<(), TxtError> {
        let (done, result) = oneshot::channel();
        let start_writer = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.get_mut(account) {
                Some(queue) => {
                    queue.push(Pending { change, done });
                    false
                }
                None => {
                    pending.insert(account.clone(), vec![Pending { change, done }]);
                    true
                }
            }
        };
        if start_writer {
            // A task of its own: the write completes even if this caller goes away.
            tokio::spawn(self.clone().write_batches(account.clone()));
        }
        result
            .await
            .unwrap_or_else(|_| Err(TxtError::Contended(account.clone())))
    }

    /// Writes the account's queued changes, a batch at a time, until none are left.
    async fn write_batches(self, account: AccountKey) {
        loop {
            let batch = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let queue = pending.get_mut(&account).map(std::mem::take);
                match queue {
                    Some(batch) if !batch.is_empty() => batch,
                    _ => {
                        pending.remove(&account);
                        return;
                    }
                }
            };
            let changes: Vec<&Change> = batch.iter().map(|p| &p.change).collect();
            let result = self
                .update(&account, |txt| apply(txt, &changes, self.max_values))
                .await;
            for pending in batch {
                let _ = pending.done.send(result.clone());
            }
        }
    }

    async fn update(
        &self,
        account: &AccountKey,
        change: impl Fn(&mut Vec<TxtValue>) -> bool,
    ) -> Result<(), TxtError> {
        let api: Api<AcmeDnsAccount> = Api::namespaced(self.client.clone(), &account.namespace);
        let write_error = |source| TxtError::Write {
            account: account.clone(),
            source: Arc::new(source),
        };
        for attempt in 0..WRITE_ATTEMPTS {
            let mut current = match api.get(&account.name).await {
                Ok(current) => current,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(TxtError::AccountMissing(account.clone()));
                }
                Err(e) => return Err(write_error(e)),
            };
            let status = current.status.get_or_insert_with(Default::default);
            if status.subdomain.is_none() {
                return Err(TxtError::NotAssigned(account.clone()));
            }
            if !change(&mut status.txt) {
                return Ok(());
            }
            match api
                .replace_status(&account.name, &PostParams::default(), &current)
                .await
            {
                Ok(written) => {
                    // The watch is the index's only writer: wait for it to deliver this
                    // write, so this replica answers the value once the caller returns.
                    let version = written.metadata.resource_version.unwrap_or_default();
                    if !self.index.wait_for(account, &version, WATCH_DELIVERY).await {
                        warn!(%account, bound = ?WATCH_DELIVERY, "the account watch has not delivered a TXT change in time; it is stored and will be answered once the watch catches up");
                    }
                    return Ok(());
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(write_error(e)),
            }
        }
        Err(TxtError::Contended(account.clone()))
    }
}

/// Applies `changes` in order to `txt`, keeping at most `max` values (the newest);
/// whether anything changed.
fn apply(txt: &mut Vec<TxtValue>, changes: &[&Change], max: usize) -> bool {
    let before = txt.clone();
    for change in changes {
        match change {
            Change::Add(value) => {
                if !txt.iter().any(|t| &t.value == value) {
                    txt.push(TxtValue {
                        value: value.clone(),
                        updated_at: Time(Timestamp::now()),
                    });
                }
            }
            Change::Remove(value) => txt.retain(|t| &t.value != value),
        }
    }
    // Oldest first out; values added in one batch keep their order (a stable sort).
    txt.sort_by_key(|t| t.updated_at.0);
    while txt.len() > max {
        txt.remove(0);
    }
    *txt != before
}

/// 10 ms doubling to 320 ms, with jitter so concurrent writers spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(5);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % base.max(1);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(txt: &[TxtValue]) -> Vec<&str> {
        txt.iter().map(|t| t.value.as_str()).collect()
    }

    #[test]
    fn a_batch_applies_its_changes_in_order() {
        let mut txt = Vec::new();
        let changes = [
            Change::Add("a".into()),
            Change::Add("b".into()),
            Change::Add("a".into()),
            Change::Remove("b".into()),
            Change::Add("c".into()),
        ];
        let changes: Vec<&Change> = changes.iter().collect();
        assert!(apply(&mut txt, &changes, 16));
        assert_eq!(values(&txt), ["a", "c"]);
        assert!(
            !apply(&mut txt, &[&Change::Add("c".into())], 16),
            "no change"
        );
        assert!(
            !apply(&mut txt, &[&Change::Remove("x".into())], 16),
            "removing an absent value changes nothing"
        );
    }

    #[test]
    fn beyond_the_most_kept_the_oldest_go_first() {
        let mut txt = Vec::new();
        let changes: Vec<Change> = (0..5).map(|i| Change::Add(format!("v{i}"))).collect();
        let changes: Vec<&Change> = changes.iter().collect();
        assert!(apply(&mut txt, &changes, 3));
        assert_eq!(values(&txt), ["v2", "v3", "v4"]);
    }
}
