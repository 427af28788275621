//! Building response Bundles and entries (searchset, history, batch/transaction entries).

use crate::error::status_line;
use crate::query::SearchRequest;
use crate::shape;
use crate::time;
use crate::Return;
use salus_store::{HistoryPage, SearchPage, VersionRecord};
use serde_json::{json, Map, Value};

/// Parse a stored resource body.
pub fn body_value(r: &VersionRecord) -> Value {
    r.body
        .as_deref()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null)
}

/// `W/"3"`.
pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// A Bundle entry describing the result of a write (or a read inside a Bundle).
pub fn entry_for_write(r: &VersionRecord, status: u16, ret: Return, base: &str) -> Value {
    let mut entry = Map::new();
    entry.insert(
        "fullUrl".into(),
        Value::String(format!("{base}/{}/{}", r.rtype, r.id)),
    );
    match ret {
        Return::Representation => {
            entry.insert("resource".into(), body_value(r));
        }
        Return::Minimal => {}
        Return::OperationOutcome => {}
    }
    let mut response = json!({
        "status": status_line(status),
        "location": format!("{}/{}/_history/{}", r.rtype, r.id, r.version),
        "etag": etag(r.version),
        "lastModified": time::format_instant(r.last_updated),
    });
    if ret == Return::OperationOutcome {
        response["outcome"] = salus_fhir::issue::operation_outcome(&[]);
    }
    entry.insert("response".into(), response);
    Value::Object(entry)
}

fn encode_pairs(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A `searchset` Bundle for a search page, with `self`/`next`/`previous` links.
pub fn searchset(base: &str, req: &SearchRequest, page: &SearchPage) -> Value {
    let q = &req.query;
    let link = |offset: usize| {
        let mut pairs: Vec<(String, String)> = req
            .applied
            .iter()
            .filter(|(k, _)| k != "_offset")
            .cloned()
            .collect();
        if offset > 0 {
            pairs.push(("_offset".into(), offset.to_string()));
        }
        if !pairs.iter().any(|(k, _)| k == "_count") {
            pairs.push(("_count".into(), q.count.to_string()));
        }
        format!("{base}/{}?{}", q.rtype, encode_pairs(&pairs))
    };
    let mut links = vec![json!({"relation": "self", "url": link(q.offset)})];
    if page.more {
        links.push(json!({"relation": "next", "url": link(q.offset + q.count)}));
    }
    if q.offset > 0 {
        links.push(json!({"relation": "previous", "url": link(q.offset.saturating_sub(q.count))}));
    }
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|r| {
            let mut res = body_value(r);
            shape::apply(&mut res, req.summary.as_deref(), req.elements.as_deref());
            json!({
                "fullUrl": format!("{base}/{}/{}", r.rtype, r.id),
                "resource": res,
                "search": {"mode": "match"}
            })
        })
        .collect();
    let mut b = Map::new();
    b.insert("resourceType".into(), "Bundle".into());
    b.insert("type".into(), "searchset".into());
    if let Some(t) = page.total {
        b.insert("total".into(), json!(t));
    }
    b.insert("link".into(), Value::Array(links));
    if req.summary.as_deref() != Some("count") {
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}

/// A `history` Bundle. `self_url` is the history URL without query.
pub fn history_bundle(
    base: &str,
    self_path: &str,
    pairs: &[(String, String)],
    page: &HistoryPage,
) -> Value {
    let keep: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_cursor" && k != "_format" && k != "_pretty")
        .cloned()
        .collect();
    let mut links = vec![
        json!({"relation": "self", "url": format!("{base}/{self_path}{}", if pairs.is_empty() { String::new() } else { format!("?{}", encode_pairs(pairs)) })}),
    ];
    if let Some(next) = page.next {
        let mut p = keep.clone();
        p.push(("_cursor".into(), next.to_string()));
        links.push(
            json!({"relation": "next", "url": format!("{base}/{self_path}?{}", encode_pairs(&p))}),
        );
    }
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|r| {
            let mut e = Map::new();
            e.insert(
                "fullUrl".into(),
                format!("{base}/{}/{}", r.rtype, r.id).into(),
            );
            if !r.is_deleted() {
                e.insert("resource".into(), body_value(r));
            }
            let url = match r.method {
                salus_store::Method::Post => r.rtype.clone(),
                _ => format!("{}/{}", r.rtype, r.id),
            };
            e.insert(
                "request".into(),
                json!({"method": r.method.as_str(), "url": url}),
            );
            let status = match r.method {
                salus_store::Method::Post => 201,
                salus_store::Method::Delete => 204,
                _ if r.version == 1 => 201,
                _ => 200,
            };
            e.insert(
                "response".into(),
                json!({
                    "status": status_line(status),
                    "etag": etag(r.version),
                    "lastModified": time::format_instant(r.last_updated),
                }),
            );
            Value::Object(e)
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "type": "history",
        "total": page.total,
        "link": links,
        "entry": entries,
    })
}
