//! The gateway's WireGuard key pair: x25519 through boringtun's `x25519` (the crate
//! `slice-gateway` uses), base64 as in wg(8) files. The worker generates it in the member
//! cluster and keeps the private key in a Secret there; only the public key goes to the hub.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519::{PublicKey, StaticSecret};

/// A gateway key pair, base64 (44 characters each).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPair {
    pub private_key: String,
    pub public_key: String,
}

/// Never prints the private key.
impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("public_key", &self.public_key).finish_non_exhaustive()
    }
}

/// A fresh key pair from the operating system's random source.
#[must_use]
pub fn generate_key_pair() -> KeyPair {
    let secret = StaticSecret::random_from_rng(rand_core::OsRng);
    let public = PublicKey::from(&secret);
    KeyPair { private_key: STANDARD.encode(secret.to_bytes()), public_key: STANDARD.encode(public.to_bytes()) }
}

/// The 32 bytes of a base64 key, if it is one.
#[must_use]
pub fn decode_key(base64: &str) -> Option<[u8; 32]> {
    STANDARD.decode(base64.trim()).ok()?.try_into().ok()
}

/// The public key (base64) of a private key (base64); `None` when it is not a 32-byte key.
#[must_use]
pub fn public_key_of(private_key_base64: &str) -> Option<String> {
    let secret = StaticSecret::from(decode_key(private_key_base64)?);
    Some(STANDARD.encode(PublicKey::from(&secret).to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_matches_wg_pubkey() {
        // The wg(8) man page's example pair (`wg pubkey`).
        assert_eq!(
            public_key_of("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").as_deref(),
            Some("HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=")
        );
        assert_eq!(public_key_of("short"), None);
    }

    #[test]
    fn generated_pairs_are_consistent_and_fresh() {
        let a = generate_key_pair();
        let b = generate_key_pair();
        assert_ne!(a.private_key, b.private_key);
        assert_eq!(a.private_key.len(), 44);
        assert_eq!(public_key_of(&a.private_key), Some(a.public_key.clone()));
        assert!(!format!("{a:?}").contains(&a.private_key));
    }
}
