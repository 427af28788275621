//! Versioned schema migrations, applied at connect.
//!
//! `salus_schema` records each applied version. Migrating runs under a session-level
//! advisory lock keyed by the schema name, so two processes starting at once take
//! turns: the second finds the versions already applied and does nothing. Each
//! migration runs in its own transaction together with its `salus_schema` row.

use crate::{db_err, StoreError};
use deadpool_postgres::ClientWrapper;

/// Advisory lock class for migrations (the second key is a hash of the schema name).
const MIGRATION_LOCK: i32 = 0x5a1_0005;

/// Schema migrations in order; `salus_schema.version` = index + 1.
///
/// Index keys hold the first 128 characters of a text value (`left(col, 128)`): a
/// B-tree entry must stay under ~2.7 kB, and a long string value must not fail a
/// write; queries compare the prefix (index) and then the whole value (see
/// `query::eq_key`).
///
/// Every table carries `shard`, the distribution key (see `docs/scaling.md`): the
/// hash of the resource's patient compartment, or of the resource itself when it has
/// none. Text keys use the "C" collation: byte order, as in the SQLite backend, so
/// sort order, keyset paging and `|*` name ranges behave identically.
pub(crate) const MIGRATIONS: &[(&str, &str)] = &[(
    "initial schema",
    r#"
CREATE SEQUENCE salus_version_seq;
CREATE SEQUENCE salus_contained_seq;
CREATE TABLE resource_versions (
    seq bigint PRIMARY KEY,
    shard bigint NOT NULL,
    rtype text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    last_updated bigint NOT NULL,
    method text NOT NULL,
    body text,
    UNIQUE (rtype, id, version)
);
CREATE INDEX rv_type_seq ON resource_versions (rtype, seq);
CREATE INDEX rv_updated ON resource_versions (last_updated);
CREATE TABLE resources (
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard bigint NOT NULL,
    rtype text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    seq bigint NOT NULL,
    deleted boolean NOT NULL,
    last_updated bigint NOT NULL,
    UNIQUE (rtype, id)
);
CREATE INDEX resources_shard ON resources (shard);
CREATE TABLE idx_token (
    shard bigint NOT NULL, rtype text COLLATE "C" NOT NULL, param text COLLATE "C" NOT NULL,
    code text COLLATE "C" NOT NULL, system text COLLATE "C" NOT NULL, rid bigint NOT NULL);
CREATE INDEX idx_token_key ON idx_token (rtype, left(param, 128), left(code, 128), left(system, 128));
CREATE INDEX idx_token_rid ON idx_token (rid);
CREATE TABLE idx_string (
    shard bigint NOT NULL, rtype text COLLATE "C" NOT NULL, param text COLLATE "C" NOT NULL,
    normalized text COLLATE "C" NOT NULL, exact text COLLATE "C" NOT NULL, rid bigint NOT NULL);
CREATE INDEX idx_string_key ON idx_string (rtype, left(param, 128), left(normalized, 128));
CREATE INDEX idx_string_rid ON idx_string (rid);
CREATE TABLE idx_reference (
    shard bigint NOT NULL, rtype text COLLATE "C" NOT NULL, param text COLLATE "C" NOT NULL,
    target_id text COLLATE "C" NOT NULL, target_type text COLLATE "C" NOT NULL,
    version text COLLATE "C" NOT NULL, rid bigint NOT NULL);
CREATE INDEX idx_reference_key ON idx_reference (rtype, left(param, 128), left(target_id, 128), left(target_type, 128));
CREATE INDEX idx_reference_target ON idx_reference (left(target_type, 128), left(target_id, 128));
CREATE INDEX idx_reference_rid ON idx_reference (rid);
CREATE TABLE idx_date (
    shard bigint NOT NULL, rtype text COLLATE "C" NOT NULL, param text COLLATE "C" NOT NULL,
    low bigint NOT NULL, high bigint NOT NULL, rid bigint NOT NULL);
CREATE INDEX idx_date_key ON idx_date (rtype, left(param, 128), low, high);
CREATE INDEX idx_date_rid ON idx_date (rid);
CREATE TABLE idx_number (
    shard bigint NOT NULL, rtype text COLLATE "C" NOT NULL, param text COLLATE "C" NOT NULL,
    value float8 NOT NULL, system text COLLATE "C" NOT NULL, code text COLLATE "C" NOT NULL,
    rid bigint NOT NULL);
CREATE INDEX idx_number_key ON idx_number (rtype, left(param, 128), value);
CREATE INDEX idx_number_rid ON idx_number (rid);
CREATE TABLE idx_uri (
    shard bigint NOT NULL, rtype text COLLATE "C" NOT NULL, param text COLLATE "C" NOT NULL,
    uri text COLLATE "C" NOT NULL, rid bigint NOT NULL);
CREATE INDEX idx_uri_key ON idx_uri (rtype, left(param, 128), left(uri, 128));
CREATE INDEX idx_uri_rid ON idx_uri (rid);
CREATE TABLE fulltext (
    rid bigint PRIMARY KEY, shard bigint NOT NULL,
    narrative tsvector NOT NULL, content tsvector NOT NULL);
CREATE INDEX fulltext_narrative ON fulltext USING gin (narrative);
CREATE INDEX fulltext_content ON fulltext USING gin (content);
-- Contained resources (`_contained`): each gets a `crid`, and its index rows are
-- stored under `rid = -crid`, so ordinary searches (which join `resources`) never
-- see them. `rid` is the container.
CREATE TABLE contained (
    crid bigint PRIMARY KEY, rid bigint NOT NULL, shard bigint NOT NULL,
    rtype text COLLATE "C" NOT NULL, cid text COLLATE "C" NOT NULL);
CREATE INDEX contained_rid ON contained (rid);
CREATE TABLE salus_meta (key text PRIMARY KEY, value text NOT NULL);
"#,
)];

/// Create the schema (when named) and apply pending migrations.
pub(crate) async fn migrate(c: &ClientWrapper, schema: Option<&str>) -> Result<(), StoreError> {
    let lock_key = schema.unwrap_or("public");
    c.execute(
        "SELECT pg_advisory_lock($1, hashtext($2))",
        &[&MIGRATION_LOCK, &lock_key],
    )
    .await
    .map_err(db_err)?;
    let result = apply(c, schema).await;
    // Released also when the connection closes; an unlock failure is harmless then.
    let unlock = c
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&MIGRATION_LOCK, &lock_key],
        )
        .await
        .map_err(db_err);
    result.and(unlock.map(|_| ()))
}

async fn apply(c: &ClientWrapper, schema: Option<&str>) -> Result<(), StoreError> {
    if let Some(s) = schema {
        // `s` was checked to be a plain identifier (see `PgOptions::schema`).
        c.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{s}\""))
            .await
            .map_err(db_err)?;
    }
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS salus_schema (\
             version integer PRIMARY KEY, \
             description text NOT NULL, \
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await
    .map_err(db_err)?;
    let applied: i32 = c
        .query_one("SELECT coalesce(max(version), 0) FROM salus_schema", &[])
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)?;
    let applied = applied.max(0) as usize;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {applied} is newer than this build supports ({}); upgrade Salus",
            MIGRATIONS.len()
        )));
    }
    for (i, (description, sql)) in MIGRATIONS.iter().enumerate().skip(applied) {
        let version = (i + 1) as i32;
        c.batch_execute("BEGIN").await.map_err(db_err)?;
        let step = async {
            c.batch_execute(sql).await?;
            c.execute(
                "INSERT INTO salus_schema (version, description) VALUES ($1, $2)",
                &[&version, description],
            )
            .await?;
            c.batch_execute("COMMIT").await
        };
        if let Err(e) = step.await {
            let _ = c.batch_execute("ROLLBACK").await;
            return Err(db_err(e));
        }
        tracing::info!(version, "applied PostgreSQL schema migration");
    }
    Ok(())
}
