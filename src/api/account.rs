//! The `AcmeDnsAccount` custom resource: what replaces acme-dns's registration database.
//!
//! The spec is what the user asks for (which domains may be answered, an optional pinned
//! label, who may call `/update`); the status is what the system has made of it (the
//! label and FQDN assigned, the CNAMEs to publish, the TXT values being served). TXT
//! values live in status so only principals allowed to patch `acmednsaccounts/status`
//! can change what the DNS server answers.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Most domains one account may answer for. Enough for a certificate with many names;
/// small enough that CEL rules stay within the API server's cost budget.
pub const MAX_DOMAINS: usize = 100;
/// Most CIDRs in `spec.allowFrom`.
pub const MAX_ALLOW_FROM: usize = 32;
/// Most TXT values kept at once. acme-dns keeps two, which breaks as soon as more than
/// one certificate covers a name; the configured limit evicts the oldest below this.
pub const MAX_TXT_VALUES: usize = 64;

/// What the user asks for: the domains the account may answer for, an optional pinned
/// label, and who may call the acme-dns compatible `/update`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "acmedns.io",
    version = "v1alpha1",
    kind = "AcmeDnsAccount",
    plural = "acmednsaccounts",
    shortname = "acmedns",
    namespaced,
    doc = "An account that may answer ACME DNS-01 challenges for a set of domains. Publish the records listed in status.cnames in your DNS zone once; from then on challenges for those domains are answered by kube-acme-dns, and nothing in the cluster needs credentials for your zone.",
    status = "AcmeDnsAccountStatus",
    printcolumn = r#"{"name":"FQDN","type":"string","jsonPath":".status.fqdn","description":"Name the _acme-challenge CNAMEs must point at"}"#,
    printcolumn = r#"{"name":"Delegated","type":"string","jsonPath":".status.conditions[?(@.type==\"Delegated\")].status","description":"Whether every domain's _acme-challenge CNAME points here"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AcmeDnsAccountSpec {
    /// Domains this account may answer challenges for. `example.com` covers the
    /// challenge name `_acme-challenge.example.com`, which serves certificates for both
    /// `example.com` and `*.example.com`. Each name may belong to one account only.
    /// Accounts created through the acme-dns `/register` API start with none.
    #[serde(default)]
    #[schemars(length(max = 100), extend("x-kubernetes-list-type" = "set"))]
    pub domains: Vec<DomainName>,

    /// Pins the DNS label this account is served under (`<subdomain>.<zone>`). Leave it
    /// unset to get a random UUID. Set it to an existing acme-dns account's subdomain to
    /// keep the CNAMEs already published working after a migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<DnsLabel>,

    /// Networks (CIDR) allowed to call the acme-dns compatible `/update` endpoint for this
    /// account, like acme-dns's `allowfrom`. Empty means any address. Does not affect the
    /// cert-manager webhook, which is authorised by Kubernetes RBAC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub allow_from: Vec<Cidr>,
}

/// What the system has made of an account: the name it is served under, the records
/// the user must publish, and the TXT values currently answered.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeDnsAccountStatus {
    /// The DNS label assigned to this account, unique in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<DnsLabel>,

    /// The fully qualified name TXT values are served at (`<subdomain>.<zone>.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub fqdn: Option<String>,

    /// The records to publish in your own DNS zone, one per domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub cnames: Vec<CnameRecord>,

    /// The TXT values currently served at `fqdn`, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub txt: Vec<TxtValue>,

    /// `Ready`: the account is assigned and served. `Delegated`: every domain's
    /// `_acme-challenge` name resolves to `fqdn` through a CNAME.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"])
    )]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One record to publish in the user's DNS zone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct CnameRecord {
    /// The owner name, e.g. `_acme-challenge.example.com.`.
    #[schemars(length(max = 255))]
    pub name: String,
    /// What it must point at: this account's `fqdn`.
    #[schemars(length(max = 255))]
    pub target: String,
}

/// One TXT value being served, with when it was written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TxtValue {
    /// The value answered, as the ACME client computed it (for DNS-01, 43 characters of
    /// base64url).
    #[schemars(length(min = 1, max = 255))]
    pub value: String,
    /// When the value was written; values older than the configured age are dropped.
    pub updated_at: Time,
}

/// The CEL rules below give messages a user can act on; a bare OpenAPI `pattern` would
/// only echo the regular expression back.
// `[.]` rather than `\.`: CEL string literals reject the `\.` escape.
const DOMAIN_RE: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
const LABEL_RE: &str = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A DNS name the account answers for, e.g. `example.com` (lowercase, no trailing dot).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct DomainName(pub String);

impl JsonSchema for DomainName {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "DomainName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "x-kubernetes-validations": [
                {
                    "rule": "!self.startsWith('*.')",
                    "message": "remove the '*.' prefix: example.com already covers *.example.com"
                },
                {
                    "rule": "!self.startsWith('_acme-challenge.')",
                    "message": "list the domain itself (example.com), not its _acme-challenge name"
                },
                {
                    "rule": format!("self.startsWith('*.') || self.startsWith('_acme-challenge.') || self.matches('{DOMAIN_RE}')"),
                    "message": "must be a lowercase DNS name such as example.com: dot-separated labels of letters, digits and hyphens, at most 63 characters each, no trailing dot"
                }
            ]
        })
    }
}

/// One DNS label, e.g. an acme-dns UUID `d420c923-bbd7-4056-ab64-c3ca54c9b3cf`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct DnsLabel(pub String);

impl JsonSchema for DnsLabel {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "DnsLabel".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 63,
            "x-kubernetes-validations": [{
                "rule": format!("self.matches('{LABEL_RE}')"),
                "message": "must be a single lowercase DNS label (letters, digits and hyphens, at most 63 characters, no dots), such as an acme-dns UUID"
            }]
        })
    }
}

/// A network in CIDR notation, e.g. `192.0.2.0/24` or `2001:db8::/32`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(transparent)]
pub struct Cidr(pub String);

impl JsonSchema for Cidr {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "minLength": 1,
            "maxLength": 49,
            "x-kubernetes-validations": [{
                "rule": "isCIDR(self)",
                "message": "must be a network in CIDR notation, such as 192.0.2.0/24 or 2001:db8::/32"
            }]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_reads_the_camel_case_field_names_users_write() {
        let spec: AcmeDnsAccountSpec = serde_yaml::from_str(
            "domains: [example.com]\nsubdomain: abc\nallowFrom: [192.0.2.0/24]\n",
        )
        .unwrap();
        assert_eq!(spec.domains, vec![DomainName("example.com".into())]);
        assert_eq!(spec.subdomain, Some(DnsLabel("abc".into())));
        assert_eq!(spec.allow_from, vec![Cidr("192.0.2.0/24".into())]);
    }

    #[test]
    fn empty_spec_is_an_account_without_domains() {
        let spec: AcmeDnsAccountSpec = serde_yaml::from_str("{}").unwrap();
        assert_eq!(spec, AcmeDnsAccountSpec::default());
    }

    #[test]
    fn unset_optional_fields_are_left_out_of_writes() {
        // Server-side apply would otherwise claim ownership of fields we never set.
        let json = serde_json::to_value(AcmeDnsAccountStatus::default()).unwrap();
        assert_eq!(json, serde_json::json!({}));
    }

    #[test]
    fn domain_rule_accepts_names_and_rejects_others() {
        // The same expression the API server evaluates, checked here against the cases
        // that matter so a typo in it shows up without a cluster.
        let re = regex_lite::Regex::new(DOMAIN_RE).unwrap();
        for ok in [
            "example.com",
            "a.b-c.example",
            "xn--bcher-kva.example",
            "localhost",
        ] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in [
            "Example.com",
            "example.com.",
            "-a.example",
            "a..b",
            "a_b.example",
            "",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
        let label = regex_lite::Regex::new(LABEL_RE).unwrap();
        assert!(label.is_match("d420c923-bbd7-4056-ab64-c3ca54c9b3cf"));
        assert!(!label.is_match("a.b"));
    }
}
