//! The webhook's serving certificate: a self-signed CA and a certificate for the webhook
//! Service's DNS names, made at install time (as `linkerd install` does) unless the user brings
//! their own. The CA goes into the webhook configurations' `caBundle`, the key pair into the
//! Secret `slicenet-webhook-tls`, and the CA itself into `slicenet-webhook-ca`, from which the
//! controllers renew the serving certificate before it expires
//! ([`slice_operator::cert_rotation`], which also signs the certificates made here, with its
//! validity periods).

use std::path::Path;

use anyhow::{Context, Result, bail};
use k8s_openapi::jiff::Timestamp;
use slice_operator::cert_rotation;

/// PEM texts of the webhook's CA, certificate and private key, and the CA's private key when
/// `slicectl` made the CA (not when the user brings the certificate).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// `Some` for a CA made here: it is kept in a Secret so that the controllers can renew the
    /// serving certificate. `None` with `--webhook-tls-dir`: nothing is renewed.
    pub ca_key_pem: Option<String>,
}

impl std::fmt::Debug for WebhookTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTls").field("ca_pem", &self.ca_pem).finish_non_exhaustive()
    }
}

/// The DNS names a Service is reached at from the API server.
#[must_use]
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![format!("{service}.{namespace}.svc"), format!("{service}.{namespace}.svc.cluster.local")]
}

/// A new CA (valid [`cert_rotation::CA_VALIDITY`]) and a serving certificate for `dns_names`
/// signed by it (valid [`cert_rotation::SERVING_VALIDITY`]), both from now.
///
/// # Errors
/// When key generation or signing fails.
pub fn generate(dns_names: &[String]) -> Result<WebhookTls> {
    let now = Timestamp::now();
    let ca = cert_rotation::new_ca(now).context("making the webhook CA")?;
    let pair = cert_rotation::issue(&ca, dns_names, now).context("making the webhook certificate")?;
    Ok(WebhookTls { ca_pem: ca.cert_pem, cert_pem: pair.cert_pem, key_pem: pair.key_pem, ca_key_pem: Some(ca.key_pem) })
}

/// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir` (the layout of a cert-manager Secret).
/// The CA's key is not read: whoever made the certificate renews it.
///
/// # Errors
/// When a file is missing or is not PEM.
pub fn load(dir: &Path) -> Result<WebhookTls> {
    let read = |name: &str| -> Result<String> {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        if !text.contains("-----BEGIN ") {
            bail!("{} is not PEM", path.display());
        }
        Ok(text)
    };
    Ok(WebhookTls { ca_pem: read("ca.crt")?, cert_pem: read("tls.crt")?, key_pem: read("tls.key")?, ca_key_pem: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_pem_and_loads_it_back() {
        let tls = generate(&service_dns_names("w", "ns")).unwrap();
        assert!(tls.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(tls.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(tls.ca_key_pem.as_deref().is_some_and(|k| k.starts_with("-----BEGIN PRIVATE KEY-----")));
        assert_ne!(tls.ca_pem, tls.cert_pem);
        assert!(!format!("{tls:?}").contains("PRIVATE"), "Debug must not print the keys");
        // Fresh, the CA's, for the names, renewable from the CA kept.
        let now = Timestamp::now();
        match cert_rotation::decide(now, &tls.cert_pem, &tls.ca_pem) {
            cert_rotation::Decision::Keep { renew_at } => {
                let days = (renew_at.as_second() - now.as_second()) / 86_400;
                assert!((59..=60).contains(&days), "renewed after 60 of 90 days: {days}");
            }
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &tls.ca_pem).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &tls.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
        assert_eq!(load(dir.path()).unwrap(), WebhookTls { ca_key_pem: None, ..tls });
        std::fs::write(dir.path().join("tls.key"), "nope").unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("not PEM"));
    }
}
