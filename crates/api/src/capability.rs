//! The CapabilityStatement at `/metadata`: what this server really supports
//! (R4 capabilitystatement.html). Built from the same tables the server runs on.

use salus_fhir::defs;
use serde_json::{json, Value};

pub fn capability_statement(base: &str, backend: &str) -> Value {
    let resources: Vec<Value> = defs::resource_types()
        .iter()
        .map(|t| {
            let mut params = vec![
                json!({"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"}),
                json!({"name": "_lastUpdated", "type": "date", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"}),
            ];
            if let Some(p) = defs::search_param(t, "identifier") {
                params.push(json!({"name": "identifier", "type": "token", "definition": p.url}));
            }
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
                "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}]
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
                {"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}
            ]
        }]
    })
}
