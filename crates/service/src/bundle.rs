//! Batch and transaction Bundles (FHIR R4 http.html#transaction).
//!
//! A transaction is all-or-nothing: every entry runs inside one store transaction, in
//! the order the specification prescribes (DELETE, POST, PUT/PATCH, GET/HEAD). The
//! DELETEs run first; then `fullUrl` identities (`urn:uuid:…`), `ifNoneExist`,
//! conditional updates and conditional references (`Patient?identifier=…`) are resolved
//! against what is left and rewritten in every entry's resource before the rest runs.
//! A batch runs each entry on its own and reports a status per entry.

use crate::error::status_line;
use crate::query::parse_pairs;
use crate::response::{entry_for_write, searchset};
use crate::service::{
    apply_patch, check_body, ensure_type, new_id, tx_delete, tx_match, tx_write, tx_write_known,
    valid_id,
};
use crate::{FhirError, FhirService, Result, Return};
use base64::Engine;
use salus_fhir::{defs, Issue, IssueCode};
use salus_store::{Method, StoreTx, VersionRecord};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verb {
    Delete,
    Post,
    Put,
    Patch,
    Get,
    Head,
}

/// A transaction Bundle parsed and validated, ready to apply
/// ([`FhirService::prepare_bundle`]).
#[derive(Debug)]
pub struct PreparedTransaction {
    entries: Vec<Entry>,
}

impl PreparedTransaction {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One parsed `Bundle.entry`.
#[derive(Debug)]
struct Entry {
    index: usize,
    full_url: Option<String>,
    verb: Verb,
    rtype: String,
    id: Option<String>,
    version: Option<String>,
    /// Search criteria for conditional update/delete or a GET search.
    query: Option<String>,
    resource: Option<Value>,
    if_match: Option<u64>,
    if_none_exist: Option<String>,
}

/// Parse `W/"3"` / `"3"` / `3`.
pub fn parse_etag(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    s.trim_matches('"').parse().ok()
}

fn entry_err(index: usize, msg: impl Into<String>) -> FhirError {
    FhirError::Invalid(vec![
        Issue::error(IssueCode::Invalid, msg).at(format!("Bundle.entry[{index}]"))
    ])
}

/// `(type, id, version, query)` of an entry's request URL.
type ParsedUrl = (String, Option<String>, Option<String>, Option<String>);

/// Split a request URL (relative, or absolute against any base) into type, id,
/// version and query.
fn parse_url(index: usize, url: &str) -> Result<ParsedUrl> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let start = segments
        .iter()
        .position(|s| defs::is_resource_type(s))
        .ok_or_else(|| {
            entry_err(
                index,
                format!("request.url '{url}' does not name a known resource type"),
            )
        })?;
    let rest = &segments[start..];
    let rtype = rest[0].to_string();
    match rest {
        [_] => Ok((rtype, None, None, query)),
        [_, id] => Ok((rtype, Some(id.to_string()), None, query)),
        [_, id, "_history", v] => Ok((rtype, Some(id.to_string()), Some(v.to_string()), query)),
        _ => Err(entry_err(
            index,
            format!("request.url '{url}' is not supported in a Bundle entry"),
        )),
    }
}

fn parse_entry(index: usize, raw: &mut Value) -> Result<Entry> {
    let resource = raw.get_mut("resource").map(Value::take);
    let request = raw
        .get("request")
        .ok_or_else(|| entry_err(index, "entry.request is required in a batch or transaction"))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_err(index, "entry.request.method is required"))?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_err(index, "entry.request.url is required"))?;
    let verb = match method {
        "GET" => Verb::Get,
        "HEAD" => Verb::Head,
        "POST" => Verb::Post,
        "PUT" => Verb::Put,
        "PATCH" => Verb::Patch,
        "DELETE" => Verb::Delete,
        other => {
            return Err(entry_err(
                index,
                format!("unknown request.method '{other}'"),
            ))
        }
    };
    let (rtype, id, version, query) = parse_url(index, url)?;
    match verb {
        Verb::Post | Verb::Put | Verb::Patch if resource.is_none() => {
            return Err(entry_err(
                index,
                format!("a {method} entry needs a resource"),
            ))
        }
        Verb::Post if id.is_some() => {
            return Err(entry_err(
                index,
                "a POST entry's url must be the resource type only",
            ))
        }
        Verb::Put | Verb::Patch | Verb::Delete if id.is_none() && query.is_none() => {
            return Err(entry_err(
                index,
                format!("a {method} entry's url needs an id or search criteria"),
            ))
        }
        _ => {}
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(s) => {
            Some(parse_etag(s).ok_or_else(|| entry_err(index, format!("invalid ifMatch '{s}'")))?)
        }
        None => None,
    };
    Ok(Entry {
        index,
        full_url: raw
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
        verb,
        rtype,
        id,
        version,
        query,
        resource,
        if_match,
        if_none_exist: request
            .get("ifNoneExist")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// Replace references to `fullUrl`s and conditional references throughout a resource.
fn rewrite_refs<'a>(
    value: &'a mut Value,
    map: &HashMap<String, String>,
    unresolved: &mut Vec<&'a mut String>,
) {
    match value {
        Value::Object(obj) => {
            for (k, v) in obj.iter_mut() {
                if let Value::String(s) = v {
                    let is_ref = k == "reference";
                    if is_ref || s.starts_with("urn:") {
                        if let Some(to) = map.get(s.as_str()) {
                            *s = to.clone();
                            continue;
                        }
                    }
                    if is_ref
                        && (s.contains('?')
                            || s.starts_with("urn:uuid:")
                            || s.starts_with("urn:oid:"))
                    {
                        unresolved.push(s);
                    }
                } else {
                    rewrite_refs(v, map, unresolved);
                }
            }
        }
        Value::Array(a) => {
            for v in a {
                rewrite_refs(v, map, unresolved);
            }
        }
        _ => {}
    }
}

impl FhirService {
    /// Process a `batch` or `transaction` Bundle posted to the base URL; returns the
    /// response Bundle. `base` is the server's base URL for `fullUrl`s.
    pub async fn process_bundle(
        &self,
        mut bundle: Value,
        ret: Return,
        base: &str,
    ) -> Result<Value> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(FhirError::invalid_at(
                IssueCode::Invalid,
                "resourceType",
                "POST to the base URL takes a Bundle of type batch or transaction",
            ));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            other => {
                return Err(FhirError::invalid_at(
                    IssueCode::Invalid,
                    "Bundle.type",
                    format!(
                        "Bundle.type must be batch or transaction, not {}",
                        other.unwrap_or("(missing)")
                    ),
                ))
            }
        };
        let raw_entries = match bundle.get_mut("entry").map(Value::take) {
            None => vec![],
            Some(Value::Array(a)) => a,
            Some(_) => {
                return Err(FhirError::invalid_at(
                    IssueCode::Structure,
                    "Bundle.entry",
                    "Bundle.entry must be an array",
                ))
            }
        };
        if raw_entries.len() > self.limits().max_bundle_entries {
            return Err(FhirError::invalid(format!(
                "the Bundle has {} entries; at most {} are accepted",
                raw_entries.len(),
                self.limits().max_bundle_entries
            )));
        }
        match kind {
            BundleKind::Transaction => self.transaction(raw_entries, ret, base).await,
            BundleKind::Batch => Ok(self.batch(raw_entries, ret, base).await),
        }
    }

    async fn batch(&self, raw: Vec<Value>, ret: Return, base: &str) -> Value {
        let mut out = Vec::with_capacity(raw.len());
        for (i, mut r) in raw.into_iter().enumerate() {
            let result = match parse_entry(i, &mut r) {
                Ok(e) => self.batch_entry(e, ret, base).await,
                Err(e) => Err(e),
            };
            out.push(match result {
                Ok(v) => v,
                Err(e) => {
                    let (status, outcome) = e.to_http();
                    json!({"response": {"status": status_line(status), "outcome": outcome}})
                }
            });
        }
        json!({"resourceType": "Bundle", "type": "batch-response", "entry": out})
    }

    async fn batch_entry(&self, e: Entry, ret: Return, base: &str) -> Result<Value> {
        let rtype = e.rtype.as_str();
        match e.verb {
            Verb::Get | Verb::Head => {
                let mut tx = self.store().begin().await?;
                let found = self.get_entry(tx.as_mut(), &e, base).await?;
                // Committed, not dropped: what it read may be another transaction's
                // writes waiting for their group's COMMIT (SQLite), so answer after it.
                tx.commit().await?;
                Ok(found)
            }
            Verb::Post => {
                let out = self
                    .create(
                        rtype,
                        e.resource.expect("checked"),
                        e.if_none_exist.as_deref(),
                    )
                    .await?;
                Ok(entry_for_write(
                    &out.record,
                    if out.existing { 200 } else { 201 },
                    ret,
                    base,
                ))
            }
            Verb::Put => {
                let body = e.resource.expect("checked");
                let out = match (&e.id, &e.query) {
                    (Some(id), _) => self.update(rtype, id, body, e.if_match).await?,
                    (None, Some(q)) => self.conditional_update(rtype, q, body, e.if_match).await?,
                    _ => unreachable!("checked in parse_entry"),
                };
                Ok(entry_for_write(
                    &out.record,
                    if out.created { 201 } else { 200 },
                    ret,
                    base,
                ))
            }
            Verb::Patch => {
                let id = e.id.as_deref().ok_or_else(|| {
                    FhirError::NotSupported("conditional patch in a batch".into())
                })?;
                let patch = patch_document(e.index, e.resource.expect("checked"))?;
                let out = self.patch(rtype, id, patch, e.if_match).await?;
                Ok(entry_for_write(&out.record, 200, ret, base))
            }
            Verb::Delete => {
                match (&e.id, &e.query) {
                    (Some(id), _) => self.delete(rtype, id, e.if_match).await?,
                    (None, Some(q)) => self.conditional_delete(rtype, q).await?,
                    _ => unreachable!("checked in parse_entry"),
                };
                Ok(json!({"response": {"status": status_line(204)}}))
            }
        }
    }

    /// A GET/HEAD entry: read, vread or search.
    async fn get_entry(&self, tx: &mut dyn StoreTx, e: &Entry, base: &str) -> Result<Value> {
        ensure_type(&e.rtype)?;
        let record = match (&e.id, &e.version) {
            (Some(id), None) => tx.read(&e.rtype, id).await?,
            (Some(id), Some(v)) => {
                let v: u64 = v
                    .parse()
                    .map_err(|_| FhirError::NotFound(format!("{}/{id}/_history/{v}", e.rtype)))?;
                let mut found = None;
                let page = self.store().vread(&e.rtype, id, v).await?;
                if let Some(r) = page {
                    found = Some(r);
                }
                found
            }
            (None, _) => {
                let pairs = parse_pairs(e.query.as_deref().unwrap_or(""));
                let plan = salus_search::parse(
                    &e.rtype,
                    &pairs,
                    &salus_search::Options {
                        default_count: self.limits().default_count,
                        max_count: self.limits().max_count,
                        strict: false,
                    },
                )?;
                let page = tx.search(&plan.query).await?;
                let bundle = searchset(
                    base,
                    &e.rtype,
                    &crate::SearchResult {
                        plan,
                        page,
                        included: vec![],
                    },
                );
                return Ok(json!({"resource": bundle, "response": {"status": status_line(200)}}));
            }
        };
        let name = format!("{}/{}", e.rtype, e.id.as_deref().unwrap_or(""));
        match record {
            None => Err(FhirError::NotFound(name)),
            Some(r) if r.is_deleted() => Err(FhirError::Gone(name)),
            Some(r) => Ok(entry_for_write(&r, 200, Return::Representation, base)),
        }
    }

    async fn transaction(&self, raw: Vec<Value>, ret: Return, base: &str) -> Result<Value> {
        let entries = self.prepare_transaction(raw)?;
        let mut tx = self.store().begin().await?;
        let results = self.transaction_in(tx.as_mut(), entries, ret, base).await?;
        tx.commit().await?;
        Ok(json!({"resourceType": "Bundle", "type": "transaction-response", "entry": results}))
    }

    /// Apply a transaction Bundle inside an existing store transaction (bulk import);
    /// returns the number of entries. The caller commits or rolls back.
    pub async fn transaction_into(&self, tx: &mut dyn StoreTx, bundle: Value) -> Result<usize> {
        let prepared = self.prepare_bundle(bundle)?;
        self.apply_prepared(tx, prepared).await
    }

    /// The part of [`FhirService::transaction_into`] that needs no store: parse and
    /// validate every entry (all problems at once). Bulk import runs it on another
    /// thread while the previous Bundle is being written.
    pub fn prepare_bundle(&self, mut bundle: Value) -> Result<PreparedTransaction> {
        let raw = match bundle.get_mut("entry").map(Value::take) {
            Some(Value::Array(a)) => a,
            _ => vec![],
        };
        Ok(PreparedTransaction {
            entries: self.prepare_transaction(raw)?,
        })
    }

    /// Apply a [`PreparedTransaction`] inside `tx`; returns the number of entries.
    pub async fn apply_prepared(
        &self,
        tx: &mut dyn StoreTx,
        prepared: PreparedTransaction,
    ) -> Result<usize> {
        let n = prepared.entries.len();
        self.transaction_in(tx, prepared.entries, Return::Minimal, "")
            .await?;
        Ok(n)
    }

    /// Parse and validate every entry before taking the write lock; report all problems
    /// at once.
    fn prepare_transaction(&self, raw: Vec<Value>) -> Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(raw.len());
        let mut issues = vec![];
        for (i, mut r) in raw.into_iter().enumerate() {
            match parse_entry(i, &mut r) {
                Ok(e) => {
                    if matches!(e.verb, Verb::Post | Verb::Put) {
                        if let Err(err) = ensure_type(&e.rtype).and_then(|_| {
                            check_body(e.resource.as_ref().expect("checked"), Some(&e.rtype))
                        }) {
                            issues.extend(err.in_entry(i).issues());
                        }
                    }
                    entries.push(e);
                }
                Err(err) => issues.extend(err.issues()),
            }
        }
        if !issues.is_empty() {
            return Err(FhirError::Invalid(issues));
        }
        Ok(entries)
    }

    async fn transaction_in(
        &self,
        tx: &mut dyn StoreTx,
        mut entries: Vec<Entry>,
        ret: Return,
        base: &str,
    ) -> Result<Vec<Value>> {
        let n = entries.len();
        let mut results: Vec<Option<Value>> = vec![None; n];
        let mut targets: HashSet<(String, String)> = HashSet::new();
        // 2. DELETEs come first in the prescribed order, so run them before anything else
        //    is matched: a conditional create, update or reference must not find a
        //    resource this transaction deletes.
        for e in entries.iter_mut().filter(|e| e.verb == Verb::Delete) {
            let i = e.index;
            if e.id.is_none() {
                let q = e.query.clone().expect("checked");
                let found = tx_match(tx, &e.rtype, &q, self.limits())
                    .await
                    .map_err(|err| err.in_entry(i))?;
                match found.as_slice() {
                    [] => {}
                    [one] => e.id = Some(one.id.clone()),
                    _ => {
                        return Err(FhirError::PreconditionFailed(format!(
                            "Bundle.entry[{i}]: conditional delete '{q}' matches more than one {}",
                            e.rtype
                        )))
                    }
                }
            }
            if let Some(id) = &e.id {
                claim_target(&mut targets, i, &e.rtype, id)?;
                tx_delete(tx, &e.rtype, id, e.if_match)
                    .await
                    .map_err(|err| err.in_entry(i))?;
            }
            results[i] = Some(json!({"response": {"status": status_line(204)}}));
        }
        // 3. Resolve identities: fullUrl → Type/id for every POST/PUT.
        let mut map: HashMap<String, String> = HashMap::new();
        let mut existing: HashSet<usize> = HashSet::new();
        // What a conditional update's search found (or that its id is new), so step 5
        // need not read the resource again: nothing else in the transaction may change
        // it (`claim_target`).
        let mut known: HashMap<usize, Option<VersionRecord>> = HashMap::new();
        for e in entries.iter_mut().filter(|e| e.verb != Verb::Delete) {
            let i = e.index;
            match e.verb {
                Verb::Post => {
                    let mut id = None;
                    if let Some(q) = &e.if_none_exist {
                        let found = tx_match(tx, &e.rtype, q, self.limits())
                            .await
                            .map_err(|err| err.in_entry(i))?;
                        match found.as_slice() {
                            [] => {}
                            [one] => {
                                id = Some(one.id.clone());
                                existing.insert(i);
                            }
                            _ => {
                                return Err(FhirError::PreconditionFailed(format!(
                                    "Bundle.entry[{i}]: ifNoneExist '{q}' matches more than one {}",
                                    e.rtype
                                )))
                            }
                        }
                    }
                    e.id = Some(id.unwrap_or_else(new_id));
                }
                Verb::Put if e.id.is_none() => {
                    let q = e.query.clone().expect("checked");
                    let found = tx_match(tx, &e.rtype, &q, self.limits())
                        .await
                        .map_err(|err| err.in_entry(i))?;
                    let body_id = e
                        .resource
                        .as_ref()
                        .and_then(|r| r.get("id"))
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    e.id = Some(match found.as_slice() {
                        [] => match body_id {
                            Some(id) => id,
                            None => {
                                known.insert(i, None);
                                new_id()
                            }
                        },
                        [one] => {
                            known.insert(i, Some(one.clone()));
                            one.id.clone()
                        }
                        _ => {
                            return Err(FhirError::PreconditionFailed(format!(
                            "Bundle.entry[{i}]: conditional update '{q}' matches more than one {}",
                            e.rtype
                        )))
                        }
                    });
                }
                _ => {}
            }
            if matches!(e.verb, Verb::Post | Verb::Put | Verb::Patch) && !existing.contains(&i) {
                if let Some(id) = &e.id {
                    claim_target(&mut targets, i, &e.rtype, id)?;
                }
            }
            if let (Some(full), Some(id)) = (&e.full_url, &e.id) {
                if matches!(e.verb, Verb::Post | Verb::Put) {
                    map.insert(full.clone(), format!("{}/{id}", e.rtype));
                }
            }
        }
        // 4. Rewrite references in every resource.
        let mut conditional_cache: HashMap<String, String> = HashMap::new();
        for e in entries.iter_mut() {
            let i = e.index;
            if !matches!(e.verb, Verb::Post | Verb::Put) {
                continue;
            }
            let Some(resource) = e.resource.as_mut() else {
                continue;
            };
            let mut unresolved = vec![];
            rewrite_refs(resource, &map, &mut unresolved);
            for r in unresolved {
                if let Some(to) = conditional_cache.get(r.as_str()) {
                    *r = to.clone();
                    continue;
                }
                let Some((rtype, q)) = r.split_once('?').filter(|(t, _)| defs::is_resource_type(t))
                else {
                    return Err(entry_err(
                        i,
                        format!("reference '{r}' does not resolve to any entry of the transaction"),
                    ));
                };
                let (rtype, q) = (rtype.to_string(), q.to_string());
                let found = tx_match(tx, &rtype, &q, self.limits())
                    .await
                    .map_err(|err| err.in_entry(i))?;
                let to = match found.as_slice() {
                    [one] => format!("{rtype}/{}", one.id),
                    [] => {
                        return Err(FhirError::PreconditionFailed(format!(
                            "Bundle.entry[{i}]: conditional reference '{r}' matches no resource"
                        )))
                    }
                    _ => {
                        return Err(FhirError::PreconditionFailed(format!(
                            "Bundle.entry[{i}]: conditional reference '{r}' matches more than one resource"
                        )))
                    }
                };
                conditional_cache.insert(r.clone(), to.clone());
                *r = to;
            }
        }
        // 5. Execute the rest in the prescribed order (the DELETEs ran in step 2).
        let mut order: Vec<usize> = (0..n).filter(|&i| results[i].is_none()).collect();
        order.sort_by_key(|&i| {
            let v = entries[i].verb;
            (if v == Verb::Patch { Verb::Put } else { v }, i)
        });
        for i in order {
            let e = &mut entries[i];
            let rtype = e.rtype.clone();
            let res = match e.verb {
                Verb::Delete => unreachable!("DELETE entries ran in step 2"),
                Verb::Post if existing.contains(&i) => {
                    let id = e.id.as_deref().expect("assigned");
                    let rec = tx.read(&rtype, id).await?.ok_or_else(|| {
                        FhirError::Internal(format!("matched {rtype}/{id} vanished"))
                    })?;
                    entry_for_write(&rec, 200, ret, base)
                }
                Verb::Post | Verb::Put => {
                    let id = e.id.clone().expect("assigned");
                    let mut body = e.resource.take().expect("checked");
                    if let Value::Object(o) = &mut body {
                        if e.verb == Verb::Put
                            && o.get("id").is_some_and(|b| b.as_str() != Some(&id))
                        {
                            return Err(entry_err(
                                i,
                                format!("resource id does not match {rtype}/{id}"),
                            ));
                        }
                        o.insert("id".into(), Value::String(id.clone()));
                    }
                    let method = if e.verb == Verb::Post {
                        Method::Post
                    } else {
                        Method::Put
                    };
                    let out =
                        tx_write_known(tx, &rtype, &id, body, e.if_match, method, known.remove(&i))
                            .await
                            .map_err(|err| err.in_entry(i))?;
                    entry_for_write(&out.record, if out.created { 201 } else { 200 }, ret, base)
                }
                Verb::Patch => {
                    let id = e.id.clone().expect("checked");
                    let current: VersionRecord = match tx.read(&rtype, &id).await? {
                        Some(c) if !c.is_deleted() => c,
                        _ => {
                            return Err(FhirError::NotFound(format!(
                                "Bundle.entry[{i}]: {rtype}/{id}"
                            )))
                        }
                    };
                    let patch = patch_document(i, e.resource.take().expect("checked"))?;
                    let doc =
                        apply_patch(&rtype, &id, current.body.as_deref().unwrap_or("{}"), &patch)
                            .map_err(|err| err.in_entry(i))?;
                    check_body(&doc, Some(&rtype)).map_err(|err| err.in_entry(i))?;
                    let out = tx_write(tx, &rtype, &id, doc, e.if_match, Method::Patch)
                        .await
                        .map_err(|err| err.in_entry(i))?;
                    entry_for_write(&out.record, 200, ret, base)
                }
                Verb::Get | Verb::Head => self
                    .get_entry(tx, e, base)
                    .await
                    .map_err(|err| err.in_entry(i))?,
            };
            results[i] = Some(res);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every entry ran"))
            .collect())
    }
}

/// Record that entry `index` changes `rtype/id`; a transaction may change a resource
/// only once.
fn claim_target(
    targets: &mut HashSet<(String, String)>,
    index: usize,
    rtype: &str,
    id: &str,
) -> Result<()> {
    if !valid_id(id) {
        return Err(entry_err(index, format!("'{id}' is not a valid FHIR id")));
    }
    if !targets.insert((rtype.to_string(), id.to_string())) {
        return Err(entry_err(
            index,
            format!("{rtype}/{id} is changed by more than one entry of the transaction"),
        ));
    }
    Ok(())
}

/// A PATCH entry's resource: a Binary holding a JSON Patch document (base64), or the
/// JSON Patch array itself.
fn patch_document(index: usize, resource: Value) -> Result<Value> {
    if resource.is_array() {
        return Ok(resource);
    }
    if resource.get("resourceType").and_then(Value::as_str) == Some("Binary") {
        let data = resource.get("data").and_then(Value::as_str).unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| entry_err(index, format!("Binary.data is not valid base64: {e}")))?;
        return serde_json::from_slice(&bytes).map_err(|e| {
            entry_err(
                index,
                format!("Binary.data is not a JSON Patch document: {e}"),
            )
        });
    }
    Err(FhirError::NotSupported(format!(
        "Bundle.entry[{index}]: PATCH entries take a Binary with a JSON Patch document (FHIRPath Patch is not supported yet)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("W/\"x\""), None);
    }

    #[test]
    fn references_are_rewritten() {
        let mut v = json!({"subject": {"reference": "urn:uuid:1"}, "x": [{"reference": "Patient?identifier=a|b"}], "u": "urn:uuid:1"});
        let map = HashMap::from([("urn:uuid:1".to_string(), "Patient/9".to_string())]);
        let mut unresolved = vec![];
        rewrite_refs(&mut v, &map, &mut unresolved);
        assert_eq!(unresolved.len(), 1);
        assert_eq!(v["subject"]["reference"], "Patient/9");
        assert_eq!(v["u"], "Patient/9");
    }
}
