//! The text a resource is found by in full-text search (R4 search.html#_text,
//! #_content): its narrative as plain text, and every textual value it holds.

use salus_store::FullText;
use serde_json::Value;

/// Elements whose values are identifiers of things, not text a person would search
/// for (code systems, URLs, references); they stay out of `_content`.
const NOT_TEXT: &[&str] = &[
    "resourceType",
    "id",
    "system",
    "url",
    "reference",
    "profile",
    "fullUrl",
    "versionId",
    "lastUpdated",
    "div",
];

/// Full text of a resource (empty for a non-object).
pub fn extract(resource: &Value) -> FullText {
    let narrative = resource
        .pointer("/text/div")
        .and_then(Value::as_str)
        .map(xhtml_text)
        .unwrap_or_default();
    let mut content = String::new();
    collect(resource, &mut content);
    if !narrative.is_empty() {
        push(&mut content, &narrative);
    }
    FullText { narrative, content }
}

fn push(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(text);
}

fn collect(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => push(out, s),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                if NOT_TEXT.contains(&k.as_str()) || k.starts_with('_') {
                    continue;
                }
                if k == "contained" {
                    continue; // contained resources are found through their container's own text
                }
                if k == "data" && x.is_string() {
                    // SampledData.data (numbers), Attachment/Binary/Signature.data
                    // (base64): not words; a device Observation's samples would be
                    // thousands of tokens.
                    continue;
                }
                collect(x, out);
            }
        }
        _ => {}
    }
}

/// The text of an XHTML fragment: tags dropped (block ends become spaces), the
/// predefined and numeric character references decoded.
pub fn xhtml_text(xhtml: &str) -> String {
    let mut out = String::with_capacity(xhtml.len());
    let mut rest = xhtml;
    while let Some(i) = rest.find(['<', '&']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if rest.starts_with('<') {
            match rest.find('>') {
                Some(end) => {
                    out.push(' ');
                    rest = &rest[end + 1..];
                }
                None => {
                    rest = "";
                }
            }
        } else {
            let end = rest.find(';').filter(|&e| e <= 10);
            let decoded = end.and_then(|e| entity(&rest[1..e]));
            match (end, decoded) {
                (Some(e), Some(c)) => {
                    out.push(c);
                    rest = &rest[e + 1..];
                }
                _ => {
                    out.push('&');
                    rest = &rest[1..];
                }
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn entity(name: &str) -> Option<char> {
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        _ => {
            let n = name.strip_prefix('#')?;
            let code = match n.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => n.parse().ok()?,
            };
            char::from_u32(code)?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn samples_and_base64_are_not_words() {
        let t = extract(&json!({
            "resourceType": "Observation",
            "code": {"text": "Heart rate"},
            "valueSampledData": {"origin": {"value": 0}, "period": 1000, "dimensions": 1,
                "data": "61 62 63 64"},
            "derivedFrom": [{"display": "strip"}]
        }));
        assert!(t.content.contains("Heart rate") && t.content.contains("strip"));
        assert!(!t.content.contains("61 62"), "{:?}", t.content);
        let b = extract(&json!({"resourceType": "DocumentReference",
            "content": [{"attachment": {"title": "Discharge letter", "data": "SGVsbG8="}}]}));
        assert!(b.content.contains("Discharge letter") && !b.content.contains("SGVsbG8"));
    }

    #[test]
    fn narrative_and_content() {
        let t = extract(&json!({
            "resourceType": "Condition", "id": "c1",
            "text": {"status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Heart&#160;failure &amp; <b>edema</b></p></div>"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "84114007", "display": "Heart failure"}],
                "text": "CHF"},
            "subject": {"reference": "Patient/p1", "display": "Ann Zoë"}
        }));
        assert_eq!(t.narrative, "Heart failure & edema");
        for word in [
            "84114007",
            "Heart failure",
            "CHF",
            "Ann Zoë",
            "generated",
            "edema",
        ] {
            assert!(t.content.contains(word), "{word} in {:?}", t.content);
        }
        for absent in ["snomed", "Patient/p1", "xhtml", "Condition", "c1"] {
            assert!(!t.content.contains(absent), "{absent} in {:?}", t.content);
        }
    }

    #[test]
    fn xhtml_text_is_robust() {
        assert_eq!(xhtml_text("a<br/>b"), "a b");
        assert_eq!(xhtml_text("x &unknown; &#x41;"), "x &unknown; A");
        assert_eq!(xhtml_text("unclosed <b"), "unclosed");
        assert_eq!(xhtml_text("&"), "&");
    }
}
