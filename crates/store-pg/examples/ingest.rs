//! Ingest benchmark for the PostgreSQL backend: puts per second of Observation-like
//! resources with ~20 index rows each (plus full text), written in transactions of
//! 64 resources, as a transaction Bundle would be.
//!
//! ```text
//! SALUS_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p salus-store-pg --example ingest -- [resources] [batch] [writers] [backend]
//! ```
//! Defaults: 12800 resources, 64 per transaction, 1 writer, backend `postgres`;
//! `sqlite` runs the same load on the SQLite backend (a fresh database in the temp
//! directory, removed at the end), for a side-by-side figure. It works in a schema of its
//! own (`salus_bench_<random>`) and drops it at the end (kept, and named, when
//! `SALUS_BENCH_KEEP` is set: for looking at query plans).

use salus_store::sqlite::{SqliteOptions, SqliteStore};
use salus_store::{FullText, IndexRow, Method, NewVersion, Store};
use salus_store_pg::{PgOptions, PgStore};
use std::sync::Arc;
use std::time::Instant;

fn token(param: &str, system: &str, code: &str) -> IndexRow {
    IndexRow::Token {
        param: param.into(),
        system: Some(system.into()),
        code: code.into(),
    }
}

fn reference(param: &str, t: &str, id: &str) -> IndexRow {
    IndexRow::Reference {
        param: param.into(),
        target_type: Some(t.into()),
        target_id: id.into(),
        version: None,
    }
}

/// One Observation: its JSON and its 20 index rows, as the search crate would make them.
fn observation(i: usize) -> NewVersion {
    let patient = format!("p{}", i % 500);
    let code = ["8480-6", "8462-4", "8867-4", "2339-0", "718-7"][i % 5];
    let value = 60.0 + (i % 100) as f64 + 0.5;
    let micros = 1_600_000_000_000_000 + (i as i64) * 60_000_000;
    let body = format!(
        r#"{{"resourceType":"Observation","id":"o{i}","meta":{{"versionId":"1","lastUpdated":"2020-09-13T12:26:40Z"}},"identifier":[{{"system":"urn:ingest","value":"obs-{i}"}}],"status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs","display":"Vital Signs"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org","code":"{code}","display":"Vital sign {code}"}}],"text":"Vital sign"}},"subject":{{"reference":"Patient/{patient}"}},"encounter":{{"reference":"Encounter/e{i}"}},"effectiveDateTime":"2020-09-13T12:26:40Z","issued":"2020-09-13T12:26:40.000Z","performer":[{{"reference":"Practitioner/pr{}"}}],"valueQuantity":{{"value":{value:.2},"unit":"mm[Hg]","system":"http://unitsofmeasure.org","code":"mm[Hg]"}},"note":[{{"text":"Measured at rest, seated, left arm. Reading {i}."}}]}}"#,
        i % 40
    );
    let loinc = "http://loinc.org";
    let index = vec![
        token("identifier", "urn:ingest", &format!("obs-{i}")),
        token("status", "http://hl7.org/fhir/observation-status", "final"),
        token(
            "category",
            "http://terminology.hl7.org/CodeSystem/observation-category",
            "vital-signs",
        ),
        token("code", loinc, code),
        token("combo-code", loinc, code),
        reference("subject", "Patient", &patient),
        reference("patient", "Patient", &patient),
        reference("encounter", "Encounter", &format!("e{i}")),
        reference("performer", "Practitioner", &format!("pr{}", i % 40)),
        IndexRow::Date {
            param: "date".into(),
            low: micros,
            high: micros + 999_999,
        },
        IndexRow::Date {
            param: "_lastUpdated".into(),
            low: micros,
            high: micros,
        },
        IndexRow::Number {
            param: "value-quantity".into(),
            value,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mm[Hg]".into()),
        },
        IndexRow::Number {
            param: "value-quantity:canonical".into(),
            value: value * 133.322,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("g.m-1.s-2".into()),
        },
        IndexRow::Number {
            param: "combo-value-quantity".into(),
            value,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mm[Hg]".into()),
        },
        IndexRow::Number {
            param: format!("code-value-quantity${code}|{loinc}"),
            value,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mm[Hg]".into()),
        },
        token(&format!("code-value-concept${code}|{loinc}"), "", "n/a"),
        IndexRow::String {
            param: "code-text".into(),
            normalized: "vital sign".into(),
            exact: "Vital sign".into(),
        },
        IndexRow::Uri {
            param: "_profile".into(),
            uri: "http://hl7.org/fhir/StructureDefinition/vitalsigns".into(),
        },
        token("_security", "", "normal"),
        token("data-absent-reason", "", "none"),
    ];
    NewVersion {
        rtype: "Observation".into(),
        id: format!("o{i}"),
        version: 1,
        expected_version: None,
        last_updated: micros,
        method: Method::Post,
        body: Some(body),
        index,
        fulltext: Some(FullText {
            narrative: String::new(),
            content: format!(
                "final vital signs vital sign {code} mm[Hg] measured at rest seated left arm reading {i}"
            ),
        }),
        contained: vec![],
    }
}

async fn writer(store: Arc<dyn Store>, ids: Vec<usize>, batch: usize) -> Result<(), String> {
    for chunk in ids.chunks(batch) {
        let mut tx = store.begin().await.map_err(|e| e.to_string())?;
        for &i in chunk {
            tx.put(observation(i)).await.map_err(|e| e.to_string())?;
        }
        tx.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn drop_schema(url: &str, schema: &str) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .map_err(|e| e.to_string())?;
    drop(client);
    let _ = task.await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let arg = |n: usize, default: usize| -> Result<usize, String> {
        match std::env::args().nth(n) {
            Some(a) => a.parse().map_err(|_| format!("not a number: {a}")),
            None => Ok(default),
        }
    };
    let (total, batch, writers) = (arg(1, 12_800)?, arg(2, 64)?.max(1), arg(3, 1)?.max(1));
    let backend = std::env::args().nth(4).unwrap_or_else(|| "postgres".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (store, cleanup): (Arc<dyn Store>, Cleanup) = match backend.as_str() {
        "postgres" => {
            let url = std::env::var("SALUS_BENCH_POSTGRES")
                .or_else(|_| std::env::var("SALUS_TEST_POSTGRES"))
                .map_err(|_| {
                    "set SALUS_TEST_POSTGRES (or SALUS_BENCH_POSTGRES) to a database URL"
                })?;
            let schema = format!("salus_bench_{suffix}");
            let store = PgStore::connect(
                &url,
                PgOptions {
                    schema: Some(schema.clone()),
                    pool_size: writers + 1,
                    ..PgOptions::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            (
                Arc::new(store.clone()),
                Cleanup::Postgres(store, url, schema),
            )
        }
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("salus_bench_{suffix}"));
            let store =
                SqliteStore::open_dir(&dir, SqliteOptions::default()).map_err(|e| e.to_string())?;
            (Arc::new(store), Cleanup::Sqlite(dir))
        }
        other => return Err(format!("unknown backend {other:?}: postgres or sqlite")),
    };
    let rows = observation(0).index.len();
    let started = Instant::now();
    let mut tasks = vec![];
    for w in 0..writers {
        let ids: Vec<usize> = (0..total).filter(|i| i % writers == w).collect();
        tasks.push(tokio::spawn(writer(store.clone(), ids, batch)));
    }
    let mut result = Ok(());
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(e.to_string()),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(store);
    cleanup.run().await?;
    result?;
    println!(
        "{backend} ingest: {total} resources ({rows} index rows + full text each), {batch} per transaction, \
         {writers} writer(s): {secs:.2} s, {:.0} puts/s, {:.0} index rows/s",
        total as f64 / secs,
        (total * rows) as f64 / secs
    );
    Ok(())
}

/// What to remove after a run.
enum Cleanup {
    Postgres(PgStore, String, String),
    Sqlite(std::path::PathBuf),
}

impl Cleanup {
    async fn run(self) -> Result<(), String> {
        match self {
            Cleanup::Postgres(store, url, schema) => {
                store.close();
                if std::env::var_os("SALUS_BENCH_KEEP").is_some() {
                    println!("kept schema {schema}");
                    Ok(())
                } else {
                    drop_schema(&url, &schema).await
                }
            }
            Cleanup::Sqlite(dir) => std::fs::remove_dir_all(&dir).map_err(|e| e.to_string()),
        }
    }
}
