//! The audit trail: every access to patient data as a FHIR AuditEvent (R4
//! auditevent.html), written by the server through the one write path, in an
//! append-only hash chain that [`verify_chain`] checks.
//!
//! Chain: each AuditEvent carries the extension [`CHAIN_URL`] with `seq` (1, 2, …),
//! `prev` (the previous record's hash) and `hash` = SHA-256 over the record's JSON
//! without `meta` and without `hash` itself. The head (last seq and hash) lives in
//! `Basic/salus-audit-chain`. Writers take the store lock [`CHAIN_LOCK`] first, so
//! servers sharing a database extend one chain. An edited record no longer matches its
//! hash; an inserted one breaks `prev` or `seq`; a deleted one leaves a gap in `seq`
//! (or the head names a later seq than any record).
//!
//! Records are queued and written in batches (a short window, at most a few hundred
//! per transaction) so that auditing costs a fraction of a write per request.

use crate::service::{new_id, put_version};
use crate::{index, FhirError, FhirService};
use salus_fhir::instant as time;
use salus_store::{Head, Page, SearchQuery, Store};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The extension holding a record's place in the chain.
pub const CHAIN_URL: &str = "https://salus.health/fhir/StructureDefinition/audit-chain";
/// The store lock every chain writer holds.
pub const CHAIN_LOCK: &str = "salus-audit-chain";
/// Id of the `Basic` resource holding the chain's head.
pub const HEAD_ID: &str = "salus-audit-chain";

/// One access to record.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// Microseconds since the epoch.
    pub when: i64,
    /// Who: a `fhirUser` reference (`Practitioner/1`) or the token's subject.
    pub who: Option<String>,
    pub client_id: Option<String>,
    pub token_id: Option<String>,
    /// Network address of the caller.
    pub address: Option<String>,
    /// C R U D E (FHIR audit-event-action).
    pub action: char,
    /// restful-interaction code (`read`, `search-type`, `create`, `operation`, …).
    pub interaction: String,
    /// The request line: method and path.
    pub request: String,
    /// The query string of searches and operations.
    pub query: Option<String>,
    /// The resource acted on (`Observation/1`), when the URL names one.
    pub entity: Option<String>,
    /// The patient the access concerns, when known (`Patient/p1`).
    pub patient: Option<String>,
    /// HTTP status of the answer.
    pub status: u16,
    /// Why it failed (401/403 reasons).
    pub outcome_desc: Option<String>,
}

impl AuditRecord {
    /// The AuditEvent, without its chain extension.
    fn to_resource(&self, id: &str) -> Value {
        let outcome = match self.status {
            200..=399 => "0",
            400..=499 => "4",
            _ => "8",
        };
        let mut agent = Map::new();
        agent.insert(
            "type".into(),
            json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser", "display": "human user"}]}),
        );
        let mut who = Map::new();
        match &self.who {
            Some(w) if w.contains('/') => {
                who.insert("reference".into(), json!(w));
            }
            Some(w) => {
                who.insert("display".into(), json!(w));
            }
            None => {
                who.insert("display".into(), json!("anonymous"));
            }
        }
        agent.insert("who".into(), Value::Object(who));
        if let Some(c) = &self.client_id {
            agent.insert("altId".into(), json!(c));
        }
        agent.insert("requestor".into(), json!(true));
        if let Some(a) = &self.address {
            agent.insert("network".into(), json!({"address": a, "type": "2"}));
        }
        let mut entities = vec![];
        if let Some(e) = &self.entity {
            entities.push(json!({"what": {"reference": e}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}}));
        }
        if let Some(p) = &self.patient {
            if self.entity.as_deref() != Some(p.as_str()) {
                entities.push(json!({"what": {"reference": p}, "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"}}));
            }
        }
        let mut detail = vec![json!({"type": "request", "valueString": self.request})];
        if let Some(j) = &self.token_id {
            detail.push(json!({"type": "token", "valueString": j}));
        }
        let mut query_entity = Map::new();
        query_entity.insert(
            "type".into(),
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}),
        );
        if let Some(q) = &self.query {
            use base64::Engine;
            query_entity.insert(
                "query".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(q.as_bytes())),
            );
        }
        query_entity.insert("detail".into(), Value::Array(detail));
        entities.push(Value::Object(query_entity));
        let mut out = Map::new();
        out.insert("resourceType".into(), json!("AuditEvent"));
        out.insert("id".into(), json!(id));
        out.insert(
            "type".into(),
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
        );
        out.insert(
            "subtype".into(),
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": self.interaction}]),
        );
        out.insert("action".into(), json!(self.action.to_string()));
        out.insert("recorded".into(), json!(time::format_instant(self.when)));
        out.insert("outcome".into(), json!(outcome));
        let desc = match &self.outcome_desc {
            Some(d) => format!("HTTP {}: {d}", self.status),
            None => format!("HTTP {}", self.status),
        };
        out.insert("outcomeDesc".into(), json!(desc));
        out.insert("agent".into(), json!([Value::Object(agent)]));
        out.insert(
            "source".into(),
            json!({"observer": {"display": "salus"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "3", "display": "Web Server"}]}),
        );
        out.insert("entity".into(), Value::Array(entities));
        Value::Object(out)
    }
}

/// SHA-256 (hex) of a record as chained: its JSON without `meta` and without the
/// chain extension's `hash`.
pub fn chain_hash(resource: &Value) -> String {
    let mut v = resource.clone();
    if let Some(o) = v.as_object_mut() {
        o.shift_remove("meta");
        if let Some(Value::Array(exts)) = o.get_mut("extension") {
            for e in exts.iter_mut() {
                if e.get("url").and_then(Value::as_str) == Some(CHAIN_URL) {
                    if let Some(Value::Array(parts)) = e.get_mut("extension") {
                        parts.retain(|p| p.get("url").and_then(Value::as_str) != Some("hash"));
                    }
                }
            }
        }
    }
    let text = serde_json::to_string(&v).expect("JSON values serialise");
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `seq`, `prev` and `hash` of a record's chain extension.
pub fn chain_fields(resource: &Value) -> Option<(u64, String, String)> {
    let seq = chain_part(resource, "seq")?.get("valueInteger")?.as_u64()?;
    let prev = chain_part(resource, "prev")?.get("valueString")?.as_str()?;
    let hash = chain_part(resource, "hash")?.get("valueString")?.as_str()?;
    Some((seq, prev.to_string(), hash.to_string()))
}

/// The part `name` of a resource's chain extension (records and the head alike).
fn chain_part<'a>(resource: &'a Value, name: &str) -> Option<&'a Value> {
    resource
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(CHAIN_URL))?
        .get("extension")?
        .as_array()?
        .iter()
        .find(|p| p.get("url").and_then(Value::as_str) == Some(name))
}

/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

enum Msg {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<()>),
}

/// The queue the HTTP layer hands records to; a background task writes them.
#[derive(Clone)]
pub struct AuditTrail {
    tx: mpsc::UnboundedSender<Msg>,
}

impl AuditTrail {
    /// Start the writer on the current runtime. `service` must be unscoped (internal).
    pub fn start(service: FhirService) -> AuditTrail {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut batch: Vec<AuditRecord> = vec![];
            let mut waiters: Vec<oneshot::Sender<()>> = vec![];
            loop {
                let first = match rx.recv().await {
                    Some(m) => m,
                    None => break,
                };
                let take = |m: Msg, batch: &mut Vec<AuditRecord>, waiters: &mut Vec<_>| match m {
                    Msg::Record(r) => batch.push(*r),
                    Msg::Flush(w) => waiters.push(w),
                };
                take(first, &mut batch, &mut waiters);
                // A short window gathers a batch; a flush request ends it at once.
                let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
                while batch.len() < 500 && waiters.is_empty() {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(m)) => take(m, &mut batch, &mut waiters),
                        _ => break,
                    }
                }
                while let Ok(m) = rx.try_recv() {
                    take(m, &mut batch, &mut waiters);
                }
                if !batch.is_empty() {
                    let records = std::mem::take(&mut batch);
                    let mut attempt = 0;
                    loop {
                        match service.append_audit(&records).await {
                            Ok(()) => break,
                            Err(e) if attempt < 20 => {
                                attempt += 1;
                                tracing::warn!(error = %e, attempt, "audit batch not written yet; retrying");
                                tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, lost = records.len(), "AUDIT RECORDS COULD NOT BE WRITTEN");
                                break;
                            }
                        }
                    }
                }
                for w in waiters.drain(..) {
                    let _ = w.send(());
                }
            }
        });
        AuditTrail { tx }
    }

    /// Queue a record.
    pub fn record(&self, r: AuditRecord) {
        if self.tx.send(Msg::Record(Box::new(r))).is_err() {
            tracing::error!("audit writer stopped; record lost");
        }
    }

    /// Wait until everything queued so far is written (tests, shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn head_resource(seq: u64, hash: &str) -> Value {
    json!({
        "resourceType": "Basic",
        "id": HEAD_ID,
        "code": {"coding": [{"system": crate::SALUS_CODES, "code": "audit-chain-head"}]},
        "extension": [{"url": CHAIN_URL, "extension": [
            {"url": "seq", "valueInteger": seq},
            {"url": "hash", "valueString": hash}
        ]}]
    })
}

/// The chain's head as stored: (last seq, its hash).
fn parse_head(body: &str) -> Result<(u64, String), FhirError> {
    let v: Value = serde_json::from_str(body)
        .map_err(|e| FhirError::Internal(format!("audit chain head is not JSON: {e}")))?;
    let seq = chain_part(&v, "seq")
        .and_then(|p| p.get("valueInteger"))
        .and_then(Value::as_u64)
        .ok_or_else(|| FhirError::Internal("audit chain head has no seq".into()))?;
    let hash = chain_part(&v, "hash")
        .and_then(|p| p.get("valueString"))
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::Internal("audit chain head has no hash".into()))?;
    Ok((seq, hash.to_string()))
}

impl FhirService {
    /// Append records to the chain in one transaction.
    pub async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), FhirError> {
        let store = self.unguarded_store().clone();
        let mut tx = store.begin().await?;
        tx.lock(CHAIN_LOCK).await?;
        let head = tx.read("Basic", HEAD_ID).await?;
        let (mut seq, mut prev, head_version) = match &head {
            Some(h) if !h.is_deleted() => {
                let (s, p) = parse_head(h.body.as_deref().unwrap_or(""))?;
                (s, p, Some(h.clone()))
            }
            _ => (0, GENESIS.to_string(), head.clone()),
        };
        for r in records {
            seq += 1;
            let id = new_id();
            let mut v = r.to_resource(&id);
            let chain = json!({"url": CHAIN_URL, "extension": [
                {"url": "seq", "valueInteger": seq},
                {"url": "prev", "valueString": prev}
            ]});
            v.as_object_mut()
                .expect("object")
                .insert("extension".into(), json!([chain]));
            let hash = chain_hash(&v);
            v["extension"][0]["extension"]
                .as_array_mut()
                .expect("array")
                .push(json!({"url": "hash", "valueString": hash}));
            let idx = index::extract(&v);
            put_version(
                tx.as_mut(),
                "AuditEvent",
                &id,
                v,
                idx,
                None,
                salus_store::Method::Post,
            )
            .await?;
            prev = hash;
        }
        let head_body = head_resource(seq, &prev);
        let idx = index::extract(&head_body);
        let current = head_version.map(|h| Head {
            version: h.version,
            last_updated: h.last_updated,
            deleted: h.is_deleted(),
        });
        put_version(
            tx.as_mut(),
            "Basic",
            HEAD_ID,
            head_body,
            idx,
            current,
            salus_store::Method::Put,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A problem `salus audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProblem {
    /// The record concerned (`AuditEvent/…`), when one can be named.
    pub record: Option<String>,
    pub message: String,
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, Default)]
pub struct ChainReport {
    pub records: u64,
    pub head_seq: u64,
    pub problems: Vec<ChainProblem>,
}

/// Check the whole chain: every record's hash, its link to the one before, no seq
/// missing or repeated, and the head. `progress` is called with records read so far.
pub async fn verify_chain(
    store: &Arc<dyn Store>,
    mut progress: impl FnMut(u64),
) -> Result<ChainReport, FhirError> {
    struct Rec {
        id: String,
        seq: u64,
        prev: String,
        hash: String,
        intact: bool,
    }
    let mut recs: Vec<Rec> = vec![];
    let mut report = ChainReport::default();
    let mut q = SearchQuery::new("AuditEvent");
    q.count = 1000;
    q.sort = vec![salus_store::SortKey {
        field: salus_store::SortField::Id,
        descending: false,
    }];
    loop {
        let page = store.search(&q).await?;
        for r in &page.entries {
            report.records += 1;
            let Some(body) = r.body.as_deref() else {
                continue;
            };
            let v: Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(_) => {
                    report.problems.push(ChainProblem {
                        record: Some(format!("AuditEvent/{}", r.id)),
                        message: "stored record is not valid JSON (altered)".into(),
                    });
                    continue;
                }
            };
            match chain_fields(&v) {
                Some((seq, prev, hash)) => {
                    let intact = chain_hash(&v) == hash;
                    recs.push(Rec {
                        id: r.id.clone(),
                        seq,
                        prev,
                        hash,
                        intact,
                    })
                }
                None => report.problems.push(ChainProblem {
                    record: Some(format!("AuditEvent/{}", r.id)),
                    message: "record is not part of the audit chain (inserted outside the server)"
                        .into(),
                }),
            }
        }
        progress(report.records);
        match (page.more, page.last_cursor.clone()) {
            (true, Some(c)) => q.page = Page::After(c),
            _ => break,
        }
    }
    recs.sort_by_key(|r| r.seq);
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut last_id: Option<String> = None;
    for r in &recs {
        let name = Some(format!("AuditEvent/{}", r.id));
        if !r.intact {
            report.problems.push(ChainProblem {
                record: name.clone(),
                message: format!(
                    "record seq {} was altered: its content no longer matches its hash",
                    r.seq
                ),
            });
        }
        if r.seq < expected_seq {
            report.problems.push(ChainProblem {
                record: name.clone(),
                message: format!(
                    "seq {} appears more than once (a record was inserted)",
                    r.seq
                ),
            });
            continue;
        }
        if r.seq > expected_seq {
            report.problems.push(ChainProblem {
                record: name.clone(),
                message: format!(
                    "records seq {}..{} are missing (deleted) before this one{}",
                    expected_seq,
                    r.seq - 1,
                    last_id
                        .as_ref()
                        .map(|l| format!(", after AuditEvent/{l}"))
                        .unwrap_or_default()
                ),
            });
        } else if r.prev != expected_prev {
            report.problems.push(ChainProblem {
                record: name.clone(),
                message: format!(
                    "record seq {} does not link to the record before it (inserted or reordered)",
                    r.seq
                ),
            });
        }
        expected_prev = r.hash.clone();
        expected_seq = r.seq + 1;
        last_id = Some(r.id.clone());
    }
    match store.read("Basic", HEAD_ID).await? {
        Some(h) if !h.is_deleted() => {
            let (seq, hash) = parse_head(h.body.as_deref().unwrap_or(""))?;
            report.head_seq = seq;
            if seq + 1 > expected_seq {
                report.problems.push(ChainProblem {
                    record: None,
                    message: format!(
                        "the chain head names seq {seq} but the last record is seq {}: records at the end were deleted",
                        expected_seq - 1
                    ),
                });
            } else if seq + 1 == expected_seq && hash != expected_prev {
                report.problems.push(ChainProblem {
                    record: last_id.map(|l| format!("AuditEvent/{l}")),
                    message: "the last record does not match the chain head".into(),
                });
            }
        }
        _ if !recs.is_empty() => report.problems.push(ChainProblem {
            record: None,
            message: "the chain head (Basic/salus-audit-chain) is missing".into(),
        }),
        _ => {}
    }
    Ok(report)
}
