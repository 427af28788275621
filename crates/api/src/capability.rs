//! The CapabilityStatement at `/metadata`: what this server really supports
//! (R4 capabilitystatement.html). Built from the same tables the server runs on.

use salus_fhir::defs;
use serde_json::{json, Value};

pub fn capability_statement(base: &str, backend: &str) -> Value {
    let resources: Vec<Value> = defs::resource_types()
        .iter()
        .map(|t| {
            // Every parameter this server indexes (special ones, `near`, are not).
            let mut params = vec![];
            let mut includes = vec![];
            for p in defs::search_params(t) {
                let supported = matches!(p.code.as_str(), "_id" | "_lastUpdated")
                    || (salus_search::parse::index_kind(p.kind).is_some()
                        && p.expression.is_some())
                    || salus_search::parse::composite_value_def(p).is_some();
                if !supported || matches!(p.code.as_str(), "_text" | "_content") {
                    continue;
                }
                params.push(json!({"name": p.code, "type": p.kind.as_str(), "definition": p.url}));
                if p.kind == defs::SearchParamType::Reference {
                    includes.push(format!("{t}:{}", p.code));
                }
            }
            includes.push("*".to_string());
            json!({
                "type": t,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "patch"},
                    {"code": "delete"}, {"code": "history-instance"}, {"code": "history-type"},
                    {"code": "create"}, {"code": "search-type"}
                ],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": params,
                "searchInclude": includes,
                "searchRevInclude": ["*"],
                "operation": operations(t)
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "Salus",
        "kind": "instance",
        "software": {"name": "Salus", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": format!("Salus FHIR server ({backend} storage)"), "url": base},
        "fhirVersion": defs::FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [
                {"code": "transaction"}, {"code": "batch"}, {"code": "history-system"},
                {"code": "search-system"}
            ],
            // Bulk Data IG 2.0 (docs/bulk.md) and the care-manager worklist (docs/scheduling.md).
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "import", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import"},
                {"name": "worklist", "definition": "https://salus.dev/fhir/OperationDefinition/worklist"}
            ]
        }]
    })
}

/// With analytics on (docs/analytics.md): `$sql` and `$insights` on the system,
/// `$evaluate-measure` on `Measure`.
pub fn add_analytics(statement: &mut Value) {
    let Some(rest) = statement.pointer_mut("/rest/0") else {
        return;
    };
    if let Some(ops) = rest.get_mut("operation").and_then(Value::as_array_mut) {
        for name in ["sql", "insights"] {
            ops.push(json!({"name": name,
                "definition": format!("https://salus.dev/fhir/OperationDefinition/{name}")}));
        }
    }
    let measure = rest
        .get_mut("resource")
        .and_then(Value::as_array_mut)
        .and_then(|rs| rs.iter_mut().find(|r| r["type"] == "Measure"));
    if let Some(ops) = measure
        .and_then(|m| m.get_mut("operation"))
        .and_then(Value::as_array_mut)
    {
        ops.push(json!({"name": "evaluate-measure",
            "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"}));
    }
}

/// The operations of one resource type: `$validate` everywhere, bulk data and
/// `$everything` (docs/bulk.md), scheduling (docs/scheduling.md).
fn operations(rtype: &str) -> Vec<Value> {
    let mut ops = vec![
        json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}),
    ];
    match rtype {
        "Patient" => {
            ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}));
            ops.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}));
            ops.push(json!({"name": "purge", "definition": "https://salus.dev/fhir/OperationDefinition/Patient-purge"}));
        }
        "Group" => ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"})),
        _ => {}
    }
    let extra: &[&str] = match rtype {
        "Appointment" => &[
            "find",
            "hold",
            "book",
            "waitlist",
            "cancel",
            "reschedule",
            "set-status",
        ],
        "Schedule" => &["set-availability"],
        "Patient" | "Practitioner" | "PractitionerRole" => &["ics"],
        _ => &[],
    };
    for name in extra {
        ops.push(json!({
            "name": name,
            "definition": format!("https://salus.dev/fhir/OperationDefinition/{rtype}-{name}")
        }));
    }
    ops
}
