//! SQLite files encrypted whole by SQLCipher (feature `sqlcipher`): how a data key is
//! given to a connection, how a file's state is told, and the offline operations of
//! `salus keys` (encrypt a plaintext file, change a file's key).
//!
//! SQLCipher 4 defaults: every page (of the database and of its WAL) is encrypted with
//! AES-256-CBC under the key and authenticated with HMAC-SHA512; only the 16-byte salt
//! at the start of the file is readable. The key is given raw (`x'…'`), so no
//! passphrase derivation runs when a connection opens.

use crate::DataKey;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use std::path::{Path, PathBuf};

/// The first 16 bytes of every unencrypted SQLite database file.
const PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// What is at a database path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// No file, or an empty one: it will be created as configured.
    Missing,
    Plain,
    Encrypted,
}

#[derive(Debug, thiserror::Error)]
pub enum DbKeyError {
    #[error(
        "the database {0} is not encrypted, but encryption is on: stop the server and run \
         `salus keys encrypt` to encrypt it (docs/security.md), or turn encryption off"
    )]
    NotEncrypted(PathBuf),
    #[error(
        "the database {0} is encrypted (or is not a SQLite database): configure [encryption] \
         with its key (encryption.key_file, or the SALUS_ENCRYPTION_KEY variable)"
    )]
    Encrypted(PathBuf),
    #[error("wrong encryption key for the database {0}: the data key does not open it")]
    WrongKey(PathBuf),
    #[error(
        "the database {0} is in use: stop the server (and any other salus command on it) first"
    )]
    InUse(PathBuf),
    #[error("{path}: {message}")]
    Sqlite { path: PathBuf, message: String },
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> DbKeyError + '_ {
    move |e| DbKeyError::Sqlite {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Whether the file at `path` is absent, plaintext or encrypted.
pub fn file_state(path: &Path) -> Result<FileState, DbKeyError> {
    use std::io::Read;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => {
            return Err(DbKeyError::Sqlite {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let mut head = [0u8; 16];
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                return Err(DbKeyError::Sqlite {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })
            }
        }
    }
    Ok(match got {
        0 => FileState::Missing,
        16 if &head == PLAIN_HEADER => FileState::Plain,
        _ => FileState::Encrypted,
    })
}

/// Refuse a file whose state does not match the configuration, before opening it
/// (an encrypted file without a key, a plaintext one with a key).
pub fn check_file(path: &Path, key: Option<&DataKey>) -> Result<FileState, DbKeyError> {
    let state = file_state(path)?;
    match (state, key) {
        (FileState::Plain, Some(_)) => Err(DbKeyError::NotEncrypted(path.to_path_buf())),
        (FileState::Encrypted, None) => Err(DbKeyError::Encrypted(path.to_path_buf())),
        _ => Ok(state),
    }
}

/// Give `key` to a fresh connection (first thing, before any other statement), then
/// read the schema to prove the key right. Without a key, nothing is done.
pub fn apply_key(conn: &Connection, key: Option<&DataKey>, path: &Path) -> Result<(), DbKeyError> {
    let Some(key) = key else {
        return Ok(());
    };
    let stmt = zeroize::Zeroizing::new(format!(
        "PRAGMA key = {};",
        key.sqlcipher_literal().as_str()
    ));
    conn.execute_batch(&stmt).map_err(sqlite(path))?;
    verify(conn, path)
}

fn verify(conn: &Connection, path: &Path) -> Result<(), DbKeyError> {
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(f, _)) if f.code == ErrorCode::NotADatabase => {
            Err(DbKeyError::WrongKey(path.to_path_buf()))
        }
        Err(e) => Err(sqlite(path)(e)),
    }
}

/// Which of `candidates` opens the encrypted file at `path` (a rotation interrupted
/// between re-keying and saving the keyring leaves the file under another key than
/// the keyring's active one).
pub fn probe(path: &Path, candidates: &[&DataKey]) -> Result<Option<usize>, DbKeyError> {
    for (i, key) in candidates.iter().enumerate() {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(sqlite(path))?;
        match apply_key(&conn, Some(key), path) {
            Ok(()) => return Ok(Some(i)),
            Err(DbKeyError::WrongKey(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Take the file for this connection alone: leaving WAL mode needs every other
/// connection closed, so success proves no server has it open.
fn exclusive(conn: &Connection, path: &Path) -> Result<(), DbKeyError> {
    conn.busy_timeout(std::time::Duration::from_millis(200))
        .map_err(sqlite(path))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) =>
            {
                DbKeyError::InUse(path.to_path_buf())
            }
            _ => sqlite(path)(e),
        })?;
    if !mode.eq_ignore_ascii_case("delete") {
        return Err(DbKeyError::InUse(path.to_path_buf()));
    }
    Ok(())
}

/// Check that no other connection has the database open (offline operations refuse
/// otherwise), leaving it as it was.
pub fn ensure_unused(path: &Path, key: Option<&DataKey>) -> Result<(), DbKeyError> {
    let conn = Connection::open(path).map_err(sqlite(path))?;
    apply_key(&conn, key, path)?;
    exclusive(&conn, path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(sqlite(path))
}

fn remove_sidecars(path: &Path) {
    for ext in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

/// Encrypt the plaintext database at `path` under `key` (offline: refuses while
/// another connection has it open). The encrypted copy is written beside it with
/// `sqlcipher_export` and renamed over it, so an interruption leaves the plaintext
/// file intact. The copy is made with `secure_delete` on: no stale plaintext page
/// carries over. Returns false when the file was already encrypted.
pub fn encrypt_file(path: &Path, key: &DataKey) -> Result<bool, DbKeyError> {
    match file_state(path)? {
        FileState::Missing | FileState::Encrypted => return Ok(false),
        FileState::Plain => {}
    }
    let tmp = path.with_extension("encrypting");
    let _ = std::fs::remove_file(&tmp);
    {
        let conn = Connection::open(path).map_err(sqlite(path))?;
        exclusive(&conn, path)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sqlite(path))?;
        let tmp_text = tmp
            .to_str()
            .ok_or_else(|| DbKeyError::Sqlite {
                path: path.to_path_buf(),
                message: "the path is not valid UTF-8".into(),
            })?
            .to_string();
        let lit = key.sqlcipher_literal();
        // the raw-key literal without its double quotes, bound as text
        let raw = zeroize::Zeroizing::new(lit[1..lit.len() - 1].to_string());
        conn.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            rusqlite::params![tmp_text, raw.as_str()],
        )
        .map_err(sqlite(path))?;
        conn.execute_batch(&format!(
            "SELECT sqlcipher_export('encrypted'); PRAGMA encrypted.user_version = {version}; \
             DETACH DATABASE encrypted;"
        ))
        .map_err(sqlite(path))?;
        // back to WAL: the store expects it and sets it again anyway
        let _ = conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()));
    }
    // the copy must open with the key before it replaces the original
    {
        let c = Connection::open(&tmp).map_err(sqlite(&tmp))?;
        apply_key(&c, Some(key), &tmp)?;
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .map_err(sqlite(&tmp))?;
    }
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| DbKeyError::Sqlite {
            path: tmp.clone(),
            message: e.to_string(),
        })?;
    remove_sidecars(path);
    std::fs::rename(&tmp, path).map_err(|e| DbKeyError::Sqlite {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    remove_sidecars(&tmp);
    Ok(true)
}

/// Re-encrypt the database at `path` from `old` to `new` (`PRAGMA rekey`; offline:
/// refuses while another connection has it open). Every page is rewritten.
pub fn rekey_file(path: &Path, old: &DataKey, new: &DataKey) -> Result<(), DbKeyError> {
    let conn = Connection::open(path).map_err(sqlite(path))?;
    apply_key(&conn, Some(old), path)?;
    exclusive(&conn, path)?;
    let stmt = zeroize::Zeroizing::new(format!(
        "PRAGMA rekey = {};",
        new.sqlcipher_literal().as_str()
    ));
    conn.execute_batch(&stmt).map_err(sqlite(path))?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(sqlite(path))?;
    drop(conn);
    let check = Connection::open(path).map_err(sqlite(path))?;
    apply_key(&check, Some(new), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_contains(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    fn write(conn: &Connection) {
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT); \
             INSERT INTO t VALUES ('Quetzalcoatl Abernathy');",
        )
        .unwrap();
    }

    #[test]
    fn files_are_told_apart_and_keys_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        let key = DataKey::generate();
        assert_eq!(check_file(&p, Some(&key)).unwrap(), FileState::Missing);
        {
            let c = Connection::open(&p).unwrap();
            apply_key(&c, Some(&key), &p).unwrap();
            write(&c);
        }
        assert_eq!(file_state(&p).unwrap(), FileState::Encrypted);
        assert!(!raw_contains(dir.path(), b"Quetzalcoatl"));
        let e = check_file(&p, None).unwrap_err();
        assert!(e.to_string().contains("configure [encryption]"), "{e}");
        let c = Connection::open(&p).unwrap();
        let e = apply_key(&c, Some(&DataKey::generate()), &p).unwrap_err();
        assert!(matches!(e, DbKeyError::WrongKey(_)), "{e}");
        let other = DataKey::generate();
        assert_eq!(probe(&p, &[&other, &key]).unwrap(), Some(1));
        assert_eq!(probe(&p, &[&other]).unwrap(), None);

        let plain = dir.path().join("b.db");
        write(&Connection::open(&plain).unwrap());
        assert_eq!(file_state(&plain).unwrap(), FileState::Plain);
        let e = check_file(&plain, Some(&key)).unwrap_err();
        assert!(e.to_string().contains("salus keys encrypt"), "{e}");
    }

    #[test]
    fn plaintext_files_are_encrypted_and_rekeyed_offline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        write(&Connection::open(&p).unwrap());
        assert!(
            raw_contains(dir.path(), b"Quetzalcoatl"),
            "the check can fail"
        );
        let key = DataKey::generate();
        {
            let busy = Connection::open(&p).unwrap();
            busy.query_row("SELECT count(*) FROM t", [], |_| Ok(()))
                .unwrap();
            let e = encrypt_file(&p, &key).unwrap_err();
            assert!(matches!(e, DbKeyError::InUse(_)), "{e}");
        }
        ensure_unused(&p, None).unwrap();
        assert!(encrypt_file(&p, &key).unwrap());
        assert!(!encrypt_file(&p, &key).unwrap(), "already encrypted");
        assert!(!raw_contains(dir.path(), b"Quetzalcoatl"));
        let read = |k: &DataKey| {
            let c = Connection::open(&p).unwrap();
            apply_key(&c, Some(k), &p)?;
            Ok::<String, DbKeyError>(c.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap())
        };
        assert_eq!(read(&key).unwrap(), "Quetzalcoatl Abernathy");
        let new = DataKey::generate();
        {
            let busy = Connection::open(&p).unwrap();
            apply_key(&busy, Some(&key), &p).unwrap();
            let e = ensure_unused(&p, Some(&key)).unwrap_err();
            assert!(matches!(e, DbKeyError::InUse(_)), "{e}");
            let e = rekey_file(&p, &key, &new).unwrap_err();
            assert!(matches!(e, DbKeyError::InUse(_)), "{e}");
        }
        rekey_file(&p, &key, &new).unwrap();
        assert!(matches!(read(&key), Err(DbKeyError::WrongKey(_))));
        assert_eq!(read(&new).unwrap(), "Quetzalcoatl Abernathy");
        assert!(!raw_contains(dir.path(), b"Quetzalcoatl"));
    }
}
