//! [`AuthStore`] on SQLite: `auth.sqlite` in the data directory, schema versioned with
//! `PRAGMA user_version`. One connection behind a mutex: every call is a single short
//! statement, and WAL plus a busy timeout let `salus auth …` write while a server runs.

use crate::store::*;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use std::sync::Mutex;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "auth.sqlite";

const MIGRATIONS: &[&str] = &[
    // 1: first schema.
    "CREATE TABLE clients (
        client_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        secret_hash TEXT,
        redirect_uris TEXT NOT NULL,
        scope TEXT NOT NULL,
        jwks TEXT,
        jwks_uri TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        fhir_user TEXT,
        roles TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE auth_codes (code_hash TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at INTEGER NOT NULL);
    CREATE TABLE refresh_tokens (token_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, data TEXT NOT NULL, expires_at INTEGER NOT NULL);
    CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL);
    CREATE TABLE assertion_jtis (client_id TEXT NOT NULL, jti TEXT NOT NULL, expires_at INTEGER NOT NULL, PRIMARY KEY (client_id, jti));
    CREATE TABLE launches (id TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at INTEGER NOT NULL);",
];

pub struct SqliteAuthStore {
    conn: Mutex<Connection>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Backend(format!("a stored record is damaged: {e}")))
}

impl SqliteAuthStore {
    /// Opens (creating and migrating) `dir/auth.sqlite`.
    pub fn open_in(dir: &Path) -> Result<SqliteAuthStore, StoreError> {
        Self::open_in_with_key(dir, None)
    }

    /// [`SqliteAuthStore::open_in`], encrypted under `key` (SQLCipher) when one is given.
    pub fn open_in_with_key(
        dir: &Path,
        key: Option<&salus_keys::DataKey>,
    ) -> Result<SqliteAuthStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        Self::open_with_key(&dir.join(DB_FILE), key)
    }

    pub fn open(path: &Path) -> Result<SqliteAuthStore, StoreError> {
        Self::open_with_key(path, None)
    }

    /// Opens `path`, encrypted under `key` when one is given: an encrypted file without
    /// a key, a plaintext one with a key, or a wrong key is refused with a message
    /// saying so.
    pub fn open_with_key(
        path: &Path,
        key: Option<&salus_keys::DataKey>,
    ) -> Result<SqliteAuthStore, StoreError> {
        use salus_keys::sqlcipher;
        sqlcipher::check_file(path, key).map_err(backend)?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        sqlcipher::apply_key(&conn, key, path).map_err(backend)?;
        // It holds password and secret hashes: readable by the server's user only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Self::init(conn)
    }

    pub fn in_memory() -> Result<SqliteAuthStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> Result<SqliteAuthStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(backend)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Backend(format!(
                "the auth database has schema version {version}, newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(sql).map_err(backend)?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        Ok(SqliteAuthStore {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Backend("the auth database lock is poisoned".into()))?;
        f(&conn).map_err(backend)
    }
}

fn client_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(Client, String, Option<String>)> {
    let kind: String = r.get(2)?;
    let uris: String = r.get(4)?;
    let jwks: Option<String> = r.get(6)?;
    Ok((
        Client {
            client_id: r.get(0)?,
            name: r.get(1)?,
            kind: ClientKind::parse(&kind).unwrap_or(ClientKind::Public),
            secret_hash: r.get(3)?,
            redirect_uris: Vec::new(),
            scope: r.get(5)?,
            jwks: None,
            jwks_uri: r.get(7)?,
            created_at: r.get(8)?,
        },
        uris,
        jwks,
    ))
}

fn finish_client(
    (mut c, uris, jwks): (Client, String, Option<String>),
) -> Result<Client, StoreError> {
    c.redirect_uris = from_json(&uris)?;
    c.jwks = jwks.as_deref().map(from_json).transpose()?;
    Ok(c)
}

const CLIENT_COLS: &str =
    "client_id, name, kind, secret_hash, redirect_uris, scope, jwks, jwks_uri, created_at";

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Backend(m) if m.contains("UNIQUE"))
}

#[async_trait]
impl AuthStore for SqliteAuthStore {
    async fn insert_client(&self, c: &Client) -> Result<(), StoreError> {
        let uris = to_json(&c.redirect_uris)?;
        let jwks = c.jwks.as_ref().map(to_json).transpose()?;
        self.with(|db| {
            db.execute(
                &format!("INSERT INTO clients ({CLIENT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![c.client_id, c.name, c.kind.as_str(), c.secret_hash, uris, c.scope, jwks, c.jwks_uri, c.created_at],
            )
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Exists(format!("client '{}'", c.client_id))
            } else {
                e
            }
        })?;
        Ok(())
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        self.with(|db| {
            db.query_row(
                &format!("SELECT {CLIENT_COLS} FROM clients WHERE client_id = ?1"),
                [client_id],
                client_from_row,
            )
            .optional()
        })?
        .map(finish_client)
        .transpose()
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let rows = self.with(|db| {
            let mut st = db.prepare(&format!(
                "SELECT {CLIENT_COLS} FROM clients ORDER BY created_at, client_id"
            ))?;
            let rows = st.query_map([], client_from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(finish_client).collect()
    }

    async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM refresh_tokens WHERE client_id = ?1",
                [client_id],
            )?;
            db.execute("DELETE FROM clients WHERE client_id = ?1", [client_id])
        })
        .map(|n| n > 0)
    }

    async fn insert_user(&self, u: &User) -> Result<(), StoreError> {
        let roles = to_json(&u.roles)?;
        self.with(|db| {
            db.execute(
                "INSERT INTO users (username, password_hash, fhir_user, roles, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![u.username, u.password_hash, u.fhir_user, roles, u.created_at],
            )
        })
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Exists(format!("user '{}'", u.username))
            } else {
                e
            }
        })?;
        Ok(())
    }

    async fn user(&self, username: &str) -> Result<Option<User>, StoreError> {
        let row = self.with(|db| {
            db.query_row(
                "SELECT username, password_hash, fhir_user, roles, created_at FROM users WHERE username = ?1",
                [username],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?, r.get(4)?)),
            )
            .optional()
        })?;
        row.map(|(username, password_hash, fhir_user, roles, created_at)| {
            Ok(User {
                username,
                password_hash,
                fhir_user,
                roles: from_json(&roles)?,
                created_at,
            })
        })
        .transpose()
    }

    async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows: Vec<(String, String, Option<String>, String, i64)> = self.with(|db| {
            let mut st = db.prepare(
                "SELECT username, password_hash, fhir_user, roles, created_at FROM users ORDER BY username",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(username, password_hash, fhir_user, roles, created_at)| {
                Ok(User {
                    username,
                    password_hash,
                    fhir_user,
                    roles: from_json(&roles)?,
                    created_at,
                })
            })
            .collect()
    }

    async fn put_code(&self, code_hash: &str, r: &CodeRecord) -> Result<(), StoreError> {
        let data = to_json(r)?;
        self.with(|db| {
            db.execute(
                "INSERT INTO auth_codes (code_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![code_hash, data, r.expires_at],
            )
        })?;
        Ok(())
    }

    async fn take_code(&self, code_hash: &str) -> Result<Option<CodeRecord>, StoreError> {
        let data: Option<String> = self.with(|db| {
            db.query_row(
                "DELETE FROM auth_codes WHERE code_hash = ?1 RETURNING data",
                [code_hash],
                |r| r.get(0),
            )
            .optional()
        })?;
        data.as_deref().map(from_json).transpose()
    }

    async fn put_refresh(&self, token_hash: &str, r: &RefreshRecord) -> Result<(), StoreError> {
        let data = to_json(r)?;
        self.with(|db| {
            db.execute(
                "INSERT INTO refresh_tokens (token_hash, client_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash, r.grant.client_id, data, r.expires_at],
            )
        })?;
        Ok(())
    }

    async fn refresh(&self, token_hash: &str) -> Result<Option<RefreshRecord>, StoreError> {
        let data: Option<String> = self.with(|db| {
            db.query_row(
                "SELECT data FROM refresh_tokens WHERE token_hash = ?1",
                [token_hash],
                |r| r.get(0),
            )
            .optional()
        })?;
        data.as_deref().map(from_json).transpose()
    }

    async fn delete_refresh(&self, token_hash: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "DELETE FROM refresh_tokens WHERE token_hash = ?1",
                [token_hash],
            )
        })
        .map(|n| n > 0)
    }

    async fn revoke_jti(&self, jti: &str, expires_at: i64) -> Result<(), StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)
                 ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
                params![jti, expires_at],
            )
        })?;
        Ok(())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        self.with(|db| {
            db.query_row("SELECT 1 FROM revoked_tokens WHERE jti = ?1", [jti], |_| {
                Ok(())
            })
            .optional()
        })
        .map(|r| r.is_some())
    }

    async fn use_assertion_jti(
        &self,
        client_id: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            db.execute(
                "INSERT INTO assertion_jtis (client_id, jti, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![client_id, jti, expires_at],
            )
        })
        .map(|n| n == 1)
    }

    async fn put_launch(&self, id: &str, ctx: &LaunchContext) -> Result<(), StoreError> {
        let data = to_json(ctx)?;
        self.with(|db| {
            db.execute(
                "INSERT INTO launches (id, data, expires_at) VALUES (?1, ?2, ?3)",
                params![id, data, ctx.expires_at],
            )
        })?;
        Ok(())
    }

    async fn launch(&self, id: &str) -> Result<Option<LaunchContext>, StoreError> {
        let data: Option<String> = self.with(|db| {
            db.query_row("SELECT data FROM launches WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })?;
        data.as_deref().map(from_json).transpose()
    }

    async fn purge_expired(&self, now: i64) -> Result<(), StoreError> {
        self.with(|db| {
            for table in [
                "auth_codes",
                "refresh_tokens",
                "revoked_tokens",
                "assertion_jtis",
                "launches",
            ] {
                db.execute(&format!("DELETE FROM {table} WHERE expires_at < ?1"), [now])?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteAuthStore::open_in(dir.path()).unwrap();
        crate::contract::run_all(&s).await;
        drop(s);
        // Reopening finds the schema and the data in place.
        let s = SqliteAuthStore::open_in(dir.path()).unwrap();
        assert!(s.client("contract-a").await.unwrap().is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DB_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn encrypted_passes_the_contract_and_hides_its_records() {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let key = salus_keys::DataKey::generate();
            let k = encrypted.then_some(&key);
            let s = SqliteAuthStore::open_in_with_key(dir.path(), k).unwrap();
            crate::contract::run_all(&s).await;
            s.with(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
                .unwrap();
            let leaked = std::fs::read_dir(dir.path()).unwrap().any(|e| {
                let bytes = std::fs::read(e.unwrap().path()).unwrap();
                bytes.windows(10).any(|w| w == b"contract-a")
            });
            assert_eq!(leaked, !encrypted, "encrypted: {encrypted}");
            drop(s);
            let s = SqliteAuthStore::open_in_with_key(dir.path(), k).unwrap();
            assert!(s.client("contract-a").await.unwrap().is_some());
            drop(s);
            if encrypted {
                let e = SqliteAuthStore::open_in(dir.path()).err().unwrap();
                assert!(e.to_string().contains("[encryption]"), "{e}");
                let other = salus_keys::DataKey::generate();
                let e = SqliteAuthStore::open_in_with_key(dir.path(), Some(&other))
                    .err()
                    .unwrap();
                assert!(e.to_string().contains("wrong encryption key"), "{e}");
            }
        }
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteAuthStore::open(&path).err().unwrap();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
