//! cert-manager's webhook protocol: a `ChallengePayload` with a `request` in, the same
//! kind with a `response` out (group `acme.cert-manager.io`, version `v1alpha1`).
//!
//! What cert-manager really sends, read from its source: `uid` is empty, the body may
//! carry no `apiVersion`/`kind`, `type` is always `dns-01`, `dnsName` is the bare
//! domain for a wildcard, `resolvedFQDN` ends with a dot and is the CNAME target when
//! the issuer sets `cnameStrategy: Follow`. Its client reads `response.success`
//! without a nil check, so every reply carries a `response`.

use serde::{Deserialize, Serialize};

pub const DEFAULT_API_VERSION: &str = "acme.cert-manager.io/v1alpha1";
pub const KIND: &str = "ChallengePayload";

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChallengePayload {
    #[serde(default)]
    pub api_version: Option<String>,
    #[serde(default)]
    pub request: Option<ChallengeRequest>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeRequest {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub action: String,
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub dns_name: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub resource_namespace: String,
    #[serde(default, rename = "resolvedFQDN")]
    pub resolved_fqdn: String,
    #[serde(default)]
    pub resolved_zone: String,
    /// The solver's `config` from the issuer, as written there.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

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

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeReply {
    pub api_version: String,
    pub kind: &'static str,
    pub response: ChallengeResponse,
}

#[derive(Serialize, Debug)]
pub struct ChallengeResponse {
    pub uid: String,
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
}

/// A metav1.Status, as cert-manager reads `response.status`.
#[derive(Serialize, Debug)]
pub struct ResponseStatus {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub status: &'static str,
    pub message: String,
    pub reason: &'static str,
    pub code: u16,
}

impl ChallengeReply {
    pub fn success(api_version: &str, uid: &str) -> Self {
        Self {
            api_version: api_version.to_string(),
            kind: KIND,
            response: ChallengeResponse {
                uid: uid.to_string(),
                success: true,
                status: None,
            },
        }
    }

    /// A solver failure: reported as `success: false` with a message saying what to do.
    pub fn failure(api_version: &str, uid: &str, message: String) -> Self {
        Self {
            api_version: api_version.to_string(),
            kind: KIND,
            response: ChallengeResponse {
                uid: uid.to_string(),
                success: false,
                status: Some(ResponseStatus {
                    metadata: Default::default(),
                    status: "Failure",
                    message,
                    reason: "BadRequest",
                    code: 400,
                }),
            },
        }
    }
}
