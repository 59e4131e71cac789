//! The worker's credential on the hub: a ServiceAccount token bound in time (the API server's
//! TokenRequest), which the worker renews itself before it expires.
//!
//! The Secret `slicenet-hub-kubeconfig` in the member cluster holds two keys: the kubeconfig,
//! whose user reads its token from a file (`tokenFile`, which kube-rs reads again about every
//! minute), and that token. The worker asks the hub for a new token for its own ServiceAccount
//! once two thirds of the current one's lifetime are gone and writes it into the Secret; the
//! kubelet updates the mounted file and the client picks it up, while the old token stays valid
//! for the last third. A token without an expiry (a legacy token Secret) is renewed at once, so an
//! old install moves to bound tokens by itself.

use base64::Engine as _;
use thiserror::Error;

/// The member cluster's Secret (in `slicenet-system`) with the worker's hub kubeconfig.
pub const SECRET: &str = "slicenet-hub-kubeconfig";
/// Key of the kubeconfig in [`SECRET`].
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Key of the token in [`SECRET`]; the kubeconfig's `tokenFile` is this key's file.
pub const TOKEN_KEY: &str = "token";
/// Where the worker's pod mounts [`SECRET`].
pub const MOUNT_DIR: &str = "/etc/slicenet/hub";
/// Lifetime the worker asks for (30 days): long enough that a worker down for a few days comes
/// back with a valid token, short enough that a leaked token is not a key for ever. The API
/// server may shorten it (`--service-account-max-token-expiration`); the worker renews from the
/// times in the token it got, not from this number.
pub const REQUESTED_LIFETIME_SECONDS: i64 = 30 * 24 * 3600;
/// The shortest lifetime the API server grants (TokenRequest refuses less than 10 minutes).
pub const MIN_LIFETIME_SECONDS: i64 = 600;

/// The path of the token file in the worker's pod.
#[must_use]
pub fn token_file() -> String {
    format!("{MOUNT_DIR}/{TOKEN_KEY}")
}

/// Why a token cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("the hub token is not a JWT (three dot-separated parts)")]
    NotAJwt,
    #[error("the hub token's claims are not base64url JSON: {0}")]
    Claims(String),
    #[error("the hub token has no issue time (`iat`)")]
    NoIssueTime,
    #[error("the hub token expires ({exp}) before it was issued ({iat})")]
    ExpiresBeforeIssued { iat: i64, exp: i64 },
}

/// When a token was issued and when it expires (seconds since the epoch, as in its claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub issued: i64,
    /// `None` for a token that never expires (a legacy token Secret's).
    pub expires: Option<i64>,
}

impl TokenTimes {
    /// The times in a JWT's claims. The signature is not checked: the hub does that; the
    /// worker only plans when to ask for the next token.
    ///
    /// # Errors
    /// When the token is not a JWT with an issue time.
    pub fn of(token: &str) -> Result<Self, CredentialError> {
        let mut parts = token.trim().split('.');
        let (Some(_), Some(claims), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(CredentialError::NotAJwt);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims.trim_end_matches('='))
            .map_err(|e| CredentialError::Claims(e.to_string()))?;
        let claims: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| CredentialError::Claims(e.to_string()))?;
        let issued = claims.get("iat").and_then(serde_json::Value::as_i64).ok_or(CredentialError::NoIssueTime)?;
        let expires = claims.get("exp").and_then(serde_json::Value::as_i64);
        if let Some(exp) = expires.filter(|exp| *exp <= issued) {
            return Err(CredentialError::ExpiresBeforeIssued { iat: issued, exp });
        }
        Ok(Self { issued, expires })
    }
}

/// What to do with the current token at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Keep it; look again at `at` (seconds since the epoch).
    Keep { at: i64 },
    /// Ask for a new one now.
    Renew(RenewReason),
}

/// Why a token is renewed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewReason {
    /// Two thirds of its lifetime are gone.
    Due,
    /// It has expired (the worker was down too long to renew in time: a renewal with it fails,
    /// and an admin must give the worker a new token, see `slicectl install worker`).
    Expired,
    /// It never expires.
    NeverExpires,
}

/// Renew once two thirds of the token's lifetime are gone.
#[must_use]
pub fn decide(now: i64, times: TokenTimes) -> Renewal {
    let Some(expires) = times.expires else { return Renewal::Renew(RenewReason::NeverExpires) };
    if now >= expires {
        return Renewal::Renew(RenewReason::Expired);
    }
    let renew_at = times.issued + (expires - times.issued) * 2 / 3;
    if now >= renew_at { Renewal::Renew(RenewReason::Due) } else { Renewal::Keep { at: renew_at } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &serde_json::Value) -> String {
        let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!("{}.{}.{}", enc(br#"{"alg":"RS256"}"#), enc(claims.to_string().as_bytes()), enc(b"signature"))
    }

    #[test]
    fn times_come_from_the_claims() {
        let t = jwt(&serde_json::json!({"iat": 1000, "exp": 4000, "sub": "system:serviceaccount:x:y"}));
        assert_eq!(TokenTimes::of(&t), Ok(TokenTimes { issued: 1000, expires: Some(4000) }));
        let legacy = jwt(&serde_json::json!({"iat": 1000, "sub": "system:serviceaccount:x:y"}));
        assert_eq!(TokenTimes::of(&legacy), Ok(TokenTimes { issued: 1000, expires: None }));
        assert_eq!(TokenTimes::of(&format!("{t}\n")), TokenTimes::of(&t), "a trailing newline from a file");
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        assert_eq!(TokenTimes::of("opaque-token"), Err(CredentialError::NotAJwt));
        assert_eq!(TokenTimes::of("a.b.c.d"), Err(CredentialError::NotAJwt));
        assert!(matches!(TokenTimes::of("a.!!.c"), Err(CredentialError::Claims(_))));
        let no_iat = jwt(&serde_json::json!({"exp": 4000}));
        assert_eq!(TokenTimes::of(&no_iat), Err(CredentialError::NoIssueTime));
        let backwards = jwt(&serde_json::json!({"iat": 4000, "exp": 1000}));
        assert_eq!(TokenTimes::of(&backwards), Err(CredentialError::ExpiresBeforeIssued { iat: 4000, exp: 1000 }));
    }

    #[test]
    fn renewed_after_two_thirds_of_the_lifetime() {
        let t = TokenTimes { issued: 0, expires: Some(3000) };
        assert_eq!(decide(0, t), Renewal::Keep { at: 2000 });
        assert_eq!(decide(1999, t), Renewal::Keep { at: 2000 });
        assert_eq!(decide(2000, t), Renewal::Renew(RenewReason::Due));
        assert_eq!(decide(2999, t), Renewal::Renew(RenewReason::Due));
        assert_eq!(decide(3000, t), Renewal::Renew(RenewReason::Expired));
        let legacy = TokenTimes { issued: 0, expires: None };
        assert_eq!(decide(5, legacy), Renewal::Renew(RenewReason::NeverExpires));
    }
}
