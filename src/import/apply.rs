//! Making one imported acme-dns account exist in the cluster: its AcmeDnsAccount and its
//! credential Secret, created when missing, left alone when already as the database says,
//! and a conflict (never overwritten) when the cluster holds something else under the
//! same name.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};

use super::record::Record;
use crate::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, DnsLabel},
    compat::{
        protocol::canonical_user,
        store::{
            ACCOUNT_LABEL, CREDENTIALS_LABEL, KEY_HASH_KEY, USERNAME_KEY, account_owner,
            credential_secret, credential_secret_name,
        },
    },
};

/// The AcmeDnsAccount an imported record becomes: named after its subdomain, as
/// `/register` names accounts, with the subdomain pinned.
pub fn account(namespace: &str, record: &Record) -> AcmeDnsAccount {
    let mut account = AcmeDnsAccount::new(
        &record.subdomain,
        AcmeDnsAccountSpec {
            subdomain: Some(DnsLabel(record.subdomain.clone())),
            allow_from: record.allow_from.clone(),
            ..Default::default()
        },
    );
    account.metadata.namespace = Some(namespace.to_string());
    account
}

/// What importing one record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Both objects created.
    Created { account: String, secret: String },
    /// The account was there (from an earlier run, or made by hand pinning the same
    /// subdomain); its Secret was created.
    SecretCreated { account: String, secret: String },
    /// Both were there as the database says; the Secret was missing its labels or owner
    /// (printed by `--dry-run` and applied with kubectl) and now has them.
    Adopted { account: String, secret: String },
    /// Both were there as the database says.
    Unchanged { account: String, secret: String },
}

impl Outcome {
    pub fn changed(&self) -> bool {
        !matches!(self, Outcome::Unchanged { .. })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Created { account, secret } => {
                write!(f, "created AcmeDnsAccount {account} and Secret {secret}")
            }
            Outcome::SecretCreated { account, secret } => write!(
                f,
                "created Secret {secret} for the existing AcmeDnsAccount {account}"
            ),
            Outcome::Adopted { account, secret } => write!(
                f,
                "unchanged AcmeDnsAccount {account}; Secret {secret} is now labelled for and \
                 owned by it"
            ),
            Outcome::Unchanged { account, secret } => {
                write!(f, "unchanged AcmeDnsAccount {account} and Secret {secret}")
            }
        }
    }
}

/// Why one record could not be imported; nothing of it was overwritten.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "AcmeDnsAccount {account} exists but is served under subdomain {existing}, not \
         {wanted}; it is left as it is. Rename or delete it, then import again"
    )]
    AccountConflict {
        account: String,
        existing: String,
        wanted: String,
    },
    #[error(
        "Secret {secret} holds username {existing}, not the database's {wanted}: the account's \
         credentials were replaced since (kube-acme-dns credentials --rotate?) or the Secret is \
         someone else's. It is left as it is; delete it and import again to bring back the \
         database's credentials"
    )]
    UsernameConflict {
        secret: String,
        existing: String,
        wanted: String,
    },
    #[error(
        "Secret {secret} holds another key for username {username} than the database; it is \
         left as it is. Delete it and import again to bring back the database's key"
    )]
    KeyConflict { secret: String, username: String },
    #[error(
        "namespace {0} does not exist: create it (kubectl create namespace {0}) or pass the \
         --namespace the acme-dns API serves"
    )]
    NoNamespace(String),
    #[error("{what}: {reason}")]
    Api { what: String, reason: String },
}

fn api_error(what: String, error: kube::Error) -> ImportError {
    let reason = match &error {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{}; the import needs get, list, create and patch on acmednsaccounts and secrets \
             in this namespace",
            status.message
        ),
        kube::Error::Api(status) if status.code == 404 && status.reason == "NotFound" => {
            match status.details.as_ref().map(|d| d.kind.as_str()) {
                Some("namespaces") => {
                    return ImportError::NoNamespace(
                        status
                            .details
                            .as_ref()
                            .map(|d| d.name.clone())
                            .unwrap_or_default(),
                    );
                }
                _ => status.message.clone(),
            }
        }
        _ => error.to_string(),
    };
    ImportError::Api { what, reason }
}

/// The accounts already in the namespace, to find one that serves a subdomain.
pub async fn existing_accounts(
    client: &Client,
    namespace: &str,
) -> Result<Vec<AcmeDnsAccount>, ImportError> {
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), namespace);
    match accounts.list(&Default::default()).await {
        Ok(list) => Ok(list.items),
        // The resource itself is unknown: listing never answers 404 otherwise.
        Err(kube::Error::Api(status)) if status.code == 404 => Err(ImportError::Api {
            what: format!("cannot list AcmeDnsAccounts in {namespace}"),
            reason: "the AcmeDnsAccount CRD is not installed: `kube-acme-dns crd | kubectl \
                     apply -f -` (or install the Helm chart) first"
                .to_string(),
        }),
        Err(e) => Err(api_error(
            format!("cannot list AcmeDnsAccounts in {namespace}"),
            e,
        )),
    }
}

fn serves(account: &AcmeDnsAccount, subdomain: &str) -> bool {
    let pinned = account.spec.subdomain.as_ref().map(|s| s.0.as_str());
    let assigned = account
        .status
        .as_ref()
        .and_then(|s| s.subdomain.as_ref())
        .map(|s| s.0.as_str());
    pinned == Some(subdomain) || (pinned.is_none() && assigned == Some(subdomain))
}

/// Imports one record into `namespace`. `existing` is the namespace's accounts, and gets
/// the account created here.
pub async fn import(
    client: &Client,
    namespace: &str,
    existing: &mut Vec<AcmeDnsAccount>,
    record: &Record,
) -> Result<Outcome, ImportError> {
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), namespace);
    // An account that already serves this subdomain (an earlier import, or one made by
    // hand pinning it as the migration guide said) gets the credentials; otherwise a new
    // one named after the subdomain, unless that name is taken by another subdomain.
    let (target, account_created) = match existing.iter().find(|a| serves(a, &record.subdomain)) {
        Some(found) => (found.clone(), false),
        None => {
            if let Some(other) = existing.iter().find(|a| a.name_any() == record.subdomain) {
                let existing = other
                    .spec
                    .subdomain
                    .as_ref()
                    .or(other.status.as_ref().and_then(|s| s.subdomain.as_ref()))
                    .map_or("(none assigned yet)".to_string(), |s| s.0.clone());
                return Err(ImportError::AccountConflict {
                    account: format!("{namespace}/{}", other.name_any()),
                    existing,
                    wanted: record.subdomain.clone(),
                });
            }
            let created = accounts
                .create(&PostParams::default(), &account(namespace, record))
                .await
                .map_err(|e| {
                    api_error(
                        format!(
                            "cannot create AcmeDnsAccount {namespace}/{}",
                            record.subdomain
                        ),
                        e,
                    )
                })?;
            existing.push(created.clone());
            (created, true)
        }
    };
    let account_name = target.name_any();
    let account_ref = format!("{namespace}/{account_name}");
    let secret_name = credential_secret_name(&account_name);
    let secret_ref = format!("{namespace}/{secret_name}");
    let uid = target.uid();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let current = secrets
        .get_opt(&secret_name)
        .await
        .map_err(|e| api_error(format!("cannot read Secret {secret_ref}"), e))?;
    let Some(current) = current else {
        let secret = credential_secret(
            namespace,
            &account_name,
            uid.as_deref(),
            &record.username,
            &record.key_hash,
        );
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| api_error(format!("cannot create Secret {secret_ref}"), e))?;
        return Ok(if account_created {
            Outcome::Created {
                account: account_ref,
                secret: secret_ref,
            }
        } else {
            Outcome::SecretCreated {
                account: account_ref,
                secret: secret_ref,
            }
        });
    };

    let data = current.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .unwrap_or_default()
    };
    let username = text(USERNAME_KEY);
    if canonical_user(&username).as_deref() != Some(record.username.as_str()) {
        return Err(ImportError::UsernameConflict {
            secret: secret_ref,
            existing: username,
            wanted: record.username.clone(),
        });
    }
    if text(KEY_HASH_KEY) != record.key_hash {
        return Err(ImportError::KeyConflict {
            secret: secret_ref,
            username: record.username.clone(),
        });
    }

    let labels = current.labels();
    let labelled = labels.get(CREDENTIALS_LABEL).map(String::as_str) == Some("true")
        && labels.get(ACCOUNT_LABEL) == Some(&account_name);
    let owned = uid
        .as_ref()
        .is_none_or(|uid| current.owner_references().iter().any(|o| &o.uid == uid));
    if labelled && owned {
        return Ok(Outcome::Unchanged {
            account: account_ref,
            secret: secret_ref,
        });
    }
    let mut owners = current.owner_references().to_vec();
    if let Some(uid) = uid.as_ref().filter(|_| !owned) {
        owners.push(account_owner(&account_name, uid));
    }
    let patch = serde_json::json!({
        "metadata": {
            "labels": { CREDENTIALS_LABEL: "true", ACCOUNT_LABEL: account_name },
            "ownerReferences": owners,
            // Only if the Secret is still the one just read.
            "resourceVersion": current.resource_version(),
        }
    });
    secrets
        .patch(&secret_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| api_error(format!("cannot label and own Secret {secret_ref}"), e))?;
    Ok(Outcome::Adopted {
        account: account_ref,
        secret: secret_ref,
    })
}
