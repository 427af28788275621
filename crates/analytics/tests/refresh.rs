//! Incremental refresh from a change feed equals a full rebuild.

mod common;

use common::sorted_rows;
use salus_analytics::{Analytics, Change, MaterializeOptions, Materializer};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// A view with several rows per resource (`forEach`) and a `where` that drops some.
fn names_view() -> Value {
    json!({
        "name": "patient_names",
        "resource": "Patient",
        "where": [{"path": "active.exists() implies active"}],
        "select": [
            {"column": [
                {"name": "id", "path": "getResourceKey()", "type": "id"},
                {"name": "gender", "path": "gender", "type": "code"}
            ]},
            {"forEach": "name", "column": [
                {"name": "family", "path": "family", "type": "string"},
                {"name": "given", "path": "given", "type": "string", "collection": true}
            ]}
        ]
    })
}

fn patient(id: &str, gender: &str, families: &[&str], active: Option<bool>) -> Value {
    let mut p = json!({
        "resourceType": "Patient", "id": id, "gender": gender,
        "name": families.iter().map(|f| json!({"family": f, "given": [format!("{f}-g")]}))
            .collect::<Vec<_>>()
    });
    if let Some(a) = active {
        p["active"] = json!(a);
    }
    p
}

fn small_parts() -> MaterializeOptions {
    MaterializeOptions {
        part_rows: 7,
        batch_rows: 3,
        ..Default::default()
    }
}

/// Apply `changes` to the map of current resources (the "store").
fn apply(store: &mut BTreeMap<(String, String), Value>, changes: &[Change]) {
    for c in changes {
        let key = (c.rtype.clone(), c.id.clone());
        match &c.body {
            Some(b) => {
                store.insert(key, b.clone());
            }
            None => {
                store.remove(&key);
            }
        }
    }
}

async fn assert_same_as_rebuild(
    incremental: &Materializer,
    store: &BTreeMap<(String, String), Value>,
) {
    let full_dir = tempfile::tempdir().unwrap();
    let full = Materializer::new(full_dir.path()).with_options(small_parts());
    full.materialize(&names_view(), store.values(), None)
        .unwrap();
    let a = Analytics::new(incremental.root()).unwrap();
    let b = Analytics::new(full_dir.path()).unwrap();
    let (ra, rb) = (
        sorted_rows(&a, "patient_names").await,
        sorted_rows(&b, "patient_names").await,
    );
    assert_eq!(ra, rb);
    let (ma, mb) = (
        incremental.manifest("patient_names").unwrap(),
        full.manifest("patient_names").unwrap(),
    );
    assert_eq!((ma.rows, ma.resources), (mb.rows, mb.resources));
    assert_eq!(ma.rows as usize, ra.len());
    // Every file in the directory is listed in the manifest (obsolete parts are removed).
    let mut listed: Vec<String> = ma
        .parts
        .iter()
        .flat_map(|p| [p.file.clone(), p.keys.clone()])
        .collect();
    listed.push("_manifest.json".into());
    listed.sort();
    let mut present: Vec<String> = std::fs::read_dir(incremental.view_dir("patient_names"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

#[tokio::test]
async fn refresh_with_updates_and_deletions_equals_full_rebuild() {
    let mut store = BTreeMap::new();
    for i in 0..40 {
        let fams: Vec<String> = (0..(i % 3 + 1)).map(|n| format!("F{i}x{n}")).collect();
        let fams: Vec<&str> = fams.iter().map(String::as_str).collect();
        let p = patient(
            &format!("p{i:02}"),
            if i % 2 == 0 { "female" } else { "male" },
            &fams,
            if i % 7 == 0 { Some(false) } else { None },
        );
        store.insert(("Patient".to_string(), format!("p{i:02}")), p);
    }
    // Other resource types in the input and in the feed must be ignored.
    store.insert(
        ("Observation".into(), "o1".into()),
        json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {}}),
    );
    let dir = tempfile::tempdir().unwrap();
    let m = Materializer::new(dir.path()).with_options(small_parts());
    let stats = m
        .materialize(&names_view(), store.values(), Some("1"))
        .unwrap();
    assert!(stats.parts > 5, "several parts: {stats:?}");
    assert_same_as_rebuild(&m, &store).await;

    // Round 1: updates (more rows, fewer rows, now filtered out), deletions, inserts.
    let round1 = vec![
        Change::upsert(patient("p01", "female", &["A", "B", "C", "D"], None)).unwrap(),
        Change::upsert(patient("p05", "male", &[], None)).unwrap(),
        Change::upsert(patient("p08", "male", &["Gone"], Some(false))).unwrap(),
        Change::upsert(patient("p07", "other", &["Back"], Some(true))).unwrap(),
        Change::delete("Patient", "p10"),
        Change::delete("Patient", "p11"),
        Change::delete("Patient", "never-existed"),
        Change::upsert(patient("new1", "female", &["N1", "N2"], None)).unwrap(),
        Change::delete("Observation", "o1"),
    ];
    apply(&mut store, &round1);
    let r = m.refresh(&names_view(), round1, Some("2")).unwrap();
    assert!(
        r.parts_rewritten >= 1 && r.rows_removed > 0 && r.rows_added > 0,
        "{r:?}"
    );
    assert_eq!(r.changes, 8, "the Observation change is not for this view");
    assert_same_as_rebuild(&m, &store).await;
    assert_eq!(
        m.manifest("patient_names")
            .unwrap()
            .high_water_mark
            .as_deref(),
        Some("2")
    );

    // Round 2: the same resource changed several times in one feed (the last wins),
    // deleted then re-created, and a resource inserted in round 1 updated again.
    let round2 = vec![
        Change::upsert(patient("p02", "male", &["X1"], None)).unwrap(),
        Change::upsert(patient("p02", "male", &["X2", "X3"], None)).unwrap(),
        Change::delete("Patient", "p03"),
        Change::upsert(patient("p03", "female", &["Again"], None)).unwrap(),
        Change::upsert(patient("new1", "male", &["N3"], None)).unwrap(),
        Change::delete("Patient", "p04"),
    ];
    apply(&mut store, &round2);
    m.refresh(&names_view(), round2, Some("3")).unwrap();
    assert_same_as_rebuild(&m, &store).await;

    // Round 3: delete everything of one kind, then an empty feed (only moves the mark).
    let round3: Vec<Change> = store
        .keys()
        .filter(|(t, id)| t == "Patient" && id.ends_with('9'))
        .map(|(t, id)| Change::delete(t.clone(), id.clone()))
        .collect();
    apply(&mut store, &round3);
    m.refresh(&names_view(), round3, Some("4")).unwrap();
    assert_same_as_rebuild(&m, &store).await;
    let r = m.refresh(&names_view(), Vec::new(), Some("5")).unwrap();
    assert_eq!((r.changes, r.rows_added, r.rows_removed), (0, 0, 0));
    assert_eq!(
        m.manifest("patient_names")
            .unwrap()
            .high_water_mark
            .as_deref(),
        Some("5")
    );

    // Compaction merges the small parts and changes nothing else.
    let before = m.manifest("patient_names").unwrap().parts.len();
    let bigger = Materializer::new(dir.path()).with_options(MaterializeOptions {
        part_rows: 1000,
        ..Default::default()
    });
    let after = bigger.compact("patient_names").unwrap();
    assert!(after < before, "{after} < {before}");
    assert_eq!(after, 1);
    assert_same_as_rebuild(&m, &store).await;
    // And refreshing after compaction still works.
    let round4 = vec![
        Change::delete("Patient", "p12"),
        Change::upsert(patient("p13", "female", &["Late"], None)).unwrap(),
    ];
    apply(&mut store, &round4);
    m.refresh(&names_view(), round4, None).unwrap();
    assert_same_as_rebuild(&m, &store).await;
}

#[test]
fn refresh_needs_the_same_view_and_a_materialized_table() {
    let dir = tempfile::tempdir().unwrap();
    let m = Materializer::new(dir.path());
    let err = m.refresh(&names_view(), Vec::new(), None).unwrap_err();
    assert!(
        err.is_user_error() && err.to_string().contains("not materialized"),
        "{err}"
    );
    m.materialize(&names_view(), [patient("a", "male", &["A"], None)], None)
        .unwrap();
    let mut other = names_view();
    other["select"][0]["column"][1]["path"] = json!("birthDate");
    let err = m.refresh(&other, Vec::new(), None).unwrap_err();
    assert!(
        err.is_user_error() && err.to_string().contains("another ViewDefinition"),
        "{err}"
    );
}
