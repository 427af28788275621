//! Encryption at rest on PostgreSQL: resource bodies are sealed (the raw column holds
//! no patient name), the backend contract holds with encryption on, a missing or wrong
//! key is a clear error, and key rotation (KEK and data key) keeps every version
//! readable while another process shares the database.

mod common;

use salus_keys::{DataKey, KeyEncryptionKey, LocalKek};
use salus_store::contract::{self, new_version, put_and_commit};
use salus_store::{HistoryQuery, HistoryScope, IndexRow, Store};
use salus_store_pg::{PgOptions, PgStore};
use std::sync::Arc;

fn kek() -> Arc<dyn KeyEncryptionKey> {
    Arc::new(LocalKek::new(DataKey::generate()))
}

fn options(schema: &str, kek: Option<&Arc<dyn KeyEncryptionKey>>) -> PgOptions {
    PgOptions {
        encryption: kek.cloned(),
        ..common::options(schema)
    }
}

async fn connect(url: &str, schema: &str, kek: &Arc<dyn KeyEncryptionKey>) -> PgStore {
    PgStore::connect(url, options(schema, Some(kek)))
        .await
        .expect("connect with encryption")
}

const NAME: &str = "Wilhelmina Quackenbush";

fn patient(id: &str, version: u64, expected: Option<u64>) -> salus_store::NewVersion {
    let body = format!(
        r#"{{"resourceType":"Patient","id":"{id}","meta":{{"versionId":"{version}"}},"name":[{{"text":"{NAME}"}}]}}"#
    );
    let mut v = new_version("Patient", id, version, expected, &body);
    v.index = vec![IndexRow::String {
        param: "name".into(),
        normalized: "wilhelmina quackenbush".into(),
        exact: NAME.into(),
    }];
    v
}

/// Bodies as PostgreSQL holds them.
async fn raw_bodies(url: &str, schema: &str) -> Vec<String> {
    let c = common::raw(url, schema).await;
    c.query(
        "SELECT body::text FROM resource_versions WHERE body IS NOT NULL ORDER BY seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_passes_the_backend_contract_with_encryption() {
    let Some(url) = common::database_url("PostgreSQL encryption tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let k = kek();
        let store = connect(&u, &schema, &k).await;
        contract::run_all(Arc::new(store.clone())).await;
        // and it really ran encrypted: every stored body is an envelope
        let bodies = raw_bodies(&u, &schema).await;
        assert!(!bodies.is_empty());
        assert!(
            bodies.iter().all(|b| b.starts_with("enc1:")),
            "{:?}",
            &bodies[0]
        );
        store.close();
        println!("PostgreSQL contract suite with encryption: run_all passed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_name_appears_in_the_body_column() {
    let Some(url) = common::database_url("PostgreSQL encryption tests") else {
        return;
    };
    for encrypted in [false, true] {
        let u = url.clone();
        common::with_schema(&url, |schema| async move {
            let k = kek();
            let store = PgStore::connect(&u, options(&schema, encrypted.then_some(&k)))
                .await
                .unwrap();
            assert_eq!(store.encrypted(), encrypted);
            put_and_commit(store.begin().await.unwrap(), patient("p1", 1, None))
                .await
                .unwrap();
            put_and_commit(store.begin().await.unwrap(), patient("p1", 2, Some(1)))
                .await
                .unwrap();
            let bodies = raw_bodies(&u, &schema).await;
            assert_eq!(bodies.len(), 2, "current and history version");
            let leaked = bodies.iter().any(|b| b.contains("Quackenbush"));
            assert_eq!(leaked, !encrypted, "encrypted: {encrypted}");
            // reads open them
            let r = store.read("Patient", "p1").await.unwrap().unwrap();
            assert!(r.body.unwrap().contains(NAME));
            let old = store.vread("Patient", "p1", 1).await.unwrap().unwrap();
            assert!(old.body.unwrap().contains("\"versionId\":\"1\""));
            store.close();
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_or_wrong_key_is_a_clear_error_and_plaintext_is_refused() {
    let Some(url) = common::database_url("PostgreSQL encryption tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        let k = kek();
        let store = connect(&u, &schema, &k).await;
        put_and_commit(store.begin().await.unwrap(), patient("p1", 1, None))
            .await
            .unwrap();
        let err = |o| {
            let u = u.clone();
            async move {
                match PgStore::connect(&u, o).await {
                    Ok(_) => panic!("connected"),
                    Err(e) => e.to_string(),
                }
            }
        };
        let e = err(options(&schema, None)).await;
        assert!(e.contains("encrypted") && e.contains("[encryption]"), "{e}");
        let e = err(options(&schema, Some(&kek()))).await;
        assert!(e.contains("wrong encryption key"), "{e}");
        assert!(e.contains(&k.id()), "names the key expected: {e}");
        // whatever writes bypassing Salus' encryption is refused by the database
        let raw = common::raw(&u, &schema).await;
        let e = raw
            .execute(
                "INSERT INTO resource_versions (seq, shard, rtype, id, version, last_updated, method, body) \
                 VALUES (999, 0, 'Patient', 'x', 1, 0, 'PUT', '{\"name\":\"plain\"}')",
                &[],
            )
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("plaintext body was refused"), "{e:?}");
        store.close();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_keeps_every_version_readable_across_processes() {
    let Some(url) = common::database_url("PostgreSQL encryption tests") else {
        return;
    };
    let u = url.clone();
    common::with_schema(&url, |schema| async move {
        // data stored before encryption was turned on
        let plain = PgStore::connect(&u, options(&schema, None)).await.unwrap();
        put_and_commit(plain.begin().await.unwrap(), patient("old", 1, None))
            .await
            .unwrap();
        plain.close();

        let k = kek();
        let admin = connect(&u, &schema, &k).await; // `salus keys …`
        let server = connect(&u, &schema, &k).await; // a running server
        // one that does not re-read the keyring by itself while the test runs
        let lagging = PgStore::connect(
            &u,
            PgOptions {
                keyring_refresh: std::time::Duration::from_secs(3600),
                ..options(&schema, Some(&k))
            },
        )
        .await
        .unwrap();
        assert!(server.read("Patient", "old").await.unwrap().is_some());
        put_and_commit(server.begin().await.unwrap(), patient("p1", 1, None))
            .await
            .unwrap();

        // data key rotation: a new key, then the old ones retired and re-encrypted
        let id = admin.add_data_key().await.unwrap();
        assert_eq!(id, 2);
        put_and_commit(admin.begin().await.unwrap(), patient("p1", 2, Some(1)))
            .await
            .unwrap();
        // the server opens a version under a key it has not seen yet
        let r = server.read("Patient", "p1").await.unwrap().unwrap();
        assert_eq!(r.version, 2);
        admin.retire_old_data_keys().await.unwrap();
        let mut seen = vec![];
        let n = admin
            .reencrypt(&mut |done, total| seen.push((done, total)))
            .await
            .unwrap();
        assert_eq!(n, 2, "the plaintext version and the one under key 1");
        assert_eq!(seen.last(), Some(&(2, 2)));
        assert_eq!(admin.data_key_usage().await.unwrap(), vec![(Some(2), 3)]);
        assert!(raw_bodies(&u, &schema)
            .await
            .iter()
            .all(|b| b.starts_with("enc1:2:") && !b.contains("Quackenbush")));
        let raw = common::raw(&u, &schema).await;
        let e = raw
            .execute(
                "INSERT INTO resource_versions (seq, shard, rtype, id, version, last_updated, method, body) \
                 VALUES (999, 0, 'Patient', 'x', 1, 0, 'PUT', 'enc1:1:AAAA')",
                &[],
            )
            .await
            .unwrap_err();
        assert!(format!("{e:?}").contains("retired"), "{e:?}");
        // a write under a (now retired) key is refused; that process re-reads the
        // keyring, and the retry succeeds
        let mut refused = 0;
        loop {
            let r = put_and_commit(lagging.begin().await.unwrap(), patient("p2", 1, None)).await;
            match r {
                Ok(()) => break,
                Err(salus_store::StoreError::Busy(m)) => {
                    assert!(m.contains("retired"), "{m}");
                    refused += 1;
                    assert!(refused < 3, "still refused after a refresh");
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 1, "refused once, then written under the new key");
        let pruned = admin.prune_data_keys().await.unwrap();
        assert_eq!(pruned, vec![1]);
        for (id, v) in [("old", 1), ("p1", 1), ("p1", 2), ("p2", 1)] {
            let r = server.vread("Patient", id, v).await.unwrap().unwrap();
            assert!(r.body.unwrap().contains(NAME), "{id}/{v}");
        }
        let h = server
            .history(&HistoryQuery {
                scope: HistoryScope::Instance("Patient".into(), "p1".into()),
                since: None,
                before: None,
                current_from: None,
                cursor: None,
                count: 10,
            })
            .await
            .unwrap();
        assert_eq!(h.entries.len(), 2);

        // KEK rotation: the data keys rewrapped; the old KEK no longer opens them
        let new_kek = kek();
        assert_eq!(admin.rewrap_keyring(new_kek.as_ref()).await.unwrap(), 1);
        let e = match PgStore::connect(&u, options(&schema, Some(&k))).await {
            Ok(_) => panic!("the old KEK still opens the keyring"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("wrong encryption key"), "{e}");
        let after = connect(&u, &schema, &new_kek).await;
        for (id, v) in [("old", 1), ("p1", 2), ("p2", 1)] {
            assert!(after.vread("Patient", id, v).await.unwrap().is_some());
        }
        // the running server keeps working on the keys it holds
        assert!(server.read("Patient", "p2").await.unwrap().is_some());
        for s in [admin, server, lagging, after] {
            s.close();
        }
    })
    .await;
}
