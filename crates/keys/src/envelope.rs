//! The keyring of wrapped data keys, and AES-256-GCM envelopes under them.
//!
//! An envelope is text: `enc1:<data key id>:<base64 of nonce ‖ ciphertext ‖ tag>`.
//! `enc1` is the format (AES-256-GCM, 96-bit random nonce, 128-bit tag); the data key
//! id lets values under several keys coexist while a rotation re-encrypts them, and
//! is visible so a backend can find the values still under an old key without
//! decrypting. The caller's associated data (e.g. `Patient/p1/3`) is authenticated,
//! not stored: a value copied to another row fails to open.

use crate::{DataKey, KeyEncryptionKey, KeyError};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// How every envelope starts.
pub const ENVELOPE_PREFIX: &str = "enc1:";

/// The data keys of one database, each wrapped by the key-encryption key `kek_id`.
/// The newest key not retired encrypts new values; retired keys only decrypt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keyring {
    /// The file format (1).
    pub format: u32,
    /// [`KeyEncryptionKey::id`] of the key that wrapped every entry.
    pub kek_id: String,
    pub keys: Vec<WrappedKey>,
}

/// One data key, wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub id: u32,
    pub wrapped: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Replaced by a newer key: no new value is encrypted under it.
    #[serde(default)]
    pub retired: bool,
}

impl Keyring {
    /// A keyring with one fresh data key (id 1) wrapped by `kek`.
    pub fn create(kek: &dyn KeyEncryptionKey, now: i64) -> Result<Keyring, KeyError> {
        let dek = DataKey::generate();
        Ok(Keyring {
            format: 1,
            kek_id: kek.id(),
            keys: vec![WrappedKey {
                id: 1,
                wrapped: kek.wrap(1, &dek)?,
                created_at: now,
                retired: false,
            }],
        })
    }

    /// The id of the key new values are encrypted under.
    pub fn active_id(&self) -> Option<u32> {
        self.keys.iter().filter(|k| !k.retired).map(|k| k.id).max()
    }

    fn check_kek(&self, kek: &dyn KeyEncryptionKey) -> Result<(), KeyError> {
        if self.format != 1 {
            return Err(KeyError::Damaged(format!(
                "keyring format {} is not known to this build",
                self.format
            )));
        }
        if kek.id() != self.kek_id {
            return Err(KeyError::WrongKey {
                expected: self.kek_id.clone(),
                found: kek.id(),
            });
        }
        Ok(())
    }

    /// Unwrap every data key. `known` (an earlier unlock) saves unwrapping keys already
    /// held — a remote KMS call each.
    pub fn unlock(
        &self,
        kek: &dyn KeyEncryptionKey,
        known: Option<&Cipher>,
    ) -> Result<Cipher, KeyError> {
        self.check_kek(kek)?;
        let active = self
            .active_id()
            .ok_or_else(|| KeyError::Damaged("the keyring holds no active data key".into()))?;
        let mut keys = BTreeMap::new();
        for k in &self.keys {
            let dek = match known.and_then(|c| c.key(k.id)) {
                Some(d) => d.clone(),
                None => kek.unwrap(k.id, &k.wrapped)?,
            };
            keys.insert(k.id, Slot::new(dek));
        }
        Ok(Cipher { keys, active })
    }

    /// The same data keys wrapped by `new` instead of `old` (KEK rotation: the data
    /// itself is untouched).
    pub fn rewrap(
        &self,
        old: &dyn KeyEncryptionKey,
        new: &dyn KeyEncryptionKey,
    ) -> Result<Keyring, KeyError> {
        self.check_kek(old)?;
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in &self.keys {
            let dek = old.unwrap(k.id, &k.wrapped)?;
            keys.push(WrappedKey {
                wrapped: new.wrap(k.id, &dek)?,
                ..k.clone()
            });
        }
        Ok(Keyring {
            format: 1,
            kek_id: new.id(),
            keys,
        })
    }

    /// Add a fresh data key, which encrypts from now on; every older key is retired.
    /// Returns its id.
    pub fn add_data_key(&mut self, kek: &dyn KeyEncryptionKey, now: i64) -> Result<u32, KeyError> {
        self.check_kek(kek)?;
        let id = self.keys.iter().map(|k| k.id).max().unwrap_or(0) + 1;
        let dek = DataKey::generate();
        let wrapped = kek.wrap(id, &dek)?;
        for k in &mut self.keys {
            k.retired = true;
        }
        self.keys.push(WrappedKey {
            id,
            wrapped,
            created_at: now,
            retired: false,
        });
        Ok(id)
    }

    /// Drop the keys no value uses any more.
    pub fn remove(&mut self, ids: &[u32]) {
        self.keys.retain(|k| !ids.contains(&k.id));
    }

    /// Read a keyring file; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<Keyring>, KeyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeyError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            KeyError::Damaged(format!("the keyring {} is damaged: {e}", path.display()))
        })
    }

    /// Write the keyring to `path` atomically (a new file renamed over the old one,
    /// both synced), readable by this user only.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |e| KeyError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let tmp = path.with_extension("json.new");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| KeyError::Damaged(format!("cannot serialize the keyring: {e}")))?;
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

struct Slot {
    key: DataKey,
    aead: Aes256Gcm,
}

impl Slot {
    fn new(key: DataKey) -> Slot {
        let aead = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_bytes()));
        Slot { key, aead }
    }
}

/// Unwrapped data keys, ready to seal and open envelopes. Never printed.
pub struct Cipher {
    keys: BTreeMap<u32, Slot>,
    active: u32,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("active", &self.active)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Cipher {
    /// The id of the key new values are sealed under.
    pub fn active_id(&self) -> u32 {
        self.active
    }

    /// The key new values are sealed under (SQLite: the database key).
    pub fn active_key(&self) -> &DataKey {
        &self.keys[&self.active].key
    }

    /// A data key by id.
    pub fn key(&self, id: u32) -> Option<&DataKey> {
        self.keys.get(&id).map(|s| &s.key)
    }

    /// Every key id held, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Whether `text` is an envelope (else it is a value stored before encryption).
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with(ENVELOPE_PREFIX)
    }

    /// The data key id an envelope names.
    pub fn key_id_of(text: &str) -> Option<u32> {
        let rest = text.strip_prefix(ENVELOPE_PREFIX)?;
        let (id, _) = rest.split_once(':')?;
        id.parse().ok()
    }

    /// Seal `plaintext` under the active key, binding `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let slot = &self.keys[&self.active];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = slot
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // AES-GCM fails only on inputs over 64 GiB
            .expect("AES-GCM encryption of a value under 64 GiB");
        let mut raw = Vec::with_capacity(12 + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        let mut out = String::with_capacity(16 + raw.len() * 4 / 3 + 4);
        out.push_str(ENVELOPE_PREFIX);
        out.push_str(&self.active.to_string());
        out.push(':');
        STANDARD.encode_string(raw, &mut out);
        out
    }

    /// Open an envelope sealed with the same `aad`.
    pub fn open(&self, text: &str, aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let damaged = |why: &str| KeyError::Damaged(format!("an encrypted value {why}"));
        let rest = text
            .strip_prefix(ENVELOPE_PREFIX)
            .ok_or_else(|| damaged("is not an envelope"))?;
        let (id, b64) = rest
            .split_once(':')
            .ok_or_else(|| damaged("has no key id"))?;
        let id: u32 = id.parse().map_err(|_| damaged("has a bad key id"))?;
        let slot = self.keys.get(&id).ok_or(KeyError::UnknownKey(id))?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| damaged("is not valid base64"))?;
        if raw.len() < 12 + 16 {
            return Err(damaged("is truncated"));
        }
        slot.aead
            .decrypt(
                Nonce::from_slice(&raw[..12]),
                Payload {
                    msg: &raw[12..],
                    aad,
                },
            )
            .map_err(|_| damaged("failed authentication (altered, or moved from another row)"))
    }

    /// [`Cipher::open`] for UTF-8 text.
    pub fn open_string(&self, text: &str, aad: &[u8]) -> Result<String, KeyError> {
        String::from_utf8(self.open(text, aad)?)
            .map_err(|_| KeyError::Damaged("an encrypted value is not UTF-8 text".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalKek;

    #[test]
    fn envelopes_round_trip_and_are_bound_to_their_row() {
        let kek = LocalKek::new(DataKey::generate());
        let ring = Keyring::create(&kek, 0).unwrap();
        let c = ring.unlock(&kek, None).unwrap();
        let sealed = c.seal(b"{\"name\":\"Zebulon\"}", b"Patient/p1/1");
        assert!(Cipher::is_sealed(&sealed));
        assert_eq!(Cipher::key_id_of(&sealed), Some(1));
        assert!(!sealed.contains("Zebulon"));
        assert_eq!(
            c.open_string(&sealed, b"Patient/p1/1").unwrap(),
            "{\"name\":\"Zebulon\"}"
        );
        assert!(matches!(
            c.open(&sealed, b"Patient/p2/1"),
            Err(KeyError::Damaged(_))
        ));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 3;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(c.open(&tampered, b"Patient/p1/1").is_err());
        assert_ne!(c.seal(b"x", b""), c.seal(b"x", b""), "fresh nonces");
    }

    #[test]
    fn a_wrong_kek_is_named_and_rotation_keeps_values_readable() {
        let kek = LocalKek::new(DataKey::generate());
        let other = LocalKek::new(DataKey::generate());
        let mut ring = Keyring::create(&kek, 0).unwrap();
        let e = ring.unlock(&other, None).unwrap_err();
        assert!(matches!(e, KeyError::WrongKey { .. }), "{e}");
        assert!(e.to_string().contains(&kek.id()), "{e}");

        let c1 = ring.unlock(&kek, None).unwrap();
        let old = c1.seal(b"before", b"a");
        // KEK rotation: same data keys, new wrapping
        let ring2 = ring.rewrap(&kek, &other).unwrap();
        assert_eq!(ring2.kek_id, other.id());
        assert!(ring2.unlock(&kek, None).is_err());
        let c2 = ring2.unlock(&other, None).unwrap();
        assert_eq!(c2.open(&old, b"a").unwrap(), b"before");
        assert_eq!(c2.active_key(), c1.active_key());
        // data key rotation: a new key seals, the old one still opens
        let id = ring.add_data_key(&kek, 1).unwrap();
        assert_eq!((id, ring.active_id()), (2, Some(2)));
        let c3 = ring.unlock(&kek, Some(&c1)).unwrap();
        assert_eq!(c3.active_id(), 2);
        let new = c3.seal(b"after", b"a");
        assert_eq!(Cipher::key_id_of(&new), Some(2));
        assert_eq!(c3.open(&old, b"a").unwrap(), b"before");
        assert!(matches!(c1.open(&new, b"a"), Err(KeyError::UnknownKey(2))));
        ring.remove(&[1]);
        assert_eq!(ring.keys.len(), 1);
    }

    #[test]
    fn keyring_files_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring.json");
        assert!(Keyring::load(&p).unwrap().is_none());
        let kek = LocalKek::new(DataKey::generate());
        let ring = Keyring::create(&kek, 5).unwrap();
        ring.save(&p).unwrap();
        assert_eq!(Keyring::load(&p).unwrap().unwrap(), ring);
        assert!(!dir.path().join("keyring.json.new").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        std::fs::write(&p, "{").unwrap();
        assert!(Keyring::load(&p)
            .unwrap_err()
            .to_string()
            .contains("damaged"));
    }
}
