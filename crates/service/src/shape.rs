//! Response shaping: `_summary` and `_elements` (FHIR R4 search.html#summary,
//! search.html#elements). Shaped resources are tagged `SUBSETTED`.

use serde_json::{json, Value};

/// Elements always kept by `_elements` and `_summary=text`.
const MANDATORY: &[&str] = &["resourceType", "id", "meta"];

fn mark_subsetted(resource: &mut Value) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        let tags = m.entry("tag").or_insert_with(|| json!([]));
        if let Some(arr) = tags.as_array_mut() {
            arr.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "subsetted"
            }));
        }
    }
}

/// Whether a top-level JSON property of a resource is in the `_summary=true` view.
fn is_summary(rtype: &str, key: &str) -> bool {
    let name = key.strip_prefix('_').unwrap_or(key);
    salus_fhir::defs::element(rtype, name).is_some_and(|e| e.is_summary)
}

/// Apply `_summary` (`text`, `data`, `false`; `true` keeps summary elements) and
/// `_elements` to a resource in place.
pub fn apply(resource: &mut Value, summary: Option<&str>, elements: Option<&[String]>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    match summary {
        Some("text") => {
            obj.retain(|k, _| MANDATORY.contains(&k.as_str()) || k == "text");
            mark_subsetted(resource);
            return;
        }
        Some("data") => {
            obj.shift_remove("text");
            mark_subsetted(resource);
            return;
        }
        Some("true") => {
            let rtype = obj
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            obj.retain(|k, _| MANDATORY.contains(&k.as_str()) || is_summary(&rtype, k));
            mark_subsetted(resource);
            return;
        }
        _ => {}
    }
    if let Some(els) = elements {
        obj.retain(|k, _| {
            MANDATORY.contains(&k.as_str())
                || els
                    .iter()
                    .any(|e| e == k || k.strip_prefix('_') == Some(e.as_str()))
        });
        mark_subsetted(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_keep_mandatory_and_listed() {
        let mut r = json!({"resourceType":"Patient","id":"1","name":[{"family":"X"}],"gender":"male","text":{"status":"generated","div":"<div/>"}});
        apply(&mut r, None, Some(&["gender".to_string()]));
        assert_eq!(r["gender"], "male");
        assert!(r.get("name").is_none());
        assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    }

    #[test]
    fn elements_keep_a_primitive_s_extension() {
        let mut r = json!({"resourceType":"Patient","birthDate":"1970","_birthDate":{"id":"b"},"_gender":{"id":"g"}});
        apply(&mut r, None, Some(&["birthDate".to_string()]));
        assert_eq!(r["_birthDate"]["id"], "b");
        assert!(r.get("_gender").is_none());
    }

    #[test]
    fn summary_text_and_data() {
        let mut r = json!({"resourceType":"Patient","id":"1","gender":"male","text":{"status":"generated","div":"<div/>"}});
        let mut d = r.clone();
        apply(&mut r, Some("text"), None);
        assert!(r.get("gender").is_none() && r.get("text").is_some());
        apply(&mut d, Some("data"), None);
        assert!(d.get("gender").is_some() && d.get("text").is_none());
    }
}
