//! What Present and CleanUp do: find the account a challenge belongs to, and add or
//! remove exactly its key in the account's `status.txt`.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

use super::resolver::{AccountResolver, ResolveError};
use crate::{
    api::{AcmeDnsAccount, TxtValue},
    apiserver::{ChallengeSolver, payload::Challenge},
    index::{AccountIndex, AccountKey},
};

#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(
        "the challenge has no key; cert-manager always sends one, so this caller is not cert-manager"
    )]
    NoKey,
    #[error(
        "AcmeDnsAccount {0} does not exist: create it, or fix accountRef in the issuer's webhook config"
    )]
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
    #[error("AcmeDnsAccount {0} kept changing under us; cert-manager will retry")]
    Contended(AccountKey),
}

/// The acme-dns solver: TXT values live in the account's status, written with
/// optimistic concurrency.
pub struct Solver {
    pub client: Client,
    pub index: Arc<AccountIndex>,
    pub resolver: AccountResolver,
    pub max_txt_values: usize,
}

/// Attempts at a read-modify-write before giving up to cert-manager's own retry.
const WRITE_ATTEMPTS: u32 = 12;
/// How long a write waits for the account watch to deliver it. The watch normally takes
/// milliseconds; past this the write has still succeeded, and cert-manager's own DNS
/// check waits for the value.
const WATCH_DELIVERY: Duration = Duration::from_secs(5);

impl ChallengeSolver for Solver {
    type Error = SolverError;

    /// Adds the key to the account's TXT values; nothing changes if it is there already.
    async fn present(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let account = self.account_for(challenge)?;
        let key = challenge.key.as_str();
        let max = self.max_txt_values.max(1);
        self.update_txt(&account, |txt| {
            if txt.iter().any(|t| t.value == key) {
                return false;
            }
            txt.push(TxtValue {
                value: key.to_string(),
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
        .await?;
        info!(%account, domain = %challenge.dns_name, "presented a TXT value");
        Ok(())
    }

    /// Removes exactly this key, leaving every other value in place.
    async fn clean_up(&self, challenge: &Challenge) -> Result<(), SolverError> {
        let account = self.account_for(challenge)?;
        let key = challenge.key.as_str();
        self.update_txt(&account, |txt| {
            let before = txt.len();
            txt.retain(|t| t.value != key);
            txt.len() != before
        })
        .await?;
        info!(%account, domain = %challenge.dns_name, "cleaned up a TXT value");
        Ok(())
    }
}

impl Solver {
    fn account_for(&self, challenge: &Challenge) -> Result<AccountKey, SolverError> {
        if challenge.key.is_empty() {
            return Err(SolverError::NoKey);
        }
        Ok(self.resolver.resolve(challenge)?)
    }

    /// Read, change, write with the resourceVersion read, and retry on conflict, so
    /// concurrent Presents on one account (a wildcard and its apex) all land. Returns
    /// once this replica's index holds the write.
    async fn update_txt(
        &self,
        account: &AccountKey,
        change: impl Fn(&mut Vec<TxtValue>) -> bool,
    ) -> Result<(), SolverError> {
        let api: Api<AcmeDnsAccount> = Api::namespaced(self.client.clone(), &account.namespace);
        let write_error = |source| SolverError::Write {
            account: account.clone(),
            source,
        };
        for attempt in 0..WRITE_ATTEMPTS {
            let mut current = match api.get(&account.name).await {
                Ok(current) => current,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(SolverError::AccountMissing(account.clone()));
                }
                Err(e) => return Err(write_error(e)),
            };
            let status = current.status.get_or_insert_with(Default::default);
            if status.subdomain.is_none() {
                return Err(SolverError::NotAssigned(account.clone()));
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
                    // write, so this replica answers the value once Present returns.
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
        Err(SolverError::Contended(account.clone()))
    }
}

/// 10 ms doubling to 320 ms, with jitter so concurrent writers spread out.
fn backoff(attempt: u32) -> Duration {
    let base = 10u64 << attempt.min(5);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % base.max(1);
    Duration::from_millis(base + jitter)
}
