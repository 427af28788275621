//! The built-in server's signing keys: ES256 (P-256), kept in `auth-keys.json` in the data
//! directory (mode 0600), generated on first start. The first key signs; every key in the
//! file verifies and is published in the JWKS, so a rotated-out key keeps verifying the
//! tokens it signed until it is dropped.

use crate::jws::{self, KeyEntry, PublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The key file's name inside the data directory.
pub const KEY_FILE: &str = "auth-keys.json";

#[derive(thiserror::Error, Debug)]
pub enum KeyError {
    #[error("cannot read or write the key file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the key file {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("{0}")]
    Refused(String),
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    keys: Vec<StoredKey>,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    alg: String,
    created_at: i64,
    /// The private scalar, base64url.
    d: String,
}

/// One signing key.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub created_at: i64,
    key: p256::ecdsa::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created_at", &self.created_at)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    pub fn generate(now: i64) -> SigningKey {
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let kid = jws::ec_thumbprint(&jws::p256_jwk(key.verifying_key()));
        SigningKey {
            kid,
            created_at: now,
            key,
        }
    }

    /// The public JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk = jws::p256_jwk(self.key.verifying_key());
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!("ES256");
        jwk["use"] = json!("sig");
        jwk
    }

    pub fn sign(&self, claims: &Value) -> String {
        jws::sign_es256(&self.key, &self.kid, claims)
    }
}

/// The server's keys, newest (the signer) first.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
    path: Option<PathBuf>,
}

impl KeyRing {
    /// A ring of one fresh key kept only in memory (tests).
    pub fn ephemeral(now: i64) -> KeyRing {
        KeyRing {
            keys: vec![SigningKey::generate(now)],
            path: None,
        }
    }

    /// Loads `dir/auth-keys.json`, creating it with one new key if it does not exist.
    pub fn load_or_create(dir: &Path, now: i64) -> Result<KeyRing, KeyError> {
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            std::fs::create_dir_all(dir).map_err(|source| KeyError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let ring = KeyRing {
                keys: vec![SigningKey::generate(now)],
                path: Some(path),
            };
            ring.save()?;
            tracing::info!(kid = %ring.keys[0].kid, "generated a new token signing key");
            return Ok(ring);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        let damaged = |reason: String| KeyError::Damaged {
            path: path.clone(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| damaged(e.to_string()))?;
        if file.version != 1 {
            return Err(damaged(format!("unknown version {}", file.version)));
        }
        let mut keys = Vec::new();
        for k in file.keys {
            if k.alg != "ES256" {
                return Err(damaged(format!(
                    "key {} has unsupported alg {}",
                    k.kid, k.alg
                )));
            }
            let d = URL_SAFE_NO_PAD
                .decode(&k.d)
                .map_err(|_| damaged(format!("key {} is not base64url", k.kid)))?;
            let key = p256::ecdsa::SigningKey::from_slice(&d)
                .map_err(|_| damaged(format!("key {} is not a P-256 scalar", k.kid)))?;
            keys.push(SigningKey {
                kid: k.kid,
                created_at: k.created_at,
                key,
            });
        }
        if keys.is_empty() {
            return Err(damaged("it holds no keys".into()));
        }
        Ok(KeyRing {
            keys,
            path: Some(path),
        })
    }

    /// Writes the file (mode 0600), through a temporary file and a rename.
    fn save(&self) -> Result<(), KeyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = KeyFile {
            version: 1,
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.kid.clone(),
                    alg: "ES256".into(),
                    created_at: k.created_at,
                    d: URL_SAFE_NO_PAD.encode(k.key.to_bytes()),
                })
                .collect(),
        };
        let text =
            serde_json::to_string_pretty(&file).map_err(|e| KeyError::Refused(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        let io = |source| KeyError::Io {
            path: path.clone(),
            source,
        };
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
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// The key that signs new tokens.
    pub fn signer(&self) -> &SigningKey {
        &self.keys[0]
    }

    pub fn keys(&self) -> &[SigningKey] {
        &self.keys
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Value {
        json!({"keys": self.keys.iter().map(SigningKey::public_jwk).collect::<Vec<_>>()})
    }

    /// Verifying keys for [`jws::Decoded::verify_with`].
    pub fn verifying_keys(&self) -> Vec<KeyEntry> {
        self.keys
            .iter()
            .map(|k| KeyEntry {
                kid: Some(k.kid.clone()),
                alg: Some("ES256".into()),
                key: PublicKey::P256(*k.key.verifying_key()),
            })
            .collect()
    }

    /// Adds a new signing key in front (it signs from now on); older keys still verify.
    pub fn rotate(&mut self, now: i64) -> Result<&SigningKey, KeyError> {
        self.keys.insert(0, SigningKey::generate(now));
        self.save()?;
        Ok(&self.keys[0])
    }

    /// Drops a key that is no longer the signer; tokens it signed stop verifying.
    pub fn drop_key(&mut self, kid: &str) -> Result<(), KeyError> {
        let Some(i) = self.keys.iter().position(|k| k.kid == kid) else {
            return Err(KeyError::Refused(format!("there is no key '{kid}'")));
        };
        if i == 0 {
            return Err(KeyError::Refused(format!(
                "key '{kid}' is the current signer; rotate first"
            )));
        }
        self.keys.remove(i);
        self.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_load_rotate_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = KeyRing::load_or_create(dir.path(), 10).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let first = ring.signer().kid.clone();
        let token = ring.signer().sign(&json!({"exp": 1}));
        let again = KeyRing::load_or_create(dir.path(), 20).unwrap();
        assert_eq!(again.signer().kid, first);
        ring.rotate(30).unwrap();
        assert_ne!(ring.signer().kid, first);
        let reloaded = KeyRing::load_or_create(dir.path(), 40).unwrap();
        assert_eq!(reloaded.keys().len(), 2);
        assert_eq!(reloaded.jwks()["keys"].as_array().unwrap().len(), 2);
        // The old key still verifies what it signed.
        let d = jws::decode(&token).unwrap();
        d.verify_with(&reloaded.verifying_keys()).unwrap();
        let new_kid = ring.signer().kid.clone();
        assert!(ring.drop_key(&new_kid).is_err());
        ring.drop_key(&first).unwrap();
        let reloaded = KeyRing::load_or_create(dir.path(), 50).unwrap();
        assert_eq!(
            d.verify_with(&reloaded.verifying_keys()),
            Err(crate::AuthError::UnknownKey)
        );
        std::fs::write(dir.path().join(KEY_FILE), "{").unwrap();
        assert!(matches!(
            KeyRing::load_or_create(dir.path(), 60),
            Err(KeyError::Damaged { .. })
        ));
    }
}
