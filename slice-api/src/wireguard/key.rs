//! WireGuard keys: 32 bytes, base64 in `wg(8)` files and in the API objects, lowercase hex on the
//! UAPI socket.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A Curve25519 key (private, public or preshared): 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

/// Why a key string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct KeyError(&'static str);

impl Key {
    /// Parses the base64 form used by `wg(8)` configuration files and `wg genkey`; white space
    /// around it is ignored.
    ///
    /// # Errors
    /// When the text is not base64 of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| KeyError("not valid base64"))?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| KeyError("a key must be 32 bytes (44 base64 characters)"))?;
        Ok(Self(raw))
    }

    /// Parses the 64-character lowercase hex form used on the UAPI socket.
    ///
    /// # Errors
    /// When the text is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        if s.len() != 64 {
            return Err(KeyError("a hex key must be 64 characters"));
        }
        // Checked byte by byte before any slicing: 64 bytes of text may hold multi-byte
        // characters, and slicing two bytes out of one panicked (found by the `uapi` fuzz
        // target); `from_str_radix` alone would also take "+f" as a digit pair.
        if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError("not valid hex"));
        }
        let digit = |b: u8| (b as char).to_digit(16).map_or(0, |d| d as u8);
        let mut raw = [0u8; 32];
        for (out, pair) in raw.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
            *out = digit(pair[0]) << 4 | digit(pair[1]);
        }
        Ok(Self(raw))
    }

    #[must_use]
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    #[must_use]
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// All zeros: on the UAPI socket this means "no key".
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.0 == [0u8; 32]
    }

    /// The public key of this private key (X25519 with the base point, as `wg pubkey`).
    #[cfg(feature = "x25519")]
    #[must_use]
    pub fn public(&self) -> Key {
        let secret = x25519_dalek::StaticSecret::from(self.0);
        Key(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }

    /// A fresh private key from the operating system's random source. Unclamped, as
    /// x25519-dalek keeps it: X25519 clamps when it uses the key, so it acts as `wg genkey`'s.
    #[cfg(feature = "x25519")]
    #[must_use]
    pub fn generate() -> Key {
        Key(x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng).to_bytes())
    }
}

/// Never prints key material: only the first characters of the base64 form (as `wg` logs do).
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({}…)", &self.to_base64()[..8])
    }
}

/// The base64 form.
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;

    /// The base64 form ([`Key::from_base64`]).
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex_round_trip() {
        let k = Key([7u8; 32]);
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(k.to_hex(), "07".repeat(32));
        assert_eq!(k.to_string().parse::<Key>().unwrap(), k);
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Key::from_base64("abc").is_err());
        assert!(Key::from_base64("!!!").is_err());
        assert_eq!(Key::from_base64("short").unwrap_err().to_string(), "not valid base64");
        assert!(Key::from_hex(&"zz".repeat(32)).is_err());
        assert!(Key::from_hex("00").is_err());
    }

    /// 64 bytes that are not 64 hex digits: a multi-byte character across a digit pair made
    /// `from_hex` panic (a UAPI client could crash the gateway), and `+` passed as a digit.
    #[test]
    fn hex_of_64_bytes_that_are_not_hex_digits_is_an_error() {
        let split_char = format!("0{}{}", "\u{e9}", "0".repeat(61));
        assert_eq!(split_char.len(), 64);
        assert_eq!(Key::from_hex(&split_char).unwrap_err().to_string(), "not valid hex");
        assert!(Key::from_hex(&"+1".repeat(32)).is_err());
        assert_eq!(Key::from_hex(&"aB".repeat(32)).unwrap(), Key([0xab; 32]));
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let k = Key::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(format!("{k:?}"), "Key(yAnz5TF+…)");
    }

    #[cfg(feature = "x25519")]
    #[test]
    fn public_key_matches_wg_pubkey() {
        // Vector from `echo yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey` (wg(8) man page).
        let private = Key::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(private.public().to_base64(), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
    }

    #[cfg(feature = "x25519")]
    #[test]
    fn generated_keys_are_fresh() {
        let (a, b) = (Key::generate(), Key::generate());
        assert_ne!(a, b);
        assert!(!a.is_zero());
        assert_ne!(a.public(), b.public());
    }
}
