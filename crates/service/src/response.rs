//! Building response Bundles and entries (searchset, history, batch/transaction entries).

use crate::error::status_line;
use crate::shape;
use crate::time;
use crate::Return;
use crate::SearchResult;
use salus_search::parse::encode_page;
use salus_store::Page;
use salus_store::{HistoryPage, VersionRecord};
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

/// Percent-encode query pairs (`a=b&c=d`).
pub fn encode_pairs(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// One entry of a searchset Bundle, before rendering.
enum SearchEntry<'a> {
    /// A stored resource (`search.mode` match or include), served as stored unless
    /// `_summary`/`_elements` shape it.
    Stored {
        full_url: String,
        record: &'a VersionRecord,
        mode: &'static str,
    },
    /// An entry built here (a contained match, the outcome of ignored parameters).
    Built(Value),
}

/// The Bundle without its entries, and the entries (R4 search.html#return,
/// bundle.html#searchset): matches, included resources (`search.mode=include`), an
/// OperationOutcome entry for ignored parameters, and `self`/`first`/`previous`/`next`/
/// `last` links built from keyset cursors.
fn searchset_parts<'a>(
    base: &str,
    path: &str,
    result: &'a SearchResult,
) -> (Map<String, Value>, Vec<SearchEntry<'a>>) {
    let plan = &result.plan;
    let page = &result.page;
    let q = &plan.query;
    let link = |p: Option<&Page>| {
        let mut pairs: Vec<(String, String)> = plan
            .applied
            .iter()
            .filter(|(k, _)| k != "_offset")
            .cloned()
            .collect();
        if let Some(p) = p {
            let token = encode_page(p);
            if !token.is_empty() {
                pairs.push(("_page".into(), token));
            }
        }
        if !pairs.iter().any(|(k, _)| k == "_count") {
            pairs.push(("_count".into(), q.count.to_string()));
        }
        let sep = if path.is_empty() { "" } else { "/" };
        format!("{base}{sep}{path}?{}", encode_pairs(&pairs))
    };
    let mut links = vec![json!({"relation": "self", "url": link(Some(&q.page))})];
    if q.count > 0 {
        links.push(json!({"relation": "first", "url": link(None)}));
        if page.before {
            if let Some(c) = &page.first_cursor {
                links.push(
                    json!({"relation": "previous", "url": link(Some(&Page::Before(c.clone())))}),
                );
            }
        }
        if page.more {
            if let Some(c) = &page.last_cursor {
                links.push(json!({"relation": "next", "url": link(Some(&Page::After(c.clone())))}));
            }
        }
        links.push(json!({"relation": "last", "url": link(Some(&Page::Last))}));
    }
    let stored = |r: &'a VersionRecord, mode: &'static str| SearchEntry::Stored {
        full_url: format!("{base}/{}/{}", r.rtype, r.id),
        record: r,
        mode,
    };
    // `_containedType=contained` (R4 search.html#contained): the matched contained
    // resource itself, addressed inside its container.
    let contained_entry = |r: &VersionRecord, cid: &str| {
        let container = body_value(r);
        let mut res = container
            .get("contained")
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter()
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(cid))
            })
            .cloned()
            .unwrap_or(Value::Null);
        shape::apply(&mut res, plan.summary.as_deref(), plan.elements.as_deref());
        SearchEntry::Built(json!({
            "fullUrl": format!("{base}/{}/{}#{cid}", r.rtype, r.id),
            "resource": res,
            "search": {"mode": "match"}
        }))
    };
    let mut entries: Vec<SearchEntry<'a>> = page
        .entries
        .iter()
        .enumerate()
        .map(
            |(i, r)| match page.contained_ids.get(i).and_then(Option::as_deref) {
                Some(cid) => contained_entry(r, cid),
                None => stored(r, "match"),
            },
        )
        .collect();
    entries.extend(result.included.iter().map(|r| stored(r, "include")));
    if !plan.ignored.is_empty() {
        let issues: Vec<salus_fhir::Issue> = plan
            .ignored
            .iter()
            .map(|(k, why)| {
                salus_fhir::Issue::warning(
                    salus_fhir::IssueCode::NotSupported,
                    format!("parameter '{k}' was ignored: {why}"),
                )
            })
            .collect();
        entries.push(SearchEntry::Built(json!({
            "resource": salus_fhir::issue::operation_outcome(&issues),
            "search": {"mode": "outcome"}
        })));
    }
    let mut b = Map::new();
    b.insert("resourceType".into(), "Bundle".into());
    b.insert("type".into(), "searchset".into());
    if let Some(t) = page.total {
        b.insert("total".into(), json!(t));
    }
    b.insert("link".into(), Value::Array(links));
    (b, entries)
}

/// Whether the Bundle carries an `entry` array (`_summary=count` leaves an empty one out).
fn with_entries(result: &SearchResult, entries: &[SearchEntry<'_>]) -> bool {
    result.plan.summary.as_deref() != Some("count") || !entries.is_empty()
}

/// A `searchset` Bundle for a search page. `path` is what the search was made on
/// (`Patient`, `Patient/1/Observation`, or empty for the base).
pub fn searchset(base: &str, path: &str, result: &SearchResult) -> Value {
    let plan = &result.plan;
    let (mut b, entries) = searchset_parts(base, path, result);
    if with_entries(result, &entries) {
        let entries = entries
            .into_iter()
            .map(|e| match e {
                SearchEntry::Stored {
                    full_url,
                    record,
                    mode,
                } => {
                    let mut res = body_value(record);
                    shape::apply(&mut res, plan.summary.as_deref(), plan.elements.as_deref());
                    json!({"fullUrl": full_url, "resource": res, "search": {"mode": mode}})
                }
                SearchEntry::Built(v) => v,
            })
            .collect();
        b.insert("entry".into(), Value::Array(entries));
    }
    Value::Object(b)
}

/// [`searchset`] as compact JSON text. Without `_summary`/`_elements`, stored resources
/// are copied in as stored — no parse and re-serialisation per resource, which is most
/// of the cost of answering a search that returns many resources. The text equals
/// `serde_json::to_string(&searchset(..))`.
pub fn searchset_text(base: &str, path: &str, result: &SearchResult) -> String {
    let plan = &result.plan;
    if plan.summary.is_some() || plan.elements.is_some() {
        return searchset(base, path, result).to_string();
    }
    let (b, entries) = searchset_parts(base, path, result);
    let mut out = Value::Object(b).to_string();
    if !with_entries(result, &entries) {
        return out;
    }
    out.pop(); // the frame's closing brace
    out.push_str(",\"entry\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match e {
            SearchEntry::Stored {
                full_url,
                record,
                mode,
            } => {
                out.push_str("{\"fullUrl\":");
                out.push_str(&Value::String(full_url.clone()).to_string());
                out.push_str(",\"resource\":");
                out.push_str(record.body.as_deref().unwrap_or("null"));
                out.push_str(",\"search\":{\"mode\":\"");
                out.push_str(mode);
                out.push_str("\"}}");
            }
            SearchEntry::Built(v) => out.push_str(&v.to_string()),
        }
    }
    out.push_str("]}");
    out
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
