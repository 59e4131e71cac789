//! The gateway's WireGuard key pair, as the worker keeps it: base64 as in wg(8) files and in the
//! API objects (the key Secret, the WorkerSlice status). The key type and the curve code are
//! `slice_api::wireguard::Key` (feature `x25519`), shared with the gateway and the lab. The worker
//! generates the pair in the member cluster and keeps the private key in a Secret there; only
//! the public key goes to the hub.

use slice_api::wireguard::Key;

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
    let private = Key::generate();
    KeyPair { private_key: private.to_base64(), public_key: private.public().to_base64() }
}

/// The public key (base64) of a private key (base64); `None` when it is not a 32-byte key.
#[must_use]
pub fn public_key_of(private_key_base64: &str) -> Option<String> {
    Some(Key::from_base64(private_key_base64).ok()?.public().to_base64())
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
