//! The webhook's serving certificate: a self-signed CA and a certificate for the webhook
//! Service's DNS names, made at install time (as `linkerd install` does) unless the user brings
//! their own. The CA goes into the webhook configurations' `caBundle`, the key pair into the
//! Secret `slicenet-webhook-tls`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// PEM texts of the webhook's CA, certificate and private key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
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

/// A new CA and a serving certificate for `dns_names`, signed by it.
///
/// # Errors
/// When key generation or signing fails.
pub fn generate(dns_names: &[String]) -> Result<WebhookTls> {
    let ca_key = KeyPair::generate().context("generating the webhook CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("webhook CA parameters")?;
    ca_params.distinguished_name.push(DnType::CommonName, "slicenet webhook CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the webhook CA")?;

    let key = KeyPair::generate().context("generating the webhook key")?;
    let mut params = CertificateParams::new(dns_names.to_vec()).context("webhook certificate parameters")?;
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, first.as_str());
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca).context("signing the webhook certificate")?;
    Ok(WebhookTls { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir` (the layout of a cert-manager Secret).
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
    Ok(WebhookTls { ca_pem: read("ca.crt")?, cert_pem: read("tls.crt")?, key_pem: read("tls.key")? })
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
        assert_ne!(tls.ca_pem, tls.cert_pem);
        assert!(!format!("{tls:?}").contains("PRIVATE"), "Debug must not print the key");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), &tls.ca_pem).unwrap();
        std::fs::write(dir.path().join("tls.crt"), &tls.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &tls.key_pem).unwrap();
        assert_eq!(load(dir.path()).unwrap(), tls);
        std::fs::write(dir.path().join("tls.key"), "nope").unwrap();
        assert!(load(dir.path()).unwrap_err().to_string().contains("not PEM"));
    }
}
