//! What two server processes sharing one database rely on: two `PgStore`s (two pools)
//! on one schema. No update is lost, conflicts are reported, transactions are all or
//! nothing, and migrations run once when both start together.

mod common;

use salus_store::contract::{new_version, put_and_commit};
use salus_store::{Store, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_lose_no_update_and_report_conflicts() {
    let Some(url) = common::database_url("PostgreSQL concurrency tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let a = Arc::new(common::connect(&u, &schema).await);
        let b = Arc::new(common::connect(&u, &schema).await);
        put_and_commit(
            a.begin().await.unwrap(),
            new_version("Counter", "1", 1, None, "{}"),
        )
        .await
        .unwrap();

        // 8 writers, half on each store, 10 successful increments each
        let conflicts = Arc::new(AtomicUsize::new(0));
        let mut tasks = vec![];
        for w in 0..8 {
            let store = if w % 2 == 0 { a.clone() } else { b.clone() };
            let conflicts = conflicts.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0;
                while done < 10 {
                    let cur = store.read("Counter", "1").await.unwrap().unwrap();
                    let write = new_version(
                        "Counter",
                        "1",
                        cur.version + 1,
                        Some(cur.version),
                        &format!("{{\"by\":{w},\"n\":{done}}}"),
                    );
                    match put_and_commit(store.begin().await.unwrap(), write).await {
                        Ok(()) => done += 1,
                        Err(StoreError::VersionConflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let cur = b.read("Counter", "1").await.unwrap().unwrap();
        assert_eq!(cur.version, 81, "8 writers x 10 updates + the create");
        // every version exists exactly once, seen from either store
        for v in 1..=81 {
            assert!(a.vread("Counter", "1", v).await.unwrap().is_some(), "v{v}");
        }
        println!(
            "two stores, 8 writers: 80 updates, {} conflicts reported and retried",
            conflicts.load(Ordering::Relaxed)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_writer_blocked_on_the_row_sees_the_committed_version() {
    let Some(url) = common::database_url("PostgreSQL concurrency tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let a = Arc::new(common::connect(&u, &schema).await);
        let b = Arc::new(common::connect(&u, &schema).await);
        put_and_commit(
            a.begin().await.unwrap(),
            new_version("Race", "1", 1, None, "{}"),
        )
        .await
        .unwrap();
        // A writes v2 and holds the row; B's write of v2 (also expecting v1) waits
        let mut ta = a.begin().await.unwrap();
        ta.put(new_version("Race", "1", 2, Some(1), r#"{"by":"a"}"#))
            .await
            .unwrap();
        // a read sends the queued write (see `StoreTx::put`)
        assert_eq!(ta.read("Race", "1").await.unwrap().unwrap().version, 2);
        let b2 = b.clone();
        let blocked = tokio::spawn(async move {
            let tx = b2.begin().await.unwrap();
            put_and_commit(tx, new_version("Race", "1", 2, Some(1), r#"{"by":"b"}"#)).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!blocked.is_finished(), "B waits for A's row lock");
        ta.commit().await.unwrap();
        let err = blocked.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::VersionConflict {
                    expected: Some(1),
                    found: Some(2),
                    ..
                }
            ),
            "B is told the version it did not expect: {err:?}"
        );
        let cur = b.read("Race", "1").await.unwrap().unwrap();
        assert_eq!(cur.body.as_deref(), Some(r#"{"by":"a"}"#));

        // two creates of one new resource: exactly one wins
        let c1 = a.begin().await.unwrap();
        let c2 = b.begin().await.unwrap();
        let (r1, r2) = tokio::join!(
            put_and_commit(c1, new_version("Race", "new", 1, None, "{}")),
            put_and_commit(c2, new_version("Race", "new", 1, None, "{}")),
        );
        assert!(r1.is_ok() != r2.is_ok(), "one create wins: {r1:?} {r2:?}");
        let loser = r1.err().or(r2.err());
        assert!(matches!(
            loser,
            Some(StoreError::VersionConflict { found: Some(1), .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_transactions_are_all_or_nothing() {
    let Some(url) = common::database_url("PostgreSQL concurrency tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let a = Arc::new(common::connect(&u, &schema).await);
        let b = Arc::new(common::connect(&u, &schema).await);
        // Each transaction writes 10 resources of its own, then creates one shared
        // resource: only one create can win, and the losers' own writes must vanish.
        let mut tasks = vec![];
        for t in 0..8usize {
            let store = if t % 2 == 0 { a.clone() } else { b.clone() };
            tasks.push(tokio::spawn(async move {
                let mut tx = store.begin().await.unwrap();
                for k in 0..10 {
                    tx.put(new_version("Aon", &format!("t{t}-{k}"), 1, None, "{}"))
                        .await
                        .unwrap();
                }
                let shared = new_version("AonShared", "1", 1, None, &format!("{{\"winner\":{t}}}"));
                // the conflict shows at `put` or at `commit` (queued writes)
                let r = match tx.put(shared).await {
                    Ok(()) => tx.commit().await,
                    Err(e) => Err(e), // dropped: rolled back
                };
                match r {
                    Ok(()) => true,
                    Err(StoreError::VersionConflict { .. }) => false,
                    Err(e) => panic!("unexpected error: {e}"),
                }
            }));
        }
        let mut winners = vec![];
        for (t, task) in tasks.into_iter().enumerate() {
            if task.await.unwrap() {
                winners.push(t);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "one transaction creates the shared resource"
        );
        let w = winners[0];
        let shared = a.read("AonShared", "1").await.unwrap().unwrap();
        assert_eq!(shared.body, Some(format!("{{\"winner\":{w}}}")));
        for t in 0..8 {
            for k in 0..10 {
                let found = b.read("Aon", &format!("t{t}-{k}")).await.unwrap();
                assert_eq!(found.is_some(), t == w, "t{t}-{k}: all or nothing");
            }
        }
        let counts = a.counts().await.unwrap();
        assert!(counts.contains(&("Aon".to_string(), 10)), "{counts:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_run_once_when_processes_start_together() {
    let Some(url) = common::database_url("PostgreSQL concurrency tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                let (u, s) = (u.clone(), schema.clone());
                tokio::spawn(async move { common::connect(&u, &s).await })
            })
            .collect();
        for s in starts {
            s.await.unwrap();
        }
        let raw = common::raw(&u, &schema).await;
        let rows = raw
            .query(
                "SELECT version, count(*) FROM salus_schema GROUP BY version",
                &[],
            )
            .await
            .unwrap();
        assert!(!rows.is_empty());
        for r in rows {
            assert_eq!(r.get::<_, i64>(1), 1, "each migration recorded once");
        }
        // reconnecting changes nothing; a fresh store needs no reindex
        let store = common::connect(&u, &schema).await;
        assert!(!store.reindex_pending().await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_transaction_frees_its_connection_rolled_back() {
    let Some(url) = common::database_url("PostgreSQL concurrency tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let mut options = common::options(&schema);
        options.pool_size = 1;
        let store = salus_store_pg::PgStore::connect(&u, options).await.unwrap();
        for i in 0..3 {
            let mut tx = store.begin().await.unwrap();
            tx.put(new_version("Drop", "1", 1, None, "{}"))
                .await
                .unwrap();
            assert!(tx.read("Drop", "1").await.unwrap().is_some(), "round {i}");
            drop(tx); // the only connection: the next begin waits for the rollback
        }
        assert!(store.read("Drop", "1").await.unwrap().is_none());
        // a conflict fails the transaction until its unit is rolled back
        let mut tx = store.begin().await.unwrap();
        tx.savepoint().await.unwrap();
        // reported by `put` or by the next call that waits (`StoreTx::put`)
        let put = tx.put(new_version("Drop", "1", 2, Some(1), "{}")).await;
        let read = tx.read("Drop", "1").await;
        assert!(
            matches!(put, Err(StoreError::VersionConflict { .. }))
                || matches!(read, Err(StoreError::VersionConflict { .. })),
            "{put:?} {read:?}"
        );
        assert!(
            tx.read("Drop", "1").await.is_err(),
            "failed until rolled back"
        );
        tx.rollback_to_savepoint().await.unwrap();
        tx.put(new_version("Drop", "1", 1, None, "{}"))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(store.read("Drop", "1").await.unwrap().is_some());
        // a failed transaction refuses to commit
        let mut tx = store.begin().await.unwrap();
        let _ = tx.put(new_version("Drop", "1", 9, Some(8), "{}")).await;
        assert!(tx.commit().await.is_err());
        assert_eq!(store.read("Drop", "1").await.unwrap().unwrap().version, 1);
    })
    .await;
}

/// A transaction that took its `seq` first and commits last must not fall below a
/// snapshot point: `snapshot_seq` waits for it, so a snapshot scan or an incremental
/// refresh from that point sees it (with `max(seq)` it would be missed for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_point_waits_for_a_transaction_holding_an_older_seq() {
    let Some(url) = common::database_url("PostgreSQL concurrency tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let store = Arc::new(common::connect(&u, &schema).await);
        let before = store.snapshot_seq().await.unwrap();
        // the slow writer: its seq is handed out (the read flushes the put), not committed
        let mut slow = store.begin().await.unwrap();
        slow.put(new_version("Late", "slow", 1, None, "{}"))
            .await
            .unwrap();
        assert!(slow.read("Late", "slow").await.unwrap().is_some());
        // a quick writer commits a newer seq meanwhile
        put_and_commit(
            store.begin().await.unwrap(),
            new_version("Late", "quick", 1, None, "{}"),
        )
        .await
        .unwrap();
        let asked = {
            let store = store.clone();
            tokio::spawn(async move { store.snapshot_seq().await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !asked.is_finished(),
            "snapshot_seq answered while an older seq was uncommitted"
        );
        slow.commit().await.unwrap();
        let point = asked.await.unwrap();
        let changes = store.changes_after(before, 100).await.unwrap();
        let ids: Vec<&str> = changes.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(
            changes.iter().all(|v| v.seq <= point),
            "both versions are at or below the snapshot point {point}: {changes:?}"
        );

        // a rolled-back transaction is waited for too, and then does not count
        let mut gone = store.begin().await.unwrap();
        gone.put(new_version("Late", "gone", 1, None, "{}"))
            .await
            .unwrap();
        assert!(gone.read("Late", "gone").await.unwrap().is_some());
        let asked = {
            let store = store.clone();
            tokio::spawn(async move { store.snapshot_seq().await.unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if asked.is_finished() {
            panic!("answered early: {:?}", asked.await);
        }
        drop(gone); // rolled back
        assert_eq!(asked.await.unwrap(), point, "nothing new was committed");
        // with nothing open it answers at once
        assert_eq!(store.snapshot_seq().await.unwrap(), point);
    })
    .await;
}
