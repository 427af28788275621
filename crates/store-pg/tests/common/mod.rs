//! Shared set-up for the PostgreSQL tests: the database URL from `SALUS_TEST_POSTGRES`,
//! and a fresh schema per test, dropped at the end (also when the test fails).

#![allow(dead_code)]

use futures::FutureExt;
use salus_store_pg::{PgOptions, PgStore};
use std::future::Future;
use std::io::Write as _;
use std::panic::AssertUnwindSafe;

/// The database URL, or `None` (after saying so loudly) when the suite cannot run.
/// With `SALUS_REQUIRE_POSTGRES` set, a missing URL fails the test instead.
pub fn database_url(suite: &str) -> Option<String> {
    match std::env::var("SALUS_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var_os("SALUS_REQUIRE_POSTGRES").is_some() {
                panic!("SALUS_REQUIRE_POSTGRES is set but SALUS_TEST_POSTGRES is not: the {suite} cannot run");
            }
            // straight to the process's stderr: the test harness captures `eprintln!`
            // of passing tests, and this must be seen
            let bar = "=".repeat(72);
            let _ = writeln!(
                std::io::stderr(),
                "\n{bar}\nSKIPPED: SALUS_TEST_POSTGRES not set — the {suite} did not run\n{bar}"
            );
            None
        }
    }
}

/// A schema name no other run uses.
pub fn fresh_schema() -> String {
    format!("salus_test_{}", uuid::Uuid::new_v4().simple())
}

pub fn options(schema: &str) -> PgOptions {
    PgOptions {
        schema: Some(schema.to_string()),
        pool_size: 12,
        ..PgOptions::default()
    }
}

pub async fn connect(url: &str, schema: &str) -> PgStore {
    PgStore::connect(url, options(schema))
        .await
        .expect("connect to PostgreSQL")
}

/// Run `test` with a fresh schema, then drop the schema whatever the outcome.
pub async fn with_schema<F, Fut>(url: &str, test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let schema = fresh_schema();
    let outcome = AssertUnwindSafe(test(schema.clone())).catch_unwind().await;
    drop_schema(url, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

pub async fn drop_schema(url: &str, schema: &str) {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            let task = tokio::spawn(conn);
            // `schema` is one of ours: letters, digits and `_`
            if let Err(e) = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await
            {
                eprintln!("could not drop test schema {schema}: {e}");
            }
            drop(client);
            let _ = task.await;
        }
        Err(e) => eprintln!("could not drop test schema {schema}: {e}"),
    }
}

/// A raw connection with the test schema as `search_path`.
pub async fn raw(url: &str, schema: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await
        .expect("search_path");
    client
}
