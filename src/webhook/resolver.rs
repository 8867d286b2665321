//! Which AcmeDnsAccount a challenge belongs to, read from the index alone: the
//! issuer's explicit `accountRef`, else the account whose `spec.domains` lists the
//! domain, else (cert-manager already followed the user's CNAME) the account served at
//! `resolvedFQDN`. A namespaced Issuer reaches only its own namespace unless widened.

use std::sync::Arc;

use serde::Deserialize;

use crate::{
    apiserver::payload::Challenge,
    index::{AccountIndex, AccountKey, Label},
};

/// What the issuer's `webhook.config` may say.
#[derive(Deserialize, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SolverConfig {
    #[serde(default)]
    pub account_ref: Option<AccountRef>,
}

#[derive(Deserialize, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccountRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(
        "invalid webhook config in the issuer: {0}; expected nothing, or {{\"accountRef\": {{\"name\": \"<account>\", \"namespace\": \"<namespace>\"}}}}"
    )]
    BadConfig(String),
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
}

pub struct AccountResolver {
    pub index: Arc<AccountIndex>,
    /// The zone accounts are served in, to recognise a followed CNAME.
    pub zone: String,
    /// Issuers whose challenges come from this namespace (ClusterIssuers: cert-manager's
    /// cluster resource namespace) may use accounts in any namespace.
    pub cluster_resource_namespace: String,
    /// Let every issuer use accounts in any namespace.
    pub cross_namespace: bool,
}

impl AccountResolver {
    /// The account for this challenge. An `accountRef` is returned as named, whether
    /// or not the account exists yet: the write that follows reports a missing one.
    pub fn resolve(&self, challenge: &Challenge) -> Result<AccountKey, ResolveError> {
        let config = parse_config(challenge.config.as_ref())?;
        let namespace = challenge.resource_namespace.as_str();
        let allowed = |account: &AccountKey| {
            self.cross_namespace
                || namespace == self.cluster_resource_namespace
                || *account.namespace == *namespace
        };
        if let Some(reference) = &config.account_ref {
            let account = AccountKey {
                namespace: reference.namespace.as_deref().unwrap_or(namespace).into(),
                name: reference.name.as_str().into(),
            };
            if !allowed(&account) {
                return Err(ResolveError::OtherNamespace {
                    namespace: namespace.to_string(),
                    account,
                });
            }
            return Ok(account);
        }

        let domain = challenge
            .dns_name
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let listed: Vec<AccountKey> = self
            .index
            .accounts_for_domain(&domain)
            .into_iter()
            .filter(|a| allowed(a))
            .collect();
        // Prefer the issuer's own namespace when an account there lists the domain.
        let own: Vec<&AccountKey> = listed
            .iter()
            .filter(|a| *a.namespace == *namespace)
            .collect();
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
                return Err(ResolveError::Ambiguous { domain, accounts });
            }
        }

        if let Some(label) = self.label_in_zone(&challenge.resolved_fqdn)
            && let Some(account) = self.index.account_for_label(&label)
            && allowed(&account)
        {
            return Ok(account);
        }
        Err(ResolveError::NoAccount {
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
}

pub fn parse_config(config: Option<&serde_json::Value>) -> Result<SolverConfig, ResolveError> {
    match config {
        None | Some(serde_json::Value::Null) => Ok(SolverConfig::default()),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| ResolveError::BadConfig(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{
        AcmeDnsAccount, AcmeDnsAccountSpec, AcmeDnsAccountStatus, DnsLabel, DomainName,
    };

    const ZONE: &str = "auth.example.test";
    const CLUSTER_NAMESPACE: &str = "cert-manager";

    fn account(namespace: &str, name: &str, subdomain: &str, domains: &[&str]) -> AcmeDnsAccount {
        let spec = AcmeDnsAccountSpec {
            domains: domains.iter().map(|d| DomainName(d.to_string())).collect(),
            ..Default::default()
        };
        let mut account = AcmeDnsAccount::new(name, spec);
        account.metadata.namespace = Some(namespace.into());
        account.status = Some(AcmeDnsAccountStatus {
            subdomain: Some(DnsLabel(subdomain.into())),
            ..Default::default()
        });
        account
    }

    fn resolver(accounts: &[AcmeDnsAccount]) -> AccountResolver {
        let index = Arc::new(AccountIndex::new(1));
        for account in accounts {
            index.apply(account);
        }
        AccountResolver {
            index,
            zone: ZONE.into(),
            cluster_resource_namespace: CLUSTER_NAMESPACE.into(),
            cross_namespace: false,
        }
    }

    fn challenge(namespace: &str, domain: &str) -> Challenge {
        Challenge {
            dns_name: domain.into(),
            key: "key".into(),
            resource_namespace: namespace.into(),
            resolved_fqdn: format!("_acme-challenge.{domain}."),
            ..Default::default()
        }
    }

    fn key(namespace: &str, name: &str) -> AccountKey {
        AccountKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn account_ref_names_the_account_in_the_issuers_namespace() {
        let resolver = resolver(&[]);
        let mut ch = challenge("team", "example.test");
        ch.config = Some(json!({"accountRef": {"name": "pinned"}}));
        assert_eq!(resolver.resolve(&ch).unwrap(), key("team", "pinned"));
    }

    #[test]
    fn account_ref_wins_over_a_domain_match() {
        let resolver = resolver(&[account("team", "listed", "aaa", &["example.test"])]);
        let mut ch = challenge("team", "example.test");
        ch.config = Some(json!({"accountRef": {"name": "pinned", "namespace": "team"}}));
        assert_eq!(resolver.resolve(&ch).unwrap(), key("team", "pinned"));
    }

    #[test]
    fn account_ref_to_another_namespace_is_refused_to_a_namespaced_issuer() {
        let resolver = resolver(&[account("other", "theirs", "aaa", &["example.test"])]);
        let mut ch = challenge("team", "example.test");
        ch.config = Some(json!({"accountRef": {"name": "theirs", "namespace": "other"}}));
        let err = resolver.resolve(&ch).unwrap_err().to_string();
        assert!(err.contains("own namespace"), "{err}");
        assert!(err.contains("other/theirs"), "{err}");
    }

    #[test]
    fn account_ref_to_another_namespace_is_allowed_when_widened() {
        let mut resolver = resolver(&[]);
        resolver.cross_namespace = true;
        let mut ch = challenge("team", "example.test");
        ch.config = Some(json!({"accountRef": {"name": "theirs", "namespace": "other"}}));
        assert_eq!(resolver.resolve(&ch).unwrap(), key("other", "theirs"));
    }

    #[test]
    fn the_account_listing_the_domain_is_found() {
        let resolver = resolver(&[
            account("team", "web", "aaa", &["example.test"]),
            account("team", "mail", "bbb", &["mail.example.test"]),
        ]);
        assert_eq!(
            resolver
                .resolve(&challenge("team", "Example.Test."))
                .unwrap(),
            key("team", "web")
        );
    }

    #[test]
    fn an_account_in_another_namespace_is_invisible_to_a_namespaced_issuer() {
        let resolver = resolver(&[account("other", "theirs", "aaa", &["example.test"])]);
        let err = resolver
            .resolve(&challenge("team", "example.test"))
            .unwrap_err();
        assert!(matches!(err, ResolveError::NoAccount { .. }), "{err}");
    }

    #[test]
    fn the_issuers_own_namespace_is_preferred_when_several_list_the_domain() {
        let mut resolver = resolver(&[
            account("other", "theirs", "aaa", &["example.test"]),
            account("team", "ours", "bbb", &["example.test"]),
        ]);
        resolver.cross_namespace = true;
        assert_eq!(
            resolver
                .resolve(&challenge("team", "example.test"))
                .unwrap(),
            key("team", "ours")
        );
    }

    #[test]
    fn two_accounts_listing_the_domain_is_an_error_naming_both() {
        let resolver = resolver(&[
            account("a", "first", "aaa", &["example.test"]),
            account("b", "second", "bbb", &["example.test"]),
        ]);
        let err = resolver
            .resolve(&challenge(CLUSTER_NAMESPACE, "example.test"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a/first") && err.contains("b/second"), "{err}");
        assert!(err.contains("accountRef"), "{err}");
    }

    #[test]
    fn a_followed_cname_finds_the_account_by_its_fqdn() {
        let resolver = resolver(&[account("team", "delegated", "d41d8cd9", &[])]);
        let mut ch = challenge("team", "unlisted.example.test");
        ch.resolved_fqdn = format!("D41D8CD9.{ZONE}.");
        assert_eq!(resolver.resolve(&ch).unwrap(), key("team", "delegated"));
    }

    #[test]
    fn a_followed_cname_into_another_namespace_is_refused() {
        let resolver = resolver(&[account("other", "delegated", "d41d8cd9", &[])]);
        let mut ch = challenge("team", "unlisted.example.test");
        ch.resolved_fqdn = format!("d41d8cd9.{ZONE}.");
        assert!(resolver.resolve(&ch).is_err());
    }

    #[test]
    fn a_name_deeper_in_the_zone_is_not_an_account() {
        let resolver = resolver(&[account("team", "delegated", "d41d8cd9", &[])]);
        let mut ch = challenge("team", "unlisted.example.test");
        ch.resolved_fqdn = format!("x.d41d8cd9.{ZONE}.");
        assert!(resolver.resolve(&ch).is_err());
    }

    #[test]
    fn a_cluster_issuer_reaches_accounts_in_every_namespace() {
        let resolver = resolver(&[
            account("team", "web", "aaa", &["example.test"]),
            account("other", "delegated", "d41d8cd9", &[]),
        ]);
        assert_eq!(
            resolver
                .resolve(&challenge(CLUSTER_NAMESPACE, "example.test"))
                .unwrap(),
            key("team", "web")
        );
        let mut ch = challenge(CLUSTER_NAMESPACE, "unlisted.example.test");
        ch.resolved_fqdn = format!("d41d8cd9.{ZONE}.");
        assert_eq!(resolver.resolve(&ch).unwrap(), key("other", "delegated"));
        ch.config = Some(json!({"accountRef": {"name": "any", "namespace": "elsewhere"}}));
        assert_eq!(resolver.resolve(&ch).unwrap(), key("elsewhere", "any"));
    }

    #[test]
    fn no_account_says_how_to_create_one() {
        let err = resolver(&[])
            .resolve(&challenge("team", "nobody.example.test"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nobody.example.test"), "{err}");
        assert!(err.contains("namespace team"), "{err}");
        assert!(err.contains("spec.domains"), "{err}");
        assert!(err.contains("accountRef"), "{err}");
    }

    #[test]
    fn config_may_be_absent_or_name_an_account() {
        assert_eq!(parse_config(None).unwrap(), SolverConfig::default());
        assert_eq!(
            parse_config(Some(&serde_json::Value::Null)).unwrap(),
            SolverConfig::default()
        );
        let config = parse_config(Some(
            &json!({"accountRef": {"name": "a", "namespace": "n"}}),
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
        let err = parse_config(Some(&json!({"acount": "typo"})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `acount`"), "{err}");
        assert!(err.contains("accountRef"), "{err}");
    }
}
