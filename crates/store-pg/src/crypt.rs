//! Encryption of resource bodies (docs/security.md, "Encryption at rest").
//!
//! PostgreSQL has no page encryption of its own, so with encryption on every body
//! (current and history versions alike) is sealed here before it is sent, as an
//! AES-256-GCM envelope (`salus_keys::Cipher`) bound to its `rtype/id/version`, and
//! opened after it is read. The data keys live wrapped in `salus_keyring`; the
//! key-encryption key never reaches the database. Index tables stay plaintext: SQL
//! search needs them (docs/security.md says which values that leaves readable).
//!
//! Several processes may share the database, and `salus keys rotate` runs beside them:
//! each process re-reads the keyring when a value names a data key it does not hold,
//! and at the start of a transaction when its copy is older than [`REFRESH`]. A
//! trigger on `resource_versions` refuses a plaintext body, and a body sealed under a
//! retired or unknown key, so no process can store what the keyring cannot open
//! (a refused write answers "busy, retry" and refreshes the keyring).

use crate::{col, db_err, StoreError};
use deadpool_postgres::ClientWrapper;
use salus_keys::{Cipher, KeyEncryptionKey, KeyError, Keyring, WrappedKey};
use salus_store::{Result, VersionRecord};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;

/// How old a process's copy of the keyring may get before a transaction re-reads it
/// (the default of `PgOptions::keyring_refresh`).
pub const REFRESH: Duration = Duration::from_secs(10);

/// Advisory lock class for setting up the keyring (second key: the schema's hash).
const KEYRING_LOCK: i32 = 0x5a1_0006;

/// SQLSTATE of the trigger's refusal of a body under a retired or unknown data key.
pub(crate) const STALE_KEY_STATE: &str = "SA002";

const SETUP: &str = r#"
CREATE TABLE IF NOT EXISTS salus_keyring (
    dek_id integer PRIMARY KEY,
    kek_id text NOT NULL,
    wrapped text NOT NULL,
    created_at bigint NOT NULL,
    retired boolean NOT NULL DEFAULT false
);
CREATE OR REPLACE FUNCTION salus_check_body_key() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    IF NEW.body IS NULL THEN
        RETURN NEW;
    END IF;
    IF left(NEW.body, 5) <> 'enc1:' THEN
        RAISE EXCEPTION 'resource bodies in this database are encrypted: a plaintext body was refused (configure [encryption])'
            USING ERRCODE = 'SA001';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM salus_keyring k
                   WHERE k.dek_id::text = split_part(NEW.body, ':', 2) AND NOT k.retired) THEN
        RAISE EXCEPTION 'data key % is retired or unknown (the keyring was rotated); retry', split_part(NEW.body, ':', 2)
            USING ERRCODE = 'SA002';
    END IF;
    RETURN NEW;
END
$f$;
DO $d$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                   WHERE t.tgname = 'salus_body_key' AND c.oid = 'resource_versions'::regclass) THEN
        CREATE TRIGGER salus_body_key BEFORE INSERT OR UPDATE OF body ON resource_versions
            FOR EACH ROW EXECUTE FUNCTION salus_check_body_key();
    END IF;
END
$d$;
"#;

fn key_err(e: KeyError) -> StoreError {
    StoreError::Backend(format!("encryption: {e}"))
}

/// This process's keys: the KEK (to unwrap data keys that appear later) and the
/// unwrapped data keys.
pub(crate) struct BodyCrypt {
    kek: Arc<dyn KeyEncryptionKey>,
    cipher: RwLock<Arc<Cipher>>,
    /// When the keyring was last read; `None` forces a re-read.
    refreshed: Mutex<Option<Instant>>,
    /// How old that may get.
    refresh_every: Duration,
}

/// Whether the keyring table exists and holds keys (encryption was turned on).
pub(crate) async fn has_keyring(c: &ClientWrapper) -> Result<bool> {
    let row = c
        .query_one("SELECT to_regclass('salus_keyring') IS NOT NULL", &[])
        .await
        .map_err(db_err)?;
    if !col::<bool>(&row, 0)? {
        return Ok(false);
    }
    let row = c
        .query_one("SELECT EXISTS (SELECT 1 FROM salus_keyring)", &[])
        .await
        .map_err(db_err)?;
    col(&row, 0)
}

/// The keyring as stored (`None`: no keys).
pub(crate) async fn load_keyring(c: &ClientWrapper) -> Result<Option<Keyring>> {
    let rows = c
        .query(
            "SELECT dek_id, kek_id, wrapped, created_at, retired FROM salus_keyring ORDER BY dek_id",
            &[],
        )
        .await
        .map_err(db_err)?;
    let mut kek_id: Option<String> = None;
    let mut keys = vec![];
    for r in &rows {
        let k: String = col(r, 1)?;
        match &kek_id {
            Some(prev) if *prev != k => {
                return Err(StoreError::Backend(format!(
                    "encryption: the keyring's data keys are wrapped by two keys ({prev}, {k})"
                )))
            }
            _ => kek_id = Some(k),
        }
        keys.push(WrappedKey {
            id: u32::try_from(col::<i32>(r, 0)?).unwrap_or(0),
            wrapped: col(r, 2)?,
            created_at: col(r, 3)?,
            retired: col(r, 4)?,
        });
    }
    Ok(kek_id.map(|kek_id| Keyring {
        format: 1,
        kek_id,
        keys,
    }))
}

async fn insert_key(c: &ClientWrapper, kek_id: &str, k: &WrappedKey) -> Result<()> {
    let id = i32::try_from(k.id).unwrap_or(i32::MAX);
    c.execute(
        "INSERT INTO salus_keyring (dek_id, kek_id, wrapped, created_at, retired) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &kek_id, &k.wrapped, &k.created_at, &k.retired],
    )
    .await
    .map_err(db_err)?;
    Ok(())
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Create the keyring table and trigger if needed, create the first data key on first
/// use, and unlock the keyring with `kek` (a wrong key is named).
pub(crate) async fn setup(
    c: &ClientWrapper,
    schema: Option<&str>,
    kek: Arc<dyn KeyEncryptionKey>,
    refresh_every: Duration,
) -> Result<BodyCrypt> {
    let lock_key = schema.unwrap_or("public");
    c.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&KEYRING_LOCK, &lock_key],
    )
    .await
    .map_err(db_err)?;
    let r = async {
        c.batch_execute(&format!("BEGIN; {SETUP} COMMIT;"))
            .await
            .map_err(db_err)?;
        let ring = match load_keyring(c).await? {
            Some(r) => r,
            None => {
                let ring = Keyring::create(kek.as_ref(), now()).map_err(key_err)?;
                insert_key(c, &ring.kek_id, &ring.keys[0]).await?;
                tracing::info!(
                    kek = %ring.kek_id,
                    "encryption on: created the first data key of this database"
                );
                ring
            }
        };
        let cipher = ring.unlock(kek.as_ref(), None).map_err(key_err)?;
        Ok(BodyCrypt {
            kek: kek.clone(),
            cipher: RwLock::new(Arc::new(cipher)),
            refreshed: Mutex::new(Some(Instant::now())),
            refresh_every,
        })
    }
    .await;
    if r.is_err() {
        let _ = c.batch_execute("ROLLBACK").await;
    }
    let _ = c
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&KEYRING_LOCK, &lock_key],
        )
        .await;
    r
}

fn aad(rtype: &str, id: &str, version: u64) -> Vec<u8> {
    format!("{rtype}/{id}/{version}").into_bytes()
}

impl BodyCrypt {
    fn cipher(&self) -> Arc<Cipher> {
        self.cipher.read().expect("cipher lock").clone()
    }

    /// Seal a body for `rtype/id/version` under the active data key.
    pub(crate) fn seal(&self, rtype: &str, id: &str, version: u64, body: &str) -> String {
        self.cipher()
            .seal(body.as_bytes(), &aad(rtype, id, version))
    }

    /// Whether the keyring should be re-read before the next write.
    pub(crate) fn stale(&self) -> bool {
        match *self.refreshed.lock().expect("refresh lock") {
            Some(t) => t.elapsed() > self.refresh_every,
            None => true,
        }
    }

    /// Re-read the keyring on the next transaction (a write was refused under a
    /// retired key).
    pub(crate) fn mark_stale(&self) {
        *self.refreshed.lock().expect("refresh lock") = None;
    }

    /// Re-read the keyring and unwrap the data keys not yet held.
    pub(crate) async fn refresh(&self, c: &ClientWrapper) -> Result<()> {
        let ring = load_keyring(c).await?.ok_or_else(|| {
            StoreError::Backend("encryption: the keyring of this database is empty".into())
        })?;
        let old = self.cipher();
        let cipher = ring
            .unlock(self.kek.as_ref(), Some(&old))
            .map_err(key_err)?;
        if cipher.active_id() != old.active_id() {
            tracing::info!(
                data_key = cipher.active_id(),
                "encryption: new data key in use for writes"
            );
        }
        *self.cipher.write().expect("cipher lock") = Arc::new(cipher);
        *self.refreshed.lock().expect("refresh lock") = Some(Instant::now());
        Ok(())
    }

    /// Open a record's body in place. A body stored before encryption was turned on
    /// is returned as it is.
    fn open(&self, cipher: &Cipher, r: &mut VersionRecord) -> std::result::Result<(), KeyError> {
        if let Some(b) = r.body.as_deref().filter(|b| Cipher::is_sealed(b)) {
            let plain = cipher.open_string(b, &aad(&r.rtype, &r.id, r.version))?;
            r.body = Some(plain);
        }
        Ok(())
    }

    /// Open the bodies of `records`; a data key not held yet (rotated by another
    /// process) makes one re-read of the keyring.
    pub(crate) async fn reveal(
        &self,
        c: &ClientWrapper,
        records: &mut [VersionRecord],
    ) -> Result<()> {
        let mut cipher = self.cipher();
        let mut refreshed = false;
        for r in records.iter_mut() {
            match self.open(&cipher, r) {
                Ok(()) => {}
                Err(KeyError::UnknownKey(_)) if !refreshed => {
                    self.refresh(c).await?;
                    refreshed = true;
                    cipher = self.cipher();
                    self.open(&cipher, r).map_err(|e| body_err(r, e))?;
                }
                Err(e) => return Err(body_err(r, e)),
            }
        }
        Ok(())
    }
}

fn body_err(r: &VersionRecord, e: KeyError) -> StoreError {
    StoreError::Backend(format!(
        "encryption: cannot open {}/{} version {}: {e}",
        r.rtype, r.id, r.version
    ))
}

/// Without encryption configured: refuse bodies that are sealed (clearly, rather than
/// returning ciphertext as a resource).
pub(crate) fn refuse_sealed(records: &[VersionRecord]) -> Result<()> {
    match records
        .iter()
        .find(|r| r.body.as_deref().is_some_and(Cipher::is_sealed))
    {
        Some(r) => Err(StoreError::Backend(format!(
            "{}/{} version {} is encrypted, but encryption is not configured: configure [encryption] with the database's key",
            r.rtype, r.id, r.version
        ))),
        None => Ok(()),
    }
}

/// How many versions the data key re-encryption rewrites per transaction.
const SWEEP_BATCH: i64 = 500;

fn no_encryption() -> StoreError {
    StoreError::Backend(
        "encryption is not configured for this database connection: configure [encryption]".into(),
    )
}

/// Key administration (`salus keys …`); safe while servers use the database.
impl crate::PgStore {
    fn crypt(&self) -> Result<&Arc<BodyCrypt>> {
        self.crypt.as_ref().ok_or_else(no_encryption)
    }

    /// The keyring as stored; `None` when encryption was never turned on.
    pub async fn keyring(&self) -> Result<Option<Keyring>> {
        let c = self.conn().await?;
        if !has_keyring(&c).await? {
            return Ok(None);
        }
        load_keyring(&c).await
    }

    /// KEK rotation: wrap every data key with `new` instead of the configured key, in
    /// one transaction. The data is untouched; servers keep the data keys they hold and
    /// need `new` configured before their next start.
    pub async fn rewrap_keyring(&self, new: &dyn KeyEncryptionKey) -> Result<usize> {
        let crypt = self.crypt()?;
        let c = self.conn().await?;
        c.batch_execute("BEGIN; LOCK TABLE salus_keyring IN EXCLUSIVE MODE;")
            .await
            .map_err(db_err)?;
        let r = async {
            let ring = load_keyring(&c)
                .await?
                .ok_or_else(|| StoreError::Backend("encryption: the keyring is empty".into()))?;
            let rewrapped = ring.rewrap(crypt.kek.as_ref(), new).map_err(key_err)?;
            for k in &rewrapped.keys {
                let id = i32::try_from(k.id).unwrap_or(i32::MAX);
                c.execute(
                    "UPDATE salus_keyring SET kek_id = $2, wrapped = $3 WHERE dek_id = $1",
                    &[&id, &rewrapped.kek_id, &k.wrapped],
                )
                .await
                .map_err(db_err)?;
            }
            c.batch_execute("COMMIT").await.map_err(db_err)?;
            Ok(rewrapped.keys.len())
        }
        .await;
        if r.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        r
    }

    /// Data key rotation, first step: add a fresh data key, which every process uses
    /// for new writes once it has re-read the keyring (within [`REFRESH`]). Older keys
    /// still encrypt until [`PgStore::retire_old_data_keys`]. Returns the new id.
    ///
    /// [`PgStore::retire_old_data_keys`]: crate::PgStore::retire_old_data_keys
    pub async fn add_data_key(&self) -> Result<u32> {
        let crypt = self.crypt()?;
        let c = self.conn().await?;
        c.batch_execute("BEGIN; LOCK TABLE salus_keyring IN EXCLUSIVE MODE;")
            .await
            .map_err(db_err)?;
        let r = async {
            let mut ring = load_keyring(&c)
                .await?
                .ok_or_else(|| StoreError::Backend("encryption: the keyring is empty".into()))?;
            // `add_data_key` checks the configured KEK is the keyring's
            let id = ring
                .add_data_key(crypt.kek.as_ref(), now())
                .map_err(key_err)?;
            let mut k = ring
                .keys
                .iter()
                .find(|k| k.id == id)
                .cloned()
                .ok_or_else(|| {
                    StoreError::Backend("encryption: the new data key went missing".into())
                })?;
            k.retired = false;
            insert_key(&c, &ring.kek_id, &k).await?;
            c.batch_execute("COMMIT").await.map_err(db_err)?;
            Ok(id)
        }
        .await;
        if r.is_err() {
            let _ = c.batch_execute("ROLLBACK").await;
        }
        let id = r?;
        crypt.refresh(&c).await?;
        Ok(id)
    }

    /// Data key rotation, second step: retire every key but the newest, so no process
    /// stores anything new under them (the trigger refuses it; that process re-reads
    /// the keyring and its client retries).
    pub async fn retire_old_data_keys(&self) -> Result<u32> {
        let crypt = self.crypt()?;
        let c = self.conn().await?;
        c.execute(
            "UPDATE salus_keyring SET retired = true \
             WHERE dek_id <> (SELECT max(dek_id) FROM salus_keyring) AND NOT retired",
            &[],
        )
        .await
        .map_err(db_err)?;
        crypt.refresh(&c).await?;
        Ok(crypt.cipher().active_id())
    }

    /// Re-encrypt, under the active data key, every stored version that is not under it
    /// yet (older keys, and bodies stored before encryption was turned on), in batches
    /// of one transaction each while the database stays in use. `progress(done,
    /// total)` is called after each batch. Returns the number rewritten.
    pub async fn reencrypt(&self, progress: &mut (dyn FnMut(u64, u64) + Send)) -> Result<u64> {
        let crypt = self.crypt()?.clone();
        let c = self.conn().await?;
        crypt.refresh(&c).await?;
        let target = crypt.cipher().active_id();
        let prefix = format!("{}{target}:", salus_keys::ENVELOPE_PREFIX);
        let len = i32::try_from(prefix.len()).unwrap_or(i32::MAX);
        let total: i64 = col(
            &c.query_one(
                "SELECT count(*) FROM resource_versions WHERE body IS NOT NULL AND left(body, $2) <> $1",
                &[&prefix, &len],
            )
            .await
            .map_err(db_err)?,
            0,
        )?;
        let total = total.max(0) as u64;
        progress(0, total);
        let select = crate::prepare(
            &c,
            "SELECT rtype, id, version, last_updated, method, body, seq FROM resource_versions \
             WHERE seq > $1 AND body IS NOT NULL AND left(body, $3) <> $2 ORDER BY seq LIMIT $4",
        )
        .await?;
        let update = crate::prepare(
            &c,
            "UPDATE resource_versions SET body = $2 WHERE seq = $1 AND body = $3",
        )
        .await?;
        let mut after = 0i64;
        let mut done = 0u64;
        loop {
            let rows = c
                .query(&select, &[&after, &prefix, &len, &SWEEP_BATCH])
                .await
                .map_err(db_err)?;
            if rows.is_empty() {
                break;
            }
            let mut batch = Vec::with_capacity(rows.len());
            for row in &rows {
                let stored: String = col(row, 5)?;
                let mut rec = crate::record(row, 0)?;
                after = rec.seq;
                crypt.reveal(&c, std::slice::from_mut(&mut rec)).await?;
                let plain = rec.body.as_deref().unwrap_or_default();
                let sealed = crypt.seal(&rec.rtype, &rec.id, rec.version, plain);
                batch.push((rec.seq, sealed, stored));
            }
            c.batch_execute("BEGIN").await.map_err(db_err)?;
            let params: Vec<[&(dyn ToSql + Sync); 3]> = batch
                .iter()
                .map(|(seq, new, old)| [seq as &(dyn ToSql + Sync), new, old])
                .collect();
            let r =
                futures::future::try_join_all(params.iter().map(|p| c.execute(&update, p))).await;
            match r {
                Ok(n) => {
                    c.batch_execute("COMMIT").await.map_err(db_err)?;
                    done += n.iter().sum::<u64>();
                }
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    return Err(db_err(e));
                }
            }
            progress(done, total.max(done));
        }
        Ok(done)
    }

    /// How many stored versions each data key seals (`None`: stored before encryption
    /// was turned on). A full scan of `resource_versions`.
    pub async fn data_key_usage(&self) -> Result<Vec<(Option<u32>, u64)>> {
        let c = self.conn().await?;
        let rows = c
            .query(
                "SELECT CASE WHEN left(body, 5) = 'enc1:' THEN split_part(body, ':', 2) END, count(*) \
                 FROM resource_versions WHERE body IS NOT NULL GROUP BY 1 ORDER BY 1",
                &[],
            )
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let id: Option<String> = col(r, 0)?;
                let n: i64 = col(r, 1)?;
                Ok((id.and_then(|s| s.parse().ok()), n.max(0) as u64))
            })
            .collect()
    }

    /// Delete the retired data keys no stored version uses. Writes wait while it checks
    /// (a share lock on `resource_versions`, so no transaction still writing under a
    /// key retired since it started can commit after the check). Returns the ids removed.
    pub async fn prune_data_keys(&self) -> Result<Vec<u32>> {
        self.crypt()?;
        let c = self.conn().await?;
        c.batch_execute(
            "BEGIN; LOCK TABLE salus_keyring IN EXCLUSIVE MODE; \
             LOCK TABLE resource_versions IN SHARE MODE;",
        )
        .await
        .map_err(db_err)?;
        let r = c
            .query(
                "DELETE FROM salus_keyring k WHERE k.retired AND NOT EXISTS (\
                   SELECT 1 FROM resource_versions v \
                   WHERE left(v.body, length('enc1:' || k.dek_id || ':')) = 'enc1:' || k.dek_id || ':') \
                 RETURNING dek_id",
                &[],
            )
            .await;
        match r {
            Ok(rows) => {
                c.batch_execute("COMMIT").await.map_err(db_err)?;
                rows.iter()
                    .map(|r| Ok(u32::try_from(col::<i32>(r, 0)?).unwrap_or(0)))
                    .collect()
            }
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                Err(db_err(e))
            }
        }
    }
}
