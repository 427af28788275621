//! Unit tests of compilation and evaluation (the conformance suite is in `tests/`).

use crate::{View, ViewError};
use serde_json::{json, Value};

fn compile(v: Value) -> Result<View, ViewError> {
    View::compile(&v)
}

fn rows(view: &Value, resource: &Value) -> Vec<Value> {
    let view = compile(view.clone()).unwrap();
    view.rows(resource)
        .unwrap()
        .iter()
        .map(|r| Value::Object(view.row_object(r)))
        .collect()
}

fn definition_error(v: Value) -> String {
    match compile(v) {
        Err(ViewError::Definition { at, message }) => format!("{at}: {message}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("should not compile"),
    }
}

#[test]
fn view_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<View>();
}

#[test]
fn schema_is_known_up_front() {
    let view = compile(json!({
        "resource": "Patient", "name": "patient_names",
        "select": [
            {"column": [{"name": "id", "path": "id", "type": "id"}]},
            {"forEach": "name", "column": [
                {"name": "given", "path": "given", "collection": true, "type": "string"}],
             "unionAll": [
                {"column": [{"name": "u", "path": "use"}]},
                {"column": [{"name": "u", "path": "text"}]}]}
        ]
    }))
    .unwrap();
    let names: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "given", "u"]);
    assert!(view.columns()[1].collection);
    assert_eq!(view.columns()[0].type_name.as_deref(), Some("id"));
    assert_eq!(view.name(), Some("patient_names"));
    assert_eq!(view.resource_type(), "Patient");
}

#[test]
fn definition_errors_name_the_element() {
    assert!(definition_error(json!({})).starts_with("resource:"));
    assert!(definition_error(json!({"resource": "Patient"})).starts_with("select:"));
    assert!(
        definition_error(json!({"resource": "NotAType", "select": [{}]}))
            .contains("not a FHIR resource type")
    );
    assert!(
        definition_error(json!({"resource": "HumanName", "select": [{}]}))
            .contains("not a FHIR resource type")
    );
    for ok in [
        "Patient",
        "Observation",
        "QuestionnaireResponse",
        "Bundle",
        "Parameters",
    ] {
        let def = json!({"resource": ok, "select": [{"column": [{"name": "id", "path": "id"}]}]});
        assert!(compile(def).is_ok(), "{ok}");
    }
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"column": [{"name": "a", "path": "id"}, {"name": "b", "path": "name.("}]}]}));
    assert!(e.starts_with("select[0].column[1].path:"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"column": [{"name": "a", "path": "id"}]}, {"column": [{"name": "a", "path": "id"}]}]}));
    assert!(e.contains("more than once"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"column": [{"name": "1a", "path": "id"}]}]}));
    assert!(e.contains("must match"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"column": [{"name": "a", "path": "name.given1"}]}]}));
    assert!(e.contains("invalid path"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"forEach": "name", "column": [{"name": "a", "path": "given1"}]}]}));
    assert!(e.starts_with("select[0].column[0].path"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"column": [{"name": "a", "path": "%nope"}]}]}));
    assert!(e.contains("not a constant"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"forEach": "name", "forEachOrNull": "name"}]}));
    assert!(e.contains("only one of"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"unionAll": [{"column": [{"name": "a", "path": "id"}]},
                                 {"column": [{"name": "b", "path": "id"}]}]}]}));
    assert!(e.starts_with("select[0].unionAll[1]"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "constant": [{"name": "x", "valueString": "a", "valueInteger": 1}],
        "select": [{"column": [{"name": "a", "path": "%x"}]}]}));
    assert!(e.contains("exactly one"), "{e}");
    let e = definition_error(json!({"resource": "Patient",
        "select": [{"column": [{"name": "a", "path": "id", "collection": "yes"}]}]}));
    assert!(e.contains("boolean"), "{e}");
}

#[test]
fn run_errors() {
    let view = compile(json!({"resource": "Patient",
        "select": [{"column": [{"name": "g", "path": "name.given"}]}]}))
    .unwrap();
    let p = json!({"resourceType": "Patient", "id": "x", "name": [{"given": ["a", "b"]}]});
    match view.rows(&p) {
        Err(ViewError::Evaluation { resource, at, .. }) => {
            assert_eq!(resource, "Patient/x");
            assert_eq!(at, "select[0].column[0].path");
        }
        other => panic!("{other:?}"),
    }
    let view = compile(
        json!({"resource": "Patient", "where": [{"path": "name.given"}],
        "select": [{"column": [{"name": "id", "path": "id"}]}]}),
    )
    .unwrap();
    assert!(view.rows(&p).is_err());
    assert!(view.matches(&p).is_err());
}

#[test]
fn other_resource_types_give_no_rows() {
    let view = compile(json!({"resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id"}]}]}))
    .unwrap();
    assert!(view
        .rows(&json!({"resourceType": "Observation", "id": "o"}))
        .unwrap()
        .is_empty());
    assert!(view.rows(&json!("not a resource")).unwrap().is_empty());
    assert!(!view
        .matches(&json!({"resourceType": "Observation"}))
        .unwrap());
}

#[test]
fn nested_foreach_union_and_row_index() {
    let view = json!({"resource": "Patient", "select": [
        {"column": [{"name": "id", "path": "id"}]},
        {"forEachOrNull": "contact", "column": [{"name": "i", "path": "%rowIndex"}],
         "unionAll": [
            {"forEach": "telecom", "column": [{"name": "v", "path": "value"}, {"name": "j", "path": "%rowIndex"}]},
            {"column": [{"name": "v", "path": "name.family"}, {"name": "j", "path": "%rowIndex"}]}
         ]}
    ]});
    let p = json!({"resourceType": "Patient", "id": "p",
        "contact": [{"name": {"family": "F"}, "telecom": [{"value": "t1"}, {"value": "t2"}]}]});
    assert_eq!(
        rows(&view, &p),
        vec![
            json!({"id": "p", "i": 0, "v": "t1", "j": 0}),
            json!({"id": "p", "i": 0, "v": "t2", "j": 1}),
            json!({"id": "p", "i": 0, "v": "F", "j": 0}),
        ]
    );
    let empty = json!({"resourceType": "Patient", "id": "q"});
    assert_eq!(
        rows(&view, &empty),
        vec![json!({"id": "q", "i": 0, "v": null, "j": 0})]
    );
}

#[test]
fn repeat_is_depth_first_and_bounded() {
    let view = json!({"resource": "QuestionnaireResponse", "select": [
        {"repeat": ["item", "answer.item"], "column": [
            {"name": "link", "path": "linkId"}, {"name": "i", "path": "%rowIndex"}]}]});
    let qr = json!({"resourceType": "QuestionnaireResponse", "item": [
        {"linkId": "1", "item": [{"linkId": "1.1", "answer": [{"item": [{"linkId": "1.1.1"}]}]}]},
        {"linkId": "2"}]});
    let got: Vec<Value> = rows(&view, &qr)
        .into_iter()
        .map(|r| r["link"].clone())
        .collect();
    assert_eq!(got, [json!("1"), json!("1.1"), json!("1.1.1"), json!("2")]);
    let looping = compile(json!({"resource": "Patient",
        "select": [{"repeat": ["$this"], "column": [{"name": "id", "path": "id"}]}]}))
    .unwrap();
    assert!(looping
        .rows(&json!({"resourceType": "Patient", "id": "p"}))
        .is_err());
}

#[test]
fn constants_resource_and_reference_keys() {
    let view = json!({"resource": "Observation",
        "constant": [{"name": "sys", "valueUri": "http://loinc.org"}],
        "select": [{"column": [
            {"name": "id", "path": "getResourceKey()"},
            {"name": "patient", "path": "subject.getReferenceKey(Patient)"},
            {"name": "group", "path": "subject.getReferenceKey(Group)"},
            {"name": "loinc", "path": "code.coding.where(system = %sys).code.first()"},
            {"name": "rt", "path": "%resource.resourceType"}]}]});
    let obs = json!({"resourceType": "Observation", "id": "o1",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}]}});
    assert_eq!(
        rows(&view, &obs),
        vec![json!({"id": "o1", "patient": "p1", "group": null,
        "loinc": "1-8", "rt": "Observation"})]
    );
}

#[test]
fn values_keep_their_json_form() {
    let view = json!({"resource": "Observation", "select": [{"column": [
        {"name": "v", "path": "value.ofType(Quantity).value"},
        {"name": "q", "path": "value.ofType(Quantity)"},
        {"name": "sum", "path": "value.ofType(Quantity).value + 1"}]}]});
    let obs: Value = serde_json::from_str(
        r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.50, "unit": "mg"}}"#,
    )
    .unwrap();
    let r = rows(&view, &obs);
    assert_eq!(r[0]["v"].to_string(), "1.50");
    assert_eq!(r[0]["q"].to_string(), r#"{"value":1.50,"unit":"mg"}"#);
    assert_eq!(r[0]["sum"].to_string(), "2.50");
}

#[test]
fn lenient_compilation_skips_path_checks() {
    let def = json!({"resource": "Patient",
        "select": [{"column": [{"name": "a", "path": "name.given1"}]}]});
    assert!(View::compile(&def).is_err());
    let view = View::compile_lenient(&def).unwrap();
    let p = json!({"resourceType": "Patient", "name": [{"given": ["x"]}]});
    assert_eq!(view.rows(&p).unwrap(), vec![vec![Value::Null]]);
}

#[test]
fn deep_nesting_is_rejected_without_overflow() {
    let mut select = json!({"column": [{"name": "id", "path": "id"}]});
    for _ in 0..200 {
        select = json!({"select": [select]});
    }
    let def = json!({"resource": "Patient", "select": [select]});
    let e = definition_error(def);
    assert!(e.contains("nest more than"), "{e}");
    // Within the limit it works.
    let mut select = json!({"column": [{"name": "id", "path": "id"}]});
    for _ in 0..40 {
        select = json!({"forEach": "$this", "select": [select]});
    }
    let view = compile(json!({"resource": "Patient", "select": [select]})).unwrap();
    let rows = view
        .rows(&json!({"resourceType": "Patient", "id": "p"}))
        .unwrap();
    assert_eq!(rows, vec![vec![json!("p")]]);
}

#[test]
fn arbitrary_json_never_panics() {
    let junk = [
        json!(null),
        json!([]),
        json!("x"),
        json!({"resource": 1}),
        json!({"resource": "Patient", "select": {}}),
        json!({"resource": "Patient", "select": [1]}),
        json!({"resource": "Patient", "select": [{"column": [1]}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a"}]}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": ""}]}]}),
        json!({"resource": "Patient", "select": [{"repeat": []}]}),
        json!({"resource": "Patient", "select": [{"repeat": [1]}]}),
        json!({"resource": "Patient", "select": [{"unionAll": []}]}),
        json!({"resource": "Patient", "select": [{"unionAll": [1]}]}),
        json!({"resource": "Patient", "where": [{}], "select": [{}]}),
        json!({"resource": "Patient", "where": {}, "select": [{}]}),
        json!({"resource": "Patient", "constant": [{"name": "a", "valueFoo": 1}], "select": [{}]}),
        json!({"resource": "Patient", "constant": {}, "select": [{}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "%'é"}]}]}),
        json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "getReferenceKey(é)"}]}]}),
    ];
    for def in junk {
        assert!(View::compile(&def).is_err(), "{def}");
    }
    // Odd resources on a valid view.
    let view = compile(json!({"resource": "Patient", "select": [
        {"column": [{"name": "id", "path": "id"}, {"name": "n", "path": "name.given", "collection": true}]},
        {"forEachOrNull": "name", "column": [{"name": "f", "path": "family"}]}]}))
    .unwrap();
    for r in [
        json!({"resourceType": "Patient", "id": 5, "name": "x"}),
        json!({"resourceType": "Patient", "name": [1, null, {"family": ["a"]}]}),
        json!({"resourceType": "Patient", "name": {"given": {}}}),
    ] {
        let _ = view.rows(&r);
    }
}

#[test]
fn rows_iter_is_lazy_and_continues_after_errors() {
    let view = compile(json!({"resource": "Patient",
        "select": [{"forEach": "name", "column": [{"name": "f", "path": "family"}]}]}))
    .unwrap();
    let resources = vec![
        json!({"resourceType": "Patient", "name": [{"family": "a"}, {"family": "b"}]}),
        json!({"resourceType": "Patient", "name": [{"family": ["x", "y"]}]}),
        json!({"resourceType": "Observation"}),
        json!({"resourceType": "Patient", "name": [{"family": "c"}]}),
    ];
    let got: Vec<Result<Vec<Value>, ViewError>> = view.rows_iter(&resources).collect();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].as_ref().unwrap(), &vec![json!("a")]);
    assert_eq!(got[1].as_ref().unwrap(), &vec![json!("b")]);
    assert!(got[2].is_err());
    assert_eq!(got[3].as_ref().unwrap(), &vec![json!("c")]);
}
