//! Encryption at rest: the keys and the envelope format (docs/security.md,
//! "Encryption at rest").
//!
//! Owns: data keys ([`DataKey`], 256-bit, random), the key-encryption key seam
//! ([`KeyEncryptionKey`]: a key file or an environment variable here, a cloud KMS
//! behind the same trait), the keyring of wrapped data keys ([`Keyring`]: data keys are
//! stored only wrapped, never in plaintext), and AES-256-GCM envelopes of stored values
//! ([`Cipher`]).
//!
//! With feature `sqlcipher`, also how a data key is given to an SQLite connection and
//! the offline file operations (encrypt a plaintext file, change its key): see
//! `sqlcipher`.
//!
//! Must not touch: what is stored. The SQLite backend hands a data key to SQLCipher
//! (the whole file is encrypted, indexes included); the PostgreSQL backend seals
//! resource bodies with a [`Cipher`] and keeps its keyring in a table. Where a keyring
//! lives is theirs to decide.
//!
//! Keys are never logged: [`DataKey`] and [`LocalKek`] print as `[redacted]`.

mod envelope;
mod kek;
#[cfg(feature = "sqlcipher")]
pub mod sqlcipher;

pub use envelope::{Cipher, Keyring, WrappedKey, ENVELOPE_PREFIX};
pub use kek::{generate_key_text, KeyEncryptionKey, LocalKek, DEFAULT_KEY_ENV};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use zeroize::Zeroizing;

/// Errors of key handling. Messages name files and key ids, never key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A key given in a file or variable is not 32 bytes in hex or base64.
    #[error("{0}")]
    BadKey(String),
    /// No key where the configuration says to find one.
    #[error("{0}")]
    Missing(String),
    /// The keyring was wrapped by another key-encryption key than the one configured.
    #[error(
        "wrong encryption key: the data keys are wrapped by key {expected}, but the \
         configured key is {found} (after `salus keys rotate`, configure the new key)"
    )]
    WrongKey { expected: String, found: String },
    /// A value names a data key the keyring does not hold.
    #[error("a stored value is encrypted under data key {0}, which the keyring does not hold")]
    UnknownKey(u32),
    /// Authentication failed or the format is broken: tampering, corruption, or a
    /// value moved to another row.
    #[error("{0}")]
    Damaged(String),
    /// A key management service failed (the seam for cloud KMSs).
    #[error("key management service: {0}")]
    Kms(String),
}

/// A 256-bit data key (DEK). Zeroed when dropped; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    /// A fresh random key from the operating system's generator.
    pub fn generate() -> DataKey {
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(k.as_mut());
        DataKey(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as SQLCipher's raw-key literal for `PRAGMA key` / `PRAGMA rekey`
    /// (`"x'<64 hex digits>'"`, quotes included): a raw key skips SQLCipher's
    /// passphrase derivation (the key is already random), so opening a connection
    /// costs no PBKDF2 rounds.
    pub fn sqlcipher_literal(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(69));
        s.push_str("\"x'");
        for b in self.0.iter() {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s.push_str("'\"");
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_are_random_and_never_printed() {
        let a = DataKey::generate();
        let b = DataKey::generate();
        assert_ne!(a, b);
        let shown = format!("{a:?}");
        assert_eq!(shown, "DataKey([redacted])");
        let lit = a.sqlcipher_literal();
        assert_eq!(lit.len(), 69);
        assert!(lit.starts_with("\"x'") && lit.ends_with("'\""));
    }
}
