//! Who may call the solver: the kube-apiserver's front proxy, proven by a TLS client
//! certificate signed by the request-header CA and carrying an allowed name, both read
//! from `kube-system/extension-apiserver-authentication` (and re-read when it changes,
//! so CA rotation needs no restart). The end user is then read from the headers that
//! ConfigMap names (normally `X-Remote-User` / `X-Remote-Group`).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

pub const AUTH_CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const AUTH_CONFIGMAP: &str = "extension-apiserver-authentication";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "{AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} has no requestheader-client-ca-file: start kube-apiserver with --requestheader-client-ca-file (the aggregation layer)"
    )]
    NoRequestHeaderCa,
    #[error(
        "the request-header CA in {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP} is unusable: {0}"
    )]
    BadCa(String),
    #[error("cannot read the serving certificate {path}: {reason}")]
    ServingCert { path: String, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

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
    pub fn from_configmap(cm: &ConfigMap) -> Result<Self, TrustError> {
        let data = cm.data.clone().unwrap_or_default();
        let ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|s| !s.trim().is_empty())
            .cloned()
            .ok_or(TrustError::NoRequestHeaderCa)?;
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
}

/// The serving certificate and key, as PEM bytes.
pub struct ServingCert {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl ServingCert {
    pub fn read(cert_path: &str, key_path: &str) -> Result<Self, TrustError> {
        let read = |path: &str| {
            std::fs::read(path).map_err(|e| TrustError::ServingCert {
                path: path.to_string(),
                reason: e.to_string(),
            })
        };
        Ok(Self {
            cert_pem: read(cert_path)?,
            key_pem: read(key_path)?,
        })
    }
}

/// A TLS server configuration that asks for (but does not require) a client
/// certificate, accepting only ones the request-header CA signed. Probes connect
/// without one; the handlers refuse `/apis` to them.
pub fn server_config(
    serving: &ServingCert,
    proxy: &FrontProxy,
) -> Result<Arc<ServerConfig>, TrustError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(proxy.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| TrustError::BadCa(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| TrustError::BadCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TrustError::BadCa("no certificate in it".into()));
    }
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| TrustError::BadCa(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&serving.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TrustError::ServingCert {
            path: "certificate".into(),
            reason: e.to_string(),
        })?;
    let key =
        PrivateKeyDer::from_pem_slice(&serving.key_pem).map_err(|e| TrustError::ServingCert {
            path: "key".into(),
            reason: e.to_string(),
        })?;
    let mut config = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
}
