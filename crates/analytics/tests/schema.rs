//! SQL-on-FHIR column types → Arrow schema, and values → arrays.

use salus_analytics::arrow::array::{Array, AsArray};
use salus_analytics::arrow::datatypes::{DataType, Float64Type, Int64Type};
use salus_analytics::{view_batches, view_schema};
use salus_views::View;
use serde_json::json;

fn view() -> View {
    View::compile(&json!({
        "resource": "Observation", "name": "obs",
        "select": [{"column": [
            {"name": "id", "path": "id", "type": "id"},
            {"name": "status", "path": "status", "type": "code"},
            {"name": "subject", "path": "subject.reference", "type": "string"},
            {"name": "effective", "path": "effective.ofType(dateTime)", "type": "dateTime"},
            {"name": "issued", "path": "issued", "type": "instant"},
            {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
            {"name": "value_int", "path": "value.ofType(integer)", "type": "integer"},
            {"name": "flag", "path": "value.ofType(boolean)", "type": "boolean"},
            {"name": "codes", "path": "code.coding.code", "type": "code", "collection": true},
            {"name": "coding", "path": "code.coding.first()"},
            {"name": "ranks", "path": "component.value.ofType(integer)", "type": "positiveInt", "collection": true}
        ]}]
    }))
    .unwrap()
}

#[test]
fn types_map_to_arrow() {
    let schema = view_schema(&view());
    let types: Vec<(&str, DataType)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().clone()))
        .collect();
    let list = |t: DataType| {
        DataType::List(std::sync::Arc::new(
            salus_analytics::arrow::datatypes::Field::new_list_field(t, true),
        ))
    };
    assert_eq!(
        types,
        vec![
            ("id", DataType::Utf8),
            ("status", DataType::Utf8),
            ("subject", DataType::Utf8),
            ("effective", DataType::Utf8),
            ("issued", DataType::Utf8),
            ("value", DataType::Float64),
            ("value_int", DataType::Int64),
            ("flag", DataType::Boolean),
            ("codes", list(DataType::Utf8)),
            ("coding", DataType::Utf8),
            ("ranks", list(DataType::Int64)),
        ]
    );
    assert!(schema.fields().iter().all(|f| f.is_nullable()));
    assert_eq!(
        schema
            .field(3)
            .metadata()
            .get("fhir.type")
            .map(String::as_str),
        Some("dateTime")
    );
}

#[test]
fn values_keep_their_text_and_numbers() {
    let obs = json!({
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}, {"code": "x"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-05",
        "issued": "2024-05-02T10:00:00.000+02:00",
        "valueQuantity": {"value": 9.50, "unit": "%"}
    });
    let batches = view_batches(&view(), [&obs], 8192).unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.num_rows(), 1);
    assert_eq!(
        b.column(3).as_string::<i32>().value(0),
        "2024-05",
        "partial date kept"
    );
    assert_eq!(
        b.column(4).as_string::<i32>().value(0),
        "2024-05-02T10:00:00.000+02:00"
    );
    assert_eq!(b.column(5).as_primitive::<Float64Type>().value(0), 9.5);
    assert!(b.column(6).is_null(0));
    assert!(b.column(7).is_null(0));
    let codes = b.column(8).as_list::<i32>().value(0);
    let codes = codes.as_string::<i32>();
    assert_eq!((codes.value(0), codes.value(1)), ("4548-4", "x"));
    let coding: serde_json::Value =
        serde_json::from_str(b.column(9).as_string::<i32>().value(0)).unwrap();
    assert_eq!(
        coding["code"], "4548-4",
        "untyped complex value is JSON text"
    );
    assert_eq!(b.column(10).as_list::<i32>().value(0).len(), 0);
    let _ = b
        .column(10)
        .as_list::<i32>()
        .value(0)
        .as_primitive::<Int64Type>()
        .len();
}

#[test]
fn batches_split_at_the_requested_size() {
    let v = View::compile(&json!({"resource": "Patient", "name": "p",
        "select": [{"column": [{"name": "id", "path": "id", "type": "id"}]}]}))
    .unwrap();
    let pats: Vec<_> = (0..20_000)
        .map(|i| json!({"resourceType": "Patient", "id": format!("p{i}")}))
        .collect();
    let batches = view_batches(&v, &pats, 8192).unwrap();
    let sizes: Vec<usize> = batches.iter().map(|b| b.num_rows()).collect();
    assert_eq!(sizes, vec![8192, 8192, 3616]);
}

#[test]
fn a_mistyped_value_is_a_user_error_naming_the_column() {
    let v = View::compile(&json!({"resource": "Patient", "name": "p",
        "select": [{"column": [{"name": "gender", "path": "gender", "type": "integer"}]}]}))
    .unwrap();
    let err = view_batches(
        &v,
        [json!({"resourceType": "Patient", "gender": "male"})],
        10,
    )
    .unwrap_err();
    assert!(err.is_user_error());
    assert!(err.to_string().contains("'gender'"), "{err}");
}
