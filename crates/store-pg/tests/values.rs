//! Values that must survive PostgreSQL unchanged: bodies byte for byte, and index
//! values longer than a B-tree entry may hold.

mod common;

use salus_store::contract::{new_version, put_and_commit};
use salus_store::{Clause, IndexRow, SearchQuery, Store, StringMatch, StringMode, TokenMatch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_read_back_byte_identical() {
    let Some(url) = common::database_url("PostgreSQL value tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let store = common::connect(&u, &schema).await;
        let body = "{\"z\":1.50,\"a\":[1e2, 0.10],\"t\":\"Zoë \\u00e9 \u{1F600} 'q' \\\"x\\\"\",  \"n\":null}";
        put_and_commit(
            store.begin().await.unwrap(),
            new_version("Exact", "1", 1, None, body),
        )
        .await
        .unwrap();
        let back = store.read("Exact", "1").await.unwrap().unwrap();
        assert_eq!(back.body.as_deref(), Some(body));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_index_values_are_stored_and_found() {
    let Some(url) = common::database_url("PostgreSQL value tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let store = common::connect(&u, &schema).await;
        // ~12 kB of text that does not compress: over the B-tree entry limit
        let long: String = (0..3000u32)
            .map(|i| char::from_u32(0x4e00 + (i * 7919) % 20000).unwrap_or('x'))
            .collect();
        let mut w = new_version("Long", "1", 1, None, "{}");
        w.index = vec![
            IndexRow::String {
                param: "name".into(),
                normalized: long.clone(),
                exact: long.clone(),
            },
            IndexRow::Token {
                param: "code".into(),
                system: Some(long.clone()),
                code: long.clone(),
            },
        ];
        put_and_commit(store.begin().await.unwrap(), w)
            .await
            .unwrap();
        let find = |c: Clause| {
            let mut q = SearchQuery::new("Long");
            q.clauses = vec![c];
            q
        };
        let prefix: String = long.chars().take(200).collect();
        for (mode, value) in [
            (StringMode::Prefix, prefix.clone()),
            (StringMode::Prefix, long.clone()),
            (StringMode::Exact, long.clone()),
            (
                StringMode::Contains,
                long.chars().skip(150).take(100).collect(),
            ),
        ] {
            let q = find(Clause::String {
                param: "name".into(),
                any: vec![StringMatch { value, mode }],
            });
            assert_eq!(store.search(&q).await.unwrap().entries.len(), 1, "{mode:?}");
        }
        let q = find(Clause::Token {
            param: "code".into(),
            any: vec![TokenMatch {
                system: Some(long.clone()),
                code: Some(long.clone()),
            }],
        });
        assert_eq!(store.search(&q).await.unwrap().entries.len(), 1);
        // a value sharing the indexed prefix but not equal is not a match
        let mut other = long.clone();
        other.push('z');
        let q = find(Clause::Token {
            param: "code".into(),
            any: vec![TokenMatch {
                system: None,
                code: Some(other),
            }],
        });
        assert!(store.search(&q).await.unwrap().entries.is_empty());
    })
    .await;
}
