//! Materialize → SQL round trips, output formats, read-only enforcement.

mod common;

use common::{sorted_rows, strings};
use salus_analytics::{
    write_output, Analytics, AnalyticsError, MaterializeOptions, Materializer, OutputFormat,
    QueryLimits, TableSource,
};
use serde_json::{json, Value};

fn patient_view() -> Value {
    json!({
        "resourceType": "ViewDefinition",
        "name": "patient_demo",
        "resource": "Patient",
        "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "gender", "path": "gender", "type": "code"},
                {"name": "birth_date", "path": "birthDate", "type": "date"},
                {"name": "active", "path": "active", "type": "boolean"},
                {"name": "given", "path": "name.given", "type": "string", "collection": true}
            ]}
        ]
    })
}

fn obs_view() -> Value {
    json!({
        "name": "obs_value",
        "resource": "Observation",
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()", "type": "id"},
            {"name": "patient_id", "path": "subject.getReferenceKey(Patient)", "type": "id"},
            {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"}
        ]}]
    })
}

fn patients() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "a", "gender": "female", "birthDate": "1970-02-03",
               "active": true, "name": [{"given": ["Ann", "B."]}]}),
        json!({"resourceType": "Patient", "id": "b", "gender": "male", "birthDate": "1980"}),
        json!({"resourceType": "Patient", "id": "c", "gender": "female", "active": false}),
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": "Patient/a"},
               "valueQuantity": {"value": 7.25}}),
        json!({"resourceType": "Observation", "id": "o2", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": "Patient/a"},
               "valueQuantity": {"value": 9.75}}),
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": "Patient/b"},
               "valueQuantity": {"value": 5}}),
    ]
}

#[tokio::test]
async fn materialize_then_query_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let m = Materializer::new(dir.path());
    let stats = m
        .materialize(&patient_view(), patients(), Some("v1"))
        .unwrap();
    assert_eq!((stats.resources_read, stats.rows, stats.parts), (6, 3, 1));
    m.materialize(&obs_view(), patients(), Some("v1")).unwrap();

    let view_dir = dir.path().join("patient_demo");
    assert!(view_dir.join("_manifest.json").is_file());
    assert!(view_dir.join("part-000001.parquet").is_file());
    let manifest = m.manifest("patient_demo").unwrap();
    assert_eq!(manifest.rows, 3);
    assert_eq!(manifest.high_water_mark.as_deref(), Some("v1"));
    assert_eq!(
        manifest.view_hash,
        salus_analytics::view_hash(&patient_view())
    );

    let sql = Analytics::new(dir.path()).unwrap();
    let names: Vec<String> = sql.tables().into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["obs_value", "patient_demo"]);
    assert_eq!(
        sql.tables()[1].source,
        TableSource::Parquet {
            high_water_mark: Some("v1".into())
        }
    );

    assert_eq!(
        strings(
            &sql,
            "SELECT id FROM patient_demo WHERE gender = 'female' ORDER BY id"
        )
        .await,
        vec!["a", "c"]
    );
    assert_eq!(
        strings(&sql, "SELECT birth_date FROM patient_demo WHERE id = 'b'").await,
        vec!["1980"],
        "partial dates keep their text"
    );
    assert_eq!(
        strings(
            &sql,
            "SELECT cardinality(given) FROM patient_demo WHERE id = 'a'"
        )
        .await,
        vec!["2"]
    );
    // A join across two materialized views, with aggregation over a decimal column.
    assert_eq!(
        strings(
            &sql,
            "SELECT p.id || ':' || CAST(max(o.value) AS VARCHAR) FROM patient_demo p \
             JOIN obs_value o ON o.patient_id = p.id GROUP BY p.id ORDER BY p.id"
        )
        .await,
        vec!["a:9.75", "b:5.0"]
    );
    // Same rows as the in-memory path.
    let mut mem = Analytics::in_memory();
    assert_eq!(mem.register_view(&patient_view(), patients()).unwrap(), 3);
    assert_eq!(
        sorted_rows(&sql, "patient_demo").await,
        sorted_rows(&mem, "patient_demo").await
    );
    assert_eq!(mem.tables()[0].source, TableSource::Memory);
}

#[tokio::test]
async fn an_empty_view_is_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let m = Materializer::new(dir.path());
    let stats = m
        .materialize(&patient_view(), Vec::<Value>::new(), None)
        .unwrap();
    assert_eq!((stats.rows, stats.parts), (0, 0));
    let sql = Analytics::new(dir.path()).unwrap();
    assert_eq!(
        strings(&sql, "SELECT count(*) FROM patient_demo").await,
        vec!["0"]
    );
    let r = sql
        .query_result("SELECT id, given FROM patient_demo")
        .await
        .unwrap();
    assert_eq!(r.num_rows(), 0);
    assert_eq!(r.schema.fields().len(), 2);
}

#[tokio::test]
async fn many_parts_read_as_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let options = MaterializeOptions {
        part_rows: 10,
        batch_rows: 4,
        ..Default::default()
    };
    let m = Materializer::new(dir.path()).with_options(options);
    let pats: Vec<Value> = (0..95)
        .map(|i| {
            json!({"resourceType": "Patient", "id": format!("p{i:03}"),
                        "gender": if i % 2 == 0 { "female" } else { "male" }})
        })
        .collect();
    let stats = m.materialize(&patient_view(), &pats, None).unwrap();
    assert_eq!((stats.rows, stats.parts), (95, 10));
    let sql = Analytics::new(dir.path()).unwrap();
    assert_eq!(
        strings(
            &sql,
            "SELECT count(*) FROM patient_demo WHERE gender = 'female'"
        )
        .await,
        vec!["48"]
    );
    assert_eq!(
        strings(&sql, "SELECT max(id) FROM patient_demo").await,
        vec!["p094"]
    );
}

#[tokio::test]
async fn outputs_in_every_format() {
    let mut sql = Analytics::in_memory();
    sql.register_view(&patient_view(), patients()).unwrap();
    let r = sql
        .query_result("SELECT id, active, given FROM patient_demo ORDER BY id")
        .await
        .unwrap();
    let render = |f: OutputFormat| {
        let mut out = Vec::new();
        write_output(&r.schema, &r.batches, f, &mut out).unwrap();
        out
    };
    let table = String::from_utf8(render(OutputFormat::Table)).unwrap();
    assert!(table.contains("| id | active | given"), "{table}");
    assert!(table.contains("[Ann, B.]"), "{table}");
    let csv = String::from_utf8(render(OutputFormat::Csv)).unwrap();
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        vec![
            "id,active,given",
            "a,true,\"[\"\"Ann\"\",\"\"B.\"\"]\"",
            "b,,[]",
            "c,false,[]"
        ]
    );
    let ndjson = String::from_utf8(render(OutputFormat::JsonLines)).unwrap();
    let first: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert_eq!(
        first,
        json!({"id": "a", "active": true, "given": ["Ann", "B."]})
    );
    let second: Value = serde_json::from_str(ndjson.lines().nth(1).unwrap()).unwrap();
    assert_eq!(second["active"], Value::Null);
    let array: Value = serde_json::from_slice(&render(OutputFormat::Json)).unwrap();
    assert_eq!(array.as_array().unwrap().len(), 3);
    assert_eq!(array[0], first);
    assert_eq!(array[1], second);
    let empty = sql
        .query_result("SELECT id FROM patient_demo WHERE id = 'nobody'")
        .await
        .unwrap();
    let mut out = Vec::new();
    write_output(&empty.schema, &empty.batches, OutputFormat::Json, &mut out).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out).unwrap(), json!([]));
    let parquet = render(OutputFormat::Parquet);
    assert_eq!(&parquet[..4], b"PAR1");
    let reader =
        salus_analytics::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes_of(parquet),
        )
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 3);
}

fn bytes_of(v: Vec<u8>) -> bytes::Bytes {
    bytes::Bytes::from(v)
}

#[tokio::test]
async fn write_statements_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    Materializer::new(dir.path())
        .materialize(&patient_view(), patients(), None)
        .unwrap();
    let sql = Analytics::new(dir.path()).unwrap();
    let out = dir.path().join("out.parquet");
    let statements = [
        "CREATE TABLE x AS SELECT * FROM patient_demo".to_string(),
        "CREATE VIEW v AS SELECT 1".to_string(),
        format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{}'",
            dir.path().display()
        ),
        "DROP TABLE patient_demo".to_string(),
        "INSERT INTO patient_demo (id) VALUES ('z')".to_string(),
        "DELETE FROM patient_demo".to_string(),
        "UPDATE patient_demo SET gender = 'x'".to_string(),
        format!("COPY patient_demo TO '{}'", out.display()),
        format!("COPY (SELECT 1) TO '{}' STORED AS PARQUET", out.display()),
        "EXPLAIN INSERT INTO patient_demo (id) VALUES ('z')".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
        "BEGIN TRANSACTION".to_string(),
    ];
    for s in &statements {
        match sql.query(s).await {
            Err(AnalyticsError::ReadOnly(what)) => {
                let e = AnalyticsError::ReadOnly(what);
                assert!(e.is_user_error());
                assert!(e.to_string().contains("not allowed"), "{e}");
            }
            Err(AnalyticsError::Sql(m)) => {
                // Some statements DataFusion does not plan at all: still refused, still
                // the caller's error, and nothing ran.
                assert!(!m.is_empty(), "{s}");
            }
            other => panic!("{s}: expected a read-only refusal, got {other:?}"),
        }
    }
    assert!(!out.exists(), "COPY must not have written");
    // Nothing changed: the table is still there with its rows, and no new table appeared.
    assert_eq!(
        strings(&sql, "SELECT count(*) FROM patient_demo").await,
        vec!["3"]
    );
    assert!(sql.query("SELECT * FROM x").await.is_err());
    // Queries of every read-only kind still work.
    for s in [
        "SELECT 1",
        "WITH t AS (SELECT id FROM patient_demo) SELECT count(*) FROM t",
        "VALUES (1), (2)",
        "EXPLAIN SELECT * FROM patient_demo",
        "SHOW TABLES",
        "DESCRIBE patient_demo",
    ] {
        sql.query(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[tokio::test]
async fn bad_sql_and_unknown_tables_are_user_errors() {
    let sql = Analytics::in_memory();
    for s in [
        "SELEC 1",
        "SELECT * FROM nowhere",
        "SELECT nope FROM (SELECT 1 AS a)",
    ] {
        let e = sql.query(s).await.unwrap_err();
        assert!(e.is_user_error(), "{s}: {e:?}");
    }
}

#[tokio::test]
async fn limits_refuse_long_results_and_cancel_slow_statements() {
    let sql = Analytics::in_memory();
    let rows = |max| QueryLimits {
        max_rows: Some(max),
        timeout: None,
    };
    let five = "SELECT value FROM generate_series(1, 5)";
    assert_eq!(
        sql.query_limited(five, rows(5)).await.unwrap().num_rows(),
        5
    );
    let e = sql.query_limited(five, rows(4)).await.unwrap_err();
    assert!(matches!(e, AnalyticsError::TooManyRows(4)), "{e:?}");
    assert!(e.is_user_error());
    assert!(e.to_string().contains("more than 4 rows"), "{e}");
    // the limit counts the answer, not the rows read to compute it
    let big = "SELECT count(*) AS n FROM generate_series(1, 100000)";
    assert_eq!(sql.query_limited(big, rows(1)).await.unwrap().num_rows(), 1);
    // ORDER BY with a limit still gives the smallest rows first
    let r = sql
        .query_limited(
            "SELECT value FROM generate_series(1, 3) ORDER BY value DESC LIMIT 2",
            rows(2),
        )
        .await
        .unwrap();
    assert_eq!(r.num_rows(), 2);
    // a statement that would run for hours is cancelled
    let slow = QueryLimits {
        max_rows: None,
        timeout: Some(std::time::Duration::from_millis(300)),
    };
    let e = sql
        .query_limited(
            "SELECT count(*) FROM generate_series(1, 100000000000)",
            slow,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, AnalyticsError::Timeout(_)), "{e:?}");
    assert!(e.to_string().contains("300 ms"), "{e}");
    // the session is still usable afterwards
    assert_eq!(sql.query_limited(five, slow).await.unwrap().num_rows(), 5);
}

#[test]
fn a_view_needs_a_usable_name() {
    let dir = tempfile::tempdir().unwrap();
    let m = Materializer::new(dir.path());
    let mut v = patient_view();
    v.as_object_mut().unwrap().remove("name");
    assert!(m
        .materialize(&v, patients(), None)
        .unwrap_err()
        .is_user_error());
    v["name"] = json!("../evil");
    assert!(m
        .materialize(&v, patients(), None)
        .unwrap_err()
        .is_user_error());
    assert!(m.manifest("patient_demo").unwrap_err().is_user_error());
}

#[test]
fn view_failures_fail_or_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    // `name.family` is a collection in R4; two names make two values: an evaluation error.
    let v = json!({"name": "fam", "resource": "Patient", "select": [{"column": [
        {"name": "family", "path": "name.family", "type": "string"}]}]});
    let data = vec![
        json!({"resourceType": "Patient", "id": "a", "name": [{"family": "X"}]}),
        json!({"resourceType": "Patient", "id": "b", "name": [{"family": "Y"}, {"family": "Z"}]}),
    ];
    let strict = Materializer::new(dir.path());
    assert!(strict
        .materialize(&v, &data, None)
        .unwrap_err()
        .is_user_error());
    assert!(
        strict.manifest("fam").is_err(),
        "a failed build leaves nothing behind"
    );
    let lenient = Materializer::new(dir.path()).with_options(MaterializeOptions {
        skip_errors: true,
        ..Default::default()
    });
    let stats = lenient.materialize(&v, &data, None).unwrap();
    assert_eq!((stats.rows, stats.skipped), (1, 1));
    assert!(stats.first_error.unwrap().contains("Patient/b"));
}
