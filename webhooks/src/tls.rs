//! The serving certificate, reloaded from disk without a restart.
//!
//! [`CertStore`] is rustls's certificate resolver: every handshake takes the current
//! certificate from an `ArcSwap`, so a reload never blocks or breaks a request; connections
//! already open keep the certificate they were made with. [`CertStore::reload`] reads both files
//! and swaps only when the pair parses and the key matches the certificate — while cert-manager
//! or the kubelet is halfway through replacing them, the old pair stays in service and the next
//! poll picks up the finished pair. Polling (rather than inotify) also sees the kubelet's
//! `..data` symlink swap of a mounted Secret.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key: {reason}")]
    NoKey { path: PathBuf, reason: String },
    #[error("the key in {key} does not belong to the certificate in {cert} (or is unusable): {reason}")]
    Mismatch { cert: PathBuf, key: PathBuf, reason: String },
}

/// The crypto provider used everywhere here (ring: pure Rust build, no cmake or clang).
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain and key into a [`CertifiedKey`].
///
/// # Errors
/// [`CertError`] naming the file at fault.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8], cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: cert.to_owned() });
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| CertError::NoKey { path: key.to_owned(), reason: e.to_string() })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| CertError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// The certificate in service and where it comes from.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The bytes of the pair in service, to tell a change from a re-read.
    loaded: Mutex<(Vec<u8>, Vec<u8>)>,
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read { path: path.to_owned(), source })
}

impl CertStore {
    /// Loads the pair; the server cannot start without one.
    ///
    /// # Errors
    /// When the files cannot be read or do not make a pair.
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Arc<Self>, CertError> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let (cert, key) = (read(&cert_path)?, read(&key_path)?);
        let pair = certified_key(&cert, &key, &cert_path, &key_path)?;
        Ok(Arc::new(Self {
            cert_path,
            key_path,
            current: ArcSwap::from_pointee(pair),
            loaded: Mutex::new((cert, key)),
        }))
    }

    /// Re-reads the files; swaps in the new pair when it changed and is sound. Returns whether it
    /// swapped.
    ///
    /// # Errors
    /// When the files are unreadable or do not make a pair (the old pair stays in service).
    pub fn reload(&self) -> Result<bool, CertError> {
        let (cert, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        let mut loaded = self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.0 == cert && loaded.1 == key {
            return Ok(false);
        }
        let pair = certified_key(&cert, &key, &self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(pair));
        *loaded = (cert, key);
        Ok(true)
    }

    /// The DER of the certificate in service (first of the chain).
    #[must_use]
    pub fn current_der(&self) -> Vec<u8> {
        self.current.load().cert.first().map(|c| c.as_ref().to_vec()).unwrap_or_default()
    }

    /// A rustls server config that serves the current pair, HTTP/2 and HTTP/1.1.
    ///
    /// # Panics
    /// Never in practice: the ring provider supports the default protocol versions.
    #[must_use]
    pub fn server_config(self: &Arc<Self>) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        config
    }

    /// Polls the files every `interval` until the task is aborted; failures are logged.
    pub fn spawn_watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let store = Arc::clone(&me);
                match tokio::task::spawn_blocking(move || store.reload()).await {
                    Ok(Ok(true)) => tracing::info!(cert = %me.cert_path.display(), "serving certificate reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "serving certificate not reloaded; keeping the old one")
                    }
                    Err(err) => tracing::warn!(?err, "certificate reload task failed"),
                }
            }
        })
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A throw-away certificate authority for tests, the benchmark and the lab: issues leaf
/// certificates that a client trusting [`DevCa::ca_pem`] accepts, so a rotation from one leaf to
/// another is seamless for clients, as with cert-manager.
pub struct DevCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl DevCa {
    /// A new CA with a fresh key.
    ///
    /// # Errors
    /// When rcgen cannot make the key or certificate.
    pub fn new() -> Result<Self, rcgen::Error> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "slicenet throw-away CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) })
    }

    /// The CA certificate (PEM), what clients trust (the webhook configuration's `caBundle`).
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A new leaf certificate and key (PEM) for `names`, signed by this CA.
    ///
    /// # Errors
    /// When rcgen cannot make the key or certificate.
    pub fn issue(&self, names: &[&str]) -> Result<(String, String), rcgen::Error> {
        let params = rcgen::CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}
