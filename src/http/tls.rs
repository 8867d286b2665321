//! A serving certificate read from PEM files and re-read when they change, so a
//! certificate that cert-manager renews in place (a Secret volume swaps its files
//! atomically) is served to new connections without a restart.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {path}: {reason}; mount the serving certificate Secret there or pass the right path"
    )]
    Read { path: PathBuf, reason: String },
    #[error(
        "{path} holds no usable PEM {what}: {reason}; it must be a PEM {what} (tls.crt / tls.key of a kubernetes.io/tls Secret)"
    )]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error(
        "the private key in {key} does not belong to the certificate in {cert}: {reason}; if the files are being renewed this clears on the next read, otherwise replace them as a pair"
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The serving certificate: answers every handshake with the pair last read from the
/// files, and swaps in a new pair when [`ServingCert::reload`] finds they changed.
pub struct ServingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The PEM bytes behind `current`, to tell a real change from a re-read.
    last_read: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Reads the pair once; fails when it is missing or unusable, so a bad mount is
    /// reported at start rather than at the first handshake.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, TlsError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let (cert_pem, key_pem) = read_pair(&cert_path, &key_path)?;
        let key = certified_key(&cert_path, &key_path, &cert_pem, &key_pem)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(key),
            last_read: Mutex::new((cert_pem, key_pem)),
        }))
    }

    /// Re-reads the files; returns whether a new pair is now served. On an error the
    /// previous pair stays in service.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read_pair(&self.cert_path, &self.key_path)?;
        let mut last = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        if last.0 == cert_pem && last.1 == key_pem {
            return Ok(false);
        }
        let key = certified_key(&self.cert_path, &self.key_path, &cert_pem, &key_pem)?;
        self.current.store(Arc::new(key));
        *last = (cert_pem, key_pem);
        Ok(true)
    }

    /// Re-reads the files every `period` until `shutdown`. Polling rather than file
    /// events: a Secret volume swaps a symlink, which inotify watches on the files miss.
    pub async fn keep_current(self: Arc<Self>, period: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.reload() {
                Ok(true) => {
                    info!(cert = %self.cert_path.display(), "serving certificate changed; new connections use it")
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "keeping the previous serving certificate"),
            }
        }
    }

    /// A server configuration without client authentication, serving this certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn_protocols();
        Arc::new(config)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// HTTP/2 first (the kube-apiserver's aggregator uses it), HTTP/1.1 for everyone else.
pub fn alpn_protocols() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// A TLS server configuration shared with the accept loop; replacing it (new trust
/// roots, say) affects new connections only.
#[derive(Clone)]
pub struct TlsConfig(Arc<ArcSwap<ServerConfig>>);

impl TlsConfig {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self(Arc::new(ArcSwap::new(config)))
    }

    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.load_full()
    }
}

fn read_pair(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    };
    Ok((read(cert_path)?, read(key_path)?))
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, what, reason: String| TlsError::Pem {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(cert_path, "certificate", e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "certificate", "none found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| pem_error(key_path, "private key", e.to_string()))?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        reason: e.to_string(),
    })
}
