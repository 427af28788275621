//! The backend contract suite: behaviour every [`Store`] implementation must show.
//!
//! Written once, run against every backend (`run_all(Arc::new(backend))` from that
//! backend's tests). Each check uses its own resource type prefix so checks can share
//! a database. Panics (assertion failures) name the violated rule.

use crate::{
    Clause, ContainedIndex, ContainedMode, ContainedType, FullText, HistoryQuery, HistoryScope,
    IndexKind, IndexRow, Method, NewVersion, Page, Prefix, QuantityMatch, RangeMatch, RefMatch,
    Result, SearchPage, SearchQuery, SnapshotQuery, SortField, SortKey, Store, StoreError, StoreTx,
    StringMatch, StringMode, TextField, TextQuery, TokenMatch, UriMatch, UriMode,
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
        fulltext: None,
        contained: vec![],
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
    updates_replace_only_changed_rows(store.clone()).await;
    transaction_sees_its_own_writes(store.clone()).await;
    concurrent_writers_lose_no_update(store.clone()).await;
    counts_exclude_deleted(store.clone()).await;
    typed_clauses(store.clone()).await;
    chains_and_reverse_chains(store.clone()).await;
    sorting_and_keyset_paging(store.clone()).await;
    include_lookups(store.clone()).await;
    parameter_name_prefixes(store.clone()).await;
    full_text(store.clone()).await;
    reindexing(store.clone()).await;
    contained_resources(store.clone()).await;
    purge_erases_every_version(store.clone()).await;
    savepoints_undo_only_their_unit(store.clone()).await;
    snapshots_ignore_later_writes(store.clone()).await;
    change_feed_in_seq_order(store.clone()).await;
    put_many_matches_puts(store.clone()).await;
    put_many_in_one_small_batch(store.clone()).await;
    scan_versions_in_canonical_order(store).await;
}

/// The writes of [`put_many_matches_puts`] for one type: 50 creates with index rows,
/// full text and contained resources; updates of 10 stored resources; second versions
/// of 5 resources created earlier in the same batch; and a deletion of a resource
/// updated earlier in the batch.
fn many_writes(rtype: &str) -> Vec<NewVersion> {
    let tok = |code: String| IndexRow::Token {
        param: "code".into(),
        system: Some("http://s".into()),
        code,
    };
    let indexed = |id: &str, version: u64, expected: Option<u64>, i: usize| {
        let mut w = new_version(rtype, id, version, expected, &format!("{{\"i\":{i}}}"));
        w.index = vec![
            tok(format!("c{}", i % 5)),
            tok(format!("c{}", i % 5)), // a repeated row counts once
            IndexRow::String {
                param: "name".into(),
                normalized: format!("name{i}"),
                exact: format!("Name{i}"),
            },
            date("date", i as i64 * 1000, i as i64 * 1000 + 999),
            IndexRow::Number {
                param: "value".into(),
                value: i as f64 + 0.5,
                system: None,
                code: None,
            },
        ];
        if i.is_multiple_of(3) {
            w.fulltext = Some(FullText {
                narrative: format!("note {i}"),
                content: format!("word{} shared", i % 4),
            });
        }
        if i.is_multiple_of(10) {
            w.contained = vec![ContainedIndex {
                rtype: format!("{rtype}M"),
                id: "m1".into(),
                index: vec![tok(format!("m{}", i % 20))],
            }];
        }
        w
    };
    let mut out = vec![];
    for i in 0..50 {
        out.push(indexed(&format!("c{i}"), 1, None, i));
    }
    for i in 0..10 {
        out.push(indexed(&format!("p{i}"), 2, Some(1), 100 + i));
    }
    for i in 0..5 {
        out.push(indexed(&format!("c{i}"), 2, Some(1), 200 + i));
    }
    let mut del = new_version(rtype, "p9", 3, Some(2), "");
    del.body = None;
    del.method = Method::Delete;
    out.push(del);
    out
}

/// A small `put_many` (one job of the SQLite writer, whose index rows of new resources
/// are written together at its end): a resource created and updated in the same batch
/// keeps only its second version's rows, and a resource with more rows of one kind than
/// one multi-row statement takes keeps them all.
pub async fn put_many_in_one_small_batch(store: Arc<dyn Store>) {
    let tok = |c: &str| token("code", Some("http://s"), c);
    let mut first = new_version("Small", "x", 1, None, "{}");
    first.index = vec![tok("first"), tok("both")];
    let mut second = new_version("Small", "x", 2, Some(1), "{}");
    second.index = vec![tok("second"), tok("both")];
    let mut wide = new_version("Small", "wide", 1, None, "{}");
    // 70 = 64 + 4 + 1 + 1: every statement size, and a repeated row counted once.
    wide.index = (0..69).map(|i| tok(&format!("w{i}"))).collect();
    wide.index.push(tok("w7"));
    let mut tx = store.begin().await.unwrap();
    tx.put_many(vec![first, wide, second]).await.unwrap();
    tx.commit().await.unwrap();

    let code = |c: &str| {
        query(
            "Small",
            vec![Clause::Token {
                param: "code".into(),
                any: vec![TokenMatch {
                    system: Some("http://s".into()),
                    code: Some(c.into()),
                }],
            }],
        )
    };
    assert!(
        ids(&store, code("first")).await.is_empty(),
        "the first version's row is gone"
    );
    assert_eq!(ids(&store, code("second")).await, ["x"]);
    assert_eq!(ids(&store, code("both")).await, ["x"]);
    for i in 0..69 {
        assert_eq!(
            ids(&store, code(&format!("w{i}"))).await,
            ["wide"],
            "row w{i}"
        );
    }
    let any: Vec<TokenMatch> = (0..69)
        .map(|i| TokenMatch {
            system: Some("http://s".into()),
            code: Some(format!("w{i}")),
        })
        .collect();
    let q = query(
        "Small",
        vec![Clause::Token {
            param: "code".into(),
            any,
        }],
    );
    assert_eq!(ids(&store, q).await, ["wide"]);
}

/// `put_many` of a large batch stores exactly what the same `put`s store: reads,
/// versions, history, searches (every index table, full text, contained resources)
/// and counts agree; a batch with a stale `expected_version` stores nothing.
pub async fn put_many_matches_puts(store: Arc<dyn Store>) {
    for rtype in ["ManyA", "ManyB"] {
        let mut tx = store.begin().await.unwrap();
        for i in 0..10 {
            tx.put(new_version(rtype, &format!("p{i}"), 1, None, "{}"))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    for w in many_writes("ManyA") {
        tx.put(w).await.unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let batch = many_writes("ManyB");
    assert!(batch.len() >= 64, "a batch large enough for bulk paths");
    tx.put_many(batch).await.unwrap();
    tx.commit().await.unwrap();

    let same = |a: Option<crate::VersionRecord>, b: Option<crate::VersionRecord>, what: &str| {
        let strip = |r: Option<crate::VersionRecord>| {
            r.map(|r| (r.id, r.version, r.last_updated, r.method, r.body))
        };
        assert_eq!(strip(a), strip(b), "put_many differs from put: {what}");
    };
    let mut ids: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
    ids.extend((0..10).map(|i| format!("p{i}")));
    for id in &ids {
        same(
            store.read("ManyA", id).await.unwrap(),
            store.read("ManyB", id).await.unwrap(),
            &format!("read {id}"),
        );
        for v in 1..=3 {
            same(
                store.vread("ManyA", id, v).await.unwrap(),
                store.vread("ManyB", id, v).await.unwrap(),
                &format!("vread {id}/{v}"),
            );
        }
    }
    let history = |rtype: &'static str| {
        let store = store.clone();
        async move {
            let page = store
                .history(&HistoryQuery {
                    scope: HistoryScope::Type(rtype.into()),
                    since: None,
                    before: None,
                    current_from: None,
                    cursor: None,
                    count: 1000,
                })
                .await
                .unwrap();
            page.entries
                .into_iter()
                .map(|e| {
                    let deleted = e.is_deleted();
                    (e.id, e.version, deleted)
                })
                .collect::<Vec<_>>()
        }
    };
    let (ha, hb) = (history("ManyA").await, history("ManyB").await);
    assert_eq!(ha.len(), 10 + 66);
    assert_eq!(ha, hb, "put_many keeps the order of its writes in history");
    assert_eq!(hb.first(), Some(&("p9".to_string(), 3, true)));

    let found = |rtype: &str, clause: Clause| {
        let store = store.clone();
        let q = query(rtype, vec![clause]);
        async move {
            let mut v: Vec<String> = store
                .search(&q)
                .await
                .unwrap()
                .entries
                .into_iter()
                .map(|e| e.id)
                .collect();
            v.sort();
            v
        }
    };
    let code = |c: &str| Clause::Token {
        param: "code".into(),
        any: vec![TokenMatch {
            system: Some("http://s".into()),
            code: Some(c.into()),
        }],
    };
    let clauses = [
        code("c1"),
        code("c4"),
        Clause::String {
            param: "name".into(),
            any: vec![StringMatch {
                value: "name10".into(),
                mode: StringMode::Prefix,
            }],
        },
        Clause::Date {
            param: "date".into(),
            any: vec![RangeMatch {
                prefix: Prefix::Ge,
                low: 40_000,
                high: 40_999,
            }],
        },
        Clause::Number {
            param: "value".into(),
            any: vec![RangeMatch {
                prefix: Prefix::Lt,
                low: 10.0,
                high: 10.0,
            }],
        },
        Clause::Text {
            field: TextField::Content,
            query: TextQuery {
                any: vec![vec!["word1".into()]],
            },
        },
    ];
    for clause in clauses {
        let a = found("ManyA", clause.clone()).await;
        assert!(!a.is_empty(), "the check finds something: {clause:?}");
        assert_eq!(a, found("ManyB", clause.clone()).await, "search {clause:?}");
    }
    // c1, c6, …, c46 (c1's second version is i = 201, code c1 still), p1 and p6
    assert_eq!(found("ManyB", code("c1")).await.len(), 12);
    for rtype in ["ManyA", "ManyB"] {
        let mut q = query(&format!("{rtype}M"), vec![code("m0")]);
        q.contained = ContainedMode::Only;
        let mut got: Vec<String> = store
            .search(&q)
            .await
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.id)
            .collect();
        got.sort();
        assert_eq!(
            got,
            ["c0", "c20", "c40", "p0"],
            "{rtype}: the containers of m0"
        );
    }
    let counts = store.counts().await.unwrap();
    let count = |t: &str| counts.iter().find(|(r, _)| r == t).map(|(_, n)| *n);
    assert_eq!(count("ManyA"), Some(59));
    assert_eq!(count("ManyB"), Some(59));

    // a stale expected version anywhere fails the batch, and nothing of it commits
    let mut batch: Vec<NewVersion> = (0..60)
        .map(|i| new_version("ManyB", &format!("n{i}"), 1, None, "{}"))
        .collect();
    batch.push(new_version("ManyB", "c7", 2, Some(5), "{}"));
    let mut tx = store.begin().await.unwrap();
    let r = match tx.put_many(batch).await {
        Ok(()) => tx.commit().await,
        Err(e) => Err(e),
    };
    assert!(
        matches!(r, Err(StoreError::VersionConflict { ref id, .. }) if id == "c7"),
        "a stale expected version is a conflict: {r:?}"
    );
    assert_eq!(store.read("ManyB", "n0").await.unwrap(), None);
    // creating what exists, or the same resource twice, is a conflict too
    for dup in ["c3", "n5"] {
        let mut batch: Vec<NewVersion> = (0..60)
            .map(|i| new_version("ManyB", &format!("n{i}"), 1, None, "{}"))
            .collect();
        batch.push(new_version("ManyB", dup, 1, None, "{}"));
        let mut tx = store.begin().await.unwrap();
        let r = match tx.put_many(batch).await {
            Ok(()) => tx.commit().await,
            Err(e) => Err(e),
        };
        assert!(
            matches!(r, Err(StoreError::VersionConflict { .. })),
            "a second create of {dup} is a conflict: {r:?}"
        );
        assert_eq!(store.read("ManyB", "n1").await.unwrap(), None);
    }
}

/// `scan_versions`: every version (deletions without a body) ordered by type, id and
/// version in byte order, paged by the last key.
pub async fn scan_versions_in_canonical_order(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    for (rtype, id) in [
        ("ScanB", "a"),
        ("ScanA", "b"),
        ("ScanA", "B"),
        ("ScanA", "a"),
    ] {
        tx.put(new_version(rtype, id, 1, None, "{\"v\":1}"))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("ScanA", "b", 2, Some(1), "{\"v\":2}"))
        .await
        .unwrap();
    let mut del = new_version("ScanA", "a", 2, Some(1), "");
    del.body = None;
    del.method = Method::Delete;
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();

    let all = store.scan_versions(None, usize::MAX >> 1).await.unwrap();
    let keys: Vec<(String, String, u64)> = all
        .iter()
        .map(|r| (r.rtype.clone(), r.id.clone(), r.version))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "canonical order (byte order)");
    let scan: Vec<(&str, &str, u64, bool)> = all
        .iter()
        .filter(|r| r.rtype.starts_with("Scan"))
        .map(|r| (r.rtype.as_str(), r.id.as_str(), r.version, r.is_deleted()))
        .collect();
    assert_eq!(
        scan,
        [
            ("ScanA", "B", 1, false),
            ("ScanA", "a", 1, false),
            ("ScanA", "a", 2, true),
            ("ScanA", "b", 1, false),
            ("ScanA", "b", 2, false),
            ("ScanB", "a", 1, false),
        ]
    );
    let b2 = all
        .iter()
        .find(|r| r.rtype == "ScanA" && r.id == "b" && r.version == 2)
        .unwrap();
    assert_eq!(b2.body.as_deref(), Some("{\"v\":2}"), "bodies as served");
    // paging by the last key gives the same sequence
    let mut paged = vec![];
    let mut after = None;
    loop {
        let page = store.scan_versions(after.clone(), 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = Some((last.rtype.clone(), last.id.clone(), last.version));
        paged.extend(page.into_iter().map(|r| (r.rtype, r.id, r.version)));
    }
    assert_eq!(paged, keys);
}

/// The change feed: every version after a `seq`, oldest first, deletions included,
/// `limit` at a time.
pub async fn change_feed_in_seq_order(store: Arc<dyn Store>) {
    let start = store.snapshot_seq().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("FeedA", "x", 1, None, ""))
        .await
        .unwrap();
    tx.put(new_version("FeedA", "y", 1, None, ""))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.put(new_version("FeedA", "x", 2, Some(1), ""))
        .await
        .unwrap();
    let mut del = new_version("FeedA", "y", 2, Some(1), "");
    del.body = None;
    del.method = Method::Delete;
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();
    let all = store.changes_after(start, 100).await.unwrap();
    let got: Vec<(String, u64, bool)> = all
        .iter()
        .filter(|r| r.rtype == "FeedA")
        .map(|r| (r.id.clone(), r.version, r.is_deleted()))
        .collect();
    assert_eq!(
        got,
        [
            ("x".to_string(), 1, false),
            ("y".to_string(), 1, false),
            ("x".to_string(), 2, false),
            ("y".to_string(), 2, true)
        ]
    );
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    let first_two = store.changes_after(start, 2).await.unwrap();
    assert_eq!(first_two.len(), 2);
    let rest = store.changes_after(first_two[1].seq, 100).await.unwrap();
    assert_eq!(
        rest.len(),
        all.len() - 2,
        "the cursor continues after the page"
    );
    assert!(store
        .changes_after(all.last().unwrap().seq, 10)
        .await
        .unwrap()
        .is_empty());
}

/// A snapshot scan answers as of its `seq`: later updates, deletions and creations
/// change nothing; pages follow id order; `ids`, `since`, `until` and deleted
/// resources behave as documented on [`SnapshotQuery`].
pub async fn snapshots_ignore_later_writes(store: Arc<dyn Store>) {
    let put = |id: &str, version: u64, body: Option<&str>| {
        let mut v = new_version("SnapA", id, version, (version > 1).then(|| version - 1), "");
        v.body = body.map(Into::into);
        if body.is_none() {
            v.method = Method::Delete;
        }
        v
    };
    let mut tx = store.begin().await.unwrap();
    for id in ["a", "b", "c"] {
        tx.put(put(id, 1, Some(r#"{"v":1}"#))).await.unwrap();
    }
    tx.commit().await.unwrap();
    let snap = store.snapshot_seq().await.unwrap();
    assert!(snap > 0, "snapshot_seq names the newest committed version");
    let mut tx = store.begin().await.unwrap();
    tx.put(put("a", 2, Some(r#"{"v":2}"#))).await.unwrap();
    tx.put(put("b", 2, None)).await.unwrap();
    tx.put(put("d", 1, Some(r#"{"v":1}"#))).await.unwrap();
    tx.commit().await.unwrap();
    let later = store.snapshot_seq().await.unwrap();
    assert!(later > snap, "snapshot_seq grows with new versions");

    let scan = |q: SnapshotQuery| {
        let store = store.clone();
        async move {
            let page = store.snapshot_scan(&q).await.unwrap();
            let got: Vec<(String, u64, bool)> = page
                .records
                .iter()
                .map(|r| (r.id.clone(), r.version, r.is_deleted()))
                .collect();
            (got, page.next)
        }
    };
    let v = |id: &str, version: u64, deleted: bool| (id.to_string(), version, deleted);
    let (old, next) = scan(SnapshotQuery::new("SnapA", snap)).await;
    assert_eq!(
        old,
        vec![v("a", 1, false), v("b", 1, false), v("c", 1, false)],
        "the old snapshot keeps the old versions and misses later creations"
    );
    assert_eq!(next, None, "a short page is the last");
    let (new, _) = scan(SnapshotQuery::new("SnapA", later)).await;
    assert_eq!(
        new,
        vec![v("a", 2, false), v("c", 1, false), v("d", 1, false)],
        "the new snapshot skips deleted resources"
    );
    let mut q = SnapshotQuery::new("SnapA", later);
    q.include_deleted = true;
    let (with_deleted, _) = scan(q).await;
    assert!(
        with_deleted.contains(&v("b", 2, true)),
        "include_deleted returns the deletion"
    );
    let body = store
        .snapshot_scan(&SnapshotQuery::new("SnapA", snap))
        .await
        .unwrap()
        .records[0]
        .body
        .clone();
    assert_eq!(
        body.as_deref(),
        Some(r#"{"v":1}"#),
        "the old version's body"
    );

    // paging by id
    let mut q = SnapshotQuery::new("SnapA", snap);
    q.limit = 2;
    let (first, next) = scan(q.clone()).await;
    assert_eq!(first, vec![v("a", 1, false), v("b", 1, false)]);
    assert_eq!(
        next.as_deref(),
        Some("b"),
        "a full page names where to continue"
    );
    q.after_id = next;
    let (second, _) = scan(q).await;
    assert_eq!(
        second,
        vec![v("c", 1, false)],
        "the next page continues after the id"
    );

    // a selection of ids
    let mut q = SnapshotQuery::new("SnapA", snap);
    q.ids = Some(vec!["c".into(), "a".into(), "d".into()]);
    let (sel, _) = scan(q).await;
    assert_eq!(
        sel,
        vec![v("a", 1, false), v("c", 1, false)],
        "only the named ids, by id"
    );

    // since / until on last_updated (version 1 at +1 µs, version 2 at +2 µs)
    let t1 = 1_700_000_000_000_001;
    let mut q = SnapshotQuery::new("SnapA", later);
    q.since = Some(t1 + 1);
    let (since, _) = scan(q).await;
    assert_eq!(
        since,
        vec![v("a", 2, false)],
        "since keeps versions written at or after it"
    );
    let mut q = SnapshotQuery::new("SnapA", later);
    q.until = Some(t1);
    let (until, _) = scan(q).await;
    assert_eq!(
        until,
        vec![
            v("a", 1, false),
            v("b", 1, false),
            v("c", 1, false),
            v("d", 1, false)
        ],
        "until returns each resource as it was at that time"
    );
}

/// `purge` removes every version and index row of a resource and nothing else.
pub async fn purge_erases_every_version(store: Arc<dyn Store>) {
    put_all(
        &store,
        vec![("PrgA", "1", vec![token("code", None, "erase-me")])],
    )
    .await;
    put_all(
        &store,
        vec![("PrgA", "1", vec![token("code", None, "erase-me")])],
    )
    .await;
    put_all(
        &store,
        vec![("PrgA", "2", vec![token("code", None, "erase-me")])],
    )
    .await;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.purge("PrgA", "1").await.unwrap(), 2);
    assert_eq!(tx.purge("PrgA", "never").await.unwrap(), 0);
    tx.commit().await.unwrap();
    store.compact().await.unwrap();
    assert!(store.read("PrgA", "1").await.unwrap().is_none());
    assert!(store.vread("PrgA", "1", 1).await.unwrap().is_none());
    let hist = store
        .history(&HistoryQuery {
            scope: HistoryScope::Instance("PrgA".into(), "1".into()),
            since: None,
            before: None,
            current_from: None,
            cursor: None,
            count: 10,
        })
        .await
        .unwrap();
    assert!(hist.entries.is_empty());
    let by_code = query(
        "PrgA",
        vec![Clause::Token {
            param: "code".into(),
            any: vec![TokenMatch {
                system: None,
                code: Some("erase-me".into()),
            }],
        }],
    );
    assert_eq!(ids(&store, by_code).await, vec!["2"]);
    // the id can be used again from version 1
    put_all(&store, vec![("PrgA", "1", vec![])]).await;
    assert_eq!(store.read("PrgA", "1").await.unwrap().unwrap().version, 1);
}

/// Contained resources are found only by `_contained` searches, through their own rows;
/// an update replaces them, a deletion removes them.
pub async fn contained_resources(store: Arc<dyn Store>) {
    let tok = |code: &str| IndexRow::Token {
        param: "code".into(),
        system: None,
        code: code.into(),
    };
    let contained = |id: &str, code: &str| ContainedIndex {
        rtype: "CtdM".into(),
        id: id.into(),
        index: vec![tok(code)],
    };
    let mut tx = store.begin().await.unwrap();
    // a standalone CtdM with code a, and two containers of CtdM resources
    let mut s = new_version("CtdM", "s", 1, None, "{}");
    s.index = vec![tok("a")];
    tx.put(s).await.unwrap();
    let mut c1 = new_version("CtdR", "c1", 1, None, "{\"v\":1}");
    c1.index = vec![tok("a")]; // the container's own row: not a contained match
    c1.contained = vec![contained("m1", "a"), contained("m2", "a")];
    tx.put(c1).await.unwrap();
    let mut c2 = new_version("CtdR", "c2", 1, None, "{}");
    c2.contained = vec![contained("m1", "b")];
    tx.put(c2).await.unwrap();
    tx.commit().await.unwrap();

    let search = |mode: ContainedMode, kind: ContainedType, code: &str| {
        let mut q = query(
            "CtdM",
            vec![Clause::Token {
                param: "code".into(),
                any: vec![TokenMatch {
                    system: None,
                    code: Some(code.into()),
                }],
            }],
        );
        q.contained = mode;
        q.contained_type = kind;
        q
    };
    let found = |page: SearchPage| -> Vec<String> {
        let mut v: Vec<String> = page
            .entries
            .iter()
            .enumerate()
            .map(
                |(i, e)| match page.contained_ids.get(i).cloned().flatten() {
                    Some(cid) => format!("{}/{}#{cid}", e.rtype, e.id),
                    None => format!("{}/{}", e.rtype, e.id),
                },
            )
            .collect();
        v.sort();
        v
    };
    use ContainedMode::*;
    use ContainedType::*;
    let run = |q: SearchQuery| {
        let store = store.clone();
        async move { found(store.search(&q).await.unwrap()) }
    };
    assert_eq!(run(search(Exclude, Container, "a")).await, vec!["CtdM/s"]);
    // the containers, once each
    assert_eq!(run(search(Only, Container, "a")).await, vec!["CtdR/c1"]);
    assert_eq!(
        run(search(Both, Container, "a")).await,
        vec!["CtdM/s", "CtdR/c1"]
    );
    assert_eq!(
        run(search(Only, Contained, "a")).await,
        vec!["CtdR/c1#m1", "CtdR/c1#m2"]
    );
    assert_eq!(
        run(search(Both, Contained, "a")).await,
        vec!["CtdM/s", "CtdR/c1#m1", "CtdR/c1#m2"]
    );
    assert_eq!(run(search(Only, Contained, "b")).await, vec!["CtdR/c2#m1"]);
    // paging through contained matches: one per page, no duplicate, no gap
    let mut q = search(Only, Contained, "a");
    q.count = 1;
    let first = store.search(&q).await.unwrap();
    assert!(first.more);
    q.page = Page::After(first.last_cursor.clone().unwrap());
    let second = store.search(&q).await.unwrap();
    assert!(!second.more);
    let mut both = found(first);
    both.extend(found(second));
    both.sort();
    assert_eq!(both, vec!["CtdR/c1#m1", "CtdR/c1#m2"]);
    // a total counts contained matches
    let mut q = search(Only, Contained, "a");
    q.with_total = true;
    assert_eq!(store.search(&q).await.unwrap().total, Some(2));

    // an update replaces the contained resources; a deletion removes them
    let mut tx = store.begin().await.unwrap();
    let mut c1 = new_version("CtdR", "c1", 2, Some(1), "{\"v\":2}");
    c1.contained = vec![contained("m1", "b")];
    tx.put(c1).await.unwrap();
    let mut gone = new_version("CtdR", "c2", 2, Some(1), "{}");
    gone.body = None;
    tx.put(gone).await.unwrap();
    tx.commit().await.unwrap();
    assert!(run(search(Only, Contained, "a")).await.is_empty());
    assert_eq!(run(search(Only, Contained, "b")).await, vec!["CtdR/c1#m1"]);
    // the entry is the container's current version
    let page = store.search(&search(Only, Contained, "b")).await.unwrap();
    assert_eq!(page.entries[0].version, 2);
    assert_eq!(page.entries[0].body.as_deref(), Some("{\"v\":2}"));
    // reindexing replaces them too
    let mut tx = store.begin().await.unwrap();
    tx.reindex("CtdR", "c1", 2, vec![], None, vec![contained("m9", "z")])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(run(search(Only, Contained, "b")).await.is_empty());
    assert_eq!(run(search(Only, Contained, "z")).await, vec!["CtdR/c1#m9"]);
}

/// A clause's parameter name ending in `|*` covers every name with that prefix, and
/// no other (composite parameters searched without a system).
pub async fn parameter_name_prefixes(store: Arc<dyn Store>) {
    let n = |param: &str, value: f64| IndexRow::Number {
        param: param.into(),
        value,
        system: None,
        code: None,
    };
    put_all(
        &store,
        vec![
            ("PfxA", "1", vec![n("cvq$8480-6|http://loinc.org", 150.0)]),
            ("PfxA", "2", vec![n("cvq$8480-6|", 150.0)]),
            ("PfxA", "3", vec![n("cvq$8480-61|http://loinc.org", 150.0)]),
            ("PfxA", "4", vec![n("cvq$8480-6|http://loinc.org", 90.0)]),
        ],
    )
    .await;
    let q = |param: &str| {
        query(
            "PfxA",
            vec![Clause::Quantity {
                param: param.into(),
                any: vec![QuantityMatch {
                    range: RangeMatch {
                        prefix: Prefix::Gt,
                        low: 100.0,
                        high: 100.0,
                    },
                    system: None,
                    code: None,
                }],
            }],
        )
    };
    assert_eq!(ids(&store, q("cvq$8480-6|*")).await, vec!["1", "2"]);
    assert_eq!(
        ids(&store, q("cvq$8480-6|http://loinc.org")).await,
        vec!["1"]
    );
    assert_eq!(ids(&store, q("cvq$8480-6|")).await, vec!["2"]);
}

/// `_text`/`_content`: words in any order, accents and case ignored, prefixes,
/// phrases, alternatives; an update replaces the text, a deletion removes it; relevance
/// orders the matches.
pub async fn full_text(store: Arc<dyn Store>) {
    let text = |narrative: &str, content: &str| FullText {
        narrative: narrative.into(),
        content: content.into(),
    };
    let mut tx = store.begin().await.unwrap();
    for (id, t) in [
        (
            "1",
            text("Héart failure, chronic", "Heart failure chronic cardiology"),
        ),
        ("2", text("Broken arm", "Broken arm fracture heart")),
        ("3", text("", "heart heart heart murmur")),
    ] {
        let mut w = new_version("FtsA", id, 1, None, "{}");
        w.fulltext = Some(t);
        tx.put(w).await.unwrap();
    }
    tx.commit().await.unwrap();
    let q = |field: TextField, any: &[&[&str]]| {
        query(
            "FtsA",
            vec![Clause::Text {
                field,
                query: TextQuery {
                    any: any
                        .iter()
                        .map(|a| a.iter().map(|t| t.to_string()).collect())
                        .collect(),
                },
            }],
        )
    };
    use TextField::{Content, Narrative};
    assert_eq!(ids(&store, q(Narrative, &[&["heart"]])).await, vec!["1"]);
    assert_eq!(
        ids(&store, q(Content, &[&["HEART"]])).await,
        vec!["1", "2", "3"]
    );
    assert_eq!(
        ids(&store, q(Content, &[&["heart", "fracture"]])).await,
        vec!["2"]
    );
    assert_eq!(ids(&store, q(Content, &[&["cardio*"]])).await, vec!["1"]);
    assert_eq!(
        ids(&store, q(Narrative, &[&["failure chronic"]])).await,
        vec!["1"]
    );
    assert!(ids(&store, q(Narrative, &[&["chronic failure"]]))
        .await
        .is_empty());
    assert_eq!(
        ids(&store, q(Narrative, &[&["arm"], &["chronic"]])).await,
        vec!["1", "2"]
    );
    assert!(
        ids(&store, q(Content, &[&["\"quoted\" AND (odd"]]))
            .await
            .is_empty(),
        "user text is never read as query syntax"
    );
    // Relevance: the resource saying "heart" most often comes first.
    let mut ranked = q(Content, &[&["heart"]]);
    ranked.sort = vec![SortKey {
        field: SortField::Relevance {
            field: Content,
            query: TextQuery {
                any: vec![vec!["heart".into()]],
            },
        },
        descending: false,
    }];
    let page = store.search(&ranked).await.unwrap();
    assert_eq!(page.entries[0].id, "3");
    // An update replaces the text; a deletion removes it.
    let mut tx = store.begin().await.unwrap();
    let mut w = new_version("FtsA", "1", 2, Some(1), "{}");
    w.fulltext = Some(text("Sprained ankle", "Sprained ankle"));
    tx.put(w).await.unwrap();
    let mut del = new_version("FtsA", "2", 2, Some(1), "");
    del.body = None;
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();
    assert!(ids(&store, q(Narrative, &[&["heart"]])).await.is_empty());
    assert_eq!(ids(&store, q(Narrative, &[&["ankle"]])).await, vec!["1"]);
    assert!(ids(&store, q(Content, &[&["fracture"]])).await.is_empty());
}

/// Scanning current resources page by page, and replacing a version's index rows
/// without a new version; a stale version is left alone.
pub async fn reindexing(store: Arc<dyn Store>) {
    let tok = |code: &str| IndexRow::Token {
        param: "code".into(),
        system: None,
        code: code.into(),
    };
    put_all(
        &store,
        vec![
            ("RixA", "1", vec![tok("old")]),
            ("RixA", "2", vec![tok("old")]),
            ("RixA", "3", vec![]),
        ],
    )
    .await;
    // every current resource exactly once, in pages
    let (mut seen, mut after) = (vec![], None);
    loop {
        let page = store.scan_current(after, 2).await.unwrap();
        assert!(page.total >= 3);
        seen.extend(
            page.records
                .iter()
                .filter(|r| r.rtype == "RixA")
                .map(|r| r.id.clone()),
        );
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, vec!["1", "2", "3"]);
    let code = |c: &str| {
        query(
            "RixA",
            vec![Clause::Token {
                param: "code".into(),
                any: vec![TokenMatch {
                    system: None,
                    code: Some(c.into()),
                }],
            }],
        )
    };
    let mut tx = store.begin().await.unwrap();
    tx.reindex("RixA", "1", 1, vec![tok("new")], None, vec![])
        .await
        .unwrap();
    // version 7 is not current: nothing changes
    tx.reindex("RixA", "2", 7, vec![tok("new")], None, vec![])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids(&store, code("new")).await, vec!["1"]);
    assert_eq!(ids(&store, code("old")).await, vec!["2"]);
    let cur = store.read("RixA", "1").await.unwrap().unwrap();
    assert_eq!(cur.version, 1, "reindexing makes no version");
    store.clear_reindex_pending().await.unwrap();
    assert!(!store.reindex_pending().await.unwrap());
    // statistics after a bulk load: changes nothing a search returns
    store.analyze().await.unwrap();
    assert_eq!(ids(&store, code("old")).await, vec!["2"]);
}

pub async fn savepoints_undo_only_their_unit(store: Arc<dyn Store>) {
    let mut tx = store.begin().await.unwrap();
    tx.savepoint().await.unwrap();
    tx.put(new_version("SaveA", "1", 1, None, "{}"))
        .await
        .unwrap();
    tx.release_savepoint().await.unwrap();
    tx.savepoint().await.unwrap();
    tx.put(new_version("SaveA", "2", 1, None, "{}"))
        .await
        .unwrap();
    tx.rollback_to_savepoint().await.unwrap();
    tx.savepoint().await.unwrap();
    tx.put(new_version("SaveA", "3", 1, None, "{}"))
        .await
        .unwrap();
    tx.release_savepoint().await.unwrap();
    tx.commit().await.unwrap();
    assert!(store.read("SaveA", "1").await.unwrap().is_some());
    assert!(
        store.read("SaveA", "2").await.unwrap().is_none(),
        "rolled back to its savepoint"
    );
    assert!(store.read("SaveA", "3").await.unwrap().is_some());
}

async fn put_all(store: &Arc<dyn Store>, items: Vec<(&str, &str, Vec<IndexRow>)>) {
    let mut tx = store.begin().await.unwrap();
    for (t, id, index) in items {
        let cur = tx.read(t, id).await.unwrap().map(|c| c.version);
        let mut w = new_version(t, id, cur.map_or(1, |v| v + 1), cur, "{}");
        w.index = index;
        tx.put(w).await.unwrap();
    }
    tx.commit().await.unwrap();
}

pub(crate) async fn ids(store: &Arc<dyn Store>, q: SearchQuery) -> Vec<String> {
    let mut v: Vec<String> = store
        .search(&q)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    v.sort();
    v
}

fn query(rtype: &str, clauses: Vec<Clause>) -> SearchQuery {
    let mut q = SearchQuery::new(rtype);
    q.clauses = clauses;
    q
}

fn date(param: &str, low: i64, high: i64) -> IndexRow {
    IndexRow::Date {
        param: param.into(),
        low,
        high,
    }
}

fn range(prefix: Prefix, low: i64, high: i64) -> RangeMatch<i64> {
    RangeMatch { prefix, low, high }
}

pub async fn typed_clauses(store: Arc<dyn Store>) {
    let s = |v: &str| IndexRow::String {
        param: "name".into(),
        normalized: v.to_lowercase(),
        exact: v.into(),
    };
    put_all(
        &store,
        vec![
            (
                "TypA",
                "1",
                vec![
                    date("date", 100, 199),
                    s("Zoe"),
                    IndexRow::Number {
                        param: "n".into(),
                        value: 5.0,
                        system: Some("u".into()),
                        code: Some("mg".into()),
                    },
                    IndexRow::Uri {
                        param: "url".into(),
                        uri: "http://x.org/a/b".into(),
                    },
                ],
            ),
            ("TypA", "2", vec![date("date", 200, 299), s("Adam")]),
            ("TypA", "3", vec![]),
        ],
    )
    .await;
    let d = |p: Prefix, lo: i64, hi: i64| {
        query(
            "TypA",
            vec![Clause::Date {
                param: "date".into(),
                any: vec![range(p, lo, hi)],
            }],
        )
    };
    assert_eq!(
        ids(&store, d(Prefix::Eq, 100, 199)).await,
        vec!["1"],
        "eq: contained in the search range"
    );
    assert_eq!(ids(&store, d(Prefix::Eq, 0, 1000)).await, vec!["1", "2"]);
    assert_eq!(
        ids(&store, d(Prefix::Eq, 150, 160)).await,
        Vec::<String>::new(),
        "eq needs full containment"
    );
    assert_eq!(
        ids(&store, d(Prefix::Gt, 150, 160)).await,
        vec!["1", "2"],
        "gt: value extends above"
    );
    assert_eq!(
        ids(&store, d(Prefix::Sa, 150, 199)).await,
        vec!["2"],
        "sa: starts after"
    );
    assert_eq!(
        ids(&store, d(Prefix::Eb, 200, 210)).await,
        vec!["1"],
        "eb: ends before"
    );
    assert_eq!(ids(&store, d(Prefix::Le, 150, 160)).await, vec!["1"]);
    assert_eq!(
        ids(&store, d(Prefix::Ap, 150, 210)).await,
        vec!["1", "2"],
        "ap: overlap"
    );
    let not = query(
        "TypA",
        vec![Clause::Not(Box::new(Clause::Date {
            param: "date".into(),
            any: vec![range(Prefix::Eq, 100, 199)],
        }))],
    );
    assert_eq!(ids(&store, not).await, vec!["2", "3"]);
    let missing = |m: bool| {
        query(
            "TypA",
            vec![Clause::Missing {
                param: "date".into(),
                kind: IndexKind::Date,
                missing: m,
            }],
        )
    };
    assert_eq!(ids(&store, missing(true)).await, vec!["3"]);
    assert_eq!(ids(&store, missing(false)).await, vec!["1", "2"]);
    let st = |v: &str, mode: StringMode| {
        query(
            "TypA",
            vec![Clause::String {
                param: "name".into(),
                any: vec![StringMatch {
                    value: v.into(),
                    mode,
                }],
            }],
        )
    };
    assert_eq!(ids(&store, st("zo", StringMode::Prefix)).await, vec!["1"]);
    assert_eq!(ids(&store, st("da", StringMode::Contains)).await, vec!["2"]);
    assert_eq!(
        ids(&store, st("zoe", StringMode::Exact)).await,
        Vec::<String>::new(),
        "exact is case-sensitive"
    );
    assert_eq!(ids(&store, st("Zoe", StringMode::Exact)).await, vec!["1"]);
    let qty = |lo: f64, hi: f64, code: Option<&str>| {
        query(
            "TypA",
            vec![Clause::Quantity {
                param: "n".into(),
                any: vec![QuantityMatch {
                    range: RangeMatch {
                        prefix: Prefix::Eq,
                        low: lo,
                        high: hi,
                    },
                    system: None,
                    code: code.map(Into::into),
                }],
            }],
        )
    };
    assert_eq!(ids(&store, qty(4.5, 5.5, Some("mg"))).await, vec!["1"]);
    assert!(ids(&store, qty(4.5, 5.5, Some("g"))).await.is_empty());
    let uri = |v: &str, mode: UriMode| {
        query(
            "TypA",
            vec![Clause::Uri {
                param: "url".into(),
                any: vec![UriMatch {
                    value: v.into(),
                    mode,
                }],
            }],
        )
    };
    assert_eq!(
        ids(&store, uri("http://x.org/a", UriMode::Below)).await,
        vec!["1"]
    );
    assert_eq!(
        ids(&store, uri("http://x.org/a/b/c", UriMode::Above)).await,
        vec!["1"]
    );
    assert!(ids(&store, uri("http://x.org/a", UriMode::Exact))
        .await
        .is_empty());
    let any = query(
        "TypA",
        vec![Clause::Any(vec![
            Clause::Id(vec!["3".into()]),
            Clause::Id(vec!["2".into()]),
        ])],
    );
    assert_eq!(ids(&store, any).await, vec!["2", "3"]);
    // AND groups inside an OR (access grants): (id 1 and id 2) or (id 3 and ids 2|3)
    let groups = query(
        "TypA",
        vec![Clause::Any(vec![
            Clause::All(vec![
                Clause::Id(vec!["1".into()]),
                Clause::Id(vec!["2".into()]),
            ]),
            Clause::All(vec![
                Clause::Id(vec!["3".into()]),
                Clause::Id(vec!["2".into(), "3".into()]),
            ]),
        ])],
    );
    assert_eq!(ids(&store, groups).await, vec!["3"]);
    let everything = query("TypA", vec![Clause::All(vec![])]);
    assert!(ids(&store, everything).await.len() >= 3);
}

fn refrow(param: &str, t: &str, id: &str) -> IndexRow {
    IndexRow::Reference {
        param: param.into(),
        target_type: Some(t.into()),
        target_id: id.into(),
        version: None,
    }
}

pub async fn chains_and_reverse_chains(store: Arc<dyn Store>) {
    put_all(
        &store,
        vec![
            ("ChOrg", "o1", vec![token("name", None, "acme")]),
            ("ChPat", "p1", vec![refrow("organization", "ChOrg", "o1")]),
            ("ChPat", "p2", vec![]),
            (
                "ChObs",
                "x1",
                vec![
                    refrow("subject", "ChPat", "p1"),
                    token("code", Some("l"), "hr"),
                ],
            ),
            (
                "ChObs",
                "x2",
                vec![
                    refrow("subject", "ChPat", "p2"),
                    token("code", Some("l"), "bp"),
                ],
            ),
        ],
    )
    .await;
    let acme = Clause::Token {
        param: "name".into(),
        any: vec![TokenMatch {
            system: None,
            code: Some("acme".into()),
        }],
    };
    let two_level = query(
        "ChObs",
        vec![Clause::Chain {
            param: "subject".into(),
            target_types: vec!["ChPat".into()],
            inner: vec![Clause::Chain {
                param: "organization".into(),
                target_types: vec!["ChOrg".into()],
                inner: vec![acme],
            }],
        }],
    );
    assert_eq!(ids(&store, two_level).await, vec!["x1"], "two-level chain");
    let has = query(
        "ChPat",
        vec![Clause::Has {
            source_type: "ChObs".into(),
            param: "subject".into(),
            inner: vec![Clause::Token {
                param: "code".into(),
                any: vec![TokenMatch {
                    system: None,
                    code: Some("bp".into()),
                }],
            }],
        }],
    );
    assert_eq!(ids(&store, has).await, vec!["p2"], "_has");
    // a deleted target no longer satisfies a chain
    let mut tx = store.begin().await.unwrap();
    let mut del = new_version("ChOrg", "o1", 2, Some(1), "");
    del.body = None;
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();
    let chain = query(
        "ChPat",
        vec![Clause::Chain {
            param: "organization".into(),
            target_types: vec![],
            inner: vec![Clause::Id(vec!["o1".into()])],
        }],
    );
    assert!(ids(&store, chain).await.is_empty());
}

pub async fn sorting_and_keyset_paging(store: Arc<dyn Store>) {
    put_all(
        &store,
        vec![
            ("SortA", "a", vec![date("date", 300, 300)]),
            ("SortA", "b", vec![date("date", 100, 100)]),
            ("SortA", "c", vec![]),
            (
                "SortA",
                "d",
                vec![date("date", 200, 200), date("date", 400, 400)],
            ),
            ("SortA", "e", vec![date("date", 100, 100)]),
        ],
    )
    .await;
    let sorted = |desc: bool| {
        let mut q = SearchQuery::new("SortA");
        q.sort = vec![SortKey {
            field: SortField::Param {
                param: "date".into(),
                kind: IndexKind::Date,
            },
            descending: desc,
        }];
        q
    };
    let order = |q: SearchQuery| {
        let store = store.clone();
        async move {
            store
                .search(&q)
                .await
                .unwrap()
                .entries
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        order(sorted(false)).await,
        vec!["b", "e", "d", "a", "c"],
        "ascending by smallest value, ties by id, missing last"
    );
    assert_eq!(
        order(sorted(true)).await,
        vec!["d", "a", "b", "e", "c"],
        "descending by largest value, missing last"
    );
    // walk pages of 2 forwards, inserting and deleting between requests
    let mut q = sorted(false);
    q.count = 2;
    let p1 = store.search(&q).await.unwrap();
    assert!(p1.more && !p1.before);
    put_all(&store, vec![("SortA", "f", vec![date("date", 50, 50)])]).await; // sorts before the cursor
    let mut del = new_version("SortA", "a", 2, Some(1), "");
    del.body = None;
    let mut tx = store.begin().await.unwrap();
    tx.put(del).await.unwrap();
    tx.commit().await.unwrap();
    q.page = Page::After(p1.last_cursor.clone().unwrap());
    let p2 = store.search(&q).await.unwrap();
    let p2_ids: Vec<_> = p2.entries.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        p2_ids,
        vec!["d", "c"],
        "no duplicate, no gap among unchanged resources"
    );
    assert!(!p2.more && p2.before);
    // previous page from p2 goes back to the start (now including the new one)
    q.page = Page::Before(p2.first_cursor.clone().unwrap());
    let back: Vec<_> = store
        .search(&q)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(back, vec!["b", "e"]);
    q.page = Page::Last;
    let last: Vec<_> = store
        .search(&q)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(last, vec!["d", "c"]);
    // _count=0 with a total
    let mut q = sorted(false);
    q.count = 0;
    q.with_total = true;
    let p = store.search(&q).await.unwrap();
    assert_eq!((p.entries.len(), p.total), (0, Some(5)));
}

pub async fn include_lookups(store: Arc<dyn Store>) {
    put_all(
        &store,
        vec![
            ("IncP", "p", vec![]),
            ("IncE", "e1", vec![refrow("patient", "IncP", "p")]),
            (
                "IncE",
                "e2",
                vec![
                    refrow("patient", "IncP", "p"),
                    refrow("other", "IncP", "zz"),
                ],
            ),
        ],
    )
    .await;
    let keys = |v: &[(&str, &str)]| {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let mut out = store
        .references_from(&keys(&[("IncE", "e2")]), Some("patient"))
        .await
        .unwrap();
    out.sort();
    assert_eq!(out, keys(&[("IncP", "p")]));
    assert_eq!(
        store
            .references_from(&keys(&[("IncE", "e2")]), None)
            .await
            .unwrap()
            .len(),
        2
    );
    let mut back = store
        .references_to(&keys(&[("IncP", "p")]), Some("IncE"), Some("patient"))
        .await
        .unwrap();
    back.sort();
    assert_eq!(back, keys(&[("IncE", "e1"), ("IncE", "e2")]));
    let many = store
        .read_many(&keys(&[("IncE", "e1"), ("IncP", "p"), ("IncP", "nope")]))
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
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

/// A write and the commit after it, as one result: a backend may report a write's
/// failure at `put` or at the next call that waits (see [`StoreTx::put`]).
pub async fn put_and_commit(mut tx: Box<dyn StoreTx>, write: NewVersion) -> Result<()> {
    tx.put(write).await?;
    tx.commit().await
}

pub async fn version_conflicts_are_detected(store: Arc<dyn Store>) {
    let tx = store.begin().await.unwrap();
    put_and_commit(tx, new_version("ConfA", "1", 1, None, "{}"))
        .await
        .unwrap();
    let tx = store.begin().await.unwrap();
    let err = put_and_commit(tx, new_version("ConfA", "1", 1, None, "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::VersionConflict { found: Some(1), .. }),
        "creating an existing resource conflicts: {err:?}"
    );
    let tx = store.begin().await.unwrap();
    let err = put_and_commit(tx, new_version("ConfA", "1", 3, Some(2), "{}"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionConflict { .. }));
    // A failed write fails the transaction: nothing after it lands, and a read reports it.
    let mut tx = store.begin().await.unwrap();
    let first = tx.put(new_version("ConfA", "1", 5, Some(4), "{}")).await;
    let later = tx.put(new_version("ConfB", "1", 1, None, "{}")).await;
    let read = tx.read("ConfB", "1").await;
    assert!(
        first.is_err() || later.is_err() || read.is_err(),
        "the conflict is reported by the time the transaction reads"
    );
    drop(tx);
    assert!(store.read("ConfB", "1").await.unwrap().is_none());
    assert_eq!(store.read("ConfA", "1").await.unwrap().unwrap().version, 1);
    // heads: version, time and deletion of many keys at once.
    let mut tx = store.begin().await.unwrap();
    let mut del = new_version("ConfA", "2", 1, None, "");
    del.body = None;
    tx.put(del).await.unwrap();
    let heads = tx
        .heads(&[
            ("ConfA".into(), "1".into()),
            ("ConfA".into(), "nope".into()),
            ("ConfA".into(), "2".into()),
        ])
        .await
        .unwrap();
    assert_eq!(heads.len(), 3);
    let h = heads[0].expect("ConfA/1");
    assert_eq!((h.version, h.deleted), (1, false));
    assert!(heads[1].is_none());
    assert!(
        heads[2]
            .expect("ConfA/2 is seen inside its transaction")
            .deleted
    );
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

/// An update whose rows partly repeat the stored ones (as most updates' do): afterwards
/// exactly the new rows are found, of every kind, duplicates included once.
pub async fn updates_replace_only_changed_rows(store: Arc<dyn Store>) {
    let num = |v: f64| IndexRow::Number {
        param: "n".into(),
        value: v,
        system: None,
        code: Some("mg".into()),
    };
    let uri = |u: &str| IndexRow::Uri {
        param: "url".into(),
        uri: u.into(),
    };
    let first = vec![
        token("code", Some("l"), "hr"),
        token("status", None, "preliminary"),
        refrow("subject", "UpdP", "p1"),
        date("date", 100, 199),
        num(5.5),
        uri("http://x.org/a"),
    ];
    put_all(
        &store,
        vec![("UpdA", "1", first.clone()), ("UpdA", "2", first)],
    )
    .await;
    // 1 keeps code, subject and number, changes status, date and uri, gains a token and
    // repeats one row; 2 is untouched.
    put_all(
        &store,
        vec![(
            "UpdA",
            "1",
            vec![
                token("code", Some("l"), "hr"),
                token("status", None, "final"),
                token("status", None, "final"),
                token("category", None, "vital-signs"),
                refrow("subject", "UpdP", "p1"),
                date("date", 100, 299),
                num(5.5),
                uri("http://x.org/b"),
            ],
        )],
    )
    .await;
    let tok = |param: &str, code: &str| {
        query(
            "UpdA",
            vec![Clause::Token {
                param: param.into(),
                any: vec![TokenMatch {
                    system: None,
                    code: Some(code.into()),
                }],
            }],
        )
    };
    assert_eq!(ids(&store, tok("code", "hr")).await, vec!["1", "2"]);
    assert_eq!(ids(&store, tok("status", "final")).await, vec!["1"]);
    assert_eq!(ids(&store, tok("status", "preliminary")).await, vec!["2"]);
    assert_eq!(ids(&store, tok("category", "vital-signs")).await, vec!["1"]);
    let subject = query(
        "UpdA",
        vec![Clause::Reference {
            param: "subject".into(),
            any: vec![RefMatch {
                target_type: Some("UpdP".into()),
                target_id: "p1".into(),
                version: None,
            }],
        }],
    );
    assert_eq!(ids(&store, subject).await, vec!["1", "2"]);
    let dated = |lo: i64, hi: i64| {
        query(
            "UpdA",
            vec![Clause::Date {
                param: "date".into(),
                any: vec![range(Prefix::Eq, lo, hi)],
            }],
        )
    };
    assert_eq!(ids(&store, dated(100, 199)).await, vec!["2"]);
    assert_eq!(ids(&store, dated(100, 299)).await, vec!["1", "2"]);
    let n = query(
        "UpdA",
        vec![Clause::Number {
            param: "n".into(),
            any: vec![RangeMatch {
                prefix: Prefix::Eq,
                low: 5.0,
                high: 6.0,
            }],
        }],
    );
    assert_eq!(ids(&store, n).await, vec!["1", "2"]);
    let u = |v: &str| {
        query(
            "UpdA",
            vec![Clause::Uri {
                param: "url".into(),
                any: vec![UriMatch {
                    value: v.into(),
                    mode: UriMode::Exact,
                }],
            }],
        )
    };
    assert_eq!(ids(&store, u("http://x.org/a")).await, vec!["2"]);
    assert_eq!(ids(&store, u("http://x.org/b")).await, vec!["1"]);
    // An update back to no rows at all leaves none.
    put_all(&store, vec![("UpdA", "1", vec![])]).await;
    assert_eq!(ids(&store, tok("code", "hr")).await, vec!["2"]);
    assert_eq!(
        ids(&store, tok("category", "vital-signs")).await,
        Vec::<String>::new()
    );
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
                let tx = store.begin().await.unwrap();
                let write = new_version("ConcA", "1", cur.version + 1, Some(cur.version), "{}");
                match put_and_commit(tx, write).await {
                    Ok(()) => done += 1,
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
