//! The embedded SQLite backend: one writer connection, a pool of readers, WAL.
//!
//! A resource's version row, its "current" pointer and its index rows are written in
//! one SQLite transaction (`BEGIN IMMEDIATE` on the single writer), so a crash never
//! leaves a version without its indexes. Readers use separate connections and see the
//! last committed state (WAL snapshot isolation).
//!
//! The writer connection lives on its own thread. Writes are queued to it and run in
//! order while the caller prepares the next one (validation, index extraction and
//! serialization overlap with B-tree inserts, on the second core); anything that
//! returns data or ends a unit of work waits for the queue to drain, and reports a
//! queued write's failure (see [`StoreTx::put`]).
//!
//! Commits are grouped. Write transactions take turns on the writer ([`Turns`]), each
//! inside a savepoint of one SQLite transaction; when one commits while others wait,
//! its savepoint is released and the next one starts in the same SQLite transaction,
//! and the last one to finish (or the 64th) commits them all with one WAL write. Each
//! caller's `commit` returns only after that COMMIT, so nothing is acknowledged before
//! it is durable, and readers never see a transaction before its caller does. A
//! transaction that fails or is dropped rolls back its own savepoint only. Small
//! concurrent transactions (an HL7 feed on several connections, HTTP clients) share
//! the pages they all touch, which is most of what a commit writes.

use crate::{
    ContainedIndex, FullText, Head, HistoryPage, HistoryQuery, HistoryScope, IndexRow, Method,
    NewVersion, Result, ScanPage, SearchPage, SearchQuery, SnapshotPage, SnapshotQuery, Store,
    StoreError, StoreTx, VersionRecord,
};
use async_trait::async_trait;
use rusqlite::{params, types::Value as Sql, Connection, OpenFlags, OptionalExtension};
use salus_keys::{sqlcipher, DataKey};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Durability of a commit (SQLite `PRAGMA synchronous` in WAL mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Survives a process crash; an OS crash or power loss may lose the last commits.
    #[default]
    Normal,
    /// Every commit is fsynced before it is acknowledged.
    Full,
}

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    pub durability: Durability,
    /// Maximum reader connections kept open.
    pub readers: usize,
    /// How long a connection waits on a lock before failing with `Busy`.
    pub busy_timeout_ms: u64,
    /// The database key (SQLCipher): with one, every page of the file and of its WAL is
    /// encrypted, indexes and full text included; `None` keeps the file unencrypted.
    pub key: Option<DataKey>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Normal,
            readers: 8,
            busy_timeout_ms: 5_000,
            key: None,
        }
    }
}

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE resource_versions (
    seq INTEGER PRIMARY KEY,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    body TEXT,
    UNIQUE (rtype, id, version)
);
CREATE INDEX rv_type_seq ON resource_versions (rtype, seq);
CREATE INDEX rv_updated ON resource_versions (last_updated);
CREATE TABLE resources (
    rid INTEGER PRIMARY KEY,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    UNIQUE (rtype, id)
);
CREATE TABLE idx_token (rtype TEXT NOT NULL, param TEXT NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (rtype, param, code, system, rid)) WITHOUT ROWID;
CREATE INDEX idx_token_rid ON idx_token (rid);
CREATE TABLE idx_string (rtype TEXT NOT NULL, param TEXT NOT NULL, normalized TEXT NOT NULL, exact TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (rtype, param, normalized, exact, rid)) WITHOUT ROWID;
CREATE INDEX idx_string_rid ON idx_string (rid);
CREATE TABLE idx_reference (rtype TEXT NOT NULL, param TEXT NOT NULL, target_id TEXT NOT NULL, target_type TEXT NOT NULL, version TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (rtype, param, target_id, target_type, version, rid)) WITHOUT ROWID;
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_rid ON idx_reference (rid);
CREATE TABLE idx_date (rtype TEXT NOT NULL, param TEXT NOT NULL, low INTEGER NOT NULL, high INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (rtype, param, low, high, rid)) WITHOUT ROWID;
CREATE INDEX idx_date_rid ON idx_date (rid);
CREATE TABLE idx_number (rtype TEXT NOT NULL, param TEXT NOT NULL, value REAL NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (rtype, param, value, system, code, rid)) WITHOUT ROWID;
CREATE INDEX idx_number_rid ON idx_number (rid);
CREATE TABLE idx_uri (rtype TEXT NOT NULL, param TEXT NOT NULL, uri TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (rtype, param, uri, rid)) WITHOUT ROWID;
CREATE INDEX idx_uri_rid ON idx_uri (rid);
"#,
    // 2: full-text search (`_text`, `_content`): words only, keyed by the resource's rid.
    r#"
CREATE VIRTUAL TABLE fulltext USING fts5(narrative, content, content = '', contentless_delete = 1,
    tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE salus_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Resources stored before this version have no full text (nor composite rows).
INSERT INTO salus_meta (key, value) SELECT 'reindex_pending', '1' WHERE EXISTS (SELECT 1 FROM resources);
"#,
    // 3: contained resources (`_contained`): each gets a `crid`, and its index rows are
    // stored under `rid = -crid`, so ordinary searches (which join `resources`) never see
    // them. `rid` is the container.
    r#"
CREATE TABLE contained (crid INTEGER PRIMARY KEY, rid INTEGER NOT NULL, rtype TEXT NOT NULL, cid TEXT NOT NULL);
CREATE INDEX contained_rid ON contained (rid);
INSERT OR REPLACE INTO salus_meta (key, value) SELECT 'reindex_pending', '1'
    WHERE EXISTS (SELECT 1 FROM resource_versions WHERE body LIKE '%"contained"%');
"#,
    // 4: index rows name their search parameter by a small integer, `pid`, instead of
    // repeating the resource type and parameter name in every row and key (the tables
    // and their `rid` indexes shrink by about 40 % and every B-tree step compares an
    // integer first). Existing rows are converted in key order; nothing is reindexed.
    r#"
CREATE TABLE params (pid INTEGER PRIMARY KEY, rtype TEXT NOT NULL, param TEXT NOT NULL, UNIQUE (rtype, param));
CREATE INDEX params_param ON params (param);
INSERT INTO params (rtype, param)
    SELECT rtype, param FROM idx_token UNION SELECT rtype, param FROM idx_string
    UNION SELECT rtype, param FROM idx_reference UNION SELECT rtype, param FROM idx_date
    UNION SELECT rtype, param FROM idx_number UNION SELECT rtype, param FROM idx_uri
    ORDER BY 1, 2;
CREATE TABLE idx_token_4 (pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, code, system, rid)) WITHOUT ROWID;
INSERT INTO idx_token_4 SELECT p.pid, x.code, x.system, x.rid FROM idx_token x JOIN params p USING (rtype, param);
DROP TABLE idx_token;
ALTER TABLE idx_token_4 RENAME TO idx_token;
CREATE INDEX idx_token_rid ON idx_token (rid);
CREATE TABLE idx_string_4 (pid INTEGER NOT NULL, normalized TEXT NOT NULL, exact TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, normalized, exact, rid)) WITHOUT ROWID;
INSERT INTO idx_string_4 SELECT p.pid, x.normalized, x.exact, x.rid FROM idx_string x JOIN params p USING (rtype, param);
DROP TABLE idx_string;
ALTER TABLE idx_string_4 RENAME TO idx_string;
CREATE INDEX idx_string_rid ON idx_string (rid);
CREATE TABLE idx_reference_4 (pid INTEGER NOT NULL, target_id TEXT NOT NULL, target_type TEXT NOT NULL, version TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, target_id, target_type, version, rid)) WITHOUT ROWID;
INSERT INTO idx_reference_4 SELECT p.pid, x.target_id, x.target_type, x.version, x.rid FROM idx_reference x JOIN params p USING (rtype, param);
DROP TABLE idx_reference;
ALTER TABLE idx_reference_4 RENAME TO idx_reference;
CREATE INDEX idx_reference_target ON idx_reference (target_type, target_id);
CREATE INDEX idx_reference_rid ON idx_reference (rid);
CREATE TABLE idx_date_4 (pid INTEGER NOT NULL, low INTEGER NOT NULL, high INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, low, high, rid)) WITHOUT ROWID;
INSERT INTO idx_date_4 SELECT p.pid, x.low, x.high, x.rid FROM idx_date x JOIN params p USING (rtype, param);
DROP TABLE idx_date;
ALTER TABLE idx_date_4 RENAME TO idx_date;
CREATE INDEX idx_date_rid ON idx_date (rid);
CREATE TABLE idx_number_4 (pid INTEGER NOT NULL, value REAL NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, value, system, code, rid)) WITHOUT ROWID;
INSERT INTO idx_number_4 SELECT p.pid, x.value, x.system, x.code, x.rid FROM idx_number x JOIN params p USING (rtype, param);
DROP TABLE idx_number;
ALTER TABLE idx_number_4 RENAME TO idx_number;
CREATE INDEX idx_number_rid ON idx_number (rid);
CREATE TABLE idx_uri_4 (pid INTEGER NOT NULL, uri TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, uri, rid)) WITHOUT ROWID;
INSERT INTO idx_uri_4 SELECT p.pid, x.uri, x.rid FROM idx_uri x JOIN params p USING (rtype, param);
DROP TABLE idx_uri;
ALTER TABLE idx_uri_4 RENAME TO idx_uri;
CREATE INDEX idx_uri_rid ON idx_uri (rid);
"#,
];

const INDEX_TABLES: &[&str] = &[
    "idx_token",
    "idx_string",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_uri",
];

pub(crate) fn db_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        ) {
            return StoreError::Busy(e.to_string());
        }
    }
    StoreError::Backend(e.to_string())
}

/// The SQLite store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    /// Whose turn it is on the writer: one write transaction at a time, committed in
    /// groups.
    turns: Arc<Turns>,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    checkpointer: Checkpointer,
}

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Writes queued (and not yet run) on the writer thread, at most.
const QUEUED_WRITES: usize = 256;

/// Versions per writer job in [`StoreTx::put_many`] (so at most
/// `QUEUED_WRITES * PUT_MANY_CHUNK` versions wait in the queue).
const PUT_MANY_CHUNK: usize = 32;

/// Handle to the thread that owns the writer connection. Jobs run in the order sent;
/// the thread ends (closing the connection) when the last handle is dropped.
#[derive(Clone)]
struct Writer {
    jobs: mpsc::UnboundedSender<Job>,
    queued: Arc<Semaphore>,
}

impl Writer {
    fn spawn(mut conn: Connection) -> Result<Writer> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("salus-sqlite-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            jobs: tx,
            queued: Arc::new(Semaphore::new(QUEUED_WRITES)),
        })
    }

    /// Run `f` on the writer connection and wait for its result.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |c: &mut Connection| {
                let _ = tx.send(f(c));
            }))
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    /// Queue `f` without waiting (waits only while the queue is full).
    async fn queue(&self, f: impl FnOnce(&mut Connection) + Send + 'static) -> Result<()> {
        let permit = self
            .queued
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| writer_gone())?;
        self.jobs
            .send(Box::new(move |c: &mut Connection| {
                f(c);
                drop(permit);
            }))
            .map_err(|_| writer_gone())
    }

    /// Queue `f` from synchronous code (never waits).
    fn queue_now(&self, f: impl FnOnce(&mut Connection) + Send + 'static) {
        let _ = self.jobs.send(Box::new(f));
    }
}

/// How often the background checkpointer copies committed WAL frames into the file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Pages the WAL may reach before a commit on the writer checkpoints it itself: a
/// safety bound for when the background checkpointer falls behind (long readers).
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 65_536;

/// A thread with its own connection that runs `PRAGMA wal_checkpoint(PASSIVE)` every
/// [`CHECKPOINT_EVERY`], so the writer never pays for a checkpoint on a commit: with
/// SQLite's default (the committing connection checkpoints once the WAL passes a
/// threshold) one write in thousands waited for megabytes to be copied and synced,
/// which is what a device alert or an HL7 ACK saw as its p99. PASSIVE takes no lock
/// that writers or readers wait on; it copies what no open reader still needs, and
/// the writer restarts the WAL from its start once everything is copied, so the file
/// stays small and in cache. The thread stops when the store is dropped.
struct Checkpointer {
    /// Dropping it stops the thread.
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held by whoever checkpoints, so an explicit `TRUNCATE` (shutdown, compaction)
    /// never meets a passive one in progress and silently does nothing.
    running: Arc<Mutex<()>>,
}

impl Checkpointer {
    fn spawn(conn: Connection) -> Result<Checkpointer> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let running = Arc::new(Mutex::new(()));
        let lock = running.clone();
        let thread = std::thread::Builder::new()
            .name("salus-sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let _running = lock.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "background WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
            running,
        })
    }
}

impl Drop for Checkpointer {
    /// Stop the thread and wait for it (at most one passive checkpoint), so its
    /// connection is closed once the store is gone.
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run a `TRUNCATE` checkpoint (and any statements before it) on the writer, with the
/// background checkpointer held off. False when open readers kept it from finishing
/// (within the busy timeout): the WAL then still holds some committed pages.
fn truncate_wal(c: &Connection, running: &Mutex<()>, before: &str) -> Result<bool> {
    if !before.is_empty() {
        c.execute_batch(before).map_err(db_err)?;
    }
    let _running = running.lock().unwrap_or_else(|p| p.into_inner());
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .map_err(db_err)?;
    Ok(busy == 0)
}

/// Transactions committed into the open SQLite transaction, waiting for its COMMIT;
/// touched only by jobs on the writer thread.
#[derive(Default)]
struct GroupCommit {
    waiting: Mutex<Vec<oneshot::Sender<Result<()>>>>,
    /// SQLite COMMITs run so far.
    commits: std::sync::atomic::AtomicU64,
}

type Group = Arc<GroupCommit>;

/// Transactions per group commit, at most: bounds how long the first one waits.
const MAX_GROUP: usize = 64;

/// How long the first transaction of a group may wait for others to join it: a
/// transaction that commits after this hands the writer on only after the COMMIT, so
/// a group stops growing after 10 ms. Long transactions (an `$import` batch, a reindex
/// page, an erasure) begin with [`Store::begin_bulk`], which commits the group first.
const MAX_GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Hands the writer to one write transaction at a time, in arrival order, and decides
/// when the shared SQLite transaction commits: when a transaction ends and none waits
/// (or [`MAX_GROUP`] have committed into it). While the writer is idle no SQLite
/// transaction is open.
struct Turns {
    state: Mutex<TurnState>,
    group: Group,
    writer: Writer,
}

#[derive(Default)]
struct TurnState {
    /// A transaction (or a maintenance task) has the writer.
    held: bool,
    /// Those waiting for it, first come first served.
    queue: VecDeque<oneshot::Sender<()>>,
    /// Transactions committed since the last COMMIT was queued.
    pending: usize,
    /// When the first of them committed.
    since: Option<std::time::Instant>,
}

impl Turns {
    fn new(writer: Writer) -> Turns {
        Turns {
            state: Mutex::new(TurnState::default()),
            group: Arc::default(),
            writer,
        }
    }

    /// Wait for the writer.
    async fn acquire(self: &Arc<Self>) -> Turn {
        let waiting = {
            let mut s = self.state.lock().expect("turns");
            if !s.held {
                s.held = true;
                return Turn::new(self.clone());
            }
            let (tx, rx) = oneshot::channel();
            s.queue.push_back(tx);
            rx
        };
        let mut waiting = Waiting {
            turns: self.clone(),
            rx: Some(waiting),
        };
        let given = waiting.rx.as_mut().expect("waiting").await;
        waiting.rx = None;
        match given {
            Ok(()) => Turn::new(self.clone()),
            // The sender lives in the queue until it is sent on: not reached.
            Err(_) => unreachable!("a turn is never dropped unsent"),
        }
    }

    /// Wait for the writer with no SQLite transaction open (maintenance outside any
    /// transaction: checkpoints, compaction).
    async fn acquire_alone(self: &Arc<Self>) -> Turn {
        let turn = self.acquire().await;
        self.queue_commit(&mut self.state.lock().expect("turns"));
        turn
    }

    /// The holder is done (`committed`: its writes joined the group): give the writer
    /// to the next waiter, committing the group first if it is full; with no one
    /// waiting, commit.
    fn pass(&self, committed: bool) {
        let mut s = self.state.lock().expect("turns");
        if committed {
            s.pending += 1;
            s.since.get_or_insert_with(std::time::Instant::now);
        }
        // A transaction that did not commit may have failed on what the group wrote
        // (a version conflict after reading committed data): commit the group first,
        // so a retry sees it, and repeated failures cannot hold the group back.
        let old = s.since.is_some_and(|t| t.elapsed() >= MAX_GROUP_WAIT);
        if s.pending >= MAX_GROUP || old || (!committed && s.pending > 0) {
            self.queue_commit(&mut s);
        }
        while let Some(next) = s.queue.pop_front() {
            if next.send(()).is_ok() {
                return;
            }
        }
        s.held = false;
        // Queued before anyone can take the writer again, so it runs first.
        self.queue_commit(&mut s);
    }

    fn queue_commit(&self, s: &mut TurnState) {
        s.pending = 0;
        s.since = None;
        let group = self.group.clone();
        self.writer.queue_now(move |c| commit_group(c, &group));
    }
}

/// The writer, held until dropped (or passed on by [`Turn::pass`]).
struct Turn {
    turns: Arc<Turns>,
    held: bool,
}

impl Turn {
    fn new(turns: Arc<Turns>) -> Turn {
        Turn { turns, held: true }
    }

    fn pass(mut self, committed: bool) {
        self.held = false;
        self.turns.pass(committed);
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.held {
            self.turns.pass(false);
        }
    }
}

/// A place in the queue; if the waiting future is dropped after the writer was given
/// to it, the writer is given on.
struct Waiting {
    turns: Arc<Turns>,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.turns.pass(false);
            }
        }
    }
}

/// Commit the open SQLite transaction (if any) and tell every transaction in the group
/// the outcome.
fn commit_group(c: &Connection, group: &Group) {
    let waiting = std::mem::take(&mut *group.waiting.lock().expect("group"));
    if c.is_autocommit() {
        if !waiting.is_empty() {
            abort_group(c, waiting, &rolled_back().to_string());
        }
        return;
    }
    match c.execute_batch("COMMIT") {
        Ok(()) => {
            group.commits.fetch_add(1, Ordering::Relaxed);
            for w in waiting {
                let _ = w.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed");
            abort_group(c, waiting, &format!("commit failed: {e}"));
        }
    }
}

/// The SQLite transaction could not be kept after one of its transactions failed:
/// undo it all and fail every transaction committed into it.
fn fail_group(c: &Connection, group: &Group, why: &str) {
    let waiting = std::mem::take(&mut *group.waiting.lock().expect("group"));
    abort_group(
        c,
        waiting,
        &format!("a later transaction in the same commit failed: {why}"),
    );
}

/// Roll back what is left of the SQLite transaction and tell each of `waiting` why.
fn abort_group(c: &Connection, waiting: Vec<oneshot::Sender<Result<()>>>, why: &str) {
    forget_pids();
    if !c.is_autocommit() {
        if let Err(e) = c.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rollback failed");
        }
    }
    for w in waiting {
        let _ = w.send(Err(StoreError::Backend(why.to_string())));
    }
}

/// A transaction's statement found no SQLite transaction open: SQLite rolled it back
/// after an error (disk full, I/O), so its writes are gone.
fn rolled_back() -> StoreError {
    StoreError::Backend("the transaction was rolled back by SQLite after an error".into())
}

fn writer_gone() -> StoreError {
    StoreError::Backend("the SQLite writer thread has stopped".into())
}

impl SqliteStore {
    /// Open (creating if needed) the database file at `path` and apply migrations.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Backend(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
        }
        check_file_against_key(&path, options.key.as_ref())?;
        let writer = Connection::open(&path).map_err(db_err)?;
        configure(&writer, &options, false, &path)?;
        migrate(&writer)?;
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .map_err(db_err)?;
        let background = Connection::open(&path).map_err(db_err)?;
        configure(&background, &options, false, &path)?;
        let writer = Writer::spawn(writer)?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                turns: Arc::new(Turns::new(writer.clone())),
                writer,
                readers: Mutex::new(Vec::new()),
                checkpointer: Checkpointer::spawn(background)?,
            }),
        })
    }

    /// Open a write transaction on the writer `turn` gives.
    async fn begin_in(&self, turn: Turn) -> Result<Box<dyn StoreTx>> {
        let writer = self.inner.writer.clone();
        // The SQLite transaction may still be open, holding the writes of transactions
        // that committed before this one and wait for their group's COMMIT.
        writer
            .call(|c| {
                if c.is_autocommit() {
                    c.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
                }
                c.execute_batch("SAVEPOINT ltx").map_err(db_err)
            })
            .await?;
        Ok(Box::new(SqliteTx {
            turn: Some(turn),
            writer,
            failed: Arc::new(Mutex::new(None)),
            open: true,
            released: Arc::new(AtomicBool::new(false)),
            committing: false,
        }))
    }

    /// Open `salus.db` inside a data directory.
    pub fn open_dir(dir: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        Self::open(dir.as_ref().join("salus.db"), options)
    }

    fn reader(&self) -> Result<Reader<'_>> {
        let pooled = self.inner.readers.lock().expect("reader pool").pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.inner.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(db_err)?;
                configure(&c, &self.inner.options, true, &self.inner.path)?;
                c
            }
        };
        Ok(Reader {
            store: self,
            conn: Some(conn),
        })
    }

    /// Flush the WAL into the main database file (used at shutdown).
    pub async fn checkpoint(&self) -> Result<()> {
        let _turn = self.inner.turns.acquire_alone().await;
        let running = self.inner.checkpointer.running.clone();
        self.inner
            .writer
            .call(move |c| truncate_wal(c, &running, ""))
            .await
            .map(|done| {
                if !done {
                    // nothing is lost: the WAL is replayed when the store opens again
                    tracing::warn!("WAL checkpoint incomplete: readers were still open");
                }
            })
    }
}

struct Reader<'a> {
    store: &'a SqliteStore,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("reader connection")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut pool = self.store.inner.readers.lock().expect("reader pool");
            if pool.len() < self.store.inner.options.readers {
                pool.push(c);
            }
        }
    }
}

fn key_err(e: sqlcipher::DbKeyError) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Refuse a file that does not match the configuration: an encrypted one without a
/// key, a plaintext one with a key (`salus keys encrypt` converts it).
fn check_file_against_key(path: &Path, key: Option<&DataKey>) -> Result<()> {
    sqlcipher::check_file(path, key)
        .map(|_| ())
        .map_err(key_err)
}

fn apply_key(conn: &Connection, key: Option<&DataKey>, path: &Path) -> Result<()> {
    sqlcipher::apply_key(conn, key, path).map_err(key_err)
}

fn configure(conn: &Connection, options: &SqliteOptions, reader: bool, path: &Path) -> Result<()> {
    // The key comes before any other statement: SQLCipher reads nothing until then.
    apply_key(conn, options.key.as_ref(), path)?;
    conn.busy_timeout(std::time::Duration::from_millis(options.busy_timeout_ms))
        .map_err(db_err)?;
    let sync = match options.durability {
        Durability::Normal => "NORMAL",
        Durability::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA temp_store=MEMORY; \
         PRAGMA cache_size=-65536; PRAGMA mmap_size=268435456; PRAGMA wal_autocheckpoint=16384;{}",
        // Deleted content (old index rows, erased resources) is overwritten with zeros,
        // so an erasure leaves no readable trace in the file.
        if reader {
            " PRAGMA query_only=1;"
        } else {
            " PRAGMA secure_delete=ON;"
        }
    ))
    .map_err(db_err)?;
    // The writer alone prepares ~60 distinct statements (the multi-row index inserts of
    // `PendingRows` are 24 of them); a miss costs a fresh prepare.
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

fn migrate(conn: &Connection) -> Result<()> {
    let applied: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map_err(db_err)? as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {applied} is newer than this build supports ({}); upgrade Salus",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let batch = format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1);
        conn.execute_batch(&batch).map_err(db_err)?;
        tracing::info!(version = i + 1, "applied SQLite schema migration");
    }
    Ok(())
}

const VERSION_COLS: &str = "v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq";

pub(crate) fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    let method: String = row.get(4)?;
    Ok(VersionRecord {
        rtype: row.get(0)?,
        id: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        last_updated: row.get(3)?,
        method: Method::parse(&method).unwrap_or(Method::Put),
        body: row.get(5)?,
        seq: row.get(6)?,
    })
}

fn read_latest(conn: &Connection, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM resources r JOIN resource_versions v ON v.seq = r.seq \
             WHERE r.rtype = ?1 AND r.id = ?2"
        ))
        .map_err(db_err)?;
    st.query_row(params![rtype, id], row_to_record)
        .optional()
        .map_err(db_err)
}

fn read_version(
    conn: &Connection,
    rtype: &str,
    id: &str,
    version: u64,
) -> Result<Option<VersionRecord>> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM resource_versions v \
             WHERE v.rtype = ?1 AND v.id = ?2 AND v.version = ?3"
        ))
        .map_err(db_err)?;
    st.query_row(params![rtype, id, version as i64], row_to_record)
        .optional()
        .map_err(db_err)
}

fn history(conn: &Connection, q: &HistoryQuery) -> Result<HistoryPage> {
    let mut filter = String::from("1=1");
    let mut args: Vec<Sql> = vec![];
    match &q.scope {
        HistoryScope::System => {}
        HistoryScope::Type(t) => {
            filter.push_str(" AND v.rtype = ?");
            args.push(Sql::Text(t.clone()));
        }
        HistoryScope::Instance(t, id) => {
            filter.push_str(" AND v.rtype = ? AND v.id = ?");
            args.push(Sql::Text(t.clone()));
            args.push(Sql::Text(id.clone()));
        }
    }
    if let Some(since) = q.since {
        filter.push_str(" AND v.last_updated >= ?");
        args.push(Sql::Integer(since));
    }
    if let Some(before) = q.before {
        filter.push_str(" AND v.last_updated <= ?");
        args.push(Sql::Integer(before));
    }
    if let Some(from) = q.current_from {
        filter.push_str(
            " AND NOT EXISTS (SELECT 1 FROM resource_versions n WHERE n.rtype = v.rtype \
             AND n.id = v.id AND n.version = v.version + 1 AND n.last_updated <= ?)",
        );
        args.push(Sql::Integer(from));
    }
    let total: i64 = conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM resource_versions v WHERE {filter}"
        ))
        .map_err(db_err)?
        .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))
        .map_err(db_err)?;
    if let Some(c) = q.cursor {
        filter.push_str(" AND v.seq < ?");
        args.push(Sql::Integer(c));
    }
    args.push(Sql::Integer(q.count as i64 + 1));
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {VERSION_COLS} FROM resource_versions v WHERE {filter} ORDER BY v.seq DESC LIMIT ?"
        ))
        .map_err(db_err)?;
    let mut entries: Vec<VersionRecord> = st
        .query_map(rusqlite::params_from_iter(args.iter()), row_to_record)
        .map_err(db_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)?;
    let next = if entries.len() > q.count {
        entries.truncate(q.count);
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(HistoryPage {
        entries,
        total: total as u64,
        next,
    })
}

/// The snapshot version of each resource: its current row when that is old enough
/// (the common case, no extra lookup), else the newest older version that is.
const SNAPSHOT_JOIN: &str = "FROM resources r JOIN resource_versions v ON v.seq = CASE \
     WHEN r.seq <= ?2 AND r.last_updated <= ?3 THEN r.seq \
     ELSE (SELECT max(w.seq) FROM resource_versions w WHERE w.rtype = r.rtype AND w.id = r.id \
           AND w.seq <= ?2 AND w.last_updated <= ?3) END \
     WHERE r.rtype = ?1 AND v.last_updated >= ?4 AND (?5 OR v.body IS NOT NULL)";

fn snapshot_scan(conn: &Connection, q: &SnapshotQuery) -> Result<SnapshotPage> {
    let until = q.until.unwrap_or(i64::MAX);
    let since = q.since.unwrap_or(i64::MIN);
    let after = q.after_id.as_deref().unwrap_or("");
    let mut records = Vec::new();
    match &q.ids {
        None => {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLS} {SNAPSHOT_JOIN} AND r.id > ?6 ORDER BY r.id LIMIT ?7"
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(
                    params![
                        q.rtype,
                        q.at_seq,
                        until,
                        since,
                        q.include_deleted,
                        after,
                        q.limit as i64
                    ],
                    row_to_record,
                )
                .map_err(db_err)?;
            for row in rows {
                records.push(row.map_err(db_err)?);
            }
        }
        Some(ids) => {
            let mut ids: Vec<&String> = ids.iter().filter(|id| id.as_str() > after).collect();
            ids.sort();
            ids.dedup();
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLS} {SNAPSHOT_JOIN} AND r.id = ?6"
                ))
                .map_err(db_err)?;
            for id in ids {
                if records.len() == q.limit {
                    break;
                }
                let rec = st
                    .query_row(
                        params![q.rtype, q.at_seq, until, since, q.include_deleted, id],
                        row_to_record,
                    )
                    .optional()
                    .map_err(db_err)?;
                records.extend(rec);
            }
        }
    }
    let next = (records.len() == q.limit && q.limit > 0)
        .then(|| records.last().map(|r| r.id.clone()))
        .flatten();
    Ok(SnapshotPage { records, next })
}

fn search(conn: &Connection, q: &SearchQuery) -> Result<SearchPage> {
    crate::sqlite_query::run(conn, q)
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn read(&self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        read_latest(&*self.reader()?, rtype, id)
    }

    async fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<VersionRecord>> {
        read_version(&*self.reader()?, rtype, id, version)
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage> {
        history(&*self.reader()?, query)
    }

    async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        search(&*self.reader()?, query)
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        let turn = self.inner.turns.acquire().await;
        self.begin_in(turn).await
    }

    async fn begin_bulk(&self) -> Result<Box<dyn StoreTx>> {
        let turn = self.inner.turns.acquire_alone().await;
        self.begin_in(turn).await
    }

    async fn read_many(&self, keys: &[(String, String)]) -> Result<Vec<VersionRecord>> {
        let conn = self.reader()?;
        let mut out = Vec::with_capacity(keys.len());
        for (t, id) in keys {
            if let Some(r) = read_latest(&conn, t, id)? {
                if !r.is_deleted() {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    async fn references_from(
        &self,
        sources: &[(String, String)],
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached(
                "SELECT x.target_type, x.target_id FROM resources r JOIN idx_reference x ON x.rid = r.rid \
                 JOIN params p ON p.pid = x.pid \
                 WHERE r.rtype = ?1 AND r.id = ?2 AND (?3 IS NULL OR p.param = ?3) AND x.target_type != ''",
            )
            .map_err(db_err)?;
        let mut out = vec![];
        for (t, id) in sources {
            let rows = st
                .query_map(params![t, id, param], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err)?;
            for row in rows {
                out.push(row.map_err(db_err)?);
            }
        }
        Ok(out)
    }

    async fn references_to(
        &self,
        targets: &[(String, String)],
        source_type: Option<&str>,
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached(
                "SELECT r.rtype, r.id FROM idx_reference x JOIN resources r ON r.rid = x.rid \
                 JOIN params p ON p.pid = x.pid \
                 WHERE x.target_type = ?1 AND x.target_id = ?2 AND r.deleted = 0 \
                 AND (?3 IS NULL OR r.rtype = ?3) AND (?4 IS NULL OR p.param = ?4)",
            )
            .map_err(db_err)?;
        let mut out = vec![];
        for (t, id) in targets {
            let rows = st
                .query_map(params![t, id, source_type, param], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(db_err)?;
            for row in rows {
                out.push(row.map_err(db_err)?);
            }
        }
        Ok(out)
    }

    async fn scan_current(&self, after: Option<u64>, limit: usize) -> Result<ScanPage> {
        let conn = self.reader()?;
        let total: i64 = conn
            .prepare_cached("SELECT count(*) FROM resources WHERE deleted = 0")
            .map_err(db_err)?
            .query_row([], |r| r.get(0))
            .map_err(db_err)?;
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLS}, r.rid FROM resources r JOIN resource_versions v ON v.seq = r.seq \
                 WHERE r.rid > ?1 AND r.deleted = 0 ORDER BY r.rid LIMIT ?2"
            ))
            .map_err(db_err)?;
        let rows: Vec<(VersionRecord, i64)> = st
            .query_map(params![after.unwrap_or(0) as i64, limit as i64], |r| {
                Ok((row_to_record(r)?, r.get(7)?))
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|(_, rid)| *rid as u64))
            .flatten();
        Ok(ScanPage {
            records: rows.into_iter().map(|(r, _)| r).collect(),
            next,
            total: total as u64,
        })
    }

    async fn reindex_pending(&self) -> Result<bool> {
        let conn = self.reader()?;
        let v: Option<String> = conn
            .prepare_cached("SELECT value FROM salus_meta WHERE key = 'reindex_pending'")
            .map_err(db_err)?
            .query_row([], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        Ok(v.as_deref() == Some("1"))
    }

    async fn clear_reindex_pending(&self) -> Result<()> {
        let _turn = self.inner.turns.acquire_alone().await;
        self.inner
            .writer
            .call(|c| {
                c.execute("DELETE FROM salus_meta WHERE key = 'reindex_pending'", [])
                    .map(|_| ())
                    .map_err(db_err)
            })
            .await
    }

    async fn analyze(&self) -> Result<()> {
        // The search SQL fixes its own plan (sqlite_query.rs); statistics in
        // `sqlite_stat1` would only let SQLite second-guess it.
        Ok(())
    }

    async fn compact(&self) -> Result<()> {
        let _turn = self.inner.turns.acquire_alone().await;
        let running = self.inner.checkpointer.running.clone();
        self.inner
            .writer
            .call(move |c| {
                // FTS5 keeps deleted rows' terms in its segments until they are merged.
                truncate_wal(
                    c,
                    &running,
                    "INSERT INTO fulltext(fulltext) VALUES('optimize');",
                )
            })
            .await
            .and_then(|done| {
                // erased content may still sit in the WAL: say so rather than claim it gone
                done.then_some(()).ok_or_else(|| {
                    StoreError::Busy(
                        "the WAL could not be truncated: readers are still open; retry".into(),
                    )
                })
            })
    }

    fn feed_gaps_are_final(&self) -> bool {
        true
    }

    async fn snapshot_seq(&self) -> Result<i64> {
        let conn = self.reader()?;
        let seq: Option<i64> = conn
            .prepare_cached("SELECT max(seq) FROM resource_versions")
            .map_err(db_err)?
            .query_row([], |r| r.get(0))
            .map_err(db_err)?;
        Ok(seq.unwrap_or(0))
    }

    async fn changes_after(&self, after: i64, limit: usize) -> Result<Vec<VersionRecord>> {
        let conn = self.reader()?;
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {VERSION_COLS} FROM resource_versions v WHERE v.seq > ?1 \
                 ORDER BY v.seq LIMIT ?2"
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![after, limit as i64], row_to_record)
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        Ok(rows)
    }

    async fn snapshot_scan(&self, query: &SnapshotQuery) -> Result<SnapshotPage> {
        snapshot_scan(&*self.reader()?, query)
    }

    async fn scan_versions(
        &self,
        after: Option<(String, String, u64)>,
        limit: usize,
    ) -> Result<Vec<VersionRecord>> {
        let conn = self.reader()?;
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        // row values compare lexicographically; BINARY collation is byte order
        let rows = match after {
            None => conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLS} FROM resource_versions v \
                     ORDER BY v.rtype, v.id, v.version LIMIT ?1"
                ))
                .map_err(db_err)?
                .query_map(params![lim], row_to_record)
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>(),
            Some((t, i, v)) => conn
                .prepare_cached(&format!(
                    "SELECT {VERSION_COLS} FROM resource_versions v \
                     WHERE (v.rtype, v.id, v.version) > (?1, ?2, ?3) \
                     ORDER BY v.rtype, v.id, v.version LIMIT ?4"
                ))
                .map_err(db_err)?
                .query_map(
                    params![t, i, i64::try_from(v).unwrap_or(i64::MAX), lim],
                    row_to_record,
                )
                .map_err(db_err)?
                .collect::<rusqlite::Result<Vec<_>>>(),
        };
        rows.map_err(db_err)
    }

    async fn counts(&self) -> Result<Vec<(String, u64)>> {
        let r = self.reader()?;
        let mut st = r
            .prepare_cached(
                "SELECT rtype, count(*) FROM resources WHERE deleted = 0 GROUP BY rtype ORDER BY rtype",
            )
            .map_err(db_err)?;
        let rows = st
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)))
            .map_err(db_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)?;
        Ok(rows)
    }
}

/// A write transaction: holds the store's write lock; its work runs on the writer
/// thread.
struct SqliteTx {
    /// This transaction's turn on the writer, given on when it ends.
    turn: Option<Turn>,
    writer: Writer,
    /// The first failure of a queued write, reported by the next call that waits.
    failed: Arc<Mutex<Option<StoreError>>>,
    open: bool,
    /// Set on the writer once `commit` released the savepoint: from then on the writes
    /// belong to the group, even if the `commit` future is dropped.
    released: Arc<AtomicBool>,
    /// `commit` has started: if it is dropped, its writes may be in the group.
    committing: bool,
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            // Queued before the turn is given on, so it runs before the next transaction.
            // Only this transaction's savepoint is undone: the writes of transactions
            // committed before it in the same group stay.
            let group = self.turn.as_ref().map(|t| t.turns.group.clone());
            let released = self.released.clone();
            self.writer.queue_now(move |c| {
                if released.load(Ordering::Relaxed) {
                    return; // committed into the group before `commit` was dropped
                }
                forget_pids();
                let undone = if c.is_autocommit() {
                    Err("SQLite rolled the transaction back after an error".to_string())
                } else {
                    c.execute_batch("ROLLBACK TO ltx; RELEASE ltx")
                        .map_err(|e| e.to_string())
                };
                if let Err(e) = undone {
                    tracing::error!(error = %e, "rollback failed");
                    if let Some(group) = group {
                        fail_group(c, &group, &e);
                    }
                }
            });
        }
        if self.committing {
            // Count it with the group (it may have joined it): passed as committed.
            if let Some(turn) = self.turn.take() {
                turn.pass(true);
            }
        }
    }
}

impl SqliteTx {
    /// The failure of an earlier queued write, if any (taken: reported once).
    fn take_failure(&self) -> Result<()> {
        match self.failed.lock().expect("failure slot").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Queue a write; its failure is kept for the next call that waits, and writes
    /// after a failed one are not applied.
    async fn queue_write(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.take_failure()?;
        let failed = self.failed.clone();
        self.writer
            .queue(move |c| {
                if failed.lock().expect("failure slot").is_some() {
                    return; // the transaction has already failed
                }
                if c.is_autocommit() {
                    *failed.lock().expect("failure slot") = Some(rolled_back());
                    return; // SQLite ended it after an error: nothing more may run alone
                }
                if let Err(e) = f(c) {
                    *failed.lock().expect("failure slot") = Some(e);
                }
            })
            .await
    }

    /// Run `f` on the writer connection after every queued write, reporting a queued
    /// write's failure first.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let failed = self.failed.clone();
        let r = self
            .writer
            .call(move |c| match failed.lock().expect("failure slot").take() {
                Some(e) => Err(e),
                None if c.is_autocommit() => Err(rolled_back()),
                None => f(c),
            })
            .await;
        self.take_failure()?;
        r
    }
}

/// Store one version. A new resource's index rows go to `pending` (written by the
/// caller's [`PendingRows::flush`]); everything else is written here.
fn put_sync(conn: &Connection, mut w: NewVersion, pending: &mut PendingRows) -> Result<()> {
    let found: Option<(i64, i64)> = conn
        .prepare_cached("SELECT version, rid FROM resources WHERE rtype = ?1 AND id = ?2")
        .map_err(db_err)?
        .query_row(params![w.rtype, w.id], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()
        .map_err(db_err)?;
    let rid = found.map(|f| f.1);
    let found = found.map(|f| f.0 as u64);
    if found != w.expected_version {
        return Err(StoreError::VersionConflict {
            rtype: w.rtype,
            id: w.id,
            expected: w.expected_version,
            found,
        });
    }
    conn.prepare_cached(
        "INSERT INTO resource_versions (rtype, id, version, last_updated, method, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(db_err)?
    .execute(params![
        w.rtype,
        w.id,
        w.version as i64,
        w.last_updated,
        w.method.as_str(),
        w.body
    ])
    .map_err(db_err)?;
    let seq = conn.last_insert_rowid();
    let rid = match rid {
        Some(rid) => {
            // The diff below reads the stored rows: those of this job must be there.
            if !pending.is_empty() {
                pending.flush(conn)?;
            }
            conn.prepare_cached(
                "UPDATE resources SET version = ?2, seq = ?3, deleted = ?4, last_updated = ?5 \
                 WHERE rid = ?1",
            )
            .map_err(db_err)?
            .execute(params![
                rid,
                w.version as i64,
                seq,
                w.body.is_none(),
                w.last_updated
            ])
            .map_err(db_err)?;
            match &w.body {
                // An update: only the rows that differ change (most stay: the same codes,
                // subject, identifiers).
                Some(_) => {
                    replace_index(
                        conn,
                        &w.rtype,
                        rid,
                        &w.index,
                        w.fulltext.as_ref(),
                        &w.contained,
                    )?;
                    return Ok(());
                }
                None => delete_index(conn, rid)?,
            }
            rid
        }
        None => {
            conn.prepare_cached(
                "INSERT INTO resources (rtype, id, version, seq, deleted, last_updated) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?
            .execute(params![
                w.rtype,
                w.id,
                w.version as i64,
                seq,
                w.body.is_none(),
                w.last_updated
            ])
            .map_err(db_err)?;
            conn.last_insert_rowid()
        }
    };
    if w.body.is_some() {
        insert_fulltext(conn, rid, w.fulltext.as_ref())?;
        pending.add(conn, &w.rtype, rid, std::mem::take(&mut w.index))?;
        insert_contained(conn, rid, &w.contained)?;
    }
    Ok(())
}

/// Store versions in order in one writer job (see [`put_sync`]); the index rows of the
/// new resources among them are written together at the end. After a failed write
/// nothing more is written: the failure fails the transaction (`queue_write` reports it
/// at the next call that waits, `commit` included, and only a rollback clears it), and
/// after some errors SQLite has already rolled the transaction back, so a later
/// statement would commit on its own.
fn put_all(conn: &Connection, writes: impl IntoIterator<Item = NewVersion>) -> Result<()> {
    let mut pending = PendingRows::default();
    writes
        .into_iter()
        .try_for_each(|w| put_sync(conn, w, &mut pending))?;
    pending.flush(conn)
}

/// Replace the index rows and full text of `rtype/id` if its current version is
/// `version` and not a deletion.
fn reindex_sync(
    conn: &Connection,
    rtype: &str,
    id: &str,
    version: u64,
    index: &[IndexRow],
    fulltext: Option<FullText>,
    contained: &[ContainedIndex],
) -> Result<()> {
    let rid: Option<i64> = conn
        .prepare_cached(
            "SELECT rid FROM resources WHERE rtype = ?1 AND id = ?2 AND version = ?3 AND deleted = 0",
        )
        .map_err(db_err)?
        .query_row(params![rtype, id, version as i64], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    let Some(rid) = rid else {
        return Ok(()); // changed since: the newer version was indexed when written
    };
    replace_index(conn, rtype, rid, index, fulltext.as_ref(), contained)
}

thread_local! {
    /// The writer thread's memo of `params`: resource type → parameter name → `pid`.
    /// An entry may come from a transaction that is later rolled back, so every
    /// rollback on the writer clears it ([`forget_pids`]); a miss costs one lookup.
    static PIDS: std::cell::RefCell<std::collections::HashMap<String, std::collections::HashMap<String, i64>>> =
        Default::default();
}

/// The `pid` of (`rtype`, `param`), registered in `params` on first use. Called on the
/// writer thread only, inside its write transaction.
fn pid(conn: &Connection, rtype: &str, param: &str) -> Result<i64> {
    let memo = PIDS.with(|m| m.borrow().get(rtype).and_then(|t| t.get(param)).copied());
    if let Some(p) = memo {
        return Ok(p);
    }
    let found: Option<i64> = conn
        .prepare_cached("SELECT pid FROM params WHERE rtype = ?1 AND param = ?2")
        .map_err(db_err)?
        .query_row(params![rtype, param], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    let p = match found {
        Some(p) => p,
        None => {
            conn.prepare_cached("INSERT INTO params (rtype, param) VALUES (?1, ?2)")
                .map_err(db_err)?
                .execute(params![rtype, param])
                .map_err(db_err)?;
            conn.last_insert_rowid()
        }
    };
    PIDS.with(|m| {
        m.borrow_mut()
            .entry(rtype.to_string())
            .or_default()
            .insert(param.to_string(), p)
    });
    Ok(p)
}

/// Drop the writer's memo of `params` (after a rollback, which may have removed rows
/// it names).
fn forget_pids() {
    PIDS.with(|m| m.borrow_mut().clear());
}

/// An index row as the key columns of its table before `rid` (see
/// [`INDEX_KEY_COLUMNS`]), as stored (absent parts `''`), with the table's position in
/// [`INDEX_TABLES`].
fn stored_key(conn: &Connection, rtype: &str, row: &IndexRow) -> Result<(usize, Vec<Sql>)> {
    let t = |s: &str| Sql::Text(s.to_string());
    let o = |s: &Option<String>| Sql::Text(s.clone().unwrap_or_default());
    let p = |param: &str| pid(conn, rtype, param).map(Sql::Integer);
    Ok(match row {
        IndexRow::Token {
            param,
            system,
            code,
        } => (0, vec![p(param)?, t(code), o(system)]),
        IndexRow::String {
            param,
            normalized,
            exact,
        } => (1, vec![p(param)?, t(normalized), t(exact)]),
        IndexRow::Reference {
            param,
            target_type,
            target_id,
            version,
        } => (2, vec![p(param)?, t(target_id), o(target_type), o(version)]),
        IndexRow::Date { param, low, high } => {
            (3, vec![p(param)?, Sql::Integer(*low), Sql::Integer(*high)])
        }
        IndexRow::Number {
            param,
            value,
            system,
            code,
        } => (4, vec![p(param)?, Sql::Real(*value), o(system), o(code)]),
        IndexRow::Uri { param, uri } => (5, vec![p(param)?, t(uri)]),
    })
}

/// The key columns of each of [`INDEX_TABLES`] before `rid`.
const INDEX_KEY_COLUMNS: [&[&str]; 6] = [
    &["pid", "code", "system"],
    &["pid", "normalized", "exact"],
    &["pid", "target_id", "target_type", "version"],
    &["pid", "low", "high"],
    &["pid", "value", "system", "code"],
    &["pid", "uri"],
];

/// Make resource `rid`'s index rows `rows` (and its full text and contained resources
/// those given): the stored rows that are not among `rows` are deleted and only the
/// missing ones inserted, so an update that leaves most search values as they were
/// writes little. The outcome is the same as [`delete_index`] then [`insert_index`].
fn replace_index(
    conn: &Connection,
    rtype: &str,
    rid: i64,
    rows: &[IndexRow],
    fulltext: Option<&FullText>,
    contained: &[ContainedIndex],
) -> Result<()> {
    let keyed: Vec<(usize, Vec<Sql>, &IndexRow)> = rows
        .iter()
        .map(|r| stored_key(conn, rtype, r).map(|(table, key)| (table, key, r)))
        .collect::<Result<_>>()?;
    let mut missing: Vec<&IndexRow> = vec![];
    for (table, (select, delete)) in INDEX_DIFF_SQL.iter().enumerate() {
        let width = INDEX_KEY_COLUMNS[table].len();
        let stored: Vec<Vec<Sql>> = conn
            .prepare_cached(select)
            .map_err(db_err)?
            .query_map(params![rid], |r| {
                (0..width).map(|i| r.get::<_, Sql>(i)).collect()
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<_>>()
            .map_err(db_err)?;
        let wanted = |k: &Vec<Sql>| keyed.iter().any(|(t, key, _)| *t == table && key == k);
        for old in stored.iter().filter(|k| !wanted(k)) {
            let mut args: Vec<Sql> = vec![Sql::Integer(rid)];
            args.extend(old.iter().cloned());
            conn.prepare_cached(delete)
                .map_err(db_err)?
                .execute(rusqlite::params_from_iter(args))
                .map_err(db_err)?;
        }
        missing.extend(
            keyed
                .iter()
                .filter(|(t, key, _)| *t == table && !stored.contains(key))
                .map(|(_, _, r)| *r),
        );
    }
    // Full text and contained resources: replaced whole.
    delete_fulltext(conn, rid)?;
    delete_contained(conn, rid)?;
    insert_index(conn, rtype, rid, missing, fulltext)?;
    insert_contained(conn, rid, contained)
}

/// Per index table: the statement reading a resource's stored keys, and the one
/// deleting one row by its full key (built once from [`INDEX_KEY_COLUMNS`]).
static INDEX_DIFF_SQL: std::sync::LazyLock<Vec<(String, String)>> =
    std::sync::LazyLock::new(|| {
        INDEX_TABLES
            .iter()
            .zip(INDEX_KEY_COLUMNS)
            .map(|(name, cols)| {
                let cond: Vec<String> = cols
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", i + 2))
                    .collect();
                (
                    format!("SELECT {} FROM {name} WHERE rid = ?1", cols.join(", ")),
                    format!(
                        "DELETE FROM {name} WHERE rid = ?1 AND {}",
                        cond.join(" AND ")
                    ),
                )
            })
            .collect()
    });

fn delete_fulltext(conn: &Connection, rid: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM fulltext WHERE rowid = ?1")
        .map_err(db_err)?
        .execute(params![rid])
        .map_err(db_err)?;
    Ok(())
}

/// Remove every index row and the full text of resource `rid`, and its contained
/// resources with their rows.
fn delete_index(conn: &Connection, rid: i64) -> Result<()> {
    delete_rows(conn, rid)?;
    delete_fulltext(conn, rid)?;
    delete_contained(conn, rid)
}

/// Remove the contained resources of container `rid` with their index rows.
fn delete_contained(conn: &Connection, rid: i64) -> Result<()> {
    let crids: Vec<i64> = conn
        .prepare_cached("SELECT crid FROM contained WHERE rid = ?1")
        .map_err(db_err)?
        .query_map(params![rid], |r| r.get(0))
        .map_err(db_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)?;
    if !crids.is_empty() {
        for crid in crids {
            delete_rows(conn, -crid)?;
        }
        conn.prepare_cached("DELETE FROM contained WHERE rid = ?1")
            .map_err(db_err)?
            .execute(params![rid])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Erase every trace of a resource (see `StoreTx::purge`).
fn purge_sync(conn: &Connection, rtype: &str, id: &str) -> Result<u64> {
    let rid: Option<i64> = conn
        .prepare_cached("SELECT rid FROM resources WHERE rtype = ?1 AND id = ?2")
        .map_err(db_err)?
        .query_row(params![rtype, id], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    if let Some(rid) = rid {
        delete_index(conn, rid)?;
        conn.prepare_cached("DELETE FROM resources WHERE rid = ?1")
            .map_err(db_err)?
            .execute(params![rid])
            .map_err(db_err)?;
    }
    let n = conn
        .prepare_cached("DELETE FROM resource_versions WHERE rtype = ?1 AND id = ?2")
        .map_err(db_err)?
        .execute(params![rtype, id])
        .map_err(db_err)?;
    Ok(n as u64)
}

fn delete_rows(conn: &Connection, rid: i64) -> Result<()> {
    for table in INDEX_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE rid = ?1"))
            .map_err(db_err)?
            .execute(params![rid])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Register the contained resources of container `rid` and insert their index rows
/// under `-crid`.
fn insert_contained(conn: &Connection, rid: i64, contained: &[ContainedIndex]) -> Result<()> {
    for c in contained {
        conn.prepare_cached("INSERT INTO contained (rid, rtype, cid) VALUES (?1, ?2, ?3)")
            .map_err(db_err)?
            .execute(params![rid, c.rtype, c.id])
            .map_err(db_err)?;
        let crid = conn.last_insert_rowid();
        insert_index(conn, &c.rtype, -crid, &c.index, None)?;
    }
    Ok(())
}

/// Insert a resource's index rows and full text. Absent systems, types and versions
/// are stored as `''` (the tables' keys are NOT NULL); duplicates of a row are kept once.
fn insert_index<'a>(
    conn: &Connection,
    rtype: &str,
    rid: i64,
    rows: impl IntoIterator<Item = &'a IndexRow>,
    fulltext: Option<&FullText>,
) -> Result<()> {
    insert_fulltext(conn, rid, fulltext)?;
    let mut pending = PendingRows::default();
    pending.add(conn, rtype, rid, rows.into_iter().cloned())?;
    pending.flush(conn)
}

fn insert_fulltext(conn: &Connection, rid: i64, fulltext: Option<&FullText>) -> Result<()> {
    if let Some(t) = fulltext.filter(|t| !t.content.is_empty()) {
        conn.prepare_cached("INSERT INTO fulltext (rowid, narrative, content) VALUES (?1, ?2, ?3)")
            .map_err(db_err)?
            .execute(params![rid, t.narrative, t.content])
            .map_err(db_err)?;
    }
    Ok(())
}

/// Rows per multi-row `INSERT` of [`PendingRows::flush`], largest first: a run of rows
/// is written in statements of these sizes, so only a few distinct statements are ever
/// prepared per table.
const ROW_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// Per index table and per size in [`ROW_CHUNKS`]: `INSERT OR IGNORE INTO t (key
/// columns, rid) VALUES (…), (…), …` with that many rows.
static INSERT_ROWS_SQL: std::sync::LazyLock<Vec<Vec<String>>> = std::sync::LazyLock::new(|| {
    INDEX_TABLES
        .iter()
        .zip(INDEX_KEY_COLUMNS)
        .map(|(name, cols)| {
            let one = format!("({})", vec!["?"; cols.len() + 1].join(", "));
            ROW_CHUNKS
                .iter()
                .map(|&n| {
                    format!(
                        "INSERT OR IGNORE INTO {name} ({}, rid) VALUES {}",
                        cols.join(", "),
                        vec![one.as_str(); n].join(", ")
                    )
                })
                .collect()
        })
        .collect()
});

/// Index rows waiting to be inserted, by table (position in [`INDEX_TABLES`]), each with
/// its parameter id and resource. Rows of many resources are written together, a few
/// multi-row statements per table instead of one statement per row (the per-statement
/// work — cache lookup, bind, step, reset — was half of a row's cost).
///
/// Whoever adds rows flushes before anything on the connection reads or deletes index
/// rows, and before the writer job ends.
#[derive(Default)]
struct PendingRows {
    tables: [Vec<(i64, i64, IndexRow)>; 6],
}

impl PendingRows {
    fn add(
        &mut self,
        conn: &Connection,
        rtype: &str,
        rid: i64,
        rows: impl IntoIterator<Item = IndexRow>,
    ) -> Result<()> {
        for row in rows {
            let (table, param) = match &row {
                IndexRow::Token { param, .. } => (0, param),
                IndexRow::String { param, .. } => (1, param),
                IndexRow::Reference { param, .. } => (2, param),
                IndexRow::Date { param, .. } => (3, param),
                IndexRow::Number { param, .. } => (4, param),
                IndexRow::Uri { param, .. } => (5, param),
            };
            let pid = pid(conn, rtype, param)?;
            self.tables[table].push((pid, rid, row));
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.tables.iter().all(Vec::is_empty)
    }

    /// Write every pending row. After an error the transaction has failed and the rows
    /// not written yet are dropped with the job.
    fn flush(&mut self, conn: &Connection) -> Result<()> {
        for (table, rows) in self.tables.iter_mut().enumerate() {
            let mut rest = &rows[..];
            for (size, sql) in ROW_CHUNKS.iter().zip(&INSERT_ROWS_SQL[table]) {
                while rest.len() >= *size {
                    let (chunk, tail) = rest.split_at(*size);
                    let mut stmt = conn.prepare_cached(sql).map_err(db_err)?;
                    let mut at = 1;
                    for (pid, rid, row) in chunk {
                        at = bind_row(&mut stmt, at, *pid, *rid, row).map_err(db_err)?;
                    }
                    stmt.raw_execute().map_err(db_err)?;
                    rest = tail;
                }
            }
            rows.clear();
        }
        Ok(())
    }
}

/// Bind one index row's columns (as in [`INDEX_KEY_COLUMNS`], then `rid`) from
/// parameter `at` on; returns the next parameter's index.
fn bind_row(
    stmt: &mut rusqlite::Statement<'_>,
    at: usize,
    pid: i64,
    rid: i64,
    row: &IndexRow,
) -> rusqlite::Result<usize> {
    fn opt(o: &Option<String>) -> &str {
        o.as_deref().unwrap_or("")
    }
    fn bind(
        stmt: &mut rusqlite::Statement<'_>,
        at: &mut usize,
        v: impl rusqlite::ToSql,
    ) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(*at, v)?;
        *at += 1;
        Ok(())
    }
    let mut i = at;
    bind(stmt, &mut i, pid)?;
    match row {
        IndexRow::Token { system, code, .. } => {
            bind(stmt, &mut i, code.as_str())?;
            bind(stmt, &mut i, opt(system))?;
        }
        IndexRow::String {
            normalized, exact, ..
        } => {
            bind(stmt, &mut i, normalized.as_str())?;
            bind(stmt, &mut i, exact.as_str())?;
        }
        IndexRow::Reference {
            target_type,
            target_id,
            version,
            ..
        } => {
            bind(stmt, &mut i, target_id.as_str())?;
            bind(stmt, &mut i, opt(target_type))?;
            bind(stmt, &mut i, opt(version))?;
        }
        IndexRow::Date { low, high, .. } => {
            bind(stmt, &mut i, low)?;
            bind(stmt, &mut i, high)?;
        }
        IndexRow::Number {
            value,
            system,
            code,
            ..
        } => {
            bind(stmt, &mut i, value)?;
            bind(stmt, &mut i, opt(system))?;
            bind(stmt, &mut i, opt(code))?;
        }
        IndexRow::Uri { uri, .. } => bind(stmt, &mut i, uri.as_str())?,
    }
    bind(stmt, &mut i, rid)?;
    Ok(i)
}

#[async_trait]
impl StoreTx for SqliteTx {
    async fn read(&mut self, rtype: &str, id: &str) -> Result<Option<VersionRecord>> {
        let (rtype, id) = (rtype.to_string(), id.to_string());
        self.call(move |c| read_latest(c, &rtype, &id)).await
    }

    async fn heads(&mut self, keys: &[(String, String)]) -> Result<Vec<Option<Head>>> {
        let keys = keys.to_vec();
        self.call(move |c| {
            let mut st = c
                .prepare_cached(
                    "SELECT version, last_updated, deleted FROM resources WHERE rtype = ?1 AND id = ?2",
                )
                .map_err(db_err)?;
            keys.iter()
                .map(|(t, id)| {
                    st.query_row(params![t, id], |r| {
                        Ok(Head {
                            version: r.get::<_, i64>(0)? as u64,
                            last_updated: r.get(1)?,
                            deleted: r.get(2)?,
                        })
                    })
                    .optional()
                    .map_err(db_err)
                })
                .collect()
        })
        .await
    }

    async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage> {
        let query = query.clone();
        self.call(move |c| search(c, &query)).await
    }

    async fn put(&mut self, write: NewVersion) -> Result<()> {
        self.queue_write(move |c| put_all(c, [write])).await
    }

    /// Queued in jobs of [`PUT_MANY_CHUNK`] versions: the same order and checks as one
    /// `put` each, but one hand-off to the writer thread (and one wake-up of the caller
    /// when the queue is full) per chunk instead of per version.
    async fn put_many(&mut self, writes: Vec<NewVersion>) -> Result<()> {
        let mut writes = writes.into_iter().peekable();
        while writes.peek().is_some() {
            let chunk: Vec<NewVersion> = writes.by_ref().take(PUT_MANY_CHUNK).collect();
            self.queue_write(move |c| put_all(c, chunk)).await?;
        }
        Ok(())
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
        let (rtype, id) = (rtype.to_string(), id.to_string());
        self.queue_write(move |c| {
            reindex_sync(c, &rtype, &id, version, &index, fulltext, &contained)
        })
        .await
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.call(|c| c.execute_batch("SAVEPOINT unit").map_err(db_err))
            .await
    }

    async fn rollback_to_savepoint(&mut self) -> Result<()> {
        // A queued write that failed inside the unit is undone with it.
        let failed = self.failed.clone();
        let r = self
            .writer
            .call(move |c| {
                failed.lock().expect("failure slot").take();
                forget_pids();
                c.execute_batch("ROLLBACK TO unit; RELEASE unit")
                    .map_err(db_err)
            })
            .await;
        self.failed.lock().expect("failure slot").take();
        r
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.call(|c| c.execute_batch("RELEASE unit").map_err(db_err))
            .await
    }

    async fn purge(&mut self, rtype: &str, id: &str) -> Result<u64> {
        let (rtype, id) = (rtype.to_string(), id.to_string());
        self.call(move |c| purge_sync(c, &rtype, &id)).await
    }

    /// Group commit: this transaction's savepoint is released at once, and the SQLite
    /// transaction is committed when no other transaction waits for the writer (or
    /// the group is full); the call returns once that COMMIT is done, with its result.
    /// So concurrent writers (HL7 feeds, HTTP clients) share one WAL write of the
    /// pages they all touched, and nothing is acknowledged before it is durable.
    async fn commit(mut self: Box<Self>) -> Result<()> {
        let (done, committed) = oneshot::channel();
        let group = self
            .turn
            .as_ref()
            .expect("a turn while open")
            .turns
            .group
            .clone();
        let released = self.released.clone();
        self.committing = true;
        // On failure (or if this future is dropped) the transaction is dropped holding
        // its turn, which is given on after its rollback.
        self.call(move |c| {
            c.execute_batch("RELEASE ltx").map_err(db_err)?;
            released.store(true, Ordering::Relaxed);
            group.waiting.lock().expect("group").push(done);
            Ok(())
        })
        .await?;
        self.open = false;
        self.turn.take().expect("a turn while open").pass(true);
        committed.await.map_err(|_| writer_gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Clause, IndexKind, RangeMatch};

    #[tokio::test]
    async fn sqlite_passes_the_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap();
        crate::contract::run_all(Arc::new(store)).await;
    }

    fn keyed(key: &DataKey) -> SqliteOptions {
        SqliteOptions {
            key: Some(key.clone()),
            ..SqliteOptions::default()
        }
    }

    #[tokio::test]
    async fn an_encrypted_store_passes_the_backend_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path(), keyed(&DataKey::generate())).unwrap();
        crate::contract::run_all(Arc::new(store)).await;
    }

    /// Whether any file of the data dir (database, WAL, shared memory) holds `needle`.
    fn any_file_holds(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    async fn store_a_patient(store: &SqliteStore) {
        let body = r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Vandersloot","given":["Ottilie"]}]}"#;
        let mut v = crate::contract::new_version("Patient", "p1", 1, None, body);
        v.index = vec![IndexRow::String {
            param: "family".into(),
            normalized: "vandersloot".into(),
            exact: "Vandersloot".into(),
        }];
        v.fulltext = Some(FullText {
            narrative: String::new(),
            content: "Vandersloot Ottilie".into(),
        });
        let mut tx = store.begin().await.unwrap();
        tx.put(v).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// A data dir written before migration 4 (index rows keyed by type and parameter
    /// name) keeps every search working after the upgrade, without a reindex.
    #[tokio::test]
    async fn index_rows_from_schema_3_are_converted_to_parameter_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("salus.db")).unwrap();
            for sql in &MIGRATIONS[..3] {
                c.execute_batch(sql).unwrap();
            }
            c.execute_batch(
                r#"PRAGMA user_version = 3;
                INSERT INTO resource_versions (seq, rtype, id, version, last_updated, method, body) VALUES
                  (1, 'Patient', 'p1', 1, 0, 'POST', '{"resourceType":"Patient","id":"p1"}'),
                  (2, 'Observation', 'o1', 1, 0, 'POST', '{"resourceType":"Observation","id":"o1"}');
                INSERT INTO resources (rid, rtype, id, version, seq, deleted, last_updated) VALUES
                  (1, 'Patient', 'p1', 1, 1, 0, 0), (2, 'Observation', 'o1', 1, 2, 0, 0);
                INSERT INTO idx_string VALUES ('Patient', 'family', 'vandersloot', 'Vandersloot', 1);
                INSERT INTO idx_token VALUES ('Observation', 'code', '8480-6', 'http://loinc.org', 2);
                INSERT INTO idx_reference VALUES ('Observation', 'subject', 'p1', 'Patient', '', 2);
                INSERT INTO idx_date VALUES ('Observation', 'date', 10, 20, 2);
                INSERT INTO idx_number VALUES ('Observation', 'code-value-quantity$8480-6|http://loinc.org', 120.0, '', 'mm[Hg]', 2);
                INSERT INTO idx_uri VALUES ('Observation', 'instantiates', 'http://x.org/a', 2);
                "#,
            )
            .unwrap();
        }
        let store = Arc::new(SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap());
        let dyn_store: Arc<dyn Store> = store.clone();
        let ids = |q: SearchQuery| crate::contract::ids(&dyn_store, q);
        let q = |rtype: &str, c: Clause| {
            let mut q = SearchQuery::new(rtype);
            q.clauses = vec![c];
            q
        };
        let token = Clause::Token {
            param: "code".into(),
            any: vec![crate::TokenMatch {
                system: Some("http://loinc.org".into()),
                code: Some("8480-6".into()),
            }],
        };
        assert_eq!(ids(q("Observation", token.clone())).await, ["o1"]);
        assert!(
            ids(q("Patient", token)).await.is_empty(),
            "the type is part of the id"
        );
        let quantity = Clause::Quantity {
            param: "code-value-quantity$8480-6|*".into(),
            any: vec![crate::QuantityMatch {
                range: RangeMatch {
                    prefix: crate::Prefix::Gt,
                    low: 100.0,
                    high: 100.0,
                },
                system: None,
                code: None,
            }],
        };
        assert_eq!(ids(q("Observation", quantity)).await, ["o1"]);
        let has = Clause::Has {
            source_type: "Observation".into(),
            param: "subject".into(),
            inner: vec![Clause::Date {
                param: "date".into(),
                any: vec![RangeMatch {
                    prefix: crate::Prefix::Ge,
                    low: 5,
                    high: 5,
                }],
            }],
        };
        assert_eq!(ids(q("Patient", has)).await, ["p1"]);
        let missing = Clause::Missing {
            param: "instantiates".into(),
            kind: IndexKind::Uri,
            missing: false,
        };
        assert_eq!(ids(q("Observation", missing)).await, ["o1"]);
        let back = store
            .references_to(&[("Patient".into(), "p1".into())], None, Some("subject"))
            .await
            .unwrap();
        assert_eq!(back, [("Observation".to_string(), "o1".to_string())]);
        // new rows reuse the converted parameter ids
        let mut v = crate::contract::new_version("Patient", "p2", 1, None, "{}");
        v.index = vec![IndexRow::String {
            param: "family".into(),
            normalized: "vandersloot".into(),
            exact: "Vandersloot".into(),
        }];
        let mut tx = store.begin().await.unwrap();
        tx.put(v).await.unwrap();
        tx.commit().await.unwrap();
        let family = Clause::String {
            param: "family".into(),
            any: vec![crate::StringMatch {
                value: "vander".into(),
                mode: crate::StringMode::Prefix,
            }],
        };
        assert_eq!(ids(q("Patient", family)).await, ["p1", "p2"]);
        let reader = store.reader().unwrap();
        let n: i64 = reader
            .query_row(
                "SELECT count(*) FROM params WHERE param = 'family'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    /// Wait until `n` transactions wait for the writer.
    async fn until_waiting(store: &SqliteStore, n: usize) {
        for _ in 0..2_000 {
            if store.inner.turns.state.lock().unwrap().queue.len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        panic!("{n} transactions never queued");
    }

    /// A transaction (bulk or not) that takes the writer, says so, and writes `id`
    /// and commits once told to go.
    fn writer_holder(
        store: &Arc<SqliteStore>,
        id: &'static str,
        bulk: bool,
    ) -> (
        tokio::task::JoinHandle<Result<()>>,
        oneshot::Receiver<()>,
        oneshot::Sender<()>,
    ) {
        let (has_writer, writer_taken) = oneshot::channel();
        let (go, went) = oneshot::channel::<()>();
        let store = store.clone();
        let task = tokio::spawn(async move {
            let mut tx = if bulk {
                store.begin_bulk().await.unwrap()
            } else {
                store.begin().await.unwrap()
            };
            has_writer.send(()).unwrap();
            went.await.unwrap();
            tx.put(crate::contract::new_version("Patient", id, 1, None, "{}"))
                .await
                .unwrap();
            tx.commit().await
        });
        (task, writer_taken, go)
    }

    fn commits(store: &SqliteStore) -> u64 {
        store.inner.turns.group.commits.load(Ordering::Relaxed)
    }

    /// Transactions that wait for the writer while another runs commit with it, in one
    /// SQLite COMMIT; none of them returns (or is visible to readers) before that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_transactions_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap());
        let before = commits(&store);
        let mut first = store.begin().await.unwrap();
        first
            .put(crate::contract::new_version("Patient", "p0", 1, None, "{}"))
            .await
            .unwrap();
        let mut others = vec![];
        for i in 1..8 {
            let store = store.clone();
            others.push(tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                let id = format!("p{i}");
                tx.put(crate::contract::new_version("Patient", &id, 1, None, "{}"))
                    .await
                    .unwrap();
                tx.commit().await
            }));
        }
        until_waiting(&store, 7).await;
        let committing = tokio::spawn(async move { first.commit().await });
        for t in others {
            t.await.unwrap().unwrap();
        }
        committing.await.unwrap().unwrap();
        assert_eq!(
            commits(&store) - before,
            1,
            "eight transactions, one COMMIT"
        );
        for i in 0..8 {
            assert!(store
                .read("Patient", &format!("p{i}"))
                .await
                .unwrap()
                .is_some());
        }
    }

    /// A transaction that fails inside a group undoes its own writes only; the others
    /// commit, and a committed transaction is not visible until the group commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolled_back_transaction_leaves_its_group_intact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap());
        let put = |store: Arc<SqliteStore>, id: &'static str, keep: bool| async move {
            let mut tx = store.begin().await.unwrap();
            tx.put(crate::contract::new_version("Patient", id, 1, None, "{}"))
                .await
                .unwrap();
            if keep {
                tx.commit().await
            } else {
                // a conflicting write fails the transaction, which is then dropped
                let stale = crate::contract::new_version("Patient", id, 1, None, "{}");
                let failed = tx
                    .put(stale)
                    .await
                    .and(tx.read("Patient", id).await.map(|_| ()));
                assert!(failed.is_err());
                Ok(())
            }
        };
        let mut a = store.begin().await.unwrap();
        a.put(crate::contract::new_version("Patient", "a", 1, None, "{}"))
            .await
            .unwrap();
        let b = tokio::spawn(put(store.clone(), "b", false));
        until_waiting(&store, 1).await;
        let c = tokio::spawn(put(store.clone(), "c", true));
        until_waiting(&store, 2).await;
        // `a` joins the group, and waits for `b` and `c`
        let a_commit = tokio::spawn(async move { a.commit().await });
        b.await.unwrap().unwrap();
        c.await.unwrap().unwrap();
        a_commit.await.unwrap().unwrap();
        assert!(store.read("Patient", "a").await.unwrap().is_some());
        assert!(store.read("Patient", "b").await.unwrap().is_none());
        assert!(store.read("Patient", "c").await.unwrap().is_some());

        // `d` commits while `e` has the writer: `d` waits for `e`, unseen until then.
        let mut d = store.begin().await.unwrap();
        d.put(crate::contract::new_version("Patient", "d", 1, None, "{}"))
            .await
            .unwrap();
        let (e, writer_taken, go) = writer_holder(&store, "e", false);
        until_waiting(&store, 1).await;
        let d_commit = tokio::spawn(async move { d.commit().await });
        writer_taken.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!d_commit.is_finished(), "d returned before its COMMIT");
        assert!(store.read("Patient", "d").await.unwrap().is_none());
        go.send(()).unwrap();
        e.await.unwrap().unwrap();
        d_commit.await.unwrap().unwrap();
        assert!(store.read("Patient", "d").await.unwrap().is_some());
        assert!(store.read("Patient", "e").await.unwrap().is_some());
    }

    /// A bulk transaction first commits the group waiting before it: the write that
    /// handed it the writer returns while the bulk one still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bulk_transaction_does_not_hold_back_the_group_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap());
        let mut a = store.begin().await.unwrap();
        a.put(crate::contract::new_version("Patient", "a", 1, None, "{}"))
            .await
            .unwrap();
        let (bulk, writer_taken, go) = writer_holder(&store, "b", true);
        until_waiting(&store, 1).await;
        tokio::time::timeout(std::time::Duration::from_secs(10), a.commit())
            .await
            .expect("the commit waited for the bulk transaction")
            .unwrap();
        writer_taken.await.unwrap();
        assert!(store.read("Patient", "a").await.unwrap().is_some());
        go.send(()).unwrap();
        bulk.await.unwrap().unwrap();
        assert!(store.read("Patient", "b").await.unwrap().is_some());
    }

    /// A rolled-back transaction's new parameter ids are not remembered by the writer.
    #[tokio::test]
    async fn parameter_ids_of_a_rolled_back_transaction_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap();
        let version = |id: &str| {
            let mut v = crate::contract::new_version("Patient", id, 1, None, "{}");
            v.index = vec![IndexRow::Token {
                param: "gender".into(),
                system: None,
                code: "female".into(),
            }];
            v
        };
        let mut tx = store.begin().await.unwrap();
        tx.put(version("a")).await.unwrap();
        drop(tx); // rolled back: the `params` row for gender goes with it
        let mut tx = store.begin().await.unwrap();
        tx.put(version("b")).await.unwrap();
        tx.commit().await.unwrap();
        let mut q = SearchQuery::new("Patient");
        q.clauses = vec![Clause::Token {
            param: "gender".into(),
            any: vec![crate::TokenMatch {
                system: None,
                code: Some("female".into()),
            }],
        }];
        let found = crate::contract::ids(&(Arc::new(store) as Arc<dyn Store>), q).await;
        assert_eq!(found, ["b"]);
    }

    #[tokio::test]
    async fn commits_reach_the_main_file_without_an_explicit_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap();
        let db = dir.path().join("salus.db");
        let in_db = || {
            let bytes = std::fs::read(&db).unwrap();
            bytes.windows(11).any(|w| w == b"Vandersloot")
        };
        store_a_patient(&store).await;
        // The background checkpointer copies the commit out of the WAL within a few
        // of its rounds; the writer itself would not before the WAL grew to 256 MiB.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !in_db() {
            assert!(
                std::time::Instant::now() < deadline,
                "the commit never reached the main database file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn with_a_key_no_name_appears_in_the_files() {
        for encrypted in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let key = DataKey::generate();
            let options = if encrypted {
                keyed(&key)
            } else {
                SqliteOptions::default()
            };
            let store = SqliteStore::open_dir(dir.path(), options.clone()).unwrap();
            store_a_patient(&store).await;
            // in the WAL before a checkpoint, in the main file after it
            let in_wal = any_file_holds(dir.path(), b"Vandersloot")
                || any_file_holds(dir.path(), b"vandersloot");
            store.checkpoint().await.unwrap();
            let in_db = any_file_holds(dir.path(), b"Vandersloot")
                || any_file_holds(dir.path(), b"vandersloot");
            assert_eq!(in_wal, !encrypted, "WAL, encrypted: {encrypted}");
            assert_eq!(in_db, !encrypted, "database, encrypted: {encrypted}");
            // the full-text index works over the encrypted file
            let found = store.read("Patient", "p1").await.unwrap().unwrap();
            assert!(found.body.unwrap().contains("Vandersloot"));
            drop(store);
            let again = SqliteStore::open_dir(dir.path(), options).unwrap();
            assert!(again.read("Patient", "p1").await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_missing_or_wrong_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let key = DataKey::generate();
        {
            let store = SqliteStore::open_dir(dir.path(), keyed(&key)).unwrap();
            store_a_patient(&store).await;
            store.checkpoint().await.unwrap();
        }
        let err = |o| match SqliteStore::open_dir(dir.path(), o) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        };
        let e = err(SqliteOptions::default());
        assert!(
            e.contains("is encrypted") && e.contains("[encryption]"),
            "{e}"
        );
        let e = err(keyed(&DataKey::generate()));
        assert!(e.contains("wrong encryption key"), "{e}");
        // and a plaintext store opened with a key is refused, not overwritten
        let plain = tempfile::tempdir().unwrap();
        drop(SqliteStore::open_dir(plain.path(), SqliteOptions::default()).unwrap());
        let e = match SqliteStore::open_dir(plain.path(), keyed(&key)) {
            Ok(_) => panic!("opened"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("salus keys encrypt"), "{e}");
    }

    #[tokio::test]
    async fn upgrading_a_store_with_data_asks_for_a_reindex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("salus.db");
        {
            // a store as schema version 1 left it, with one resource
            let c = Connection::open(&path).unwrap();
            c.execute_batch(&format!("{}; PRAGMA user_version = 1;", MIGRATIONS[0]))
                .unwrap();
            c.execute_batch(
                "INSERT INTO resource_versions (rtype, id, version, last_updated, method, body) \
                 VALUES ('Patient', 'p1', 1, 0, 'PUT', '{}'); \
                 INSERT INTO resources (rtype, id, version, seq, deleted, last_updated) \
                 VALUES ('Patient', 'p1', 1, 1, 0, 0);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, SqliteOptions::default()).unwrap();
        assert!(store.reindex_pending().await.unwrap());
        let fresh = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_dir(fresh.path(), SqliteOptions::default()).unwrap();
        assert!(
            !store.reindex_pending().await.unwrap(),
            "nothing to reindex"
        );
    }

    #[tokio::test]
    async fn reopening_keeps_data_and_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap();
            let mut tx = store.begin().await.unwrap();
            tx.put(crate::contract::new_version("Patient", "p1", 1, None, "{}"))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let store = SqliteStore::open_dir(dir.path(), SqliteOptions::default()).unwrap();
        assert!(store.read("Patient", "p1").await.unwrap().is_some());
    }
}
