//! The backend contract suite (`salus_store::contract`) on PostgreSQL: `run_all` as
//! every backend runs it, and each check on its own with a pass/fail table (so a
//! failure names every broken rule, not only the first).

mod common;

use futures::future::BoxFuture;
use futures::FutureExt;
use salus_store::{contract, Store};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_backend_contract() {
    let Some(url) = common::database_url("PostgreSQL contract suite") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let store = common::connect(&u, &schema).await;
        contract::run_all(Arc::new(store.clone())).await;
        store.close();
        println!("PostgreSQL contract suite: run_all passed");
    })
    .await;
}

type Check = fn(Arc<dyn Store>) -> BoxFuture<'static, ()>;

/// The checks of `run_all`, by name, in its order.
fn checks() -> Vec<(&'static str, Check)> {
    vec![
        ("create_read_vread", |s| {
            contract::create_read_vread(s).boxed()
        }),
        ("version_conflicts_are_detected", |s| {
            contract::version_conflicts_are_detected(s).boxed()
        }),
        ("dropped_transaction_rolls_back", |s| {
            contract::dropped_transaction_rolls_back(s).boxed()
        }),
        ("deletion_keeps_history", |s| {
            contract::deletion_keeps_history(s).boxed()
        }),
        ("history_pages_newest_first", |s| {
            contract::history_pages_newest_first(s).boxed()
        }),
        ("token_search_and_index_replacement", |s| {
            contract::token_search_and_index_replacement(s).boxed()
        }),
        ("transaction_sees_its_own_writes", |s| {
            contract::transaction_sees_its_own_writes(s).boxed()
        }),
        ("concurrent_writers_lose_no_update", |s| {
            contract::concurrent_writers_lose_no_update(s).boxed()
        }),
        ("counts_exclude_deleted", |s| {
            contract::counts_exclude_deleted(s).boxed()
        }),
        ("typed_clauses", |s| contract::typed_clauses(s).boxed()),
        ("chains_and_reverse_chains", |s| {
            contract::chains_and_reverse_chains(s).boxed()
        }),
        ("sorting_and_keyset_paging", |s| {
            contract::sorting_and_keyset_paging(s).boxed()
        }),
        ("include_lookups", |s| contract::include_lookups(s).boxed()),
        ("parameter_name_prefixes", |s| {
            contract::parameter_name_prefixes(s).boxed()
        }),
        ("full_text", |s| contract::full_text(s).boxed()),
        ("reindexing", |s| contract::reindexing(s).boxed()),
        ("contained_resources", |s| {
            contract::contained_resources(s).boxed()
        }),
        ("savepoints_undo_only_their_unit", |s| {
            contract::savepoints_undo_only_their_unit(s).boxed()
        }),
        ("snapshots_ignore_later_writes", |s| {
            contract::snapshots_ignore_later_writes(s).boxed()
        }),
        ("change_feed_in_seq_order", |s| {
            contract::change_feed_in_seq_order(s).boxed()
        }),
        ("purge_erases_every_version", |s| {
            contract::purge_erases_every_version(s).boxed()
        }),
        ("put_many_matches_puts", |s| {
            contract::put_many_matches_puts(s).boxed()
        }),
        ("scan_versions_in_canonical_order", |s| {
            contract::scan_versions_in_canonical_order(s).boxed()
        }),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_contract_check_on_its_own() {
    let Some(url) = common::database_url("PostgreSQL contract suite") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let store: Arc<dyn Store> = Arc::new(common::connect(&u, &schema).await);
        let mut failed = vec![];
        let all = checks();
        for (name, check) in &all {
            match AssertUnwindSafe(check(store.clone())).catch_unwind().await {
                Ok(()) => println!("contract check passed: {name}"),
                Err(_) => {
                    println!("contract check FAILED: {name}");
                    failed.push(*name);
                }
            }
        }
        println!(
            "PostgreSQL contract checks: {} passed, {} failed",
            all.len() - failed.len(),
            failed.len()
        );
        assert!(failed.is_empty(), "failed contract checks: {failed:?}");
    })
    .await;
}
