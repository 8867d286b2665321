//! The acme-dns API's accounts are AcmeDnsAccounts. `/register` creates one, with its
//! subdomain pinned at once so the answer can carry it, and a Secret owned by it (so
//! deleted with it) holding the username and the bcrypt hash of the key. Credentials are
//! looked up in memory: a watch on those Secrets, and the process's account index.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use tracing::warn;

use super::{
    protocol::{RegisterRequest, parse_cidr},
    server::{AccountStore, Credentials, Registered},
};
use crate::{
    api::{AcmeDnsAccount, AcmeDnsAccountSpec, Cidr, DnsLabel},
    index::{AccountIndex, AccountKey},
    txt::TxtWriter,
};

/// Label on credential Secrets, so the watch reads only those.
pub const CREDENTIALS_LABEL: &str = "acmedns.io/credentials";
/// Secret keys.
pub const USERNAME_KEY: &str = "username";
pub const KEY_HASH_KEY: &str = "key-hash";
/// The account a credential Secret belongs to (also its owner).
pub const ACCOUNT_LABEL: &str = "acmedns.io/account";
/// How long `/register` waits for the watches to deliver the new account.
const WATCH_DELIVERY: Duration = Duration::from_secs(5);

/// The name of an account's credential Secret.
pub fn credential_secret_name(account_name: &str) -> String {
    format!("{account_name}-credentials")
}

/// The owner reference that makes an account's credential Secret go with the account.
pub fn account_owner(account_name: &str, account_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: AcmeDnsAccount::api_version(&()).into_owned(),
        kind: AcmeDnsAccount::kind(&()).into_owned(),
        name: account_name.to_string(),
        uid: account_uid.to_string(),
        ..Default::default()
    }
}

/// The credential Secret of an account, as `/register`, `import-acme-dns` and
/// `credentials` write it: the username and the bcrypt hash of the key, labelled for the
/// credential watch, owned by the account when its uid is known (`None` only for
/// manifests printed before the account exists).
pub fn credential_secret(
    namespace: &str,
    account_name: &str,
    account_uid: Option<&str>,
    username: &str,
    key_hash: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(credential_secret_name(account_name)),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [
                    (CREDENTIALS_LABEL.to_string(), "true".to_string()),
                    (ACCOUNT_LABEL.to_string(), account_name.to_string()),
                ]
                .into(),
            ),
            owner_references: account_uid.map(|uid| vec![account_owner(account_name, uid)]),
            ..Default::default()
        },
        data: Some(
            [
                (
                    USERNAME_KEY.to_string(),
                    ByteString(username.as_bytes().to_vec()),
                ),
                (
                    KEY_HASH_KEY.to_string(),
                    ByteString(key_hash.as_bytes().to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// Username → (account, bcrypt hash), from the credential Secrets.
#[derive(Clone, Default)]
pub struct CredentialIndex {
    entries: Arc<std::sync::RwLock<HashMap<String, (AccountKey, String)>>>,
    /// Secret → username, to drop the entry when the Secret goes.
    secrets: Arc<std::sync::RwLock<HashMap<AccountKey, String>>>,
}

impl CredentialIndex {
    fn apply(&self, secret: &Secret) {
        let key = AccountKey {
            namespace: secret.namespace().unwrap_or_default().into(),
            name: secret.name_any().into(),
        };
        self.delete(&key);
        let data = secret.data.clone().unwrap_or_default();
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
                .map(|s| s.trim().to_string())
        };
        let (Some(username), Some(hash), Some(account)) = (
            text(USERNAME_KEY).and_then(|u| super::protocol::canonical_user(&u)),
            text(KEY_HASH_KEY),
            secret.labels().get(ACCOUNT_LABEL).cloned(),
        ) else {
            warn!(secret = %key, "ignoring a credential Secret without {USERNAME_KEY}, {KEY_HASH_KEY} and the {ACCOUNT_LABEL} label");
            return;
        };
        let account = AccountKey {
            namespace: key.namespace.clone(),
            name: account.into(),
        };
        self.entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(username.clone(), (account, hash));
        self.secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, username);
    }

    fn delete(&self, secret: &AccountKey) {
        let gone = self
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(secret);
        if let Some(username) = gone {
            self.entries
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&username);
        }
    }

    fn get(&self, username: &str) -> Option<(AccountKey, String)> {
        self.entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(username)
            .cloned()
    }

    /// Keeps the index current from the credential Secrets in `namespace`. Never ends.
    pub async fn watch(self, secrets: Api<Secret>) {
        let config = watcher::Config::default().labels(&format!("{CREDENTIALS_LABEL}=true"));
        let mut events = watcher(secrets, config).default_backoff().boxed();
        let mut relist = Vec::new();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(secret)) => self.apply(&secret),
                Ok(watcher::Event::Delete(secret)) => self.delete(&AccountKey {
                    namespace: secret.namespace().unwrap_or_default().into(),
                    name: secret.name_any().into(),
                }),
                Ok(watcher::Event::Init) => relist.clear(),
                Ok(watcher::Event::InitApply(secret)) => relist.push(secret),
                Ok(watcher::Event::InitDone) => {
                    let fresh = CredentialIndex::default();
                    for secret in &relist {
                        fresh.apply(secret);
                    }
                    let (entries, secrets) = (
                        std::mem::take(
                            &mut *fresh.entries.write().unwrap_or_else(|p| p.into_inner()),
                        ),
                        std::mem::take(
                            &mut *fresh.secrets.write().unwrap_or_else(|p| p.into_inner()),
                        ),
                    );
                    *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
                    *self.secrets.write().unwrap_or_else(|p| p.into_inner()) = secrets;
                    relist = Vec::new();
                }
                Err(e) => warn!(error = %e, "watching credential Secrets failed; retrying"),
            }
        }
    }
}

/// Accounts in the API server, credentials from memory.
pub struct KubeStore {
    pub client: Client,
    /// Where `/register` creates accounts and their Secrets.
    pub namespace: String,
    /// The zone accounts are served under.
    pub zone: String,
    /// The process's account index, which the account watch keeps.
    pub index: Arc<AccountIndex>,
    pub credentials: CredentialIndex,
    pub txt: TxtWriter,
}

impl AccountStore for KubeStore {
    fn credentials(&self, username: &str) -> Option<Credentials> {
        let (account, key_hash) = self.credentials.get(username)?;
        let view = self.index.api_view(&account)?;
        let allow_from = view
            .allow_from
            .iter()
            .filter_map(|c| parse_cidr(c))
            .collect();
        Some(Credentials {
            account,
            subdomain: view.subdomain,
            key_hash,
            allow_from,
        })
    }

    async fn register(
        &self,
        username: &str,
        key_hash: &str,
        request: &RegisterRequest,
    ) -> Result<Registered, String> {
        let subdomain = uuid::Uuid::new_v4().hyphenated().to_string();
        let spec = AcmeDnsAccountSpec {
            subdomain: Some(DnsLabel(subdomain.clone())),
            // Stored as networks: the CRD accepts a CIDR only without host bits set.
            allow_from: request
                .allow_from
                .iter()
                .map(|net| Cidr(net.trunc().to_string()))
                .collect(),
            ..Default::default()
        };
        let mut account = AcmeDnsAccount::new(&subdomain, spec);
        account.metadata.namespace = Some(self.namespace.clone());
        let accounts: Api<AcmeDnsAccount> = Api::namespaced(self.client.clone(), &self.namespace);
        let created = accounts
            .create(&PostParams::default(), &account)
            .await
            .map_err(|e| {
                format!(
                    "cannot create AcmeDnsAccount {}/{subdomain}: {e}",
                    self.namespace
                )
            })?;

        let secret = credential_secret(
            &self.namespace,
            &created.name_any(),
            created.uid().as_deref(),
            username,
            key_hash,
        );
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        if let Err(e) = secrets.create(&PostParams::default(), &secret).await {
            // Nothing half-made is left behind: without credentials the account is useless.
            let _ = accounts
                .delete(&created.name_any(), &Default::default())
                .await;
            return Err(format!(
                "cannot create the credential Secret for {}/{subdomain}: {e}",
                self.namespace
            ));
        }
        // Clients may update right after registering: answer once this replica's
        // watches know the account and its credentials (normally milliseconds).
        let deadline = tokio::time::Instant::now() + WATCH_DELIVERY;
        while self.credentials(username).is_none() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Registered {
            fulldomain: format!("{subdomain}.{}", self.zone.trim_end_matches('.')),
            subdomain,
        })
    }

    async fn update(&self, account: &AccountKey, txt: &str) -> Result<(), String> {
        self.txt.add(account, txt).await.map_err(|e| e.to_string())
    }

    async fn deregister(&self, credentials: &Credentials) -> Result<(), String> {
        let account = &credentials.account;
        let accounts: Api<AcmeDnsAccount> =
            Api::namespaced(self.client.clone(), &account.namespace);
        match accounts.delete(&account.name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(format!("cannot delete AcmeDnsAccount {account}: {e}")),
        }
        // The Secret is owned by the account, so the garbage collector removes it too;
        // deleting it here makes the credentials stop working now, not eventually.
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &account.namespace);
        let selector = format!("{CREDENTIALS_LABEL}=true,{ACCOUNT_LABEL}={}", account.name);
        let owned = secrets
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("cannot list the credentials of {account}: {e}"))?;
        for secret in owned {
            match secrets
                .delete(&secret.name_any(), &Default::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(format!(
                        "cannot delete the credential Secret {}/{}: {e}",
                        account.namespace,
                        secret.name_any()
                    ));
                }
            }
        }
        Ok(())
    }
}
