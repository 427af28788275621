//! The backend contract suite: behaviour every [`Store`] implementation must show.
//!
//! Written once, run against every backend (`run_all(Arc::new(backend))` from that
//! backend's tests). Each check uses its own resource type prefix so checks can share
//! a database. Panics (assertion failures) name the violated rule.

use crate::{
    Clause, HistoryQuery, HistoryScope, IndexRow, Method, NewVersion, SearchQuery, Store,
    StoreError, TokenMatch,
};
use std::sync::Arc;

/// Build a version for tests.
pub fn new_version(
    rtype: &str,
    id: &str,
    version: u64,
    expected: Option<u64>,
    body: &str,
) -> NewVersion {
    NewVersion {
        rtype: rtype.into(),
        id: id.into(),
        version,
        expected_version: expected,
        last_updated: 1_700_000_000_000_000 + version as i64,
        method: if expected.is_none() {
            Method::Post
        } else {
            Method::Put
        },
        body: Some(body.into()),
        index: vec![],
    }
}

fn token(param: &str, system: Option<&str>, code: &str) -> IndexRow {
    IndexRow::Token {
        param: param.into(),
        system: system.map(Into::into),
        code: code.into(),
    }
}

/// Run every contract check.
pub async fn run_all(store: Arc<dyn Store>) {
    create_read_vread(store.clone()).await;
    version_conflicts_are_detected(store.clone()).await;
    dropped_transaction_rolls_back(store.clone()).await;
    deletion_keeps_history(store.clone()).await;
    history_pages_newest_first(store.clone()).await;
    token_search_and_index_replacement(store.clone()).await;
    transaction_sees_its_own_writes(store.clone()).await;
    concurrent_writers_lose_no_update(store.clone()).await;
    counts_exclude_deleted(store).await;
}

pub async fn create_read_vread(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("CrudA", "1", 1, None, r#"{"v":1}"#))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("CrudA", "1", 2, Some(1), r#"{"v":2}"#))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let cur = store
        .read("CrudA", "1")
        .await
        .unwrap()
        .expect("read latest");
    assert_eq!(cur.version, 2, "read returns the latest version");
    assert_eq!(
        cur.body.as_deref(),
        Some(r#"{"v":2}"#),
        "body stored verbatim"
    );
    let v1 = store
        .vread("CrudA", "1", 1)
        .await
        .unwrap()
        .expect("vread v1");
    assert_eq!(v1.body.as_deref(), Some(r#"{"v":1}"#));
    assert!(v1.seq < cur.seq, "seq increases with each version");
    assert!(store.vread("CrudA", "1", 3).await.unwrap().is_none());
    assert!(store.read("CrudA", "nope").await.unwrap().is_none());
}

pub async fn version_conflicts_are_detected(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("ConfA", "1", 1, None, "{}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let err = tx
        .put(new_version("ConfA", "1", 1, None, "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::VersionConflict { found: Some(1), .. }),
        "creating an existing resource conflicts: {err:?}"
    );
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let err = tx
        .put(new_version("ConfA", "1", 3, Some(2), "{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }));
}

pub async fn dropped_transaction_rolls_back(store: Arc<dyn Store>) {
    {
        let mut tx = store.begin().await.unwrap();
        tx.put(new_version("RollA", "1", 1, None, "{}"))
            .await
            .unwrap();
        tx.put(new_version("RollA", "2", 1, None, "{}"))
            .await
            .unwrap();
        // dropped without commit
    }
    assert!(store.read("RollA", "1").await.unwrap().is_none());
    assert!(store.read("RollA", "2").await.unwrap().is_none());
    // the store remains usable
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("RollA", "1", 1, None, "{}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(store.read("RollA", "1").await.unwrap().is_some());
}

pub async fn deletion_keeps_history(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("DelA", "1", 1, None, "{}"))
        .await
        .unwrap();
    let mut del = new_version("DelA", "1", 2, Some(1), "");
    del.body = None;
    del.method = Method::Delete;
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();
    let cur = store.read("DelA", "1").await.unwrap().unwrap();
    assert!(cur.is_deleted(), "latest version is a deletion marker");
    assert_eq!(cur.method, Method::Delete);
    assert!(store.vread("DelA", "1", 1).await.unwrap().is_some());
    let page = store.search(&SearchQuery::new("DelA")).await.unwrap();
    assert!(page.entries.is_empty(), "deleted resources are not found");
    // re-create after delete continues the version sequence
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("DelA", "1", 3, Some(2), "{}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.read("DelA", "1").await.unwrap().unwrap().version, 3);
}

pub async fn history_pages_newest_first(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    for v in 1..=5u64 {
        tx.put(new_version(
            "HistA",
            "1",
            v,
            if v == 1 { None } else { Some(v - 1) },
            "{}",
        ))
        .await
        .unwrap();
    }
    tx.put(new_version("HistA", "2", 1, None, "{}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let q = HistoryQuery {
        scope: HistoryScope::Instance("HistA".into(), "1".into()),
        since: None,
        before: None,
        current_from: None,
        cursor: None,
        count: 2,
    };
    let p1 = store.history(&q).await.unwrap();
    assert_eq!(p1.total, 5);
    let versions: Vec<u64> = p1.entries.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![5, 4], "newest first");
    let p2 = store
        .history(&HistoryQuery {
            cursor: p1.next,
            ..q.clone()
        })
        .await
        .unwrap();
    let versions: Vec<u64> = p2.entries.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![3, 2]);
    let since = store
        .history(&HistoryQuery {
            since: Some(1_700_000_000_000_000 + 4),
            count: 10,
            ..q.clone()
        })
        .await
        .unwrap();
    assert_eq!(since.total, 2, "_since filters by lastUpdated");
    let ty = store
        .history(&HistoryQuery {
            scope: HistoryScope::Type("HistA".into()),
            count: 100,
            ..q
        })
        .await
        .unwrap();
    assert_eq!(ty.total, 6);
    assert!(ty.next.is_none());
}

pub async fn token_search_and_index_replacement(store: Arc<dyn Store>) {
    let mut w = new_version("TokA", "1", 1, None, "{}");
    w.index = vec![
        token("identifier", Some("urn:mrn"), "123"),
        token("identifier", None, "nosys"),
    ];
    let mut w2 = new_version("TokA", "2", 1, None, "{}");
    w2.index = vec![token("identifier", Some("urn:mrn"), "456")];
    let mut tx = store.begin().await.unwrap();
    tx.put(w).await.unwrap();
    tx.put(w2).await.unwrap();
    tx.commit().await.unwrap();

    let find = |system: Option<&str>, code: Option<&str>| {
        let mut q = SearchQuery::new("TokA");
        q.with_total = true;
        q.clauses.push(Clause::Token {
            param: "identifier".into(),
            any: vec![TokenMatch {
                system: system.map(Into::into),
                code: code.map(Into::into),
            }],
        });
        let store = store.clone();
        async move {
            let p = store.search(&q).await.unwrap();
            p.entries.into_iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(find(Some("urn:mrn"), Some("123")).await, vec!["1"]);
    assert_eq!(find(None, Some("456")).await, vec!["2"]);
    assert_eq!(find(Some("urn:mrn"), None).await, vec!["1", "2"]);
    assert_eq!(find(Some(""), Some("nosys")).await, vec!["1"]);
    assert!(find(Some(""), Some("123")).await.is_empty());

    // an update replaces the index rows
    let mut w = new_version("TokA", "1", 2, Some(1), "{}");
    w.index = vec![token("identifier", Some("urn:mrn"), "789")];
    let mut tx = store.begin().await.unwrap();
    tx.put(w).await.unwrap();
    tx.commit().await.unwrap();
    assert!(find(Some("urn:mrn"), Some("123")).await.is_empty());
    assert_eq!(find(None, Some("789")).await, vec!["1"]);

    let mut q = SearchQuery::new("TokA");
    q.clauses.push(Clause::Id(vec!["2".into(), "x".into()]));
    assert_eq!(store.search(&q).await.unwrap().entries.len(), 1);

    let mut q = SearchQuery::new("TokA");
    q.count = 1;
    q.with_total = true;
    let p = store.search(&q).await.unwrap();
    assert_eq!((p.entries.len(), p.total, p.more), (1, Some(2), true));
}

pub async fn transaction_sees_its_own_writes(store: Arc<dyn Store>) {
    let mut w = new_version("OwnA", "1", 1, None, "{}");
    w.index = vec![token("identifier", Some("s"), "v")];
    let mut tx = store.begin().await.unwrap();
    tx.put(w).await.unwrap();
    assert!(tx.read("OwnA", "1").await.unwrap().is_some());
    let mut q = SearchQuery::new("OwnA");
    q.clauses.push(Clause::Token {
        param: "identifier".into(),
        any: vec![TokenMatch {
            system: Some("s".into()),
            code: Some("v".into()),
        }],
    });
    assert_eq!(tx.search(&q).await.unwrap().entries.len(), 1);
    assert!(
        store.read("OwnA", "1").await.unwrap().is_none(),
        "uncommitted writes are invisible outside"
    );
    tx.commit().await.unwrap();
    assert!(store.read("OwnA", "1").await.unwrap().is_some());
}

pub async fn concurrent_writers_lose_no_update(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("ConcA", "1", 1, None, "{}"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tasks = vec![];
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 5 {
                let cur = store.read("ConcA", "1").await.unwrap().unwrap();
                let mut tx = store.begin().await.unwrap();
                match tx
                    .put(new_version(
                        "ConcA",
                        "1",
                        cur.version + 1,
                        Some(cur.version),
                        "{}",
                    ))
                    .await
                {
                    Ok(()) => {
                        tx.commit().await.unwrap();
                        done += 1;
                    }
                    Err(StoreError::VersionConflict { .. }) => continue,
                    Err(e) => panic!("unexpected error {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cur = store.read("ConcA", "1").await.unwrap().unwrap();
    assert_eq!(cur.version, 41, "8 writers x 5 successful updates + create");
}

pub async fn counts_exclude_deleted(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("CountA", "1", 1, None, "{}"))
        .await
        .unwrap();
    tx.put(new_version("CountA", "2", 1, None, "{}"))
        .await
        .unwrap();
    let mut del = new_version("CountA", "2", 2, Some(1), "");
    del.body = None;
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();
    let counts = store.counts().await.unwrap();
    let n = counts.iter().find(|(t, _)| t == "CountA").map(|c| c.1);
    assert_eq!(n, Some(1));
}
