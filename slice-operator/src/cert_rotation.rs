//! Renewal of the admission webhooks' serving certificates, from the CA `slicectl install` made.
//!
//! `slicectl install` makes a CA ([`new_ca`], valid [`CA_VALIDITY`]) and a serving certificate
//! signed by it ([`issue`], valid [`SERVING_VALIDITY`]). The CA certificate goes into the webhook
//! configurations' `caBundle`; the serving pair into the webhook's TLS Secret; the CA itself
//! (certificate and key) into a CA Secret ([`slice_api::names::WEBHOOK_CA_SECRET`] in member
//! clusters, [`slice_api::names::HUB_WEBHOOK_CA_SECRET`] on the hub). The leader of the worker
//! (member clusters) and of the hub controller (the hub) then keeps the serving certificate
//! fresh, never touching the `caBundle`:
//!
//! - [`decide`] (pure): the serving certificate and the CA certificate at `now` → keep (and when
//!   to look again), renew, or a [`Problem`] — the certificate is not the CA's (someone else's,
//!   e.g. cert-manager's, which is never overwritten), unreadable, or the CA is not valid now;
//! - [`issue`]: a new key pair and certificate for the same DNS names, signed by the CA, checked
//!   against the CA before it is returned;
//! - [`Rotator::pass`]: the thin shell — reads the CA Secret and the TLS Secret, decides, and on
//!   renewal replaces the TLS Secret's data with the `resourceVersion` read (a concurrent write
//!   gets 409 and the next pass looks again); Events on renewal and on a problem.
//!
//! The webhook server reloads its mounted files when the kubelet updates the Secret
//! (`webhooks::tls::CertStore`), so a renewal needs no restart. When the user brings the
//! certificate (`slicectl install --webhook-tls-dir`), no CA Secret is printed and every pass
//! ends in [`Outcome::NoCa`]: nothing is renewed.

use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use slice_api::names::{
    CA_CERT_KEY, CA_KEY_KEY, HUB_WEBHOOK_CA_SECRET, HUB_WEBHOOK_TLS_SECRET, SYSTEM_NAMESPACE, WEBHOOK_CA_SECRET,
    WEBHOOK_TLS_SECRET,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::events::{Notice, Recorder, reason, reference_to};
use crate::leader::{Leadership, NotLeading};

const DAY: u64 = 24 * 60 * 60;
/// How long the CA is valid. It is the `caBundle` of the webhook configurations, which only a
/// new `slicectl install` changes, so it must outlive many serving certificates; ten years keeps
/// it well inside what a cluster's life is, yet is not the "forever" of rcgen's default (4096).
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * DAY);
/// How long a serving certificate is valid: short, because its key sits in a Secret and in
/// every webhook pod (90 days, as ACME CAs issue), and safe because the controllers renew it
/// with [`RENEW_WHEN_LEFT`] to spare.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(90 * DAY);
/// Certificates start this long before `now`: an API server whose clock is a little behind
/// the controller's must not see a certificate from the future.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// A serving certificate is renewed when less than this share of its lifetime is left (30 of
/// 90 days): a month in which a failing renewal is reported by Events before anything breaks.
pub const RENEW_WHEN_LEFT: (u64, u64) = (1, 3);
/// How often the leader looks at the certificate (and once when it starts leading).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60 * 60);
/// The common name of the CA `slicectl install` makes.
pub const CA_COMMON_NAME: &str = "slicenet webhook CA";

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the CA's private key is unusable: {0}")]
    CaKey(rcgen::Error),
    #[error("the CA certificate is unusable: {0}")]
    CaCert(rcgen::Error),
    #[error("generating a key pair: {0}")]
    Key(rcgen::Error),
    #[error("signing the certificate: {0}")]
    Sign(rcgen::Error),
    #[error("a time out of range: {0}")]
    Time(String),
    #[error("the new certificate does not verify against the CA (does the CA key belong to the CA certificate?): {0}")]
    NotVerified(Problem),
}

/// A CA: its certificate and private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

/// A serving certificate and its private key, PEM, and the end of its validity.
#[derive(Clone, PartialEq, Eq)]
pub struct ServingPair {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: Timestamp,
}

impl std::fmt::Debug for ServingPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingPair")
            .field("cert_pem", &self.cert_pem)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn offset(t: Timestamp) -> Result<time::OffsetDateTime, IssueError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second()).map_err(|e| IssueError::Time(e.to_string()))
}

fn plus(now: Timestamp, d: Duration) -> Result<Timestamp, IssueError> {
    let secs = i64::try_from(d.as_secs()).map_err(|e| IssueError::Time(e.to_string()))?;
    Timestamp::from_second(now.as_second().saturating_add(secs)).map_err(|e| IssueError::Time(e.to_string()))
}

fn minus(now: Timestamp, d: Duration) -> Result<Timestamp, IssueError> {
    let secs = i64::try_from(d.as_secs()).map_err(|e| IssueError::Time(e.to_string()))?;
    Timestamp::from_second(now.as_second().saturating_sub(secs)).map_err(|e| IssueError::Time(e.to_string()))
}

/// A new CA, valid from `now` (less [`CLOCK_SKEW`]) for [`CA_VALIDITY`], that may sign only
/// end-entity certificates.
///
/// # Errors
/// When key generation or signing fails.
pub fn new_ca(now: Timestamp) -> Result<Ca, IssueError> {
    let key = KeyPair::generate().map_err(IssueError::Key)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(IssueError::Sign)?;
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset(minus(now, CLOCK_SKEW)?)?;
    params.not_after = offset(plus(now, CA_VALIDITY)?)?;
    let cert = params.self_signed(&key).map_err(IssueError::Sign)?;
    Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A new key pair and a serving certificate for `dns_names` signed by `ca`, valid from `now`
/// (less [`CLOCK_SKEW`]) for [`SERVING_VALIDITY`] but never beyond the CA. The result is checked
/// to verify against the CA's certificate: a CA key that does not belong to it is an error,
/// not a certificate no API server would accept.
///
/// # Errors
/// [`IssueError`]: an unusable CA, a failed signature, or a certificate that does not verify.
pub fn issue(ca: &Ca, dns_names: &[String], now: Timestamp) -> Result<ServingPair, IssueError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(IssueError::CaKey)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(IssueError::CaCert)?;
    let ca_der = pem_der(&ca.cert_pem).map_err(IssueError::NotVerified)?;
    let ca_cert = parse_der(&ca_der, Problem::CaUnreadable).map_err(IssueError::NotVerified)?;
    let ca_not_after = ca_cert.validity().not_after.timestamp();

    let key = KeyPair::generate().map_err(IssueError::Key)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(IssueError::Sign)?;
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, first.as_str());
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset(minus(now, CLOCK_SKEW)?)?;
    let not_after = plus(now, SERVING_VALIDITY)?;
    let not_after =
        Timestamp::from_second(not_after.as_second().min(ca_not_after)).map_err(|e| IssueError::Time(e.to_string()))?;
    params.not_after = offset(not_after)?;
    let cert = params.signed_by(&key, &issuer).map_err(IssueError::Sign)?;
    let cert_pem = cert.pem();
    let serving = parse_der(cert.der(), Problem::ServingUnreadable).map_err(IssueError::NotVerified)?;
    signed_by(&serving, &ca_cert).map_err(IssueError::NotVerified)?;
    Ok(ServingPair { cert_pem, key_pem: key.serialize_pem(), not_after })
}

/// Why the serving certificate is left alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the CA certificate is unreadable: {0}")]
    CaUnreadable(String),
    #[error("the CA certificate is not a CA (no basicConstraints CA:true)")]
    NotACa,
    #[error("the CA is not valid now (valid from {not_before} to {not_after}): run `slicectl install` again")]
    CaNotValid { not_before: Timestamp, not_after: Timestamp },
    #[error("the serving certificate is unreadable: {0}")]
    ServingUnreadable(String),
    #[error("the serving certificate is not signed by the CA: {0}; it is left as it is")]
    NotSignedByCa(String),
    #[error("the serving certificate names no DNS name to renew it for")]
    NoDnsNames,
    #[error("the Secret {secret} has no {key}")]
    MissingKey { secret: String, key: String },
    #[error("the Secret {0} does not exist")]
    MissingSecret(String),
}

/// What to do with a serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is fresh: look again at `renew_at` (the checks run every [`CHECK_INTERVAL`] anyway).
    Keep { renew_at: Timestamp },
    /// Renew it for `dns_names` (its own); `expired` when it already is.
    Renew { dns_names: Vec<String>, expired: bool },
    /// Leave it alone and report.
    Problem(Problem),
}

/// The DER of the first `CERTIFICATE` block of `pem`.
fn pem_der(pem: &str) -> Result<Vec<u8>, Problem> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        match block {
            Ok(block) if block.label == "CERTIFICATE" => return Ok(block.contents),
            Ok(_) => {}
            Err(e) => return Err(Problem::ServingUnreadable(e.to_string())),
        }
    }
    Err(Problem::ServingUnreadable("no PEM CERTIFICATE block".to_owned()))
}

fn parse_der(der: &[u8], problem: fn(String) -> Problem) -> Result<X509Certificate<'_>, Problem> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(problem("trailing bytes after the certificate".to_owned())),
        Err(e) => Err(problem(e.to_string())),
    }
}

/// Whether `cert` names `ca` as its issuer and carries a valid signature of `ca`'s key.
fn signed_by(cert: &X509Certificate<'_>, ca: &X509Certificate<'_>) -> Result<(), Problem> {
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(Problem::NotSignedByCa(format!("issued by {}, the CA is {}", cert.issuer(), ca.subject())));
    }
    cert.verify_signature(Some(ca.public_key())).map_err(|e| Problem::NotSignedByCa(format!("signature: {e}")))
}

/// The DNS names of `cert`'s subjectAltName.
fn dns_names(cert: &X509Certificate<'_>) -> Result<Vec<String>, Problem> {
    let san = cert.subject_alternative_name().map_err(|e| Problem::ServingUnreadable(e.to_string()))?;
    let names: Vec<String> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some((*name).to_owned()),
            _ => None,
        })
        .collect();
    if names.is_empty() { Err(Problem::NoDnsNames) } else { Ok(names) }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(seconds).unwrap_or(if seconds < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

/// Keep, renew or leave alone the serving certificate `serving_cert_pem` at `now`, given the
/// CA certificate `ca_cert_pem`: renew when less than [`RENEW_WHEN_LEFT`] of its lifetime is
/// left (or it expired); a certificate the CA did not sign, or one that cannot be read, is a
/// [`Problem`], never renewed — it may be the user's own.
#[must_use]
pub fn decide(now: Timestamp, serving_cert_pem: &str, ca_cert_pem: &str) -> Decision {
    match decide_inner(now, serving_cert_pem, ca_cert_pem) {
        Ok(decision) => decision,
        Err(problem) => Decision::Problem(problem),
    }
}

fn decide_inner(now: Timestamp, serving_cert_pem: &str, ca_cert_pem: &str) -> Result<Decision, Problem> {
    let ca_der = pem_der(ca_cert_pem).map_err(|p| match p {
        Problem::ServingUnreadable(e) => Problem::CaUnreadable(e),
        other => other,
    })?;
    let ca = parse_der(&ca_der, Problem::CaUnreadable)?;
    if !ca.is_ca() {
        return Err(Problem::NotACa);
    }
    let (ca_from, ca_until) = (ca.validity().not_before.timestamp(), ca.validity().not_after.timestamp());
    if !(ca_from..=ca_until).contains(&now.as_second()) {
        return Err(Problem::CaNotValid { not_before: at(ca_from), not_after: at(ca_until) });
    }
    let der = pem_der(serving_cert_pem)?;
    let cert = parse_der(&der, Problem::ServingUnreadable)?;
    signed_by(&cert, &ca)?;
    let names = dns_names(&cert)?;
    let (from, until) = (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
    let lifetime = until.saturating_sub(from).max(0);
    let (num, den) = RENEW_WHEN_LEFT;
    let spare = lifetime / i64::try_from(den).unwrap_or(1) * i64::try_from(num).unwrap_or(1);
    let renew_at = until.saturating_sub(spare);
    let now = now.as_second();
    if now >= renew_at {
        return Ok(Decision::Renew { dns_names: names, expired: now > until });
    }
    Ok(Decision::Keep { renew_at: at(renew_at) })
}

/// Which webhook's certificate: its TLS and CA Secrets in [`SYSTEM_NAMESPACE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub tls_secret: &'static str,
    pub ca_secret: &'static str,
}

/// The member clusters' pod webhook (renewed by the worker).
pub const MEMBER: Target = Target { tls_secret: WEBHOOK_TLS_SECRET, ca_secret: WEBHOOK_CA_SECRET };
/// The hub's SliceConfig webhook (renewed by the hub controller).
pub const HUB: Target = Target { tls_secret: HUB_WEBHOOK_TLS_SECRET, ca_secret: HUB_WEBHOOK_CA_SECRET };

/// The keys of a serving Secret (`kubernetes.io/tls`, plus the CA for tools that read it).
const TLS_CERT_KEY: &str = "tls.crt";
const TLS_KEY_KEY: &str = "tls.key";
const TLS_CA_KEY: &str = "ca.crt";

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No CA Secret: the user brings the certificate (`--webhook-tls-dir`); nothing to do.
    NoCa,
    /// The certificate is fresh until `renew_at`.
    Kept { renew_at: Timestamp },
    /// Renewed: the new certificate is valid until `not_after`.
    Renewed { not_after: Timestamp },
    /// Someone wrote the TLS Secret between read and replace (409): the next pass looks again.
    Conflict,
    /// Left alone, reported.
    Problem(Problem),
}

/// A pass that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error("reading Secret {secret}")]
    Read {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("replacing Secret {secret}")]
    Write {
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("renewing the certificate")]
    Issue(#[from] IssueError),
    #[error(transparent)]
    NotLeading(#[from] NotLeading),
}

/// The controller name on Events that has no better one (tests).
const EVENT_CONTROLLER: &str = "slicenet.io/cert-rotation";

/// Renews one webhook's serving certificate in [`SYSTEM_NAMESPACE`] when due.
pub struct Rotator {
    client: Client,
    secrets: Api<Secret>,
    target: Target,
    leadership: Leadership,
    recorder: Recorder,
}

fn text(secret: &Secret, key: &str) -> Result<String, Problem> {
    let missing = || Problem::MissingKey { secret: secret.name_any(), key: key.to_owned() };
    let bytes = secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(missing)?;
    String::from_utf8(bytes.0.clone()).map_err(|_| missing())
}

impl Rotator {
    /// A rotator of `target` on `client`, always leading, with its own Event log.
    #[must_use]
    pub fn new(client: Client, target: Target) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), SYSTEM_NAMESPACE),
            client,
            target,
            leadership: Leadership::unconditional(),
            recorder: Recorder::new(EVENT_CONTROLLER, crate::leader::hostname()),
        }
    }

    /// The same, writing only while `leadership` allows.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.leadership = leadership;
        self
    }

    /// The same, publishing Events through `recorder`.
    #[must_use]
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = recorder;
        self
    }

    /// One check as the controllers' loops run it (every [`CHECK_INTERVAL`], and when they
    /// start leading): [`Rotator::pass`] at the wall clock's now, its outcome logged. A failure
    /// is logged and left to the next check (a renewal is due a month before the end): `None`.
    ///
    /// # Errors
    /// Only the loss of leadership, which ends the controller.
    pub async fn check(&self) -> Result<Option<Outcome>, NotLeading> {
        let secret = self.target.tls_secret;
        match self.pass(Timestamp::now()).await {
            Ok(outcome) => {
                match &outcome {
                    Outcome::NoCa => tracing::debug!(secret, "no CA Secret: the certificate is the user's"),
                    Outcome::Kept { renew_at } => tracing::debug!(secret, %renew_at, "certificate fresh"),
                    Outcome::Renewed { not_after } => tracing::info!(secret, %not_after, "certificate renewed"),
                    Outcome::Conflict => {}
                    Outcome::Problem(p) => tracing::warn!(secret, problem = %p, "certificate left alone"),
                }
                Ok(Some(outcome))
            }
            Err(RotationError::NotLeading(e)) => Err(e),
            Err(e) => {
                tracing::warn!(secret, error = %slice_api::error_chain::chain(&e), "certificate check failed; retried at the next check");
                Ok(None)
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Secret>, RotationError> {
        self.secrets.get_opt(name).await.map_err(|source| RotationError::Read { secret: name.to_owned(), source })
    }

    /// One look at `now`: reads the CA and TLS Secrets, decides, renews if due (one replace,
    /// conditional on the `resourceVersion` read), and publishes an Event on a renewal or a
    /// problem.
    ///
    /// # Errors
    /// A failed read or write (not a 409, which is [`Outcome::Conflict`]), a failed signature,
    /// or the loss of leadership.
    pub async fn pass(&self, now: Timestamp) -> Result<Outcome, RotationError> {
        let (outcome, regarding) = self.look(now).await?;
        let note = match &outcome {
            Outcome::Renewed { not_after } => Some(Notice::normal(
                regarding,
                reason::WEBHOOK_CERTIFICATE_RENEWED,
                "RenewCertificate",
                format!("renewed from {}, valid until {not_after}", self.target.ca_secret),
            )),
            Outcome::Problem(problem) => Some(Notice::warning(
                regarding,
                reason::WEBHOOK_CERTIFICATE_PROBLEM,
                "RenewCertificate",
                problem.to_string(),
            )),
            Outcome::NoCa | Outcome::Kept { .. } | Outcome::Conflict => None,
        };
        if let Some(notice) = note {
            self.recorder.publish(&self.client, &[notice], now, &self.leadership).await;
        }
        Ok(outcome)
    }

    async fn look(
        &self,
        now: Timestamp,
    ) -> Result<(Outcome, k8s_openapi::api::core::v1::ObjectReference), RotationError> {
        let Target { tls_secret, ca_secret } = self.target;
        let mut regarding = reference_to("v1", "Secret", Some(SYSTEM_NAMESPACE), tls_secret, None);
        let Some(ca_secret_read) = self.get(ca_secret).await? else {
            return Ok((Outcome::NoCa, regarding));
        };
        let Some(mut tls) = self.get(tls_secret).await? else {
            return Ok((Outcome::Problem(Problem::MissingSecret(tls_secret.to_owned())), regarding));
        };
        regarding.uid = tls.metadata.uid.clone();
        let ca = match (text(&ca_secret_read, CA_CERT_KEY), text(&ca_secret_read, CA_KEY_KEY)) {
            (Ok(cert_pem), Ok(key_pem)) => Ca { cert_pem, key_pem },
            (Err(p), _) | (_, Err(p)) => return Ok((Outcome::Problem(p), regarding)),
        };
        let current = match text(&tls, TLS_CERT_KEY) {
            Ok(pem) => pem,
            Err(p) => return Ok((Outcome::Problem(p), regarding)),
        };
        let dns_names = match decide(now, &current, &ca.cert_pem) {
            Decision::Keep { renew_at } => return Ok((Outcome::Kept { renew_at }, regarding)),
            Decision::Problem(p) => return Ok((Outcome::Problem(p), regarding)),
            Decision::Renew { dns_names, expired } => {
                tracing::info!(secret = tls_secret, expired, "renewing the webhook's serving certificate");
                dns_names
            }
        };
        let pair = issue(&ca, &dns_names, now)?;
        let not_after = pair.not_after;
        let data = tls.data.get_or_insert_default();
        data.insert(TLS_CERT_KEY.to_owned(), ByteString(pair.cert_pem.into_bytes()));
        data.insert(TLS_KEY_KEY.to_owned(), ByteString(pair.key_pem.into_bytes()));
        data.insert(TLS_CA_KEY.to_owned(), ByteString(ca.cert_pem.into_bytes()));
        tls.string_data = None;
        self.leadership.check()?;
        // `tls` carries the resourceVersion read: the API server refuses the replace (409) if
        // anyone wrote the Secret since, and the next pass decides on what is there then.
        match self.secrets.replace(tls_secret, &PostParams::default(), &tls).await {
            Ok(_) => Ok((Outcome::Renewed { not_after }, regarding)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(secret = tls_secret, "the Secret changed meanwhile; the next pass looks again");
                Ok((Outcome::Conflict, regarding))
            }
            Err(source) => Err(RotationError::Write { secret: tls_secret.to_owned(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    const T0: i64 = 1_800_000_000;
    const D: i64 = 24 * 60 * 60;

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).expect("valid time")
    }

    fn names() -> Vec<String> {
        vec![
            "slicenet-webhook.slicenet-system.svc".to_owned(),
            "slicenet-webhook.slicenet-system.svc.cluster.local".to_owned(),
        ]
    }

    /// A CA and a serving certificate both made at `T0`.
    fn installed() -> (Ca, ServingPair) {
        let ca = new_ca(t(0)).expect("CA");
        let pair = issue(&ca, &names(), t(0)).expect("serving certificate");
        (ca, pair)
    }

    /// Verifies `pair` as a TLS client trusting only `ca` would at `at` (rustls' own
    /// verifier library, independent of x509-parser): chain, validity, server use, each name.
    fn verify_as_a_client(ca: &Ca, pair: &ServingPair, at: Timestamp, names: &[String]) -> Result<(), webpki::Error> {
        let ca_der = CertificateDer::from(pem_der(&ca.cert_pem).expect("CA PEM"));
        let anchors = [webpki::anchor_from_trusted_cert(&ca_der)?.to_owned()];
        let der = CertificateDer::from(pem_der(&pair.cert_pem).expect("PEM"));
        let cert = webpki::EndEntityCert::try_from(&der)?;
        let time = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at.as_second()).expect("after 1970")));
        cert.verify_for_usage(
            &[webpki::ring::ECDSA_P256_SHA256],
            &anchors,
            &[],
            time,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )?;
        for name in names {
            cert.verify_is_valid_for_subject_name(&ServerName::try_from(name.as_str()).expect("a DNS name"))?;
        }
        Ok(())
    }

    #[test]
    fn validity_is_explicit_and_starts_a_little_before_now() {
        let (ca, pair) = installed();
        let ca_der = pem_der(&ca.cert_pem).unwrap();
        let ca_cert = parse_der(&ca_der, Problem::CaUnreadable).unwrap();
        assert_eq!(ca_cert.validity().not_before.timestamp(), T0 - 300);
        assert_eq!(ca_cert.validity().not_after.timestamp(), T0 + 3650 * D);
        assert!(ca_cert.is_ca());
        let der = pem_der(&pair.cert_pem).unwrap();
        let cert = parse_der(&der, Problem::ServingUnreadable).unwrap();
        assert_eq!(cert.validity().not_before.timestamp(), T0 - 300);
        assert_eq!(cert.validity().not_after.timestamp(), T0 + 90 * D);
        assert_eq!(pair.not_after, t(90 * D));
        assert!(!cert.is_ca());
        assert_eq!(dns_names(&cert).unwrap(), names());
        assert!(!format!("{ca:?}{pair:?}").contains("PRIVATE"), "Debug must not print keys");
    }

    #[test]
    fn a_fresh_certificate_is_kept_until_a_third_of_its_life_is_left() {
        let (ca, pair) = installed();
        // Lifetime 90 days and 5 minutes; a third of it before the end.
        let renew_at = t(90 * D - (90 * D + 300) / 3);
        assert_eq!(decide(t(0), &pair.cert_pem, &ca.cert_pem), Decision::Keep { renew_at });
        assert_eq!(decide(t(59 * D), &pair.cert_pem, &ca.cert_pem), Decision::Keep { renew_at });
        assert_eq!(
            decide(
                renew_at.checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(1)).unwrap(),
                &pair.cert_pem,
                &ca.cert_pem
            ),
            Decision::Keep { renew_at }
        );
        // Before the CA's start (a clock far behind the installer's): a problem, no write.
        assert_eq!(
            decide(t(-D), &pair.cert_pem, &ca.cert_pem),
            Decision::Problem(Problem::CaNotValid { not_before: t(-300), not_after: t(3650 * D) })
        );
    }

    #[test]
    fn two_thirds_gone_or_expired_is_renewed_for_the_same_names() {
        let (ca, pair) = installed();
        let renew = |at| decide(at, &pair.cert_pem, &ca.cert_pem);
        assert_eq!(renew(t(60 * D)), Decision::Renew { dns_names: names(), expired: false });
        assert_eq!(renew(t(90 * D)), Decision::Renew { dns_names: names(), expired: false });
        assert_eq!(renew(t(91 * D)), Decision::Renew { dns_names: names(), expired: true });
        assert_eq!(renew(t(3000 * D)), Decision::Renew { dns_names: names(), expired: true });
    }

    #[test]
    fn a_renewed_certificate_verifies_against_the_ca_for_the_same_names() {
        let (ca, old) = installed();
        verify_as_a_client(&ca, &old, t(1), &names()).expect("the installed certificate verifies");
        assert!(verify_as_a_client(&ca, &old, t(91 * D), &names()).is_err(), "expired at 90 days");
        let Decision::Renew { dns_names, .. } = decide(t(80 * D), &old.cert_pem, &ca.cert_pem) else {
            panic!("due at 80 days")
        };
        let new = issue(&ca, &dns_names, t(80 * D)).unwrap();
        assert_ne!(new.key_pem, old.key_pem, "a new key pair");
        verify_as_a_client(&ca, &new, t(80 * D), &names()).expect("the renewed certificate verifies");
        verify_as_a_client(&ca, &new, t(169 * D), &names()).expect("for 90 days");
        assert!(verify_as_a_client(&ca, &new, t(171 * D), &names()).is_err());
        assert!(verify_as_a_client(&ca, &new, t(80 * D), &["other.slicenet-system.svc".to_owned()]).is_err());
        let other = new_ca(t(0)).unwrap();
        assert!(verify_as_a_client(&other, &new, t(80 * D), &names()).is_err(), "only the CA's");
        assert_eq!(
            decide(t(80 * D), &new.cert_pem, &ca.cert_pem),
            Decision::Keep { renew_at: t(80 * D + 90 * D - (90 * D + 300) / 3) }
        );
    }

    #[test]
    fn a_certificate_of_another_ca_is_a_problem_never_a_renewal() {
        let (ca, _) = installed();
        let (other_ca, foreign) = installed();
        for at in [t(0), t(89 * D), t(200 * D)] {
            let d = decide(at, &foreign.cert_pem, &ca.cert_pem);
            assert!(matches!(d, Decision::Problem(Problem::NotSignedByCa(_))), "{d:?}");
        }
        // Same subject, other key: the signature tells them apart.
        assert_eq!(
            parse_der(&pem_der(&other_ca.cert_pem).unwrap(), Problem::CaUnreadable).unwrap().subject().as_raw(),
            parse_der(&pem_der(&ca.cert_pem).unwrap(), Problem::CaUnreadable).unwrap().subject().as_raw()
        );
        let Decision::Problem(Problem::NotSignedByCa(why)) = decide(t(0), &foreign.cert_pem, &ca.cert_pem) else {
            unreachable!()
        };
        assert!(why.starts_with("signature"), "{why}");
        // Signed with a CA key that is not the CA certificate's: refused before anyone serves it.
        let mismatched = Ca { cert_pem: ca.cert_pem.clone(), key_pem: other_ca.key_pem.clone() };
        assert!(matches!(issue(&mismatched, &names(), t(0)), Err(IssueError::NotVerified(_))));
    }

    #[test]
    fn an_expired_or_unreadable_ca_or_certificate_is_a_problem() {
        let (ca, pair) = installed();
        let d = decide(t(3651 * D), &pair.cert_pem, &ca.cert_pem);
        assert_eq!(d, Decision::Problem(Problem::CaNotValid { not_before: t(-300), not_after: t(3650 * D) }));
        assert!(d != Decision::Renew { dns_names: names(), expired: true });
        assert!(matches!(
            decide(t(0), "not a certificate", &ca.cert_pem),
            Decision::Problem(Problem::ServingUnreadable(_))
        ));
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(decide(t(0), garbage, &ca.cert_pem), Decision::Problem(Problem::ServingUnreadable(_))));
        assert!(matches!(decide(t(0), &pair.cert_pem, garbage), Decision::Problem(Problem::CaUnreadable(_))));
        assert!(matches!(decide(t(0), &pair.cert_pem, ""), Decision::Problem(Problem::CaUnreadable(_))));
        // A serving certificate is no CA.
        assert_eq!(decide(t(0), &pair.cert_pem, &pair.cert_pem), Decision::Problem(Problem::NotACa));
        // A certificate the CA signed for no DNS name (an IP address only) cannot be renewed as
        // it is.
        let ip_only = issue(&ca, &["10.0.0.1".to_owned()], t(0)).unwrap();
        assert_eq!(decide(t(0), &ip_only.cert_pem, &ca.cert_pem), Decision::Problem(Problem::NoDnsNames));
    }

    #[test]
    fn a_serving_certificate_never_outlives_its_ca() {
        let (ca, _) = installed();
        let late = issue(&ca, &names(), t(3600 * D)).unwrap();
        assert_eq!(late.not_after, t(3650 * D));
        assert!(matches!(decide(t(3600 * D), &late.cert_pem, &ca.cert_pem), Decision::Keep { .. }));
    }
}
