//! Device messages into the record (remote patient monitoring): normalize with the
//! configured mapping templates (`salus-devices`), resolve Device → Patient from the
//! store, merge into the deterministic Observations and write them in one transaction
//! through the one write path, evaluate alert rules, and keep what cannot be processed
//! in a dead-letter store (FHIR `Basic` resources) with the reason.
//!
//! Idempotency: every Observation has a deterministic identifier (device, type, period),
//! written by conditional update after merging with the stored one inside the same
//! transaction, so a redelivered message changes nothing and creates nothing.

use crate::service::tx_match;
use crate::{FhirService, Result};
use salus_devices::fhir::Identifier;
use salus_devices::identity::DeviceRecord;
use salus_devices::rules::subject_of;
use salus_devices::{
    alert_resources, AlertContext, DevicePipeline, EngineState, Measurement, RuleEngine,
};
use salus_store::{Method, NewVersion, StoreTx};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Salus's own code system (dead letters and other server-made records).
pub const SALUS_CODES: &str = "https://salus.health/fhir/CodeSystem/salus";
/// `Basic.code` of a dead-lettered device message.
pub const DEAD_LETTER_CODE: &str = "device-dead-letter";
const EXT: &str = "https://salus.health/fhir/StructureDefinition";
/// `meta.tag` code of the Binary resources holding alert-rule state.
pub const RULE_STATE_TAG: &str = "device-rule-state";
/// The alert-rule state is persisted in this many parts, by subject, so a batch rewrites
/// only the parts of the subjects it touched.
pub const RULE_STATE_SHARDS: u32 = 64;

/// Id of the Binary that holds part `k` of the alert-rule state.
pub fn rule_state_id(k: u32) -> String {
    format!("salus-device-rules-{k}")
}

/// A configured device pipeline with its alert rules (their state lives here).
pub struct DeviceIngest {
    pipeline: DevicePipeline,
    rules: Option<Mutex<RuleEngine>>,
    /// Held while rules are evaluated and their state and alerts written, so the stored
    /// state parts follow the order of evaluation.
    rule_turn: tokio::sync::Mutex<()>,
    /// The care team that gets alert Tasks and Communications.
    care_team: Option<String>,
    counters: DeviceCounters,
}

/// Running totals of device ingestion, for `/metrics` (counted after commit).
#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    pub measurements: AtomicU64,
    pub observations_written: AtomicU64,
    pub dead_letters: AtomicU64,
    pub alert_resources: AtomicU64,
}

impl DeviceCounters {
    fn add(&self, r: &IngestReport) {
        let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.batches, 1);
        add(&self.messages, r.messages);
        add(&self.measurements, r.measurements);
        add(&self.observations_written, r.observations_written);
        add(&self.dead_letters, r.dead_letters.len());
        add(&self.alert_resources, r.alert_resources);
    }

    /// The totals in the Prometheus text format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, help, c) in [
            (
                "batches",
                "Device message batches stored (one transaction each).",
                &self.batches,
            ),
            (
                "messages",
                "Device messages stored or dead-lettered.",
                &self.messages,
            ),
            (
                "measurements",
                "Normalized device measurements stored.",
                &self.measurements,
            ),
            (
                "observations_written",
                "Observations created or changed by device data.",
                &self.observations_written,
            ),
            (
                "dead_letters",
                "Device messages kept as dead letters.",
                &self.dead_letters,
            ),
            (
                "alert_resources",
                "Flag, Task and Communication resources written by alert rules.",
                &self.alert_resources,
            ),
        ] {
            out.push_str(&format!(
                "# HELP salus_device_{name}_total {help}\n# TYPE salus_device_{name}_total counter\nsalus_device_{name}_total {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

impl DeviceIngest {
    pub fn new(
        pipeline: DevicePipeline,
        rules: Option<RuleEngine>,
        care_team: Option<String>,
    ) -> Self {
        DeviceIngest {
            pipeline,
            rules: rules.map(Mutex::new),
            rule_turn: tokio::sync::Mutex::new(()),
            care_team,
            counters: DeviceCounters::default(),
        }
    }

    /// What this pipeline has processed since start.
    pub fn counters(&self) -> &DeviceCounters {
        &self.counters
    }
}

/// What one call of [`FhirService::ingest_device_messages`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub messages: usize,
    pub measurements: usize,
    /// Observations created or changed.
    pub observations_written: usize,
    /// Observations that already held every reading (a redelivery).
    pub observations_unchanged: usize,
    /// Ids of the `Basic` dead letters written.
    pub dead_letters: Vec<String>,
    /// Alert resources (Flag, Task, Communication) written.
    pub alert_resources: usize,
}

impl IngestReport {
    pub fn to_json(&self) -> Value {
        json!({
            "messages": self.messages,
            "measurements": self.measurements,
            "observationsWritten": self.observations_written,
            "observationsUnchanged": self.observations_unchanged,
            "deadLetters": self.dead_letters,
            "alertResources": self.alert_resources,
        })
    }
}

/// Two Observations are the same reading set if they differ only in `meta`.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("meta");
            o.remove("id");
        }
        v
    };
    strip(a) == strip(b)
}

fn dead_letter(message: &Value, reasons: &[String], source: &str) -> Value {
    use base64::Engine;
    let payload = base64::engine::general_purpose::STANDARD.encode(message.to_string());
    let mut ext = vec![
        json!({"url": format!("{EXT}/dead-letter-source"), "valueString": source}),
        json!({"url": format!("{EXT}/dead-letter-payload"),
               "valueAttachment": {"contentType": "application/json", "data": payload}}),
    ];
    for r in reasons {
        ext.push(json!({"url": format!("{EXT}/dead-letter-reason"), "valueString": r}));
    }
    json!({
        "resourceType": "Basic",
        "code": {"coding": [{"system": SALUS_CODES, "code": DEAD_LETTER_CODE,
                             "display": "Device message that could not be processed"}]},
        "created": crate::time::format_instant(crate::time::now_micros())[..10].to_string(),
        "extension": ext,
    })
}

impl FhirService {
    /// Process device messages (`source` names where they came from: `http`, `mqtt:topic`).
    /// Messages that match no template, or whose device is unknown, are dead-lettered with
    /// the reason; the others are written. Never fails for bad input: only a storage
    /// failure is an error (the caller then retries: the writes are idempotent).
    pub async fn ingest_device_messages(
        &self,
        ingest: &DeviceIngest,
        messages: &[Value],
        source: &str,
    ) -> Result<IngestReport> {
        let tagged: Vec<(&Value, &str)> = messages.iter().map(|m| (m, source)).collect();
        self.ingest_device_batch(ingest, &tagged).await
    }

    /// [`FhirService::ingest_device_messages`] for messages from several sources (a
    /// batch a busy source collected): one transaction for all of them; dead letters
    /// name each message's own source.
    pub async fn ingest_device_batch(
        &self,
        ingest: &DeviceIngest,
        messages: &[(&Value, &str)],
    ) -> Result<IngestReport> {
        let mut report = IngestReport {
            messages: messages.len(),
            ..Default::default()
        };
        let mut measurements: Vec<Measurement> = vec![];
        let mut dead: Vec<Value> = vec![];
        // Which messages carried each device's readings, so an identity problem
        // dead-letters those messages (not the whole batch).
        let mut by_device: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, (m, source)) in messages.iter().enumerate() {
            let n = ingest.pipeline.normalize(m);
            if !n.errors.is_empty() || n.measurements.is_empty() {
                let mut reasons: Vec<String> = n.errors.iter().map(|e| e.to_string()).collect();
                if n.measurements.is_empty() && reasons.is_empty() {
                    reasons.push("the message matches no device mapping template".into());
                }
                dead.push(dead_letter(m, &reasons, source));
            }
            for x in &n.measurements {
                let seen = by_device.entry(x.device_id.clone()).or_default();
                if seen.last() != Some(&i) {
                    seen.push(i);
                }
            }
            measurements.extend(n.measurements);
        }
        let messages_of = |idx: &[usize]| -> (Value, String) {
            let items: Vec<Value> = idx.iter().map(|&i| messages[i].0.clone()).collect();
            let source = idx.first().map_or("", |&i| messages[i].1).to_string();
            let content = match <[Value; 1]>::try_from(items) {
                Ok([one]) => one,
                Err(items) => Value::Array(items),
            };
            (content, source)
        };
        let all: Vec<usize> = (0..messages.len()).collect();
        report.measurements = measurements.len();

        // The rules' turn before the store transaction (the order every path takes), held
        // until the batch is committed: the rule state and the stored parts change together.
        let _turn = match &ingest.rules {
            Some(_) => Some(ingest.rule_turn.lock().await),
            None => None,
        };
        let mut tx = self.store().begin().await?;
        // Device → Patient, looked up in the transaction (Lookup mode).
        let config = &ingest.pipeline.config;
        let mut devices: HashMap<String, Option<DeviceRecord>> = HashMap::new();
        let mut wanted: Vec<Identifier> = vec![];
        for m in &measurements {
            if devices.insert(m.device_id.clone(), None).is_none() {
                wanted.push(Identifier {
                    system: config.device_identifier_system.clone(),
                    value: m.device_id.clone(),
                });
            }
        }
        for (id, found) in tx_by_identifier(tx.as_mut(), "Device", &wanted, self.limits()).await? {
            let record = (|| {
                let body = found.body.as_ref()?;
                Some(DeviceRecord {
                    device_reference: format!("Device/{}", found.record.id),
                    patient_reference: body
                        .pointer("/patient/reference")
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
            })();
            devices.insert(id.value, record);
        }
        let directory = |id: &Identifier| devices.get(&id.value).cloned().flatten();
        let plan = ingest.pipeline.plan(&measurements, &directory);
        // Identity problems by device: each device's messages become one dead letter.
        let mut reasons_by: Vec<(Vec<usize>, Vec<String>)> = vec![];
        for e in &plan.errors {
            let idx = match e {
                salus_devices::MappingError::Identity { device_id, .. } => by_device
                    .get(device_id)
                    .cloned()
                    .unwrap_or_else(|| all.clone()),
                _ => all.clone(),
            };
            match reasons_by.iter_mut().find(|(i, _)| *i == idx) {
                Some((_, r)) => r.push(e.to_string()),
                None => reasons_by.push((idx, vec![e.to_string()])),
            }
        }
        for (idx, reasons) in reasons_by {
            let (content, source) = messages_of(&idx);
            dead.push(dead_letter(&content, &reasons, &source));
        }
        // merge with what is stored, inside the transaction
        let wanted: Vec<Identifier> = plan
            .observations
            .iter()
            .map(|o| o.identifier.clone())
            .collect();
        let stored = tx_by_identifier(tx.as_mut(), "Observation", &wanted, self.limits()).await?;
        let mut entries = plan.identity_entries.clone();
        for o in &plan.observations {
            let found = stored.get(&o.identifier);
            let existing: Option<&Value> = found.and_then(|f| f.body.as_ref());
            let new = match o.resource(existing) {
                Ok(v) => v,
                Err(e) => {
                    let idx = by_device.get(&o.group.device_id).unwrap_or(&all);
                    let (content, source) = messages_of(idx);
                    dead.push(dead_letter(&content, &[e.to_string()], &source));
                    continue;
                }
            };
            if existing.is_some_and(|e| same_content(e, &new)) {
                report.observations_unchanged += 1;
                continue;
            }
            report.observations_written += 1;
            entries.push(match found {
                // Found by its identifier in this transaction (under that identifier's
                // lock): updated by id, without searching for it again.
                Some(f) => {
                    let id = &f.record.id;
                    let mut new = new;
                    new["id"] = json!(id);
                    json!({"resource": new, "request": {"method": "PUT", "url": format!("Observation/{id}")}})
                }
                None => o.entry(new),
            });
        }
        let mut bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
            for mut d in dead {
                let id = uuid::Uuid::new_v4().to_string();
                d["id"] = json!(id);
                entries.push(json!({"resource": d, "request": {"method": "PUT", "url": format!("Basic/{id}")}}));
                report.dead_letters.push(id);
            }
        }
        let n_entries = bundle["entry"].as_array().map_or(0, Vec::len);
        if n_entries > 0 {
            self.transaction_into(tx.as_mut(), bundle).await?;
        }
        // Alert rules, on the readings just written, in the same store transaction: the
        // readings, the alerts and the rule state commit together (one commit per batch).
        // If anything fails (or the process dies first) none of it is stored and the batch
        // is not acknowledged; its redelivery is evaluated afresh from the stored state, so
        // each alert is written once.
        let mut touched = BTreeSet::new();
        if let Some(engine) = &ingest.rules {
            let now = time::OffsetDateTime::now_utc();
            let alerts = {
                let mut engine = engine.lock().expect("rule engine");
                let mut alerts = vec![];
                for m in &measurements {
                    let mut m = m.clone();
                    if m.patient_id.is_none() {
                        m.patient_id = devices
                            .get(&m.device_id)
                            .cloned()
                            .flatten()
                            .and_then(|d| d.patient_reference)
                            .map(|p| p.trim_start_matches("Patient/").to_string());
                    }
                    touched.insert(EngineState::shard_of(&subject_of(&m), RULE_STATE_SHARDS));
                    alerts.extend(engine.observe(&m, now));
                }
                alerts
            };
            let written = match self
                .write_alerts_into(tx.as_mut(), ingest, &alerts, &devices, &touched)
                .await
            {
                Ok(n) => tx.commit().await.map(|()| n).map_err(Into::into),
                Err(e) => {
                    drop(tx); // rolled back before the state is read again
                    Err(e)
                }
            };
            match written {
                Ok(n) => report.alert_resources += n,
                Err(e) => {
                    self.reload_rule_state(ingest, &touched).await;
                    return Err(e);
                }
            }
        } else if n_entries > 0 {
            tx.commit().await?;
        }
        // (nothing written: the transaction ends unused)
        ingest.counters.add(&report);
        Ok(report)
    }

    /// A raw payload from a source: a JSON message or an array of them. Anything else
    /// is dead-lettered with the reason (and its text), never dropped.
    pub async fn ingest_device_payload(
        &self,
        ingest: &DeviceIngest,
        payload: &[u8],
        source: &str,
    ) -> Result<IngestReport> {
        match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Array(items)) => self.ingest_device_messages(ingest, &items, source).await,
            Ok(v @ Value::Object(_)) => self.ingest_device_messages(ingest, &[v], source).await,
            other => {
                let reason = match other {
                    Ok(_) => {
                        "a device payload must be a JSON object or an array of objects".to_string()
                    }
                    Err(e) => format!("the payload is not JSON: {e}"),
                };
                let text = String::from_utf8_lossy(payload).into_owned();
                let mut letter = dead_letter(&Value::String(text), &[reason], source);
                let id = uuid::Uuid::new_v4().to_string();
                letter["id"] = json!(id);
                let mut tx = self.store().begin().await?;
                let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"resource": letter, "request": {"method": "PUT", "url": format!("Basic/{id}")}}]});
                self.transaction_into(tx.as_mut(), bundle).await?;
                tx.commit().await?;
                let report = IngestReport {
                    messages: 1,
                    dead_letters: vec![id],
                    ..Default::default()
                };
                ingest.counters.add(&report);
                Ok(report)
            }
        }
    }

    /// Missing-data rules: call periodically.
    pub async fn tick_device_rules(&self, ingest: &DeviceIngest) -> Result<usize> {
        let Some(engine) = &ingest.rules else {
            return Ok(0);
        };
        let _turn = ingest.rule_turn.lock().await;
        let alerts = engine
            .lock()
            .expect("rule engine")
            .tick(time::OffsetDateTime::now_utc());
        let touched: BTreeSet<u32> = alerts
            .iter()
            .map(|a| EngineState::shard_of(&a.subject, RULE_STATE_SHARDS))
            .collect();
        self.write_alerts(ingest, &alerts, &HashMap::new(), &touched)
            .await
    }

    /// Load the persisted alert-rule state (at start, before any message is processed).
    /// Returns the number of subjects with state.
    pub async fn load_device_rule_state(&self, ingest: &DeviceIngest) -> Result<usize> {
        if ingest.rules.is_none() {
            return Ok(0);
        }
        let _turn = ingest.rule_turn.lock().await;
        let all: BTreeSet<u32> = (0..RULE_STATE_SHARDS).collect();
        self.read_rule_state(ingest, &all).await
    }

    /// Drop a patient's alert-rule state (erasure) and persist that.
    pub async fn forget_device_rule_subject(
        &self,
        ingest: &DeviceIngest,
        patient: &str,
    ) -> Result<bool> {
        let Some(engine) = &ingest.rules else {
            return Ok(false);
        };
        let _turn = ingest.rule_turn.lock().await;
        if !engine.lock().expect("rule engine").forget(patient) {
            return Ok(false);
        }
        let touched = BTreeSet::from([EngineState::shard_of(patient, RULE_STATE_SHARDS)]);
        self.write_alerts(ingest, &[], &HashMap::new(), &touched)
            .await?;
        Ok(true)
    }

    /// Put the rule state parts `touched` back to what the store holds (after a failed
    /// write), so the next evaluation starts from the persisted state.
    async fn reload_rule_state(&self, ingest: &DeviceIngest, touched: &BTreeSet<u32>) {
        if let Err(e) = self.read_rule_state(ingest, touched).await {
            tracing::error!(error = %e, "cannot reload alert-rule state");
        }
    }

    /// Replace the engine's parts `parts` with the stored ones; returns the number of
    /// subjects with state. An unreadable part is not fatal: its subjects start afresh
    /// (an episode in progress may alert once more).
    async fn read_rule_state(&self, ingest: &DeviceIngest, parts: &BTreeSet<u32>) -> Result<usize> {
        let Some(engine) = &ingest.rules else {
            return Ok(0);
        };
        let keys: Vec<(String, String)> = parts
            .iter()
            .map(|&k| ("Binary".to_string(), rule_state_id(k)))
            .collect();
        let stored = self.store().read_many(&keys).await?;
        let mut engine = engine.lock().expect("rule engine");
        for &k in parts {
            engine.clear_shard(k, RULE_STATE_SHARDS);
        }
        for record in stored {
            match decode_rule_state(record.body.as_deref()) {
                Ok(part) => engine.load(part),
                Err(e) => {
                    tracing::warn!(id = %record.id, error = %e, "alert-rule state part ignored")
                }
            }
        }
        Ok(engine.state().subjects())
    }

    /// Write the alerts' Flag, Task and Communication resources and the rule-state parts
    /// `touched`, in one transaction. On failure the in-memory state of those parts is
    /// put back to the stored one.
    async fn write_alerts(
        &self,
        ingest: &DeviceIngest,
        alerts: &[salus_devices::Alert],
        devices: &HashMap<String, Option<DeviceRecord>>,
        touched: &BTreeSet<u32>,
    ) -> Result<usize> {
        let written = async {
            let mut tx = self.store().begin().await?;
            let n = self
                .write_alerts_into(tx.as_mut(), ingest, alerts, devices, touched)
                .await?;
            tx.commit().await?;
            Ok(n)
        }
        .await;
        if written.is_err() {
            self.reload_rule_state(ingest, touched).await;
        }
        written
    }

    /// The writes of [`FhirService::write_alerts`], into `tx` (not committed).
    async fn write_alerts_into(
        &self,
        tx: &mut dyn StoreTx,
        ingest: &DeviceIngest,
        alerts: &[salus_devices::Alert],
        devices: &HashMap<String, Option<DeviceRecord>>,
        touched: &BTreeSet<u32>,
    ) -> Result<usize> {
        let mut entries = vec![];
        for a in alerts {
            let Some(patient) = &a.patient_id else {
                tracing::warn!(rule = %a.rule_id, subject = %a.subject, "alert without a patient: not written");
                continue;
            };
            let device = a
                .device_id
                .as_ref()
                .and_then(|d| devices.get(d).cloned().flatten())
                .map(|d| d.device_reference);
            let ctx = AlertContext {
                patient_reference: format!("Patient/{patient}"),
                care_team_reference: ingest.care_team.clone(),
                device_reference: device,
                identifier_system: None,
            };
            for r in alert_resources(a, &ctx) {
                let rtype = r["resourceType"].as_str().unwrap_or("Basic").to_string();
                let url = match r.pointer("/identifier/0") {
                    Some(id) => format!(
                        "{rtype}?identifier={}|{}",
                        id["system"].as_str().unwrap_or(""),
                        id["value"].as_str().unwrap_or("")
                    ),
                    None => rtype.clone(),
                };
                let method = if url.contains('?') { "PUT" } else { "POST" };
                entries.push(json!({"resource": r, "request": {"method": method, "url": url}}));
            }
        }
        let parts: Vec<(u32, EngineState)> = match &ingest.rules {
            Some(engine) => {
                let engine = engine.lock().expect("rule engine");
                let parts = engine.state().shards(touched, RULE_STATE_SHARDS);
                touched
                    .iter()
                    .map(|&k| (k, parts.get(&k).cloned().unwrap_or_default()))
                    .collect()
            }
            None => vec![],
        };
        if entries.is_empty() && parts.is_empty() {
            return Ok(0);
        }
        let n = entries.len();
        // An episode that opened and closed within one batch writes its Flag twice (active,
        // then inactive). One transaction Bundle would resolve both conditional updates
        // before either is written and create two Flags; so each repeat of a URL goes into a
        // later Bundle of the same store transaction, which sees the earlier writes, and
        // the Flag gets both versions in order (subscribers see it raised, then cleared).
        let mut rounds: Vec<Vec<Value>> = vec![];
        let mut seen: HashMap<String, usize> = HashMap::new();
        for e in entries {
            let url = e["request"]["url"].as_str().unwrap_or("").to_string();
            let round = if url.contains('?') {
                let k = seen.entry(url).or_insert(0);
                *k += 1;
                *k - 1
            } else {
                0
            };
            if rounds.len() <= round {
                rounds.resize_with(round + 1, Vec::new);
            }
            rounds[round].push(e);
        }
        for entries in rounds {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            self.transaction_into(tx, bundle).await?;
        }
        for (k, part) in parts {
            write_rule_state(tx, k, &part).await?;
        }
        Ok(n)
    }
}

/// The current resources of `rtype` holding each of `ids`, looked up in `tx` with one
/// search per hundred identifiers instead of one each. Every identifier's criterion is
/// locked as a conditional operation on it would be (`tx_match`), so writers of the
/// same identifier in other transactions or processes still go one after the other.
/// Identifiers with characters that search syntax escapes (`,` `|` `$` `\\`) are looked up
/// one by one. The first match wins, as with `tx_match`. Each body is parsed once.
async fn tx_by_identifier(
    tx: &mut dyn StoreTx,
    rtype: &str,
    ids: &[Identifier],
    limits: &crate::service::Limits,
) -> Result<HashMap<Identifier, Arc<Found>>> {
    let special = |s: &str| s.contains([',', '|', '$', '\\']);
    let mut out: HashMap<Identifier, Arc<Found>> = HashMap::new();
    let (plain, escaped): (Vec<&Identifier>, Vec<&Identifier>) = ids
        .iter()
        .partition(|i| !special(&i.system) && !special(&i.value));
    for id in escaped {
        let url = id.search_url(rtype);
        let query = url.split_once('?').map_or("", |(_, q)| q);
        if let Some(r) = tx_match(tx, rtype, query, limits).await?.into_iter().next() {
            out.insert(id.clone(), Arc::new(Found::new(r)));
        }
    }
    for chunk in plain.chunks(100) {
        for id in chunk {
            tx.lock(&id.search_url(rtype)).await?;
        }
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("{}|{}", i.system, i.value))
            .collect();
        let options = salus_search::Options {
            default_count: limits.default_count,
            max_count: limits.max_count,
            strict: true,
        };
        let mut plan = salus_search::parse(
            rtype,
            &[("identifier".to_string(), values.join(","))],
            &options,
        )?;
        plan.query.count = chunk.len() * 2 + 1;
        plan.query.offset = 0;
        plan.query.page = Default::default();
        plan.query.with_total = false;
        let wanted: std::collections::HashSet<&Identifier> = chunk.iter().copied().collect();
        for r in tx.search(&plan.query).await?.entries {
            let found = Arc::new(Found::new(r));
            let Some(body) = &found.body else {
                continue;
            };
            for i in body["identifier"].as_array().into_iter().flatten() {
                let id = Identifier {
                    system: i["system"].as_str().unwrap_or("").to_string(),
                    value: i["value"].as_str().unwrap_or("").to_string(),
                };
                if wanted.contains(&id) && !out.contains_key(&id) {
                    out.insert(id, found.clone());
                }
            }
        }
    }
    Ok(out)
}

/// A current version found by [`tx_by_identifier`], with its body parsed (`None`: no
/// body or not JSON).
struct Found {
    record: salus_store::VersionRecord,
    body: Option<Value>,
}

impl Found {
    fn new(record: salus_store::VersionRecord) -> Self {
        let body = record
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok());
        Found { record, body }
    }
}

fn decode_rule_state(body: Option<&str>) -> std::result::Result<EngineState, String> {
    use base64::Engine;
    let body: Value = serde_json::from_str(body.unwrap_or("null")).map_err(|e| e.to_string())?;
    let data = body["data"].as_str().ok_or("no data")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Replace part `k` of the rule state. The part is erased and written afresh as version
/// 1 (no history: it changes with every batch and is the server's bookkeeping, not a
/// clinical record); an empty part is only erased.
async fn write_rule_state(tx: &mut dyn StoreTx, k: u32, part: &EngineState) -> Result<()> {
    use base64::Engine;
    let id = rule_state_id(k);
    tx.purge("Binary", &id).await?;
    if part.subjects() == 0 {
        return Ok(());
    }
    let now = crate::time::now_micros();
    let data = serde_json::to_vec(part).expect("rule state serializes");
    let body = json!({
        "resourceType": "Binary",
        "id": id,
        "meta": {
            "versionId": "1",
            "lastUpdated": crate::time::format_instant(now),
            "tag": [{"system": SALUS_CODES, "code": RULE_STATE_TAG}]
        },
        "contentType": "application/json",
        "data": base64::engine::general_purpose::STANDARD.encode(data),
    });
    tx.put(NewVersion {
        rtype: "Binary".into(),
        id: id.clone(),
        version: 1,
        expected_version: None,
        last_updated: now,
        method: Method::Post,
        index: salus_search::extract::extract(&body),
        body: Some(body.to_string()),
        fulltext: None,
        contained: vec![],
    })
    .await?;
    Ok(())
}
