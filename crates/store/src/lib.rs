//! Storage for FHIR resources behind traits.
//!
//! Owns: the [`Store`] / [`StoreTx`] traits every backend implements, the version and
//! index records they persist, the SQLite backend ([`sqlite::SqliteStore`]), and the
//! backend contract suite ([`contract`]) that every backend must pass.
//!
//! Must not touch: FHIR semantics. The store does not parse resources, assign versions
//! or decide what a search parameter means; the service layer hands it finished
//! resource text plus the index rows to keep, and the store keeps them atomically.

pub mod contract;
mod model;
pub mod sqlite;
mod sqlite_query;

pub use model::*;

use async_trait::async_trait;

/// Errors a backend reports. User-caused conditions are distinct variants so the
/// service can map them to precise FHIR responses; everything else is `Backend`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The resource's latest version is not the one the writer expected.
    #[error("version conflict on {rtype}/{id}: expected {expected:?}, found {found:?}")]
    VersionConflict {
        rtype: String,
        id: String,
        expected: Option<u64>,
        found: Option<u64>,
    },
    /// A query the backend cannot run (e.g. a clause kind it does not index).
    #[error("unsupported query: {0}")]
    Unsupported(String),
    /// The database is locked or busy beyond the configured timeout.
    #[error("storage busy: {0}")]
    Busy(String),
    /// The caller may not do this (an access grant wrapped around a store refused it).
    #[error("{0}")]
    Forbidden(String),
    /// Any other backend failure; details are logged, not shown to clients.
    #[error("storage failure: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A FHIR resource store. Reads outside a transaction see the latest committed state.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs and `/metadata` (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Latest version of a resource, including a deletion marker; `None` if never stored.
    async fn read(&self, rtype: &str, id: &str) -> Result<Option<VersionRecord>>;

    /// A specific version.
    async fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<VersionRecord>>;

    /// History entries, newest first.
    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage>;

    /// Current (non-deleted) resources matching a query.
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage>;

    /// Start an atomic unit of work. Writes inside it are invisible to others until
    /// [`StoreTx::commit`]; dropping it without committing rolls everything back.
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;

    /// [`Store::begin`] for a long unit of work (a bulk-import batch, a reindex page, an
    /// erasure): a backend that commits concurrent transactions together (SQLite) first
    /// commits those waiting, so no short write waits for this one to end.
    async fn begin_bulk(&self) -> Result<Box<dyn StoreTx>> {
        self.begin().await
    }

    /// Current (non-deleted) versions of the given resources; missing ones are skipped.
    async fn read_many(&self, keys: &[(String, String)]) -> Result<Vec<VersionRecord>>;

    /// Targets (`type`, `id`) referenced by the given resources through `param` (any
    /// reference parameter when `None`). For `_include`.
    async fn references_from(
        &self,
        sources: &[(String, String)],
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>>;

    /// Current resources of `source_type` (any when `None`) referencing one of
    /// `targets` through `param` (any when `None`). For `_revinclude`.
    async fn references_to(
        &self,
        targets: &[(String, String)],
        source_type: Option<&str>,
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>>;

    /// Number of current (non-deleted) resources per type, for `/metadata` and stats.
    async fn counts(&self) -> Result<Vec<(String, u64)>>;

    /// Current (non-deleted) resources in a stable backend order, `limit` at a time,
    /// starting after position `after` (`None`: from the start). For reindexing.
    async fn scan_current(&self, after: Option<u64>, limit: usize) -> Result<ScanPage>;

    /// Whether a schema upgrade added index data that existing resources lack, so a
    /// reindex should run (see [`StoreTx::reindex`]).
    async fn reindex_pending(&self) -> Result<bool>;

    /// Record that a full reindex has completed.
    async fn clear_reindex_pending(&self) -> Result<()>;

    /// After an erasure: make sure removed content no longer lingers in the backend's
    /// files (SQLite: merge the full-text index, checkpoint and truncate the WAL; deleted
    /// cells are already zeroed by `secure_delete`).
    async fn compact(&self) -> Result<()>;
    /// After a bulk load (`salus import`, `$import`, `salus migrate`): bring the
    /// database's planner statistics up to date. PostgreSQL plans every search from
    /// them, and until autovacuum's next round a table just filled looks empty, so a
    /// patient's lookup became a scan of all Observations (seconds instead of
    /// milliseconds). SQLite's searches are planned by Salus itself: nothing to do.
    async fn analyze(&self) -> Result<()>;
    /// The `seq` of the newest committed version (0 for an empty store) such that no
    /// version at or below it can still commit: a snapshot point for
    /// [`Store::snapshot_scan`] and for reading the change feed up to. On SQLite (one
    /// writer) that holds of the newest one; on PostgreSQL, where `seq` is handed out
    /// before commit, it waits for the write transactions open when asked (see
    /// docs/scaling.md).
    async fn snapshot_seq(&self) -> Result<i64>;

    /// Whether a `seq` missing below the newest one in [`Store::changes_after`] stays
    /// missing (a purged or rolled-back version), so a feed reader need not look at it
    /// again. True on SQLite (one writer: versions become visible in `seq` order); false
    /// where a transaction still open may yet commit a smaller `seq` (PostgreSQL).
    fn feed_gaps_are_final(&self) -> bool {
        false
    }

    /// The change feed (subscriptions): every stored version with `seq > after`, oldest
    /// first, at most `limit`. Deletions are included (no body). On SQLite this is
    /// commit order; on PostgreSQL a transaction still open may later commit a smaller
    /// `seq` than one already returned, so a reader re-reads a window behind its cursor.
    ///
    /// The default walks [`Store::history`] newest first down to `after` (correct but
    /// proportional to the backlog); backends answer it from their `seq` index.
    async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<VersionRecord>> {
        let mut found: Vec<VersionRecord> = vec![];
        let mut cursor = None;
        loop {
            let page = self
                .history(&HistoryQuery {
                    scope: HistoryScope::System,
                    since: None,
                    before: None,
                    current_from: None,
                    cursor,
                    count: 500,
                })
                .await?;
            let done = page.entries.iter().any(|e| e.seq <= after) || page.next.is_none();
            found.extend(page.entries.into_iter().filter(|e| e.seq > after));
            if done {
                break;
            }
            cursor = page.next;
        }
        found.sort_by_key(|e| e.seq);
        found.truncate(limit);
        Ok(found)
    }

    /// Every stored version, deletions included (no body), in the canonical order of
    /// type, id (byte order) and version, `limit` at a time, starting after the key
    /// `after` (exclusive; `None`: from the start). Bodies are as served (opened when the
    /// backend encrypts them). For moving and verifying a whole store (`salus migrate`):
    /// the order depends only on the data, so two backends holding the same versions
    /// answer the same sequence.
    async fn scan_versions(
        &self,
        after: Option<(String, String, u64)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>>;

    /// Resources of one type as of a snapshot (bulk export): for each resource the
    /// latest version with `seq <= at_seq` (and `last_updated <= until`), ordered by id,
    /// `limit` at a time. Later writes never change the answer.
    async fn snapshot_scan(&self, query: &SnapshotQuery) -> Result<SnapshotPage>;
}

/// One atomic unit of work on a [`Store`].
#[async_trait]
pub trait StoreTx: Send {
    /// Latest version as seen inside this transaction (including its own writes).
    async fn read(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>>;

    /// Version, time and deletion state of the latest version of each key (one answer
    /// per key, in order), as seen inside this transaction; cheaper than [`read`] for
    /// many resources at once.
    ///
    /// [`read`]: StoreTx::read
    async fn heads(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<Head>>>;

    /// Search as seen inside this transaction (for conditional operations).
    async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage>;

    /// Store a new version. Fails with [`StoreError::VersionConflict`] unless the
    /// resource's latest version equals `write.expected_version` (None: never stored).
    ///
    /// A backend may queue the write and return at once; its failure is then reported
    /// by the next call on this transaction that waits (`read`, `heads`, `search`,
    /// `savepoint`, `release_savepoint`, `commit`), and nothing after it commits.
    /// `rollback_to_savepoint` undoes the failed write with the rest of its unit.
    async fn put(&mut self, write: NewVersion) -> Result<()>;

    /// Store many new versions, in order, with the semantics of a [`StoreTx::put`] of
    /// each (the same version check; a later write of the same resource expects the
    /// version of the earlier one). For bulk loads (`salus import`, `salus migrate`): a
    /// backend may write a large batch in bulk (PostgreSQL: binary `COPY`). Like `put`,
    /// a failure may be reported by the next call that waits. The default puts one by
    /// one.
    async fn put_many(&mut self, writes: Vec<NewVersion>) -> Result<()> {
        for w in writes {
            self.put(w).await?;
        }
        Ok(())
    }

    /// Mark a point inside the transaction that [`StoreTx::rollback_to_savepoint`] can
    /// return to (nested units of work, e.g. one file of a bulk import).
    async fn savepoint(&mut self) -> Result<()>;

    /// Undo every write since the last [`StoreTx::savepoint`] and drop that savepoint.
    async fn rollback_to_savepoint(&mut self) -> Result<()>;

    /// Keep the writes since the last savepoint and drop it.
    async fn release_savepoint(&mut self) -> Result<()>;

    /// Replace the index rows, full text and contained resources' rows of a resource's
    /// current version, if that is still `version` (a newer version was indexed when it
    /// was written); no new version, no history entry.
    async fn reindex(
        &mut self,
        rtype: &str,
        id: &str,
        version: u64,
        index: Vec<IndexRow>,
        fulltext: Option<FullText>,
        contained: Vec<ContainedIndex>,
    ) -> Result<()>;

    /// Hold an exclusive lock on `key` until this transaction ends, so transactions that
    /// take the same key (conditional operations with the same criteria) run one after
    /// the other, also across processes sharing a database. The default does nothing: a
    /// backend whose write transactions are already serialized (SQLite: one writer)
    /// needs no more.
    async fn lock(&mut self, key: &str) -> Result<()> {
        let _ = key;
        Ok(())
    }

    /// Erase a resource entirely: every version, its index rows, full text and
    /// contained resources' rows, as if it had never been stored (GDPR erasure,
    /// `$purge`). Returns the number of versions removed (0: never stored).
    async fn purge(&mut self, rtype: &str, id: &str) -> Result<u64>;

    /// Make every write of this transaction durable and visible.
    async fn commit(self: Box<Self>) -> Result<()>;
}
