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

/// `request` as sent; [`ChallengeRequest::action`] turns the action into an [`Action`]
/// here at the edge, so a solver never sees the string.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeRequest {
    #[serde(default)]
    action: String,
    #[serde(flatten)]
    pub challenge: Challenge,
}

impl ChallengeRequest {
    pub fn action(&self) -> Result<Action, UnknownAction> {
        self.action.parse()
    }
}

/// One DNS-01 challenge, as a solver sees it.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Challenge {
    /// Empty from cert-manager; echoed in the response.
    #[serde(default)]
    pub uid: String,
    /// The domain being validated: the bare domain for a wildcard.
    #[serde(default)]
    pub dns_name: String,
    /// The TXT value to present or clean up.
    #[serde(default)]
    pub key: String,
    /// The Issuer's namespace, or cert-manager's cluster resource namespace for a
    /// ClusterIssuer.
    #[serde(default)]
    pub resource_namespace: String,
    /// Where the TXT record goes, with a trailing dot; the CNAME target when the issuer
    /// follows CNAMEs.
    #[serde(default, rename = "resolvedFQDN")]
    pub resolved_fqdn: String,
    #[serde(default)]
    pub resolved_zone: String,
    /// The solver's `config` from the issuer, as written there.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Present,
    CleanUp,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown action {0:?}: cert-manager sends Present or CleanUp")]
pub struct UnknownAction(pub String);

impl std::str::FromStr for Action {
    type Err = UnknownAction;

    fn from_str(action: &str) -> Result<Self, UnknownAction> {
        match action {
            "Present" => Ok(Self::Present),
            "CleanUp" => Ok(Self::CleanUp),
            other => Err(UnknownAction(other.to_string())),
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Present => "Present",
            Self::CleanUp => "CleanUp",
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_cert_manager_sends() {
        let payload: ChallengePayload = serde_json::from_value(serde_json::json!({
            "request": {
                "uid": "",
                "action": "CleanUp",
                "type": "dns-01",
                "dnsName": "example.com",
                "key": "k",
                "resourceNamespace": "team",
                "resolvedFQDN": "_acme-challenge.example.com.",
                "resolvedZone": "example.com.",
                "config": {"accountRef": {"name": "a"}},
            }
        }))
        .unwrap();
        let request = payload.request.unwrap();
        assert_eq!(request.action().unwrap(), Action::CleanUp);
        assert_eq!(request.challenge.dns_name, "example.com");
        assert_eq!(
            request.challenge.resolved_fqdn,
            "_acme-challenge.example.com."
        );
        assert!(request.challenge.config.is_some());
    }

    #[test]
    fn an_unknown_action_names_the_two_known_ones() {
        let err = "Destroy".parse::<Action>().unwrap_err().to_string();
        assert!(err.contains("Present or CleanUp"), "{err}");
    }
}
