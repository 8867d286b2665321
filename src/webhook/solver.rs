//! What Present and CleanUp do: find the account a challenge belongs to, and add or
//! remove exactly its key in the account's `status.txt`.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, Client, api::PostParams};
use tracing::{info, warn};

use super::payload::{ChallengeRequest, SolverConfig};
use crate::{
    api::{AcmeDnsAccount, TxtValue},
    index::{AccountIndex, AccountKey, Label},
};

#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    #[error(
        "invalid webhook config in the issuer: {0}; expected nothing, or {{\"accountRef\": {{\"name\": \"<account>\", \"namespace\": \"<namespace>\"}}}}"
    )]
    BadConfig(String),
    #[error("unknown action {0:?}: cert-manager sends Present or CleanUp")]
    UnknownAction(String),
    #[error(
        "the challenge has no key; cert-manager always sends one, so this caller is not cert-manager"
    )]
    NoKey,
    #[error(
        "no AcmeDnsAccount answers for {domain} in namespace {namespace}: create one with `spec.domains: [{domain}]` there, or point the issuer's webhook config at one with accountRef"
    )]
    NoAccount { domain: String, namespace: String },
    #[error(
        "several AcmeDnsAccounts list {domain} ({accounts}): a domain belongs to one account; remove it from all but one, or set accountRef in the issuer's webhook config"
    )]
    Ambiguous { domain: String, accounts: String },
    #[error(
        "issuers in namespace {namespace} may only use AcmeDnsAccounts in their own namespace, not {account}: use a ClusterIssuer, or move the account"
    )]
    OtherNamespace {
        namespace: String,
        account: AccountKey,
    },
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

pub struct Solver {
    pub client: Client,
    pub index: Arc<AccountIndex>,
    pub zone: String,
    /// Issuers whose challenges come from this namespace (ClusterIssuers: cert-manager's
    /// cluster resource namespace) may use accounts in any namespace.
    pub cluster_resource_namespace: String,
    /// Let every issuer use accounts in any namespace.
    pub cross_namespace: bool,
    pub max_txt_values: usize,
}

/// Attempts at a read-modify-write before giving up to cert-manager's own retry.
const WRITE_ATTEMPTS: u32 = 12;
/// How long a write waits for the account watch to deliver it. The watch normally takes
/// milliseconds; past this the write has still succeeded, and cert-manager's own DNS
/// check waits for the value.
const WATCH_DELIVERY: Duration = Duration::from_secs(5);

impl Solver {
    pub async fn handle(&self, request: &ChallengeRequest) -> Result<(), SolverError> {
        let config = parse_config(request.config.as_ref())?;
        if request.key.is_empty() {
            return Err(SolverError::NoKey);
        }
        match request.action.as_str() {
            "Present" => {
                let account = self.find_account(request, &config)?;
                self.present(&account, &request.key).await
            }
            "CleanUp" => {
                let account = self.find_account(request, &config)?;
                self.clean_up(&account, &request.key).await
            }
            other => Err(SolverError::UnknownAction(other.to_string())),
        }
    }

    /// Adds the key to the account's TXT values; nothing changes if it is there already.
    pub async fn present(&self, account: &AccountKey, key: &str) -> Result<(), SolverError> {
        let max = self.max_txt_values.max(1);
        self.update_txt(account, |txt| {
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
        info!(%account, "presented a TXT value");
        Ok(())
    }

    /// Removes exactly this key, leaving every other value in place.
    pub async fn clean_up(&self, account: &AccountKey, key: &str) -> Result<(), SolverError> {
        self.update_txt(account, |txt| {
            let before = txt.len();
            txt.retain(|t| t.value != key);
            txt.len() != before
        })
        .await?;
        info!(%account, "cleaned up a TXT value");
        Ok(())
    }

    /// Explicit `accountRef`, else the account whose `spec.domains` lists the domain,
    /// else (the CNAME already followed) the account served at `resolvedFQDN`.
    pub fn find_account(
        &self,
        request: &ChallengeRequest,
        config: &SolverConfig,
    ) -> Result<AccountKey, SolverError> {
        let namespace = request.resource_namespace.as_str();
        let allowed = |account: &AccountKey| {
            self.cross_namespace
                || namespace == self.cluster_resource_namespace
                || account.namespace == namespace
        };
        if let Some(reference) = &config.account_ref {
            let account = AccountKey {
                namespace: reference
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_string()),
                name: reference.name.clone(),
            };
            if !allowed(&account) {
                return Err(SolverError::OtherNamespace {
                    namespace: namespace.to_string(),
                    account,
                });
            }
            return Ok(account);
        }

        let domain = request.dns_name.trim_end_matches('.').to_ascii_lowercase();
        let listed: Vec<AccountKey> = self
            .index
            .accounts_for_domain(&domain)
            .into_iter()
            .filter(|a| allowed(a))
            .collect();
        // Prefer the issuer's own namespace when an account there lists the domain.
        let own: Vec<&AccountKey> = listed.iter().filter(|a| a.namespace == namespace).collect();
        match (own.as_slice(), listed.as_slice()) {
            ([one], _) => return Ok((*one).clone()),
            ([], [one]) => return Ok(one.clone()),
            ([], []) => {}
            _ => {
                let accounts = listed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(SolverError::Ambiguous { domain, accounts });
            }
        }

        if let Some(label) = self.label_in_zone(&request.resolved_fqdn)
            && let Some(account) = self.index.account_for_label(&label)
            && allowed(&account)
        {
            return Ok(account);
        }
        Err(SolverError::NoAccount {
            domain,
            namespace: namespace.to_string(),
        })
    }

    /// `<label>.<zone>.` → label, when cert-manager followed the user's CNAME to us.
    fn label_in_zone(&self, fqdn: &str) -> Option<Label> {
        let fqdn = fqdn.trim_end_matches('.').to_ascii_lowercase();
        let zone = self.zone.trim_end_matches('.').to_ascii_lowercase();
        let label = fqdn.strip_suffix(&zone)?.strip_suffix('.')?;
        if label.contains('.') {
            return None;
        }
        Label::new(label.as_bytes())
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

pub fn parse_config(config: Option<&serde_json::Value>) -> Result<SolverConfig, SolverError> {
    match config {
        None | Some(serde_json::Value::Null) => Ok(SolverConfig::default()),
        Some(value) => {
            serde_json::from_value(value.clone()).map_err(|e| SolverError::BadConfig(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_may_be_absent_or_name_an_account() {
        assert_eq!(parse_config(None).unwrap(), SolverConfig::default());
        assert_eq!(
            parse_config(Some(&serde_json::Value::Null)).unwrap(),
            SolverConfig::default()
        );
        let config = parse_config(Some(
            &serde_json::json!({"accountRef": {"name": "a", "namespace": "n"}}),
        ))
        .unwrap();
        let reference = config.account_ref.unwrap();
        assert_eq!(
            (reference.name.as_str(), reference.namespace.as_deref()),
            ("a", Some("n"))
        );
    }

    #[test]
    fn config_with_unknown_fields_says_what_is_expected() {
        let err = parse_config(Some(&serde_json::json!({"acount": "typo"})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `acount`"), "{err}");
        assert!(err.contains("accountRef"), "{err}");
    }
}
