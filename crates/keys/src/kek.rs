//! Key-encryption keys (KEKs): what wraps the data keys.

use crate::{DataKey, KeyError};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::path::Path;
use zeroize::Zeroizing;

/// The environment variable a key is read from when the configuration names no file.
pub const DEFAULT_KEY_ENV: &str = "SALUS_ENCRYPTION_KEY";

/// Wraps and unwraps data keys. The key file and environment variable
/// ([`LocalKek`]) implement it here; a cloud KMS (AWS KMS `Encrypt`/`Decrypt`, Google
/// Cloud KMS, Azure Key Vault `wrapKey`/`unwrapKey`, HashiCorp Vault transit)
/// implements the same three calls. They run at start-up and during rotation only —
/// never per request — so a blocking network call is acceptable here.
pub trait KeyEncryptionKey: Send + Sync + std::fmt::Debug {
    /// A stable, public identifier of this key (never derived reversibly from it), so
    /// a keyring can say which key wrapped it and a wrong key is named as such.
    fn id(&self) -> String;

    /// `dek` wrapped, as text to store. `dek_id` is bound to the result: a wrapped key
    /// relabelled with another id does not unwrap.
    fn wrap(&self, dek_id: u32, dek: &DataKey) -> Result<String, KeyError>;

    /// The data key `wrapped` holds; fails when this is not the key that wrapped it.
    fn unwrap(&self, dek_id: u32, wrapped: &str) -> Result<DataKey, KeyError>;
}

/// A KEK held in this process: 32 random bytes from a key file or an environment
/// variable, written as 64 hex digits or base64.
pub struct LocalKek {
    key: DataKey,
    id: String,
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKek {{ id: {}, key: [redacted] }}", self.id)
    }
}

/// A new key as text for a key file: 64 hex digits and a newline.
pub fn generate_key_text() -> Zeroizing<String> {
    let k = DataKey::generate();
    let mut s = Zeroizing::new(String::with_capacity(65));
    for b in k.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\n');
    s
}

fn wrap_aad(dek_id: u32) -> Vec<u8> {
    format!("salus-dek-v1:{dek_id}").into_bytes()
}

impl LocalKek {
    pub fn new(key: DataKey) -> LocalKek {
        let mut h = Sha256::new();
        h.update(b"salus-kek-id-v1\0");
        h.update(key.as_bytes());
        let digest = h.finalize();
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        LocalKek { key, id }
    }

    /// Parse key text (64 hex digits, or base64 of 32 bytes; surrounding whitespace
    /// ignored). `source` names where it came from, for the error message.
    pub fn from_text(text: &str, source: &str) -> Result<LocalKek, KeyError> {
        let t = text.trim();
        let bad = || {
            KeyError::BadKey(format!(
                "{source} must hold a 256-bit key: 64 hex digits or base64 of 32 bytes \
                 (`salus keys init` writes one)"
            ))
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            for (i, chunk) in t.as_bytes().chunks(2).enumerate() {
                let s = std::str::from_utf8(chunk).map_err(|_| bad())?;
                bytes[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
            }
        } else {
            let decoded = Zeroizing::new(STANDARD.decode(t).map_err(|_| bad())?);
            if decoded.len() != 32 {
                return Err(bad());
            }
            bytes.copy_from_slice(&decoded);
        }
        Ok(LocalKek::new(DataKey::from_bytes(*bytes)))
    }

    /// Read a key file. On Unix a file that group or others may read is reported in
    /// the returned warning (the key then protects nothing from those users).
    pub fn from_file(path: &Path) -> Result<(LocalKek, Option<String>), KeyError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KeyError::Missing(format!(
                    "the encryption key file {} does not exist (create one with `salus keys init --out {}`)",
                    path.display(),
                    path.display()
                ))
            } else {
                KeyError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?);
        let kek = LocalKek::from_text(&text, &format!("the key file {}", path.display()))?;
        Ok((kek, loose_permissions(path)))
    }

    /// Read the key from environment variable `var`.
    pub fn from_env(var: &str) -> Result<LocalKek, KeyError> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => {
                let v = Zeroizing::new(v);
                LocalKek::from_text(&v, &format!("the environment variable {var}"))
            }
            _ => Err(KeyError::Missing(format!(
                "encryption is on but no key is configured: set encryption.key_file or the \
                 environment variable {var}"
            ))),
        }
    }
}

#[cfg(unix)]
fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "the encryption key file {} has mode {mode:o}: other users may read it; \
             `chmod 600` it",
            path.display()
        )
    })
}

#[cfg(not(unix))]
fn loose_permissions(_path: &Path) -> Option<String> {
    None
}

impl KeyEncryptionKey for LocalKek {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn wrap(&self, dek_id: u32, dek: &DataKey) -> Result<String, KeyError> {
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_bytes()));
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let aad = wrap_aad(dek_id);
        let ct = aead
            .encrypt(
                &nonce,
                Payload {
                    msg: dek.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| KeyError::Damaged("cannot wrap a data key".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    fn unwrap(&self, dek_id: u32, wrapped: &str) -> Result<DataKey, KeyError> {
        let damaged = || {
            KeyError::Damaged(format!(
                "data key {dek_id} does not unwrap with key {}: the keyring is damaged or \
                 was wrapped by another key",
                self.id
            ))
        };
        let raw = STANDARD.decode(wrapped.trim()).map_err(|_| damaged())?;
        if raw.len() != 12 + 32 + 16 {
            return Err(damaged());
        }
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.key.as_bytes()));
        let aad = wrap_aad(dek_id);
        let plain = Zeroizing::new(
            aead.decrypt(
                Nonce::from_slice(&raw[..12]),
                Payload {
                    msg: &raw[12..],
                    aad: &aad,
                },
            )
            .map_err(|_| damaged())?,
        );
        let mut k = [0u8; 32];
        k.copy_from_slice(&plain);
        Ok(DataKey::from_bytes(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_from_hex_and_base64_and_bad_ones_are_refused() {
        let text = generate_key_text();
        let a = LocalKek::from_text(&text, "test").unwrap();
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let b = LocalKek::from_text(&STANDARD.encode(&bytes), "test").unwrap();
        assert_eq!(a.id(), b.id(), "the same key in two spellings");
        assert_eq!(a.id().len(), 16);
        for bad in ["", "abc", &"g".repeat(64), &STANDARD.encode([0u8; 16])] {
            let e = LocalKek::from_text(bad, "the key file k").unwrap_err();
            assert!(e.to_string().contains("256-bit key"), "{e}");
        }
        assert!(!format!("{a:?}").contains(&text[..16]), "never printed");
    }

    #[test]
    fn wrapping_round_trips_and_binds_key_and_id() {
        let kek = LocalKek::new(DataKey::generate());
        let other = LocalKek::new(DataKey::generate());
        let dek = DataKey::generate();
        let w = kek.wrap(7, &dek).unwrap();
        assert_eq!(kek.unwrap(7, &w).unwrap(), dek);
        assert!(matches!(kek.unwrap(8, &w), Err(KeyError::Damaged(_))));
        assert!(matches!(other.unwrap(7, &w), Err(KeyError::Damaged(_))));
        assert_ne!(kek.wrap(7, &dek).unwrap(), w, "a fresh nonce each time");
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_read_and_loose_modes_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, generate_key_text().as_str()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(LocalKek::from_file(&p).unwrap().1.is_none());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warn = LocalKek::from_file(&p).unwrap().1.unwrap();
        assert!(warn.contains("chmod 600"), "{warn}");
        let e = LocalKek::from_file(&dir.path().join("none")).unwrap_err();
        assert!(e.to_string().contains("salus keys init"), "{e}");
    }
}
