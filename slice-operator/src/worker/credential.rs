//! Renewal of the worker's hub token (`slice_api::hub_credential` says when): read the token
//! from the member cluster's Secret, and when it is due, ask the hub for a new one for the
//! worker's own ServiceAccount (TokenRequest) and write it into the Secret with the version
//! read (a concurrent writer makes it a conflict, tried again on the next check).

use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use slice_api::crd::{SYSTEM_NAMESPACE, cluster_namespace};
use slice_api::hub_credential::{self, CredentialError, RenewReason, Renewal, TokenTimes};

use super::reconcile::{Worker, WorkerError};
use crate::events::{Notice, reference_to};

/// The worker's ServiceAccount, on the hub in its cluster's namespace.
pub const WORKER_ACCOUNT: &str = "slicenet-worker";

/// Event reasons of the renewal.
pub mod reason {
    /// A new hub token was written.
    pub const RENEWED: &str = "HubTokenRenewed";
    /// The hub token could not be read or renewed.
    pub const FAILED: &str = "HubTokenRenewalFailed";
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// The token is kept until `at` (seconds since the epoch).
    Kept { at: i64 },
    /// A new token expiring at `expires` was written into the Secret.
    Renewed { reason: RenewReason, expires: Option<i64> },
    /// The Secret has no token key: the kubeconfig carries another kind of credential (client
    /// certificate), which the worker does not renew.
    NoToken,
}

/// Why a check failed; the token in use stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum CredentialCheckError {
    #[error("the hub token in Secret {SYSTEM_NAMESPACE}/{secret} cannot be read", secret = hub_credential::SECRET)]
    Unreadable(#[source] CredentialError),
    #[error("the hub gave no token for {WORKER_ACCOUNT}")]
    NoTokenGiven,
    #[error(transparent)]
    Api(#[from] WorkerError),
}

impl Worker {
    /// Renews the hub token when it is due at `now` (seconds since the epoch), and publishes an
    /// Event on the Secret about a renewal or a failure.
    ///
    /// # Errors
    /// When the Secret cannot be read, the token cannot be parsed, the hub refuses the request
    /// (an expired token), or the Secret cannot be written (a conflict included).
    pub async fn check_hub_credential(&self, cluster: &str, now: i64) -> Result<Checked, CredentialCheckError> {
        let result = self.renew_if_due(cluster, now).await;
        let secret = reference_to("v1", "Secret", Some(SYSTEM_NAMESPACE), hub_credential::SECRET, None);
        let notice = match &result {
            Ok(Checked::Renewed { reason, expires }) => Some(Notice::normal(
                secret,
                reason::RENEWED,
                "Renew",
                format!("the hub token was renewed ({reason:?}); the new one expires at {expires:?} (Unix seconds)"),
            )),
            Err(CredentialCheckError::Api(WorkerError::NotLeading(_))) | Ok(_) => None,
            Err(e) => {
                Some(Notice::warning(secret, reason::FAILED, "Renew", slice_api::error_chain::chain(e).to_string()))
            }
        };
        if let Some(notice) = notice {
            self.publish(&[notice], &super::now_rfc3339()).await;
        }
        result
    }

    async fn renew_if_due(&self, cluster: &str, now: i64) -> Result<Checked, CredentialCheckError> {
        let secrets = Api::<Secret>::namespaced(self.local_client(), SYSTEM_NAMESPACE);
        let secret = secrets.get(hub_credential::SECRET).await.map_err(|source| WorkerError::Read {
            what: format!("Secret {SYSTEM_NAMESPACE}/{}", hub_credential::SECRET),
            source,
        })?;
        let Some(token) = secret.data.as_ref().and_then(|d| d.get(hub_credential::TOKEN_KEY)) else {
            return Ok(Checked::NoToken);
        };
        let token = String::from_utf8_lossy(&token.0).into_owned();
        let times = TokenTimes::of(&token).map_err(CredentialCheckError::Unreadable)?;
        let reason = match hub_credential::decide(now, times) {
            Renewal::Keep { at } => return Ok(Checked::Kept { at }),
            Renewal::Renew(reason) => reason,
        };
        self.leadership().check().map_err(WorkerError::from)?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(hub_credential::REQUESTED_LIFETIME_SECONDS),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let namespace = cluster_namespace(cluster);
        let accounts = Api::<ServiceAccount>::namespaced(self.hub_client(), &namespace);
        let granted = accounts.create_token_request(WORKER_ACCOUNT, &PostParams::default(), &request).await.map_err(
            |source| WorkerError::Write {
                what: format!("requesting a token for ServiceAccount {namespace}/{WORKER_ACCOUNT} on the hub"),
                source,
            },
        )?;
        let new_token =
            granted.status.and_then(|s| s.token).filter(|t| !t.is_empty()).ok_or(CredentialCheckError::NoTokenGiven)?;
        let expires = TokenTimes::of(&new_token).map_err(CredentialCheckError::Unreadable)?.expires;
        let mut updated = secret;
        updated
            .data
            .get_or_insert_default()
            .insert(hub_credential::TOKEN_KEY.to_owned(), ByteString(new_token.into_bytes()));
        // `replace` sends the resourceVersion read above: a Secret changed since is a conflict.
        self.leadership().check().map_err(WorkerError::from)?;
        secrets.replace(hub_credential::SECRET, &PostParams::default(), &updated).await.map_err(|source| {
            WorkerError::Write {
                what: format!("writing the new hub token into Secret {}", hub_credential::SECRET),
                source,
            }
        })?;
        Ok(Checked::Renewed { reason, expires })
    }
}
