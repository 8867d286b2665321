//! Writing an account's TXT values (`status.txt`), for every writer: the webhook's
//! Present and CleanUp, and the acme-dns API's `/update`. Read, change, write with the
//! resourceVersion read, retrying on conflict, so concurrent writers all land; then wait
//! until this replica's index (fed only by the account watch) holds the write, so the
//! caller can promise the value is answered.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, api::PostParams};
use tracing::warn;

use crate::{
    api::{AcmeDnsAccount, TxtValue},
    index::{AccountIndex, AccountKey},
};

#[derive(Debug, thiserror::Error)]
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
        source: kube::Error,
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

pub struct TxtWriter {
    pub client: Client,
    pub index: Arc<AccountIndex>,
    /// Most values kept per account; the oldest is dropped beyond it.
    pub max_values: usize,
}

impl TxtWriter {
    /// Adds `value` as the newest; nothing changes if it is there already.
    pub async fn add(&self, account: &AccountKey, value: &str) -> Result<(), TxtError> {
        let max = self.max_values.max(1);
        self.update(account, |txt| {
            if txt.iter().any(|t| t.value == value) {
                return false;
            }
            txt.push(TxtValue {
                value: value.to_string(),
                updated_at: Time(Timestamp::now()),
            });
            // Oldest first out: acme-dns keeps only two, which breaks as soon as two
            // certificates cover one name; we keep `max`.
            txt.sort_by_key(|t| t.updated_at.0);
            while txt.len() > max {
                txt.remove(0);
            }
            true
        })
        .await
    }

    /// Removes exactly `value`, leaving every other value in place.
    pub async fn remove(&self, account: &AccountKey, value: &str) -> Result<(), TxtError> {
        self.update(account, |txt| {
            let before = txt.len();
            txt.retain(|t| t.value != value);
            txt.len() != before
        })
        .await
    }

    async fn update(
        &self,
        account: &AccountKey,
        change: impl Fn(&mut Vec<TxtValue>) -> bool,
    ) -> Result<(), TxtError> {
        let api: Api<AcmeDnsAccount> = Api::namespaced(self.client.clone(), &account.namespace);
        let write_error = |source| TxtError::Write {
            account: account.clone(),
            source,
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

/// 10 ms doubling to 320 ms, with jitter so concurrent writers spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(5);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % base.max(1);
    Duration::from_millis(base + jitter)
}
