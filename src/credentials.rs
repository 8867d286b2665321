//! `kube-acme-dns credentials`: acme-dns API credentials for an AcmeDnsAccount made with
//! kubectl (or GitOps) rather than through `/register`. It makes a new username and key,
//! stores the username and the key's bcrypt hash in the account's credential Secret
//! (owned by the account, as `/register` does), and prints the key once, in the JSON a
//! client stores: the same one line `/register` answers with.

use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};

use crate::{
    api::AcmeDnsAccount,
    compat::{
        protocol::{new_key, register_answer},
        store::{ACCOUNT_LABEL, CREDENTIALS_LABEL, USERNAME_KEY, credential_secret},
    },
};

/// What the controller has made of an account, as far as a client is concerned.
enum Served {
    /// Served under this label.
    Under(String),
    /// Refused, for the reason in its Ready condition.
    Refused(String),
    /// Not reconciled yet.
    NotYet,
}

fn served(account: &AcmeDnsAccount) -> Served {
    let status = account.status.clone().unwrap_or_default();
    if let Some(subdomain) = status.subdomain {
        return Served::Under(subdomain.0);
    }
    // Only a verdict on the current spec counts.
    let refused = status.conditions.iter().find(|c| {
        c.type_ == "Ready"
            && c.status == "False"
            && matches!(c.reason.as_str(), "SubdomainTaken" | "SubdomainReserved")
            && c.observed_generation == account.metadata.generation
    });
    match refused {
        Some(condition) => Served::Refused(condition.message.clone()),
        None => Served::NotYet,
    }
}

#[derive(clap::Args, Debug)]
pub struct CredentialsArgs {
    /// The AcmeDnsAccount to make credentials for.
    pub account: String,

    /// The account's namespace. Defaults to the kubeconfig context's namespace, else
    /// `default`. The acme-dns API reads credentials only in the namespace it serves
    /// (`serve --api-namespace`, Helm `api.namespace`), so the account must live there.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,

    /// The zone kube-acme-dns serves (as `serve --zone`), for the `fulldomain` printed.
    #[arg(long, env = "KUBE_ACME_DNS_ZONE")]
    pub zone: String,

    /// Replace the account's credentials: the old key stops working.
    #[arg(long)]
    pub rotate: bool,

    /// bcrypt cost of the key's hash (acme-dns uses 10).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=16))]
    pub bcrypt_cost: u32,

    /// How long to wait for the controller to assign the account's subdomain.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub wait: u64,
}

/// Makes the credentials and prints the client's JSON on stdout.
pub async fn run(args: CredentialsArgs) -> anyhow::Result<()> {
    let client = crate::kube_client()
        .await
        .context("cannot reach the cluster: check KUBECONFIG and the current context")?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_string());
    let name = &args.account;
    let accounts: Api<AcmeDnsAccount> = Api::namespaced(client.clone(), &namespace);

    // The subdomain is the one the controller serves the account under; a client cannot
    // use credentials without it, so wait briefly for a new account.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait);
    let (account, subdomain) = loop {
        let account = accounts
            .get_opt(name)
            .await
            .with_context(|| format!("cannot read AcmeDnsAccount {namespace}/{name}"))?
            .with_context(|| {
                format!(
                    "there is no AcmeDnsAccount {namespace}/{name}: create it first \
                     (kubectl get acmedns -n {namespace} lists the existing ones)"
                )
            })?;
        match served(&account) {
            Served::Under(subdomain) => break (account, subdomain),
            Served::Refused(why) => bail!(
                "AcmeDnsAccount {namespace}/{name} is not served, so credentials would not \
                 work: {why}"
            ),
            Served::NotYet if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Served::NotYet => match account.spec.subdomain.clone() {
                // Pinned: that is the name it will be served under once the controller
                // gets to it.
                Some(pinned) => {
                    eprintln!(
                        "note: the controller has not confirmed subdomain {} of \
                         {namespace}/{name} yet; check that kube-acme-dns runs with the \
                         controller role and watches {namespace}",
                        pinned.0
                    );
                    break (account, pinned.0);
                }
                None => bail!(
                    "AcmeDnsAccount {namespace}/{name} has no subdomain after {} s: the \
                     controller assigns it. Check that kube-acme-dns runs with the controller \
                     role and watches {namespace} (kubectl describe acmedns -n {namespace} \
                     {name} shows its conditions and Events)",
                    args.wait
                ),
            },
        }
    };

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("{CREDENTIALS_LABEL}=true,{ACCOUNT_LABEL}={name}");
    let current = secrets
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("cannot list the credential Secrets of {namespace}/{name}"))?
        .items;
    if let Some(secret) = current.first().filter(|_| !args.rotate) {
        let username = secret
            .data
            .as_ref()
            .and_then(|d| d.get(USERNAME_KEY))
            .map(|u| String::from_utf8_lossy(&u.0).into_owned())
            .unwrap_or_default();
        bail!(
            "AcmeDnsAccount {namespace}/{name} already has credentials (Secret {namespace}/{}, \
             username {username}); pass --rotate to replace them (the old key stops working)",
            secret.name_any()
        );
    }

    let username = uuid::Uuid::new_v4().hyphenated().to_string();
    let key = new_key();
    let cost = args.bcrypt_cost;
    let key_hash = tokio::task::spawn_blocking({
        let key = key.clone();
        move || bcrypt::hash(key, cost)
    })
    .await?
    .context("hashing the new key")?;
    let secret = credential_secret(
        &namespace,
        name,
        account.uid().as_deref(),
        &username,
        &key_hash,
    );
    let secret_name = secret.name_any();
    match current.iter().find(|s| s.name_any() == secret_name) {
        // Replaced only if it is still the Secret just read (its resourceVersion).
        Some(old) => {
            let mut replacement = secret;
            replacement.metadata.resource_version = old.resource_version();
            secrets
                .replace(&secret_name, &PostParams::default(), &replacement)
                .await
                .with_context(|| format!("cannot replace Secret {namespace}/{secret_name}"))?;
        }
        None => {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .with_context(|| format!("cannot create Secret {namespace}/{secret_name}"))?;
        }
    }
    // Any other credential Secret of this account holds old credentials.
    for old in current.iter().filter(|s| s.name_any() != secret_name) {
        match secrets.delete(&old.name_any(), &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "the new credentials are stored, but the old Secret {namespace}/{} \
                         could not be deleted; delete it so its key stops working",
                        old.name_any()
                    )
                });
            }
        }
    }

    let allow_from: Vec<String> = account
        .spec
        .allow_from
        .iter()
        .map(|c| c.0.clone())
        .collect();
    println!(
        "{}",
        register_answer(
            &username,
            &key,
            &format!("{subdomain}.{}", args.zone.trim_end_matches('.')),
            &subdomain,
            &allow_from,
        )
    );
    Ok(())
}
