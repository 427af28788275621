//! Writes: a new version with its index rows, and reindexing.
//!
//! `put` queues the version in the transaction's [`Pending`] buffer and returns. A
//! flush — before anything that reads or ends a unit of work (`read`, `heads`,
//! `search`, `savepoint`, `commit`, …), or when the buffer grows large — sends the
//! queued puts pipelined, one conditional statement each (it checks the expected
//! version, moves the current-version pointer and inserts the version row), then the
//! index work of them all in bulk: the removal of previous rows, then one multi-row
//! `INSERT … SELECT FROM unnest(…)` per table, pipelined too. That is the
//! queued-write contract of `StoreTx::put`: a conflict or failure is reported by the
//! call that flushed, and the transaction has then failed (nothing of it commits;
//! `rollback_to_savepoint` undoes the unit, every queued write being inside it).

use crate::{col, db_err, prepare, text};
use deadpool_postgres::ClientWrapper;
use futures::future::try_join_all;
use futures::TryStreamExt;
use salus_store::{ContainedIndex, FullText, IndexRow, NewVersion, Result, StoreError};
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// The distribution key of a resource (see `docs/scaling.md`): a stable 64-bit hash
/// of its patient compartment — the Patient itself, or the Patient it references
/// through `patient` or `subject` — else of the resource itself. It only places rows
/// (on Citus/YugabyteDB, rows with one key live together); no query depends on it.
/// A resource keeps the key of its first version.
pub fn shard_key(rtype: &str, id: &str, index: &[IndexRow]) -> i64 {
    let patient = if rtype == "Patient" {
        Some(id)
    } else {
        index.iter().find_map(|r| match r {
            IndexRow::Reference {
                param,
                target_type: Some(t),
                target_id,
                ..
            } if t == "Patient" && (param == "patient" || param == "subject") => {
                Some(target_id.as_str())
            }
            _ => None,
        })
    };
    match patient {
        Some(p) => fnv1a(&["Patient", p]),
        None => fnv1a(&[rtype, id]),
    }
}

/// FNV-1a over the parts, separated by `/`: stable across builds and platforms.
fn fnv1a(parts: &[&str]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h ^= u64::from(b'/');
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h as i64
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const UPDATE: &str = "WITH u AS (\
    UPDATE resources SET version = $3, seq = nextval('salus_version_seq'), deleted = $5, last_updated = $6 \
    WHERE rtype = $1 AND id = $2 AND version = $4 RETURNING rid, shard, seq), \
  v AS (INSERT INTO resource_versions (seq, shard, rtype, id, version, last_updated, method, body) \
    SELECT u.seq, u.shard, $1, $2, $3, $6, $7, $8 FROM u) \
  SELECT rid, shard FROM u";

const CREATE: &str = "WITH u AS (\
    INSERT INTO resources (shard, rtype, id, version, seq, deleted, last_updated) \
    VALUES ($9, $1, $2, $3, nextval('salus_version_seq'), $5, $6) \
    ON CONFLICT (rtype, id) DO NOTHING RETURNING rid, shard, seq), \
  v AS (INSERT INTO resource_versions (seq, shard, rtype, id, version, last_updated, method, body) \
    SELECT u.seq, u.shard, $1, $2, $3, $6, $7, $8 FROM u) \
  SELECT rid, shard, $4::int8 FROM u";

/// Queue a new version; it is stored (if the resource's latest version is
/// `w.expected_version`) by the next flush of `pending`.
pub(crate) async fn put(c: &ClientWrapper, w: NewVersion, pending: &mut Pending) -> Result<()> {
    pending.rows +=
        w.index.len() + w.contained.iter().map(|c| c.index.len() + 1).sum::<usize>() + 1;
    pending.puts.push(w);
    if pending.rows > FLUSH_ROWS || pending.puts.len() >= FLUSH_PUTS {
        pending.flush(c).await?;
    }
    Ok(())
}

/// The bind values of one queued put that are not fields of the [`NewVersion`].
struct PutArgs {
    version: i64,
    expected: i64,
    deleted: bool,
    method: &'static str,
    shard: i64,
}

/// Replace the index rows of `rtype/id` if its current version is `version` and not
/// a deletion; the row lock keeps a concurrent put from interleaving.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn reindex(
    c: &ClientWrapper,
    rtype: &str,
    id: &str,
    version: u64,
    index: Vec<IndexRow>,
    fulltext: Option<FullText>,
    contained: Vec<ContainedIndex>,
    pending: &mut Pending,
) -> Result<()> {
    pending.send_puts(c).await?; // the check below must see this transaction's puts
    let st = prepare(
        c,
        "SELECT rid, shard FROM resources WHERE rtype = $1 AND id = $2 AND version = $3 \
         AND NOT deleted FOR UPDATE",
    )
    .await?;
    let row = c
        .query_opt(&st, &[&rtype, &id, &to_i64(version)])
        .await
        .map_err(db_err)?;
    let Some(row) = row else {
        return Ok(()); // changed since: the newer version was indexed when written
    };
    let (rid, shard): (i64, i64) = (col(&row, 0)?, col(&row, 1)?);
    pending.add(
        rid,
        Entry {
            rtype: rtype.into(),
            shard,
            existing: true,
            index,
            fulltext,
            contained,
        },
    );
    if pending.rows > FLUSH_ROWS {
        pending.flush(c).await?;
    }
    Ok(())
}

/// Erase a resource: every version, index row, full text and contained row.
pub(crate) async fn purge(c: &ClientWrapper, rtype: &str, id: &str) -> Result<u64> {
    let st = prepare(
        c,
        "SELECT rid FROM resources WHERE rtype = $1 AND id = $2 FOR UPDATE",
    )
    .await?;
    if let Some(row) = c.query_opt(&st, &[&rtype, &id]).await.map_err(db_err)? {
        let rid: i64 = col(&row, 0)?;
        for table in [
            "idx_token",
            "idx_string",
            "idx_reference",
            "idx_date",
            "idx_number",
            "idx_uri",
        ] {
            c.execute(
                &format!(
                    "DELETE FROM {table} WHERE rid = $1 \
                     OR rid IN (SELECT -crid FROM contained WHERE rid = $1)"
                ),
                &[&rid],
            )
            .await
            .map_err(db_err)?;
        }
        for sql in [
            "DELETE FROM fulltext WHERE rid = $1",
            "DELETE FROM contained WHERE rid = $1",
            "DELETE FROM resources WHERE rid = $1",
        ] {
            c.execute(sql, &[&rid]).await.map_err(db_err)?;
        }
    }
    let n = c
        .execute(
            "DELETE FROM resource_versions WHERE rtype = $1 AND id = $2",
            &[&rtype, &id],
        )
        .await
        .map_err(db_err)?;
    Ok(n)
}

/// Index rows buffered before a flush, at most (about 250 typical resources).
const FLUSH_ROWS: usize = 5_000;
/// Puts queued before a flush, at most.
const FLUSH_PUTS: usize = 256;

/// The index work of one resource, waiting for a flush.
struct Entry {
    rtype: String,
    shard: i64,
    /// Whether the resource may have rows in the database to remove first.
    existing: bool,
    index: Vec<IndexRow>,
    fulltext: Option<FullText>,
    contained: Vec<ContainedIndex>,
}

/// A transaction's queued writes: puts not yet sent, and index work by resource
/// (`rid`; a later put of the same resource replaces the earlier one's).
#[derive(Default)]
pub(crate) struct Pending {
    puts: Vec<NewVersion>,
    entries: HashMap<i64, Entry>,
    /// Index rows queued (puts and entries), to bound the buffer.
    rows: usize,
}

/// Every index row, the full text and the contained resources (with their rows) of
/// the resources `$1`, removed in one statement.
const DELETE_INDEX: &str =
    "WITH c AS (DELETE FROM contained WHERE rid = ANY($1::int8[]) RETURNING -crid AS r), \
  k AS (SELECT coalesce(array_agg(r), '{}'::int8[]) || $1::int8[] AS rids FROM c), \
  t1 AS (DELETE FROM idx_token WHERE rid = ANY((SELECT rids FROM k)::int8[])), \
  t2 AS (DELETE FROM idx_string WHERE rid = ANY((SELECT rids FROM k)::int8[])), \
  t3 AS (DELETE FROM idx_reference WHERE rid = ANY((SELECT rids FROM k)::int8[])), \
  t4 AS (DELETE FROM idx_date WHERE rid = ANY((SELECT rids FROM k)::int8[])), \
  t5 AS (DELETE FROM idx_number WHERE rid = ANY((SELECT rids FROM k)::int8[])), \
  t6 AS (DELETE FROM idx_uri WHERE rid = ANY((SELECT rids FROM k)::int8[])) \
  DELETE FROM fulltext WHERE rid = ANY($1::int8[])";

const INSERT_TOKEN: &str = "INSERT INTO idx_token (shard, rtype, param, code, system, rid) \
  SELECT DISTINCT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[])";
const INSERT_STRING: &str = "INSERT INTO idx_string (shard, rtype, param, normalized, exact, rid) \
  SELECT DISTINCT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[])";
const INSERT_REFERENCE: &str = "INSERT INTO idx_reference (shard, rtype, param, target_id, target_type, version, rid) \
  SELECT DISTINCT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[])";
const INSERT_DATE: &str = "INSERT INTO idx_date (shard, rtype, param, low, high, rid) \
  SELECT DISTINCT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[])";
const INSERT_NUMBER: &str = "INSERT INTO idx_number (shard, rtype, param, value, system, code, rid) \
  SELECT DISTINCT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::float8[], $5::text[], $6::text[], $7::int8[])";
const INSERT_URI: &str = "INSERT INTO idx_uri (shard, rtype, param, uri, rid) \
  SELECT DISTINCT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[])";
const INSERT_TEXT: &str = "INSERT INTO fulltext (rid, shard, narrative, content) \
  SELECT r, s, n::tsvector, c::tsvector FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) AS u(r, s, n, c)";
const INSERT_CONTAINED: &str = "INSERT INTO contained (crid, rid, shard, rtype, cid) \
  SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::text[])";

/// Column-wise rows of one table for a multi-row insert.
#[derive(Default)]
struct Table {
    shard: Vec<i64>,
    rtype: Vec<String>,
    param: Vec<String>,
    text: [Vec<String>; 4],
    int: [Vec<i64>; 2],
    real: Vec<f64>,
    rid: Vec<i64>,
}

impl Table {
    fn start(&mut self, shard: i64, rtype: &str, param: &str, rid: i64) {
        self.shard.push(shard);
        self.rtype.push(rtype.into());
        self.param.push(param.into());
        self.rid.push(rid);
    }
    fn is_empty(&self) -> bool {
        self.rid.is_empty()
    }
}

/// The rows of every table (absent systems, types, versions and codes are `''`, as in
/// the SQLite backend).
#[derive(Default)]
struct Columns {
    token: Table,
    string: Table,
    reference: Table,
    date: Table,
    number: Table,
    uri: Table,
}

impl Columns {
    fn add(&mut self, shard: i64, rtype: &str, rid: i64, rows: &[IndexRow]) {
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        for row in rows {
            match row {
                IndexRow::Token {
                    param,
                    system,
                    code,
                } => {
                    let t = &mut self.token;
                    t.start(shard, rtype, param, rid);
                    t.text[0].push(code.clone());
                    t.text[1].push(opt(system));
                }
                IndexRow::String {
                    param,
                    normalized,
                    exact,
                } => {
                    let t = &mut self.string;
                    t.start(shard, rtype, param, rid);
                    t.text[0].push(normalized.clone());
                    t.text[1].push(exact.clone());
                }
                IndexRow::Reference {
                    param,
                    target_type,
                    target_id,
                    version,
                } => {
                    let t = &mut self.reference;
                    t.start(shard, rtype, param, rid);
                    t.text[0].push(target_id.clone());
                    t.text[1].push(opt(target_type));
                    t.text[2].push(opt(version));
                }
                IndexRow::Date { param, low, high } => {
                    let t = &mut self.date;
                    t.start(shard, rtype, param, rid);
                    t.int[0].push(*low);
                    t.int[1].push(*high);
                }
                IndexRow::Number {
                    param,
                    value,
                    system,
                    code,
                } => {
                    let t = &mut self.number;
                    t.start(shard, rtype, param, rid);
                    t.real.push(*value);
                    t.text[0].push(opt(system));
                    t.text[1].push(opt(code));
                }
                IndexRow::Uri { param, uri } => {
                    let t = &mut self.uri;
                    t.start(shard, rtype, param, rid);
                    t.text[0].push(uri.clone());
                }
            }
        }
    }
}

type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

impl Pending {
    fn add(&mut self, rid: i64, mut entry: Entry) {
        self.rows += entry.index.len()
            + entry
                .contained
                .iter()
                .map(|c| c.index.len() + 1)
                .sum::<usize>()
            + 1;
        if let Some(old) = self.entries.remove(&rid) {
            entry.existing |= old.existing;
        }
        self.entries.insert(rid, entry);
    }

    /// Forget the buffered work (its unit of work was rolled back).
    pub(crate) fn clear(&mut self) {
        self.puts.clear();
        self.entries.clear();
        self.rows = 0;
    }

    /// Send the queued puts, pipelined: one conditional statement each (see the
    /// crate's overview), in order. The first that finds another version than the
    /// one expected is reported as a conflict; the transaction has then failed.
    pub(crate) async fn send_puts(&mut self, c: &ClientWrapper) -> Result<()> {
        if self.puts.is_empty() {
            return Ok(());
        }
        let puts = std::mem::take(&mut self.puts);
        let update = prepare(c, UPDATE).await?;
        let create = prepare(c, CREATE).await?;
        let args: Vec<PutArgs> = puts
            .iter()
            .map(|w| PutArgs {
                version: to_i64(w.version),
                expected: w.expected_version.map_or(0, to_i64),
                deleted: w.body.is_none(),
                method: w.method.as_str(),
                shard: shard_key(&w.rtype, &w.id, &w.index),
            })
            .collect();
        let rows = try_join_all(puts.iter().zip(&args).map(|(w, a)| {
            let params: [&(dyn ToSql + Sync); 9] = [
                &w.rtype,
                &w.id,
                &a.version,
                &a.expected,
                &a.deleted,
                &w.last_updated,
                &a.method,
                &w.body,
                &a.shard,
            ];
            let (st, n) = match w.expected_version {
                Some(_) => (&update, 8),
                None => (&create, 9),
            };
            async move {
                let rows: Vec<Row> = c
                    .query_raw(st, params[..n].iter().copied())
                    .await?
                    .try_collect()
                    .await?;
                Ok::<_, tokio_postgres::Error>(rows.into_iter().next())
            }
        }))
        .await
        .map_err(db_err)?;
        for (w, row) in puts.into_iter().zip(rows) {
            let Some(row) = row else {
                let st = prepare(
                    c,
                    "SELECT version FROM resources WHERE rtype = $1 AND id = $2",
                )
                .await?;
                let found = match c.query_opt(&st, &[&w.rtype, &w.id]).await.map_err(db_err)? {
                    Some(r) => Some(col::<i64>(&r, 0)?.max(0) as u64),
                    None => None,
                };
                return Err(StoreError::VersionConflict {
                    rtype: w.rtype,
                    id: w.id,
                    expected: w.expected_version,
                    found,
                });
            };
            let rid: i64 = col(&row, 0)?;
            let shard: i64 = col(&row, 1)?;
            let existing = w.expected_version.is_some();
            let entry = match w.body {
                None => Entry {
                    rtype: w.rtype,
                    shard,
                    existing,
                    index: vec![],
                    fulltext: None,
                    contained: vec![],
                },
                Some(_) => Entry {
                    rtype: w.rtype,
                    shard,
                    existing,
                    index: w.index,
                    fulltext: w.fulltext,
                    contained: w.contained,
                },
            };
            self.add(rid, entry);
        }
        Ok(())
    }

    /// Write the buffered work: the removal of previous rows first, then every
    /// table's new rows, pipelined on the connection (sent in order).
    pub(crate) async fn flush(&mut self, c: &ClientWrapper) -> Result<()> {
        self.send_puts(c).await?;
        if self.entries.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.entries);
        self.rows = 0;
        let ncontained: usize = entries.values().map(|e| e.contained.len()).sum();
        let mut crids: Vec<i64> = Vec::with_capacity(ncontained);
        if ncontained > 0 {
            let st = prepare(
                c,
                "SELECT nextval('salus_contained_seq') FROM generate_series(1, $1::int8)",
            )
            .await?;
            let n = ncontained as i64;
            for row in c.query(&st, &[&n]).await.map_err(db_err)? {
                crids.push(col(&row, 0)?);
            }
            if crids.len() != ncontained {
                return Err(StoreError::Backend(
                    "postgres: fewer contained ids than asked for".into(),
                ));
            }
        }
        let mut cols = Columns::default();
        let mut clear: Vec<i64> = vec![];
        let (mut t_rid, mut t_shard, mut t_narr, mut t_cont) = (vec![], vec![], vec![], vec![]);
        let (mut c_crid, mut c_rid, mut c_shard, mut c_type, mut c_id) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut next_crid = crids.into_iter();
        for (rid, e) in &entries {
            if e.existing {
                clear.push(*rid);
            }
            cols.add(e.shard, &e.rtype, *rid, &e.index);
            if let Some(t) = e.fulltext.as_ref().filter(|t| !t.content.is_empty()) {
                t_rid.push(*rid);
                t_shard.push(e.shard);
                t_narr.push(text::to_tsvector(&t.narrative));
                t_cont.push(text::to_tsvector(&t.content));
            }
            for ci in &e.contained {
                let Some(crid) = next_crid.next() else {
                    return Err(StoreError::Backend(
                        "postgres: fewer contained ids than asked for".into(),
                    ));
                };
                c_crid.push(crid);
                c_rid.push(*rid);
                c_shard.push(e.shard);
                c_type.push(ci.rtype.clone());
                c_id.push(ci.id.clone());
                cols.add(e.shard, &ci.rtype, -crid, &ci.index);
            }
        }

        // Prepare first (cached after the first use), then send everything at once.
        let mut statements: Vec<(tokio_postgres::Statement, Params<'_>)> = vec![];
        if !clear.is_empty() {
            statements.push((prepare(c, DELETE_INDEX).await?, vec![&clear]));
        }
        let t = &cols.token;
        if !t.is_empty() {
            let p: Params<'_> = vec![&t.shard, &t.rtype, &t.param, &t.text[0], &t.text[1], &t.rid];
            statements.push((prepare(c, INSERT_TOKEN).await?, p));
        }
        let t = &cols.string;
        if !t.is_empty() {
            let p: Params<'_> = vec![&t.shard, &t.rtype, &t.param, &t.text[0], &t.text[1], &t.rid];
            statements.push((prepare(c, INSERT_STRING).await?, p));
        }
        let t = &cols.reference;
        if !t.is_empty() {
            let p: Params<'_> = vec![
                &t.shard, &t.rtype, &t.param, &t.text[0], &t.text[1], &t.text[2], &t.rid,
            ];
            statements.push((prepare(c, INSERT_REFERENCE).await?, p));
        }
        let t = &cols.date;
        if !t.is_empty() {
            let p: Params<'_> = vec![&t.shard, &t.rtype, &t.param, &t.int[0], &t.int[1], &t.rid];
            statements.push((prepare(c, INSERT_DATE).await?, p));
        }
        let t = &cols.number;
        if !t.is_empty() {
            let p: Params<'_> = vec![
                &t.shard, &t.rtype, &t.param, &t.real, &t.text[0], &t.text[1], &t.rid,
            ];
            statements.push((prepare(c, INSERT_NUMBER).await?, p));
        }
        let t = &cols.uri;
        if !t.is_empty() {
            let p: Params<'_> = vec![&t.shard, &t.rtype, &t.param, &t.text[0], &t.rid];
            statements.push((prepare(c, INSERT_URI).await?, p));
        }
        if !t_rid.is_empty() {
            let p: Params<'_> = vec![&t_rid, &t_shard, &t_narr, &t_cont];
            statements.push((prepare(c, INSERT_TEXT).await?, p));
        }
        if !c_crid.is_empty() {
            let p: Params<'_> = vec![&c_crid, &c_rid, &c_shard, &c_type, &c_id];
            statements.push((prepare(c, INSERT_CONTAINED).await?, p));
        }
        try_join_all(
            statements
                .iter()
                .map(|(st, p)| c.execute_raw(st, p.iter().copied())),
        )
        .await
        .map_err(db_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(t: &str, id: &str) -> IndexRow {
        IndexRow::Reference {
            param: "subject".into(),
            target_type: Some(t.into()),
            target_id: id.into(),
            version: None,
        }
    }

    #[test]
    fn a_compartment_shares_one_key() {
        let p = shard_key("Patient", "p1", &[]);
        assert_eq!(
            shard_key("Observation", "o1", &[subject("Patient", "p1")]),
            p
        );
        assert_ne!(shard_key("Observation", "o1", &[subject("Group", "p1")]), p);
        assert_ne!(shard_key("Observation", "o1", &[]), p);
        // stable across builds: a fixed value
        assert_eq!(fnv1a(&[""]), 0xcbf2_9ce4_8422_2325_u64 as i64);
    }
}
