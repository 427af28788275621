//! The PostgreSQL backend of the Salus storage traits ([`salus_store::Store`],
//! [`salus_store::StoreTx`]).
//!
//! Owns: the PostgreSQL schema and its migrations (`salus_schema`), the SQL for
//! writes, reads, history and searches, full text on `tsvector`, and the mapping of
//! PostgreSQL errors to [`StoreError`]. It passes the same backend contract suite as
//! the SQLite backend (`salus_store::contract::run_all`).
//!
//! Must not touch: FHIR semantics (the service hands over finished resource text and
//! index rows), the traits and records of `salus-store`, or any process-wide state:
//! several server processes may share one database, so correctness rests on the
//! database alone, never on locks held in this process.
//!
//! # Writes
//!
//! `put` queues the version in the transaction; the next call that reads or ends a
//! unit of work sends the queued puts pipelined and then their index rows in bulk
//! (one multi-row insert per table), and reports a conflict or failure — the
//! queued-write contract of [`StoreTx::put`]. See `write.rs`.
//!
//! # Concurrency
//!
//! A [`StoreTx`] is one PostgreSQL transaction on one pooled connection, at `READ
//! COMMITTED`. The optimistic version check of `put` is a single conditional
//! statement: an update is `UPDATE resources … WHERE rtype = $1 AND id = $2 AND
//! version = $expected`, a create is `INSERT … ON CONFLICT (rtype, id) DO NOTHING`;
//! no row affected means a conflict ([`StoreError::VersionConflict`]). Both take the
//! row lock on the resource's current-version row; a concurrent writer of the same
//! resource waits for that lock and then re-checks its condition against the newly
//! committed row (PostgreSQL re-evaluates the `WHERE` of a blocked `UPDATE`, and a
//! blocked `INSERT … ON CONFLICT` sees the committed key), so no update is lost.
//!
//! Why `READ COMMITTED` and not `SERIALIZABLE`: the only invariant the store keeps
//! across transactions is "one writer per version of a resource", which the row lock
//! plus the conditional statement enforce exactly; `SERIALIZABLE` would add
//! serialization failures on every overlapping search-then-write (conditional
//! creates), which the store could not retry by itself — a transaction's work is the
//! service's, not the store's to replay. At `READ COMMITTED` no statement here fails
//! with a serialization failure; a deadlock between two transactions that write the
//! same resources in opposite orders is reported as [`StoreError::Busy`] (the service
//! answers 503 "retry"), as are lock and statement timeouts.

mod crypt;
mod query;
mod schema;
mod text;
mod write;

use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use salus_store::{
    ContainedIndex, ContainedType, FullText, Head, HistoryPage, HistoryQuery, IndexRow, Method,
    NewVersion, Result, ScanPage, SearchPage, SearchQuery, SnapshotPage, SnapshotQuery, SortValue,
    Store, StoreError, StoreTx, VersionRecord,
};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{NoTls, Row};

pub use crypt::REFRESH as KEYRING_REFRESH;
pub use write::shard_key;
pub use write::COPY_MIN_PUTS;

/// How to connect.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections kept in the pool (each open transaction holds one).
    pub pool_size: usize,
    /// Schema holding Salus's tables, created if missing; it is set as the
    /// `search_path` of every connection. `None`: the server's default (`public`).
    /// Letters, digits and `_` only.
    pub schema: Option<String>,
    /// How long a caller waits for a free connection before [`StoreError::Busy`].
    pub wait_timeout: Duration,
    /// How long a statement waits for a row lock held by another transaction before
    /// [`StoreError::Busy`] (`lock_timeout`); zero waits without limit.
    pub lock_timeout: Duration,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
    /// Encryption at rest: the key-encryption key that unwraps the database's data
    /// keys; resource bodies are then stored sealed (see `crypt.rs`). `None`: bodies
    /// are stored as they are, and a database whose bodies are encrypted is refused.
    pub encryption: Option<std::sync::Arc<dyn salus_keys::KeyEncryptionKey>>,
    /// With encryption: how old this process's copy of the keyring may get before a
    /// transaction re-reads it (another process may have rotated a data key).
    pub keyring_refresh: Duration,
    /// A `put_many` of at least this many versions is written by binary `COPY` (bulk
    /// loads: `salus import`, `salus migrate`); smaller ones, and every batch when this
    /// is `usize::MAX`, by the queued puts.
    pub copy_min_puts: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            schema: None,
            wait_timeout: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(30),
            application_name: "salus".into(),
            encryption: None,
            keyring_refresh: crypt::REFRESH,
            copy_min_puts: COPY_MIN_PUTS,
        }
    }
}

/// The PostgreSQL store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The data keys, when encryption is on.
    crypt: Option<std::sync::Arc<crypt::BodyCrypt>>,
    /// See [`PgOptions::copy_min_puts`].
    copy_min_puts: usize,
}

/// A PostgreSQL error as a [`StoreError`]: transient conditions are `Busy`, the rest
/// `Backend` with the SQLSTATE and server message (never the statement text).
pub(crate) fn db_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code();
            let transient = [
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
                SqlState::QUERY_CANCELED,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::ADMIN_SHUTDOWN,
            ];
            let msg = format!("postgres {}: {}", code.code(), db.message());
            if transient.contains(code) || code.code() == crypt::STALE_KEY_STATE {
                StoreError::Busy(msg)
            } else {
                StoreError::Backend(msg)
            }
        }
        None if e.is_closed() => StoreError::Busy("postgres connection closed".into()),
        None => StoreError::Backend(format!("postgres: {e}")),
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => StoreError::Busy("no free PostgreSQL connection".into()),
        PoolError::Backend(e) => db_err(e),
        PoolError::Closed => StoreError::Backend("the PostgreSQL pool is closed".into()),
        PoolError::NoRuntimeSpecified => {
            StoreError::Backend("the PostgreSQL pool has no runtime".into())
        }
        PoolError::PostCreateHook(e) => StoreError::Backend(format!("postgres: {e}")),
    }
}

/// Read column `i`, reporting a type mismatch as an error rather than panicking.
pub(crate) fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| StoreError::Backend(format!("postgres: column {i}: {e}")))
}

/// A version row in [`query::VERSION_COLS`] order, from column `at`.
pub(crate) fn record(row: &Row, at: usize) -> Result<VersionRecord> {
    let method: String = col(row, at + 4)?;
    Ok(VersionRecord {
        rtype: col(row, at)?,
        id: col(row, at + 1)?,
        version: col::<i64>(row, at + 2)? as u64,
        last_updated: col(row, at + 3)?,
        method: Method::parse(&method).unwrap_or(Method::Put),
        body: col(row, at + 5)?,
        seq: col(row, at + 6)?,
    })
}

/// A schema name safe to use as a quoted identifier and in connection options.
fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

impl PgStore {
    /// Connect to `url` (`postgres://user@host:port/db`), create the schema if needed
    /// and apply pending migrations (safe when several processes start at once).
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore> {
        let mut cfg = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let mut settings = vec![format!(
            "-c lock_timeout={}",
            options.lock_timeout.as_millis()
        )];
        if let Some(s) = &options.schema {
            if !valid_schema(s) {
                return Err(StoreError::Backend(format!(
                    "invalid PostgreSQL schema name {s:?}: use letters, digits and _"
                )));
            }
            settings.push(format!("-c search_path={s}"));
        }
        let existing = cfg.get_options().unwrap_or_default().to_string();
        if !existing.is_empty() {
            settings.insert(0, existing);
        }
        cfg.options(settings.join(" "));
        cfg.application_name(&options.application_name);
        if cfg.get_connect_timeout().is_none() {
            cfg.connect_timeout(Duration::from_secs(10));
        }
        let manager = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .wait_timeout(Some(options.wait_timeout))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the PostgreSQL pool: {e}")))?;
        let mut store = PgStore {
            pool,
            crypt: None,
            copy_min_puts: options.copy_min_puts.max(1),
        };
        {
            let c = store.conn().await?;
            if let Err(e) = schema::migrate(&c, options.schema.as_deref()).await {
                // drop the connection (and with it any advisory lock it holds)
                drop(Object::take(c));
                return Err(e);
            }
            match &options.encryption {
                Some(kek) => match crypt::setup(
                    &c,
                    options.schema.as_deref(),
                    kek.clone(),
                    options.keyring_refresh,
                )
                .await
                {
                    Ok(k) => store.crypt = Some(std::sync::Arc::new(k)),
                    Err(e) => {
                        drop(Object::take(c));
                        return Err(e);
                    }
                },
                None => {
                    if crypt::has_keyring(&c).await? {
                        return Err(StoreError::Backend(
                            "the resource bodies in this database are encrypted: configure \
                             [encryption] with its key (encryption.key_file, or the \
                             SALUS_ENCRYPTION_KEY variable)"
                                .into(),
                        ));
                    }
                }
            }
        }
        Ok(store)
    }

    async fn conn(&self) -> Result<Object> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Whether resource bodies are stored encrypted.
    pub fn encrypted(&self) -> bool {
        self.crypt.is_some()
    }

    async fn reveal(&self, c: &ClientWrapper, records: &mut [VersionRecord]) -> Result<()> {
        reveal(self.crypt.as_deref(), c, records).await
    }

    /// Close every connection; later calls fail.
    pub fn close(&self) {
        self.pool.close();
    }
}

/// Open sealed bodies (or, without encryption, refuse them).
async fn reveal(
    crypt: Option<&crypt::BodyCrypt>,
    c: &ClientWrapper,
    records: &mut [VersionRecord],
) -> Result<()> {
    match crypt {
        Some(k) => k.reveal(c, records).await,
        None => crypt::refuse_sealed(records),
    }
}

/// Statements with a text that varies per query (searches) are cached per
/// connection too, up to this many before the cache is emptied.
const STATEMENT_CACHE_LIMIT: usize = 512;

/// How long [`Store::snapshot_seq`] waits for write transactions open when it is asked.
const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The first column of every row, as text.
async fn text_column(
    c: &ClientWrapper,
    st: &tokio_postgres::Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<String>> {
    c.query(st, params)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| col::<String>(r, 0))
        .collect()
}

pub(crate) async fn prepare(c: &ClientWrapper, sql: &str) -> Result<tokio_postgres::Statement> {
    if c.statement_cache.size() > STATEMENT_CACHE_LIMIT {
        c.statement_cache.clear();
    }
    c.prepare_cached(sql).await.map_err(db_err)
}

async fn read_latest(c: &ClientWrapper, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
    let st = prepare(
        c,
        "SELECT v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq \
         FROM resources r JOIN resource_versions v ON v.seq = r.seq \
         WHERE r.rtype = $1 AND r.id = $2",
    )
    .await?;
    match c.query_opt(&st, &[&rtype, &id]).await.map_err(db_err)? {
        Some(row) => Ok(Some(record(&row, 0)?)),
        None => Ok(None),
    }
}

async fn heads(c: &ClientWrapper, keys: &[(String, String)]) -> Result<Vec<Option<Head>>> {
    let (types, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
    let st = prepare(
        c,
        "SELECT k.o, r.version, r.last_updated, r.deleted \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, o) \
         JOIN resources r ON r.rtype = k.t AND r.id = k.i",
    )
    .await?;
    let mut out = vec![None; keys.len()];
    for row in c.query(&st, &[&types, &ids]).await.map_err(db_err)? {
        let o: i64 = col(&row, 0)?;
        if let Some(slot) = usize::try_from(o - 1).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(Head {
                version: col::<i64>(&row, 1)? as u64,
                last_updated: col(&row, 2)?,
                deleted: col(&row, 3)?,
            });
        }
    }
    Ok(out)
}

async fn search(c: &ClientWrapper, q: &SearchQuery) -> Result<SearchPage> {
    let total = if q.with_total {
        let cq = query::count(q);
        let st = prepare(c, &cq.text).await?;
        let row = c.query_one(&st, &cq.params()).await.map_err(db_err)?;
        Some(col::<i64>(&row, 0)?.max(0) as u64)
    } else {
        None
    };
    if q.count == 0 {
        return Ok(SearchPage {
            entries: vec![],
            contained_ids: vec![],
            total,
            more: false,
            before: false,
            first_cursor: None,
            last_cursor: None,
        });
    }
    let (pq, reverse) = query::page(q);
    if std::env::var_os("SALUS_DEBUG_SQL").is_some() {
        tracing::debug!(sql = %pq.text, "postgres search");
    }
    let st = prepare(c, &pq.text).await?;
    let nkeys = q.sort.len();
    let mut rows = vec![];
    for row in c.query(&st, &pq.params()).await.map_err(db_err)? {
        let rec = record(&row, 0)?;
        let mut values = Vec::with_capacity(nkeys);
        for i in 0..nkeys {
            values.push(sort_value(&row, 9 + 2 * i + 1)?);
        }
        let cid: Option<String> = col(&row, 9 + 2 * nkeys)?;
        let cursor = salus_store::Cursor {
            values,
            rtype: col(&row, 7)?,
            id: col(&row, 8)?,
        };
        rows.push((rec, cursor, cid));
    }
    let overflow = rows.len() > q.count;
    rows.truncate(q.count);
    if reverse {
        rows.reverse();
    }
    let (more, before) = match &q.page {
        salus_store::Page::First => (overflow, q.offset > 0),
        salus_store::Page::After(_) => (overflow, true),
        salus_store::Page::Before(_) => (true, overflow),
        salus_store::Page::Last => (false, overflow),
    };
    let first_cursor = rows.first().map(|r| r.1.clone());
    let last_cursor = rows.last().map(|r| r.1.clone());
    let contained_ids = if q.contained_type == ContainedType::Contained {
        rows.iter().map(|r| r.2.clone()).collect()
    } else {
        vec![]
    };
    Ok(SearchPage {
        entries: rows.into_iter().map(|r| r.0).collect(),
        contained_ids,
        total,
        more,
        before,
        first_cursor,
        last_cursor,
    })
}

/// A sort key column as a cursor value, by its SQL type.
fn sort_value(row: &Row, i: usize) -> Result<SortValue> {
    let ty = row
        .columns()
        .get(i)
        .map(|c| c.type_().clone())
        .unwrap_or(Type::TEXT);
    Ok(match ty {
        Type::INT8 => col::<Option<i64>>(row, i)?.map_or(SortValue::Null, SortValue::Int),
        Type::INT4 => {
            col::<Option<i32>>(row, i)?.map_or(SortValue::Null, |v| SortValue::Int(i64::from(v)))
        }
        Type::FLOAT8 => col::<Option<f64>>(row, i)?.map_or(SortValue::Null, SortValue::Real),
        Type::FLOAT4 => {
            col::<Option<f32>>(row, i)?.map_or(SortValue::Null, |v| SortValue::Real(f64::from(v)))
        }
        _ => col::<Option<String>>(row, i)?.map_or(SortValue::Null, SortValue::Text),
    })
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn read(&self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        let c = self.conn().await?;
        let mut r = read_latest(&c, rtype, id).await?;
        self.reveal(&c, r.as_mut_slice()).await?;
        Ok(r)
    }

    async fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<VersionRecord>> {
        let c = self.conn().await?;
        let st = prepare(
            &c,
            "SELECT v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq \
             FROM resource_versions v WHERE v.rtype = $1 AND v.id = $2 AND v.version = $3",
        )
        .await?;
        let version = i64::try_from(version).unwrap_or(i64::MAX);
        let mut r = match c
            .query_opt(&st, &[&rtype, &id, &version])
            .await
            .map_err(db_err)?
        {
            Some(row) => Some(record(&row, 0)?),
            None => None,
        };
        self.reveal(&c, r.as_mut_slice()).await?;
        Ok(r)
    }

    async fn history(&self, q: &HistoryQuery) -> Result<HistoryPage> {
        let c = self.conn().await?;
        let filter = query::history_filter(q);
        let st = prepare(
            &c,
            &format!(
                "SELECT count(*) FROM resource_versions v WHERE {}",
                filter.text
            ),
        )
        .await?;
        let total: i64 = col(
            &c.query_one(&st, &filter.params()).await.map_err(db_err)?,
            0,
        )?;
        let mut page = filter;
        if let Some(cursor) = q.cursor {
            page.push(" AND v.seq < ");
            page.arg(query::Arg::Int(cursor));
        }
        page.push(" ORDER BY v.seq DESC LIMIT ");
        page.arg(query::Arg::Int(q.count as i64 + 1));
        let st = prepare(
            &c,
            &format!(
                "SELECT {} FROM resource_versions v WHERE {}",
                query::VERSION_COLS,
                page.text
            ),
        )
        .await?;
        let mut entries = vec![];
        for row in c.query(&st, &page.params()).await.map_err(db_err)? {
            entries.push(record(&row, 0)?);
        }
        let next = if entries.len() > q.count {
            entries.truncate(q.count);
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        self.reveal(&c, &mut entries).await?;
        Ok(HistoryPage {
            entries,
            total: total.max(0) as u64,
            next,
        })
    }

    async fn search(&self, q: &SearchQuery) -> Result<SearchPage> {
        let c = self.conn().await?;
        let mut page = search(&c, q).await?;
        self.reveal(&c, &mut page.entries).await?;
        Ok(page)
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let c = self.conn().await?;
        if let Some(k) = self.crypt.as_ref().filter(|k| k.stale()) {
            // rotated by another process? (a failure keeps the keys held)
            if let Err(e) = k.refresh(&c).await {
                tracing::warn!(error = %e, "encryption: cannot re-read the keyring");
            }
        }
        // The transaction id is taken now, before any `nextval`: `snapshot_seq` relies on
        // every transaction that may hold an uncommitted `seq` being in progress (in
        // `pg_current_snapshot()`) from before its `seq` was handed out.
        c.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_current_xact_id();")
            .await
            .map_err(db_err)?;
        Ok(Box::new(PgTx {
            client: Some(c),
            failed: false,
            pending: write::Pending::default(),
            crypt: self.crypt.clone(),
            copy_min_puts: self.copy_min_puts,
        }))
    }

    async fn read_many(&self, keys: &[(String, String)]) -> Result<Vec<VersionRecord>> {
        let c = self.conn().await?;
        let (types, ids): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
        let st = prepare(
            &c,
            "SELECT v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, o) \
             JOIN resources r ON r.rtype = k.t AND r.id = k.i \
             JOIN resource_versions v ON v.seq = r.seq \
             WHERE NOT r.deleted ORDER BY k.o",
        )
        .await?;
        let mut out = c
            .query(&st, &[&types, &ids])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| record(r, 0))
            .collect::<Result<Vec<_>>>()?;
        self.reveal(&c, &mut out).await?;
        Ok(out)
    }

    async fn references_from(
        &self,
        sources: &[(String, String)],
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let c = self.conn().await?;
        let (types, ids): (Vec<&str>, Vec<&str>) = sources
            .iter()
            .map(|(t, i)| (t.as_str(), i.as_str()))
            .unzip();
        let st = prepare(
            &c,
            "SELECT x.target_type, x.target_id \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, o) \
             JOIN resources r ON r.rtype = k.t AND r.id = k.i \
             JOIN idx_reference x ON x.rid = r.rid \
             WHERE ($3::text IS NULL OR x.param = $3::text) AND x.target_type <> '' \
             ORDER BY k.o",
        )
        .await?;
        c.query(&st, &[&types, &ids, &param])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect()
    }

    async fn references_to(
        &self,
        targets: &[(String, String)],
        source_type: Option<&str>,
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let c = self.conn().await?;
        let (types, ids): (Vec<&str>, Vec<&str>) = targets
            .iter()
            .map(|(t, i)| (t.as_str(), i.as_str()))
            .unzip();
        let st = prepare(
            &c,
            "SELECT r.rtype, r.id \
             FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(t, i, o) \
             JOIN idx_reference x ON left(x.target_type, 128) = left(k.t, 128) \
             AND left(x.target_id, 128) = left(k.i, 128) AND x.target_type = k.t AND x.target_id = k.i \
             JOIN resources r ON r.rid = x.rid \
             WHERE NOT r.deleted AND ($3::text IS NULL OR x.rtype = $3::text) \
             AND ($4::text IS NULL OR x.param = $4::text) ORDER BY k.o",
        )
        .await?;
        c.query(&st, &[&types, &ids, &source_type, &param])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
            .collect()
    }

    async fn counts(&self) -> Result<Vec<(String, u64)>> {
        let c = self.conn().await?;
        let st = prepare(
            &c,
            "SELECT rtype, count(*) FROM resources WHERE NOT deleted GROUP BY rtype ORDER BY rtype",
        )
        .await?;
        c.query(&st, &[])
            .await
            .map_err(db_err)?
            .iter()
            .map(|r| Ok((col(r, 0)?, col::<i64>(r, 1)?.max(0) as u64)))
            .collect()
    }

    async fn scan_current(&self, after: Option<u64>, limit: usize) -> Result<ScanPage> {
        let c = self.conn().await?;
        let st = prepare(&c, "SELECT count(*) FROM resources WHERE NOT deleted").await?;
        let total: i64 = col(&c.query_one(&st, &[]).await.map_err(db_err)?, 0)?;
        let st = prepare(
            &c,
            "SELECT v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq, r.rid \
             FROM resources r JOIN resource_versions v ON v.seq = r.seq \
             WHERE r.rid > $1 AND NOT r.deleted ORDER BY r.rid LIMIT $2",
        )
        .await?;
        let after = i64::try_from(after.unwrap_or(0)).unwrap_or(i64::MAX);
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut records = vec![];
        let mut last = None;
        for row in c.query(&st, &[&after, &lim]).await.map_err(db_err)? {
            records.push(record(&row, 0)?);
            last = Some(col::<i64>(&row, 7)?);
        }
        let next = (records.len() == limit)
            .then_some(last)
            .flatten()
            .map(|r| r.max(0) as u64);
        self.reveal(&c, &mut records).await?;
        Ok(ScanPage {
            records,
            next,
            total: total.max(0) as u64,
        })
    }

    async fn snapshot_seq(&self) -> Result<i64> {
        // `seq` comes from a sequence, handed out before commit, so the newest committed
        // `seq` may have an older one below it that a transaction still open commits
        // later: a snapshot (or an incremental refresh) taken at max(seq) would miss it
        // for good. Instead, in three statements, in this order:
        // (1) the newest `seq` handed out;
        // (2) a fresh transaction id X (this statement's own transaction, which ends at
        //     once): every writer took its id at BEGIN, before its `nextval`, so any
        //     transaction holding a `seq` up to (1) has an id below X;
        // (3) the transactions below X still in progress. A snapshot lists as in
        //     progress only ids below its `xmax` (the newest ended one + 1); X has
        //     ended, so every running id below X is listed.
        // Then wait for those to end: every `seq` up to (1) is committed or never will
        // be. ("Ended" is judged by a snapshot, as the final read sees it: a commit is
        // visible to later snapshots once it leaves the in-progress list, which may be
        // a moment after its commit record.)
        let c = self.conn().await?;
        let st = prepare(
            &c,
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM salus_version_seq",
        )
        .await?;
        let issued: i64 = col(&c.query_one(&st, &[]).await.map_err(db_err)?, 0)?;
        let st = prepare(&c, "SELECT pg_current_xact_id()::text").await?;
        let now: String = col(&c.query_one(&st, &[]).await.map_err(db_err)?, 0)?;
        let st = prepare(
            &c,
            "SELECT x::text FROM pg_snapshot_xip(pg_current_snapshot()) AS x \
             WHERE x < $1::text::xid8",
        )
        .await?;
        let mut open = text_column(&c, &st, &[&now]).await?;
        let deadline = std::time::Instant::now() + SNAPSHOT_WAIT;
        let mut pause = std::time::Duration::from_millis(1);
        while !open.is_empty() {
            let st = prepare(
                &c,
                "SELECT x FROM unnest($1::text[]) AS t(x) \
                 WHERE NOT pg_visible_in_snapshot(x::xid8, pg_current_snapshot())",
            )
            .await?;
            open = text_column(&c, &st, &[&open]).await?;
            if open.is_empty() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(StoreError::Busy(format!(
                    "postgres: a write transaction has been open for over {} s, so no \
                     consistent snapshot point can be taken yet; try again",
                    SNAPSHOT_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(50));
        }
        let st = prepare(
            &c,
            "SELECT coalesce(max(seq), 0) FROM resource_versions WHERE seq <= $1",
        )
        .await?;
        col(&c.query_one(&st, &[&issued]).await.map_err(db_err)?, 0)
    }

    async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<VersionRecord>> {
        let c = self.conn().await?;
        let st = prepare(
            &c,
            &format!(
                "SELECT {} FROM resource_versions v WHERE v.seq > $1 ORDER BY v.seq LIMIT $2",
                query::VERSION_COLS
            ),
        )
        .await?;
        let mut out = vec![];
        for row in c
            .query(&st, &[&after, &(limit as i64)])
            .await
            .map_err(db_err)?
        {
            out.push(record(&row, 0)?);
        }
        self.reveal(&c, &mut out).await?;
        Ok(out)
    }

    async fn scan_versions(
        &self,
        after: Option<(String, String, u64)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>> {
        let c = self.conn().await?;
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        // the "C" collation of rtype and id is byte order; the row comparison uses the
        // (rtype, id, version) unique index
        let rows = match after {
            None => {
                let st = prepare(
                    &c,
                    &format!(
                        "SELECT {} FROM resource_versions v \
                         ORDER BY v.rtype, v.id, v.version LIMIT $1",
                        query::VERSION_COLS
                    ),
                )
                .await?;
                c.query(&st, &[&lim]).await.map_err(db_err)?
            }
            Some((t, i, v)) => {
                let st = prepare(
                    &c,
                    &format!(
                        "SELECT {} FROM resource_versions v \
                         WHERE (v.rtype, v.id, v.version) > ($1, $2, $3) \
                         ORDER BY v.rtype, v.id, v.version LIMIT $4",
                        query::VERSION_COLS
                    ),
                )
                .await?;
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                c.query(&st, &[&t, &i, &v, &lim]).await.map_err(db_err)?
            }
        };
        let mut out = rows
            .iter()
            .map(|row| record(row, 0))
            .collect::<Result<Vec<_>>>()?;
        self.reveal(&c, &mut out).await?;
        Ok(out)
    }

    async fn snapshot_scan(&self, q: &SnapshotQuery) -> Result<SnapshotPage> {
        // Per resource: its current row when old enough, else the newest older version
        // that is (the same rule as the SQLite backend).
        const JOIN: &str = "SELECT v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq \
             FROM resources r JOIN resource_versions v ON v.seq = CASE \
             WHEN r.seq <= $2 AND r.last_updated <= $3 THEN r.seq \
             ELSE (SELECT max(w.seq) FROM resource_versions w WHERE w.rtype = r.rtype AND w.id = r.id \
                   AND w.seq <= $2 AND w.last_updated <= $3) END \
             WHERE r.rtype = $1 AND v.last_updated >= $4 AND ($5 OR v.body IS NOT NULL) AND r.id > $6";
        let c = self.conn().await?;
        let until = q.until.unwrap_or(i64::MAX);
        let since = q.since.unwrap_or(i64::MIN);
        let after = q.after_id.clone().unwrap_or_default();
        let lim = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = match &q.ids {
            None => {
                let st = prepare(&c, &format!("{JOIN} ORDER BY r.id LIMIT $7")).await?;
                c.query(
                    &st,
                    &[
                        &q.rtype,
                        &q.at_seq,
                        &until,
                        &since,
                        &q.include_deleted,
                        &after,
                        &lim,
                    ],
                )
                .await
                .map_err(db_err)?
            }
            Some(ids) => {
                let st = prepare(
                    &c,
                    &format!("{JOIN} AND r.id = ANY($7) ORDER BY r.id LIMIT $8"),
                )
                .await?;
                c.query(
                    &st,
                    &[
                        &q.rtype,
                        &q.at_seq,
                        &until,
                        &since,
                        &q.include_deleted,
                        &after,
                        ids,
                        &lim,
                    ],
                )
                .await
                .map_err(db_err)?
            }
        };
        let mut records = rows
            .iter()
            .map(|row| record(row, 0))
            .collect::<Result<Vec<_>>>()?;
        self.reveal(&c, &mut records).await?;
        let next = (records.len() == q.limit && q.limit > 0)
            .then(|| records.last().map(|r| r.id.clone()))
            .flatten();
        Ok(SnapshotPage { records, next })
    }

    async fn reindex_pending(&self) -> Result<bool> {
        let c = self.conn().await?;
        let st = prepare(
            &c,
            "SELECT value FROM salus_meta WHERE key = 'reindex_pending'",
        )
        .await?;
        let v: Option<String> = match c.query_opt(&st, &[]).await.map_err(db_err)? {
            Some(row) => Some(col(&row, 0)?),
            None => None,
        };
        Ok(v.as_deref() == Some("1"))
    }

    async fn analyze(&self) -> Result<()> {
        let c = self.conn().await?;
        c.batch_execute(
            "ANALYZE resources, resource_versions, idx_token, idx_string, idx_reference, \
             idx_date, idx_number, idx_uri, fulltext, contained",
        )
        .await
        .map_err(db_err)
    }

    async fn compact(&self) -> Result<()> {
        // Deleted tuples stay in the heap until VACUUM reclaims them; autovacuum does
        // that in the background (docs/security.md: erasure on PostgreSQL).
        Ok(())
    }

    async fn clear_reindex_pending(&self) -> Result<()> {
        let c = self.conn().await?;
        c.execute("DELETE FROM salus_meta WHERE key = 'reindex_pending'", &[])
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// One PostgreSQL transaction on one pooled connection.
struct PgTx {
    /// `None` once committed or rolled back.
    client: Option<Object>,
    /// A statement of this transaction failed (PostgreSQL then refuses everything up
    /// to a rollback) or a write conflicted: nothing more is applied until
    /// `rollback_to_savepoint`, and `commit` refuses.
    failed: bool,
    /// Index work of this transaction's puts not yet sent (see [`write::Pending`]).
    pending: write::Pending,
    /// The store's data keys, when encryption is on: bodies are sealed at `put`.
    crypt: Option<std::sync::Arc<crypt::BodyCrypt>>,
    /// See [`PgOptions::copy_min_puts`].
    copy_min_puts: usize,
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Roll back before the connection goes back to the pool; with no runtime to
        // do that on, close the connection instead (the server rolls back).
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = client.batch_execute("ROLLBACK").await {
                        tracing::warn!(error = %e, "rollback failed; closing the connection");
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

fn tx_gone() -> StoreError {
    StoreError::Backend("the transaction has already ended".into())
}

fn tx_failed() -> StoreError {
    StoreError::Backend("an earlier write of this transaction failed".into())
}

impl PgTx {
    /// The connection, unless the transaction has failed.
    fn live(&self) -> Result<&Object> {
        if self.failed {
            return Err(tx_failed());
        }
        self.client.as_ref().ok_or_else(tx_gone)
    }

    /// Send the buffered index work; a failure fails the transaction.
    async fn flush(&mut self) -> Result<()> {
        if self.failed {
            return Err(tx_failed());
        }
        let c = self.client.as_ref().ok_or_else(tx_gone)?;
        let r = self.pending.flush(c).await;
        self.track(r)
    }

    /// Record a failure of `r` (the transaction is then unusable until a rollback).
    fn track<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            self.failed = true;
            if let (StoreError::Busy(m), Some(k)) = (e, &self.crypt) {
                if m.starts_with(&format!("postgres {}", crypt::STALE_KEY_STATE)) {
                    k.mark_stale(); // a rotation retired our data key
                }
            }
        }
        r
    }
}

#[async_trait]
impl StoreTx for PgTx {
    async fn read(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        self.flush().await?;
        let c = self.live()?;
        let r = match read_latest(c, rtype, id).await {
            Ok(mut r) => reveal(self.crypt.as_deref(), c, r.as_mut_slice())
                .await
                .map(|()| r),
            Err(e) => Err(e),
        };
        self.track(r)
    }

    async fn heads(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<Head>>> {
        self.flush().await?;
        let r = heads(self.live()?, keys).await;
        self.track(r)
    }

    async fn search(&mut self, q: &SearchQuery) -> Result<SearchPage> {
        self.flush().await?;
        let c = self.live()?;
        let r = match search(c, q).await {
            Ok(mut page) => reveal(self.crypt.as_deref(), c, &mut page.entries)
                .await
                .map(|()| page),
            Err(e) => Err(e),
        };
        self.track(r)
    }

    async fn put(&mut self, mut w: NewVersion) -> Result<()> {
        if self.failed {
            return Err(tx_failed());
        }
        if let (Some(k), Some(body)) = (&self.crypt, &w.body) {
            w.body = Some(k.seal(&w.rtype, &w.id, w.version, body));
        }
        let c = self.client.as_ref().ok_or_else(tx_gone)?;
        let r = write::put(c, w, &mut self.pending).await;
        self.track(r)
    }

    async fn put_many(&mut self, mut writes: Vec<NewVersion>) -> Result<()> {
        if writes.len() < self.copy_min_puts {
            for w in writes {
                self.put(w).await?;
            }
            return Ok(());
        }
        // what is queued goes first, so the heads checked below include it
        self.flush().await?;
        if let Some(k) = &self.crypt {
            // sealed exactly as `put` seals them
            for w in &mut writes {
                if let Some(body) = &w.body {
                    w.body = Some(k.seal(&w.rtype, &w.id, w.version, body));
                }
            }
        }
        let c = self.client.as_ref().ok_or_else(tx_gone)?;
        let r = write::copy_puts(c, writes, &mut self.pending).await;
        self.track(r)
    }

    async fn lock(&mut self, key: &str) -> Result<()> {
        self.flush().await?;
        // a transaction-scoped advisory lock on a stable 64-bit hash of the key (FNV-1a)
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
        let r = self
            .live()?
            .execute("SELECT pg_advisory_xact_lock($1)", &[&(hash as i64)])
            .await
            .map(|_| ())
            .map_err(db_err);
        self.track(r)
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.flush().await?;
        let r = self
            .live()?
            .batch_execute("SAVEPOINT unit")
            .await
            .map_err(db_err);
        self.track(r)
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        // undoes a failed write of the unit too: the transaction is usable again
        let c = self.client.as_ref().ok_or_else(tx_gone)?;
        // the buffer holds only work since the savepoint (`savepoint` flushed)
        self.pending.clear();
        let r = c
            .batch_execute("ROLLBACK TO SAVEPOINT unit; RELEASE SAVEPOINT unit")
            .await
            .map_err(db_err);
        self.failed = r.is_err();
        r
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.flush().await?;
        let r = self
            .live()?
            .batch_execute("RELEASE SAVEPOINT unit")
            .await
            .map_err(db_err);
        self.track(r)
    }

    async fn reindex(
        &mut self,
        rtype: &str,
        id: &str,
        version: u64,
        index: Vec<IndexRow>,
        fulltext: Option<FullText>,
        contained: Vec<ContainedIndex>,
    ) -> Result<()> {
        if self.failed {
            return Err(tx_failed());
        }
        let c = self.client.as_ref().ok_or_else(tx_gone)?;
        let r = write::reindex(
            c,
            rtype,
            id,
            version,
            index,
            fulltext,
            contained,
            &mut self.pending,
        )
        .await;
        self.track(r)
    }

    async fn purge(&mut self, rtype: &str, id: &str) -> Result<u64> {
        self.flush().await?;
        let r = write::purge(self.live()?, rtype, id).await;
        self.track(r)
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        // a failed transaction is rolled back by `Drop`
        self.flush().await?;
        let client = self.client.take().ok_or_else(tx_gone)?;
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(()),
            Err(e) => {
                // the outcome is unknown to us; never reuse the connection
                drop(Object::take(client));
                Err(db_err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("salus_test_1a2b"));
        assert!(!valid_schema("a b"));
        assert!(!valid_schema("x\";drop"));
        assert!(!valid_schema("1abc"));
        assert!(!valid_schema(""));
    }
}
