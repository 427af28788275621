//! The commit hook: a store wrapper that wakes the engine after every commit made in
//! this process, so notifications do not wait for the next poll of the change feed.
//! Writes by other processes are found by that poll.

use async_trait::async_trait;
use salus_store::{
    ContainedIndex, FullText, Head, HistoryPage, HistoryQuery, IndexRow, NewVersion, Result,
    ScanPage, SearchPage, SearchQuery, SnapshotPage, SnapshotQuery, Store, StoreTx, VersionRecord,
};
use std::sync::Arc;
use tokio::sync::Notify;

/// A [`Store`] that signals `changed` after each successful commit.
pub struct NotifyingStore {
    inner: Arc<dyn Store>,
    changed: Arc<Notify>,
}

impl NotifyingStore {
    pub fn new(inner: Arc<dyn Store>, changed: Arc<Notify>) -> NotifyingStore {
        NotifyingStore { inner, changed }
    }
}

#[async_trait]
impl Store for NotifyingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn read(&self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        self.inner.read(rtype, id).await
    }
    async fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<VersionRecord>> {
        self.inner.vread(rtype, id, version).await
    }
    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        self.inner.history(query).await
    }
    async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        self.inner.search(query).await
    }
    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(NotifyingTx {
            inner: self.inner.begin().await?,
            changed: self.changed.clone(),
        }))
    }
    async fn begin_bulk(&self) -> Result<Box<dyn StoreTx>> {
        Ok(Box::new(NotifyingTx {
            inner: self.inner.begin_bulk().await?,
            changed: self.changed.clone(),
        }))
    }
    async fn read_many(&self, keys: &[(String, String)]) -> Result<Vec<VersionRecord>> {
        self.inner.read_many(keys).await
    }
    async fn references_from(
        &self,
        sources: &[(String, String)],
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        self.inner.references_from(sources, param).await
    }
    async fn references_to(
        &self,
        targets: &[(String, String)],
        source_type: Option<&str>,
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        self.inner.references_to(targets, source_type, param).await
    }
    async fn counts(&self) -> Result<Vec<(String, u64)>> {
        self.inner.counts().await
    }
    async fn scan_current(&self, after: Option<u64>, limit: usize) -> Result<ScanPage> {
        self.inner.scan_current(after, limit).await
    }
    async fn reindex_pending(&self) -> Result<bool> {
        self.inner.reindex_pending().await
    }
    async fn clear_reindex_pending(&self) -> Result<()> {
        self.inner.clear_reindex_pending().await
    }
    async fn compact(&self) -> Result<()> {
        self.inner.compact().await
    }
    async fn analyze(&self) -> Result<()> {
        self.inner.analyze().await
    }
    async fn snapshot_seq(&self) -> Result<i64> {
        self.inner.snapshot_seq().await
    }
    fn feed_gaps_are_final(&self) -> bool {
        self.inner.feed_gaps_are_final()
    }
    async fn snapshot_scan(&self, query: &SnapshotQuery) -> Result<SnapshotPage> {
        self.inner.snapshot_scan(query).await
    }
    async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<VersionRecord>> {
        self.inner.changes_after(after, limit).await
    }
    async fn scan_versions(
        &self,
        after: Option<(String, String, u64)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>> {
        self.inner.scan_versions(after, limit).await
    }
}

struct NotifyingTx {
    inner: Box<dyn StoreTx>,
    changed: Arc<Notify>,
}

#[async_trait]
impl StoreTx for NotifyingTx {
    async fn read(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        self.inner.read(rtype, id).await
    }
    async fn heads(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<Head>>> {
        self.inner.heads(keys).await
    }
    async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage> {
        self.inner.search(query).await
    }
    async fn put(&mut self, write: NewVersion) -> Result<()> {
        self.inner.put(write).await
    }
    async fn put_many(&mut self, writes: Vec<NewVersion>) -> Result<()> {
        self.inner.put_many(writes).await
    }
    async fn savepoint(&mut self) -> Result<()> {
        self.inner.savepoint().await
    }
    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        self.inner.rollback_to_savepoint().await
    }
    async fn release_savepoint(&mut self) -> Result<()> {
        self.inner.release_savepoint().await
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
        self.inner
            .reindex(rtype, id, version, index, fulltext, contained)
            .await
    }
    async fn lock(&mut self, key: &str) -> Result<()> {
        self.inner.lock(key).await
    }
    async fn purge(&mut self, rtype: &str, id: &str) -> Result<u64> {
        self.inner.purge(rtype, id).await
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        let changed = self.changed.clone();
        self.inner.commit().await?;
        changed.notify_one();
        Ok(())
    }
}
