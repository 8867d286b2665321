//! Who may call the solver: the kube-apiserver's front proxy, proven by a TLS client
//! certificate signed by the request-header CA and carrying an allowed name, both read
//! from `kube-system/extension-apiserver-authentication` (and re-read when it changes,
//! so CA rotation needs no restart). The end user is then read from the headers that
//! ConfigMap names (normally `X-Remote-User` / `X-Remote-Group`).

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::{
    Extension,
    extract::{Request, State},
    http::{HeaderMap, StatusCode},
    middleware::Next,
    response::Response,
};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ApiServerError, status};
use crate::http::{Peer, ServingCert, TlsConfig, tls::alpn_protocols};

pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

/// What the API server publishes about its front proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontProxy {
    pub ca_pem: String,
    /// Client certificate common names allowed; empty allows any the CA signed.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
}

impl FrontProxy {
    /// Reads the ConfigMap once; fails with what to grant when it cannot be read.
    pub async fn load(client: &Client) -> Result<Self, ApiServerError> {
        let configmap = configmaps(client)
            .get(AUTH_CONFIGMAP)
            .await
            .map_err(ApiServerError::ReadTrust)?;
        Self::from_configmap(&configmap)
    }

    pub fn from_configmap(cm: &ConfigMap) -> Result<Self, ApiServerError> {
        let data = cm.data.clone().unwrap_or_default();
        let ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .ok_or(ApiServerError::NoRequestHeaderCa)?;
        // The API server writes these lists as JSON arrays.
        let list = |key: &str, default: &[&str]| -> Vec<String> {
            data.get(key)
                .and_then(|s| serde_json::from_str::<Vec<String>>(s).ok())
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
        };
        Ok(Self {
            ca_pem,
            allowed_names: list("requestheader-allowed-names", &[]),
            username_headers: list("requestheader-username-headers", &["X-Remote-User"]),
            group_headers: list("requestheader-group-headers", &["X-Remote-Group"]),
        })
    }

    /// Whether a verified client certificate's common name may act as the front proxy.
    pub fn allows(&self, common_name: Option<&str>) -> bool {
        self.allowed_names.is_empty()
            || common_name.is_some_and(|cn| self.allowed_names.iter().any(|a| a == cn))
    }

    /// The user and groups from the headers this ConfigMap names; none without a user.
    pub fn user(&self, headers: &HeaderMap) -> Option<User> {
        let name = header_values(headers, &self.username_headers)
            .into_iter()
            .next()?;
        Some(User {
            name,
            groups: header_values(headers, &self.group_headers),
        })
    }
}

fn header_values(headers: &HeaderMap, names: &[String]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| headers.get_all(n.as_str()).iter())
        .filter_map(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// A TLS server configuration that asks for (but does not require) a client
/// certificate, accepting only ones the request-header CA signed. Probes connect
/// without one; [`authenticate`] refuses `/apis` to them.
pub fn server_config(
    serving: &Arc<ServingCert>,
    proxy: &FrontProxy,
) -> Result<Arc<ServerConfig>, ApiServerError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(proxy.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| ApiServerError::BadCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| ApiServerError::BadCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ApiServerError::BadCa("no certificate in it".into()));
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| ApiServerError::BadCa(e.to_string()))?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving.clone());
    config.alpn_protocols = alpn_protocols();
    Ok(Arc::new(config))
}

fn configmaps(client: &Client) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), AUTH_CONFIGMAP_NAMESPACE)
}

/// Re-reads the front proxy's CA and names when the ConfigMap changes, so a CA
/// rotation needs no restart. (The serving certificate reloads on its own.)
pub async fn keep_trust_current(
    client: Client,
    serving: Arc<ServingCert>,
    proxy: Arc<ArcSwap<FrontProxy>>,
    tls: TlsConfig,
    shutdown: CancellationToken,
) {
    let mut changes = watcher(
        configmaps(&client),
        watcher::Config::default().fields(&format!("metadata.name={AUTH_CONFIGMAP}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    loop {
        let change = tokio::select! {
            () = shutdown.cancelled() => return,
            change = changes.next() => change,
        };
        let new = match change {
            Some(Ok(cm)) => match FrontProxy::from_configmap(&cm) {
                Ok(new) if **proxy.load() != new => new,
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "ignoring an unusable {AUTH_CONFIGMAP}");
                    continue;
                }
            },
            Some(Err(e)) => {
                warn!(error = %e, "watching {AUTH_CONFIGMAP} failed; retrying");
                continue;
            }
            None => return,
        };
        match server_config(&serving, &new) {
            Ok(config) => {
                info!("the front proxy's CA or allowed names changed; reloaded");
                tls.replace(config);
                proxy.store(Arc::new(new));
            }
            Err(e) => warn!(error = %e, "keeping the previous front proxy trust"),
        }
    }
}

/// The end user the front proxy vouches for, parsed once by [`authenticate`] and
/// handed on as a request extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// `/apis/*` only for the front proxy: a client certificate from the request-header CA
/// with an allowed name, and a user in the username header.
pub async fn authenticate(
    State(proxy): State<Arc<ArcSwap<FrontProxy>>>,
    Extension(peer): Extension<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(leaf) = peer.certificates.first() else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a client certificate from the API server's front proxy is required: call this API through kube-apiserver (kubectl, cert-manager), not directly",
        );
    };
    let proxy = proxy.load();
    let common_name = common_name(leaf);
    if !proxy.allows(common_name.as_deref()) {
        return status(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "client certificate name {:?} is not among the front proxy's allowed names {:?}",
                common_name.unwrap_or_default(),
                proxy.allowed_names
            ),
        );
    }
    let Some(user) = proxy.user(request.headers()) else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the front proxy sent no user",
        );
    };
    request.extensions_mut().insert(user);
    next.run(request).await
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configmap(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn reads_the_lists_the_api_server_publishes() {
        let proxy = FrontProxy::from_configmap(&configmap(&[
            ("requestheader-client-ca-file", "PEM"),
            ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
            ("requestheader-username-headers", r#"["X-Remote-User"]"#),
            ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
        ]))
        .unwrap();
        assert_eq!(proxy.allowed_names, ["front-proxy-client"]);
        assert!(proxy.allows(Some("front-proxy-client")));
        assert!(!proxy.allows(Some("someone-else")));
        assert!(!proxy.allows(None));
    }

    #[test]
    fn empty_allowed_names_accepts_any_name_the_ca_signed() {
        let proxy =
            FrontProxy::from_configmap(&configmap(&[("requestheader-client-ca-file", "PEM")]))
                .unwrap();
        assert!(proxy.allows(Some("anything")));
        assert_eq!(proxy.username_headers, ["X-Remote-User"]);
    }

    #[test]
    fn missing_request_header_ca_says_how_to_enable_aggregation() {
        let err = FrontProxy::from_configmap(&configmap(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--requestheader-client-ca-file"), "{err}");
    }

    #[test]
    fn the_user_and_every_group_come_from_the_named_headers() {
        let proxy =
            FrontProxy::from_configmap(&configmap(&[("requestheader-client-ca-file", "PEM")]))
                .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-remote-user",
            "system:serviceaccount:cm:cm".parse().unwrap(),
        );
        headers.append("x-remote-group", "system:serviceaccounts".parse().unwrap());
        headers.append("x-remote-group", "system:authenticated".parse().unwrap());
        assert_eq!(
            proxy.user(&headers),
            Some(User {
                name: "system:serviceaccount:cm:cm".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:authenticated".into()
                ],
            })
        );
        headers.remove("x-remote-user");
        assert_eq!(proxy.user(&headers), None, "no user, no request");
    }
}
