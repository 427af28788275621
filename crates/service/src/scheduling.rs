//! Virtual-visit scheduling as FHIR operations on the [`FhirService`]: publishing
//! availability (`Schedule/[id]/$set-availability` → Slots), `$find`, `$hold`, `$book`,
//! `$cancel`, `$reschedule`, the waitlist, visit status changes with follow-up Tasks
//! and CarePlan activities, the reminder outbox, the care-manager worklist and
//! iCalendar feeds. The domain rules (slot generation, tokens, iCalendar, reminder
//! planning) live in `salus-scheduling`; this module stores and reads resources, each
//! operation in ONE store transaction so a booking and its slot change commit together.
//!
//! Double booking is impossible because every operation that changes a slot first takes
//! `StoreTx::lock("Slot/<id>")` (a PostgreSQL advisory lock held to the end of the
//! transaction; SQLite serialises writers anyway), re-reads the slot inside the
//! transaction, and writes it with the version it read as `expected_version`: a writer
//! that lost a race fails at `put`/`commit` and nothing of its transaction is kept.
//!
//! Authorization is not decided here (see `docs/scheduling.md`, "Who may do what"): the
//! HTTP layer will check the caller before calling these methods.

use crate::service::{check_body, new_id, put_version, valid_id};
use crate::{index, FhirError, FhirService, Result};
use salus_fhir::IssueCode;
use salus_scheduling::availability::CompiledRules;
use salus_scheduling::jiff::{civil::Date, tz::TimeZone, SignedDuration, Timestamp};
use salus_scheduling::{
    ical, reminders, stable_id, AvailabilityRules, Channel, ChannelError, JitsiProvider,
    OutboundMessage, VideoProvider, VisitStatus,
};
use salus_store::{Head, Method, SearchQuery, StoreTx, VersionRecord};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Extension on `Schedule` carrying the availability rules as JSON text (valueString).
pub const EXT_AVAILABILITY: &str =
    "https://salus.dev/fhir/StructureDefinition/schedule-availability";
/// Extension on `Slot`: a video visit (true) or in person (false).
pub const EXT_VIRTUAL: &str = "https://salus.dev/fhir/StructureDefinition/slot-virtual";
/// Extension on a held `Slot`: `patient` (valueReference) and `expires` (valueInstant).
pub const EXT_HOLD: &str = "https://salus.dev/fhir/StructureDefinition/slot-hold";
/// Extension on `Appointment` modelled on R5 `Appointment.virtualService`
/// (VirtualServiceDetail): `channelType` (valueCoding), `addressUrl` (valueUrl),
/// `sessionKey` (valueString), and per participant `participantLink` with `participant`
/// (valueReference) and `url` (valueUrl: the address with that participant's token).
pub const EXT_VIRTUAL_SERVICE: &str =
    "https://salus.dev/fhir/StructureDefinition/appointment-virtual-service";
/// Extension on an outbox `Communication`: when it is due (valueDateTime).
pub const EXT_DUE: &str = "https://salus.dev/fhir/StructureDefinition/communication-due";
/// Extension on an outbox `Communication` being delivered: `worker` (valueString) and
/// `leaseExpires` (valueInstant).
pub const EXT_CLAIM: &str = "https://salus.dev/fhir/StructureDefinition/outbox-claim";
/// Codes of this module: Task codes `waitlist`, `follow-up`; Communication categories
/// `reminder`, `notice`; CarePlan category `visit-follow-up`.
pub const CODES: &str = "https://salus.dev/fhir/CodeSystem/scheduling";
/// Visit-type codes (`Slot.serviceType`, `Appointment.serviceType`).
pub const VISIT_TYPES: &str = "https://salus.dev/fhir/CodeSystem/visit-type";
/// Communication.medium codes: `portal`, `sms`, `email` (the channel that delivers it).
pub const MEDIUM: &str = "https://salus.dev/fhir/CodeSystem/message-channel";
/// Slot identifiers that make day lookups exact index hits: the UTC date of the start
/// (`2026-03-30`) and the schedule with it (`Schedule/x@2026-03-30`).
pub const SLOT_DAY: &str = "https://salus.dev/fhir/NamingSystem/slot-day";
pub const SLOT_SCHEDULE_DAY: &str = "https://salus.dev/fhir/NamingSystem/slot-schedule-day";
/// Identifier system of outbox messages: the idempotency key.
pub const MESSAGE_KEY: &str = "https://salus.dev/fhir/NamingSystem/message-key";

/// Settings of the scheduling operations (`[scheduling]` in the configuration).
#[derive(Debug, Clone)]
pub struct SchedulingConfig {
    /// Days ahead Slots are generated for, unless the rules say otherwise.
    pub horizon_days: u32,
    /// How long `$hold` keeps a slot when the request names no duration, in minutes.
    pub hold_minutes: i64,
    /// Longest hold a client may ask for, in minutes.
    pub max_hold_minutes: i64,
    /// Reminders before a visit, in minutes (1440 = 24 h).
    pub reminder_offsets_minutes: Vec<i64>,
    /// Channel reminders to patients go through (`portal`, `sms`, `email`).
    pub patient_channel: String,
    /// How long a worker owns a claimed outbox message before another may take it.
    pub lease_seconds: i64,
    /// Days until a follow-up Task after a visit is due (overdue afterwards).
    pub follow_up_days: i64,
}

impl Default for SchedulingConfig {
    fn default() -> Self {
        SchedulingConfig {
            horizon_days: 90,
            hold_minutes: 10,
            max_hold_minutes: 60,
            reminder_offsets_minutes: vec![1440, 60],
            patient_channel: "portal".into(),
            lease_seconds: 120,
            follow_up_days: 14,
        }
    }
}

/// Configuration plus the pluggable video provider.
#[derive(Clone)]
pub struct Scheduling {
    pub config: SchedulingConfig,
    pub video: Arc<dyn VideoProvider>,
}

impl Default for Scheduling {
    /// Rooms under `https://meet.example.org` signed with a per-process random secret
    /// (tokens then verify only in this process: configure `video_secret` for real use).
    fn default() -> Self {
        let secret = uuid::Uuid::new_v4();
        Scheduling {
            config: SchedulingConfig::default(),
            video: Arc::new(JitsiProvider::new(
                "https://meet.example.org",
                secret.as_bytes(),
                "salus",
                30,
            )),
        }
    }
}

/// The request context: the time operations run at, and the public base URL links
/// (follow-up booking links) are made from.
#[derive(Debug, Clone)]
pub struct OpContext {
    pub now: Timestamp,
    pub base: String,
}

impl OpContext {
    pub fn now(base: &str) -> Self {
        OpContext {
            now: Timestamp::now(),
            base: base.trim_end_matches('/').to_string(),
        }
    }
}

/// What `$set-availability` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotReport {
    pub created: usize,
    pub removed: usize,
    pub unchanged: usize,
    /// Slots the rules produce that were not created because a booked or held slot
    /// overlaps them.
    pub blocked: usize,
}

/// `$find` criteria.
#[derive(Debug, Clone, Default)]
pub struct FindQuery {
    /// `system|code` or `code` of PractitionerRole.specialty / HealthcareService.specialty.
    pub specialty: Option<String>,
    pub visit_type: Option<String>,
    /// Practitioner.communication language (`de`, `urn:ietf:bcp:47|de`).
    pub language: Option<String>,
    pub is_virtual: Option<bool>,
    /// `Schedule/<id>`: one provider's slots.
    pub schedule: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub count: usize,
}

/// `$book` input.
#[derive(Debug, Clone)]
pub struct BookRequest {
    pub slot: String,
    pub patient: String,
    pub comment: Option<String>,
}

/// Waitlist entry (`Appointment/$waitlist`).
#[derive(Debug, Clone)]
pub struct WaitlistRequest {
    pub patient: String,
    pub schedule: String,
    pub visit_type: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
}

/// One outbox message a worker has claimed.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: String,
    pub version: u64,
    pub medium: String,
    pub message: OutboundMessage,
}

/// What one outbox pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxReport {
    pub sent: usize,
    pub failed: usize,
    /// Claimed by another worker first.
    pub skipped: usize,
}

// ---------------------------------------------------------------------------------
// small helpers

fn rule(msg: impl Into<String>) -> FhirError {
    FhirError::Invalid(vec![salus_fhir::Issue::error(IssueCode::BusinessRule, msg)])
}

/// `2026-03-30T07:00:00Z` (UTC, whole seconds), for search values and instants.
fn utc(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn parse_body(r: &VersionRecord) -> Result<Value> {
    serde_json::from_str(r.body.as_deref().unwrap_or("{}"))
        .map_err(|e| FhirError::Internal(format!("stored {}/{} is not JSON: {e}", r.rtype, r.id)))
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn instant_at(v: &Value, key: &str) -> Option<Timestamp> {
    str_at(v, key).and_then(salus_scheduling::parse_instant)
}

fn reference(r: &str) -> Value {
    json!({ "reference": r })
}

/// `Type/id` split, checked.
fn split_ref<'a>(r: &'a str, what: &str, types: &[&str]) -> Result<(&'a str, &'a str)> {
    let bad = || {
        FhirError::invalid_at(
            IssueCode::Value,
            what,
            format!("'{r}' is not a reference like {}/123", types[0]),
        )
    };
    let (t, id) = r.split_once('/').ok_or_else(bad)?;
    if !types.contains(&t) || !valid_id(id) {
        return Err(bad());
    }
    Ok((t, id))
}

/// The extension with `url` on a resource or complex extension.
fn ext<'a>(v: &'a Value, url: &str) -> Option<&'a Value> {
    v.get("extension")?
        .as_array()?
        .iter()
        .find(|e| str_at(e, "url") == Some(url))
}

/// Replace (or with `None` remove) the extension with `url`.
fn set_ext(v: &mut Value, url: &str, new: Option<Value>) {
    let Some(obj) = v.as_object_mut() else { return };
    let mut list: Vec<Value> = obj
        .get("extension")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    list.retain(|e| str_at(e, "url") != Some(url));
    if let Some(n) = new {
        list.push(n);
    }
    if list.is_empty() {
        obj.shift_remove("extension");
    } else {
        obj.insert("extension".into(), Value::Array(list));
    }
}

fn sub_ext<'a>(e: &'a Value, url: &str) -> Option<&'a Value> {
    ext(e, url)
}

/// A slot's hold: (patient, expiry).
fn hold_of(slot: &Value) -> Option<(String, Timestamp)> {
    let h = ext(slot, EXT_HOLD)?;
    let patient = sub_ext(h, "patient")?
        .get("valueReference")
        .and_then(|r| str_at(r, "reference"))?
        .to_string();
    let expires = sub_ext(h, "expires").and_then(|e| instant_at(e, "valueInstant"))?;
    Some((patient, expires))
}

/// A slot's status at `now`: an expired hold reads as free.
fn effective_status(slot: &Value, now: Timestamp) -> &str {
    match str_at(slot, "status").unwrap_or("free") {
        "busy-tentative" => match hold_of(slot) {
            Some((_, exp)) if exp <= now => "free",
            _ => "busy-tentative",
        },
        s => s,
    }
}

fn visit_type_of(v: &Value) -> Option<String> {
    v.get("serviceType")?
        .as_array()?
        .iter()
        .flat_map(|c| {
            c.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|c| str_at(c, "system") == Some(VISIT_TYPES))
        .and_then(|c| str_at(c, "code"))
        .map(str::to_string)
}

fn is_virtual(slot: &Value) -> bool {
    ext(slot, EXT_VIRTUAL)
        .and_then(|e| e.get("valueBoolean"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn participants(appt: &Value) -> Vec<String> {
    appt.get("participant")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("actor").and_then(|a| str_at(a, "reference")))
        .map(str::to_string)
        .collect()
}

fn patient_of(appt: &Value) -> Option<String> {
    participants(appt)
        .into_iter()
        .find(|r| r.starts_with("Patient/"))
}

/// The slot an appointment occupies (`Appointment.slot[0]`).
fn slot_of(appt: &Value) -> Option<String> {
    appt.get("slot")?
        .as_array()?
        .first()
        .and_then(|s| str_at(s, "reference"))
        .and_then(|r| r.strip_prefix("Slot/"))
        .map(str::to_string)
}

/// A search query from parameter pairs; `count` results at most.
fn query(rtype: &str, pairs: &[(&str, String)], count: usize) -> Result<SearchQuery> {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let opts = salus_search::Options {
        default_count: count,
        max_count: count.max(1),
        strict: true,
    };
    let mut q = salus_search::parse(rtype, &pairs, &opts)?.query;
    q.count = count;
    Ok(q)
}

/// Most resources one internal search reads.
const MAX_READ: usize = 50_000;

async fn tx_find(
    tx: &mut dyn StoreTx,
    rtype: &str,
    pairs: &[(&str, String)],
) -> Result<Vec<(VersionRecord, Value)>> {
    let q = query(rtype, pairs, MAX_READ)?;
    let page = tx.search(&q).await?;
    page.entries
        .into_iter()
        .map(|r| parse_body(&r).map(|b| (r, b)))
        .collect()
}

/// Read a resource inside the transaction; `what` names it in errors.
async fn tx_get(tx: &mut dyn StoreTx, rtype: &str, id: &str) -> Result<(VersionRecord, Value)> {
    match tx.read(rtype, id).await? {
        Some(r) if !r.is_deleted() => {
            let b = parse_body(&r)?;
            Ok((r, b))
        }
        Some(_) => Err(FhirError::Gone(format!("{rtype}/{id}"))),
        None => Err(FhirError::NotFound(format!("{rtype}/{id}"))),
    }
}

/// A referenced resource that must exist (400 otherwise: the request is wrong).
async fn tx_require(tx: &mut dyn StoreTx, r: &str, what: &str, types: &[&str]) -> Result<Value> {
    let (t, id) = split_ref(r, what, types)?;
    match tx.read(t, id).await? {
        Some(rec) if !rec.is_deleted() => parse_body(&rec),
        _ => Err(FhirError::invalid_at(
            IssueCode::NotFound,
            what,
            format!("{r} does not exist"),
        )),
    }
}

/// Validate and store `body` as the next version of `rtype/id` (`current`: the version
/// read in this transaction, which must still be the latest; `None`: a new resource).
async fn save(
    tx: &mut dyn StoreTx,
    rtype: &str,
    id: &str,
    mut body: Value,
    current: Option<&VersionRecord>,
) -> Result<VersionRecord> {
    body["id"] = Value::String(id.to_string());
    check_body(&body, Some(rtype))
        .map_err(|e| FhirError::Internal(format!("scheduling built an invalid {rtype}: {e}")))?;
    let index = index::extract(&body);
    let head = current.map(|c| Head {
        version: c.version,
        last_updated: c.last_updated,
        deleted: c.is_deleted(),
    });
    let method = if current.is_some() {
        Method::Put
    } else {
        Method::Post
    };
    Ok(put_version(tx, rtype, id, body, index, head, method)
        .await?
        .record)
}

async fn remove(tx: &mut dyn StoreTx, current: &VersionRecord) -> Result<()> {
    crate::service::tx_delete(tx, &current.rtype, &current.id, Some(current.version)).await?;
    Ok(())
}

/// Whether a conflict is the store's version check (another writer won), as opposed to
/// a rule of this module (`Slot/x is already booked`), whose message is kept.
fn lost_race(message: &str) -> bool {
    message.is_empty() || message.ends_with("was changed by another request; retry")
}

/// Run `f` in one store transaction and commit. A version conflict (another process
/// won a race for the same slot or message) becomes `conflict`'s message.
macro_rules! in_tx {
    ($svc:expr, $conflict:expr, |$tx:ident| $body:expr) => {{
        let mut guard = $svc.store().begin().await?;
        let result = {
            let $tx: &mut dyn StoreTx = guard.as_mut();
            $body
        };
        let result = match result {
            Ok(v) => guard.commit().await.map(|()| v).map_err(FhirError::from),
            Err(e) => Err(e),
        };
        result.map_err(|e| match e {
            FhirError::Conflict(m) if lost_race(&m) => FhirError::Conflict($conflict),
            other => other,
        })
    }};
}

fn slot_json(
    schedule_id: &str,
    s: &salus_scheduling::GeneratedSlot,
    rules: &CompiledRules,
) -> Value {
    let vt = rules.visit_type(&s.visit_type);
    let mut coding = json!({"system": VISIT_TYPES, "code": s.visit_type});
    if let Some(d) = vt.and_then(|v| v.display.as_deref()) {
        coding["display"] = json!(d);
    }
    let day = s.start.strftime("%Y-%m-%d").to_string();
    json!({
        "resourceType": "Slot",
        "extension": [{"url": EXT_VIRTUAL, "valueBoolean": s.is_virtual}],
        "identifier": [
            {"system": SLOT_DAY, "value": day},
            {"system": SLOT_SCHEDULE_DAY, "value": format!("Schedule/{schedule_id}@{day}")}
        ],
        "serviceType": [{"coding": [coding]}],
        "appointmentType": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v2-0276",
            "code": "ROUTINE"
        }]},
        "schedule": reference(&format!("Schedule/{schedule_id}")),
        "status": "free",
        "start": salus_scheduling::fhir_instant(s.start, &rules.tz),
        "end": salus_scheduling::fhir_instant(s.end, &rules.tz),
    })
}

fn slot_id(schedule_id: &str, s: &salus_scheduling::GeneratedSlot) -> String {
    stable_id(
        "slot",
        &[schedule_id, &s.start.as_second().to_string(), &s.visit_type],
    )
}

/// The availability rules stored on a Schedule.
fn rules_of(schedule: &Value) -> Result<Option<AvailabilityRules>> {
    let Some(e) = ext(schedule, EXT_AVAILABILITY) else {
        return Ok(None);
    };
    let text = str_at(e, "valueString").unwrap_or("");
    let v: Value = serde_json::from_str(text)
        .map_err(|e| FhirError::Internal(format!("stored availability is not JSON: {e}")))?;
    AvailabilityRules::from_json(&v)
        .map(Some)
        .map_err(|e| FhirError::Internal(format!("stored availability is invalid: {e}")))
}

fn rule_error(e: salus_scheduling::RuleError) -> FhirError {
    FhirError::invalid_at(
        IssueCode::Invalid,
        format!("availability.{}", e.path),
        e.message,
    )
}

impl FhirService {
    // -----------------------------------------------------------------------------
    // availability

    /// `POST Schedule/[id]/$set-availability`: store the rules on the Schedule and bring
    /// its future Slots in line — free slots the rules no longer produce are deleted,
    /// missing ones created, booked and held slots never touched (and new slots that
    /// would overlap them are not created).
    pub async fn set_availability(
        &self,
        sched: &Scheduling,
        schedule_id: &str,
        rules: &Value,
        ctx: &OpContext,
    ) -> Result<(SlotReport, VersionRecord)> {
        let parsed = AvailabilityRules::from_json(rules).map_err(rule_error)?;
        let compiled = parsed.compile().map_err(rule_error)?;
        let text = serde_json::to_string(&parsed).expect("rules serialise");
        in_tx!(
            self,
            format!("Schedule/{schedule_id} was changed concurrently; retry"),
            |tx| async {
                tx.lock(&format!("Schedule/{schedule_id}")).await?;
                let (cur, mut body) = tx_get(tx, "Schedule", schedule_id).await?;
                set_ext(
                    &mut body,
                    EXT_AVAILABILITY,
                    Some(json!({"url": EXT_AVAILABILITY, "valueString": text})),
                );
                let rec = save(tx, "Schedule", schedule_id, body, Some(&cur)).await?;
                let report = regenerate(tx, schedule_id, &compiled, sched, ctx.now).await?;
                Ok((report, rec))
            }
            .await
        )
    }

    /// Roll every Schedule with rules forward to the horizon and free expired holds
    /// (the sweeper `salus serve` runs periodically; also safe to run by hand).
    pub async fn refresh_schedules(&self, sched: &Scheduling, now: Timestamp) -> Result<usize> {
        let q = query("Schedule", &[], MAX_READ)?;
        let schedules = self.store().search(&q).await?.entries;
        let mut n = 0;
        for rec in schedules {
            let body = parse_body(&rec)?;
            if body.get("active").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let Some(rules) = rules_of(&body)? else {
                continue;
            };
            let compiled = rules.compile().map_err(rule_error)?;
            let id = rec.id.clone();
            in_tx!(self, format!("Schedule/{id} changed concurrently"), |tx| {
                async {
                    tx.lock(&format!("Schedule/{id}")).await?;
                    regenerate(tx, &id, &compiled, sched, now).await
                }
                .await
            })?;
            n += 1;
        }
        // expired holds become free (they already read as free; this tidies them up)
        let q = query(
            "Slot",
            &[
                ("status", "busy-tentative".into()),
                ("start", format!("ge{}", utc(now))),
            ],
            MAX_READ,
        )?;
        for rec in self.store().search(&q).await?.entries {
            let body = parse_body(&rec)?;
            if effective_status(&body, now) == "free" {
                let id = rec.id.clone();
                let _ = in_tx!(self, format!("Slot/{id} changed"), |tx| async {
                    tx.lock(&format!("Slot/{id}")).await?;
                    let (cur, mut slot) = tx_get(tx, "Slot", &id).await?;
                    if effective_status(&slot, now) != "free" {
                        return Ok(());
                    }
                    slot["status"] = json!("free");
                    set_ext(&mut slot, EXT_HOLD, None);
                    save(tx, "Slot", &id, slot, Some(&cur)).await.map(|_| ())
                }
                .await);
            }
        }
        Ok(n)
    }

    // -----------------------------------------------------------------------------
    // $find

    /// `Appointment/$find`: free slots (and slots whose hold expired) matching the
    /// criteria, earliest first.
    pub async fn find_slots(
        &self,
        sched: &Scheduling,
        q: &FindQuery,
        now: Timestamp,
    ) -> Result<Vec<Value>> {
        let start = q.start.filter(|s| *s > now).unwrap_or(now);
        let end = q.end.unwrap_or_else(|| {
            start
                .checked_add(SignedDuration::from_hours(
                    24 * i64::from(sched.config.horizon_days),
                ))
                .unwrap_or(start)
        });
        if end <= start {
            return Err(FhirError::invalid_at(
                IssueCode::Invalid,
                "end",
                "the time window ends before it starts",
            ));
        }
        let store = self.store();
        let search = |rtype: &'static str, pairs: Vec<(&'static str, String)>| async move {
            let q = query(rtype, &pairs, MAX_READ)?;
            Ok::<_, FhirError>(store.search(&q).await?.entries)
        };
        // Providers: by specialty (roles and services), narrowed by language.
        let mut actors: Option<HashSet<String>> = None;
        if let Some(sp) = &q.specialty {
            let mut set = HashSet::new();
            for r in search("PractitionerRole", vec![("specialty", sp.clone())]).await? {
                set.insert(format!("PractitionerRole/{}", r.id));
            }
            for r in search("HealthcareService", vec![("specialty", sp.clone())]).await? {
                set.insert(format!("HealthcareService/{}", r.id));
            }
            actors = Some(set);
        }
        if let Some(lang) = &q.language {
            let speakers: Vec<String> =
                search("Practitioner", vec![("communication", lang.clone())])
                    .await?
                    .into_iter()
                    .map(|r| format!("Practitioner/{}", r.id))
                    .collect();
            let mut roles = HashSet::new();
            for chunk in speakers.chunks(100) {
                for r in search("PractitionerRole", vec![("practitioner", chunk.join(","))]).await?
                {
                    roles.insert(format!("PractitionerRole/{}", r.id));
                }
            }
            actors = Some(match actors {
                Some(a) => a.intersection(&roles).cloned().collect(),
                None => roles,
            });
        }
        let mut schedules: Option<Vec<String>> = None;
        if let Some(actors) = &actors {
            let list: Vec<String> = actors.iter().cloned().collect();
            let mut found = Vec::new();
            for chunk in list.chunks(100) {
                for r in search("Schedule", vec![("actor", chunk.join(","))]).await? {
                    found.push(format!("Schedule/{}", r.id));
                }
            }
            schedules = Some(found);
        }
        if let Some(s) = &q.schedule {
            split_ref(s, "schedule", &["Schedule"])?;
            schedules = Some(match schedules {
                Some(list) => list.into_iter().filter(|x| x == s).collect(),
                None => vec![s.clone()],
            });
        }
        if schedules.as_ref().is_some_and(Vec::is_empty) {
            return Ok(vec![]);
        }
        let count = q.count.clamp(1, 1000);
        // A window of up to a week: look the slots up by their day identifiers (exact
        // token hits: one schedule-day, or one day across all providers, each a few
        // thousand slots at most) and filter window, status and type here. An open
        // date range would make the database walk every future slot.
        if end.duration_since(start) <= SignedDuration::from_hours(24 * 7) {
            let mut days = Vec::new();
            let mut d = start.to_zoned(TimeZone::UTC).date();
            let last = end.to_zoned(TimeZone::UTC).date();
            while d <= last {
                days.push(d.to_string());
                d = match d.tomorrow() {
                    Ok(n) => n,
                    Err(_) => break,
                };
            }
            // One exact lookup per value: a long OR of token values is not an index
            // hit for every backend. Many schedules: look the days up and keep the
            // wanted schedules' slots.
            let wanted: Option<HashSet<&str>> = schedules
                .as_ref()
                .map(|l| l.iter().map(String::as_str).collect());
            let values: Vec<String> = match &schedules {
                Some(list) if list.len() * days.len() <= 128 => list
                    .iter()
                    .flat_map(|s| {
                        days.iter()
                            .map(move |d| format!("{SLOT_SCHEDULE_DAY}|{s}@{d}"))
                    })
                    .collect(),
                _ => days.iter().map(|d| format!("{SLOT_DAY}|{d}")).collect(),
            };
            let mut out: Vec<(Timestamp, Value)> = Vec::new();
            for value in values {
                let qq = query("Slot", &[("identifier", value)], MAX_READ)?;
                for r in store.search(&qq).await?.entries {
                    let b = parse_body(&r)?;
                    let sref = b.get("schedule").and_then(|x| str_at(x, "reference"));
                    if wanted
                        .as_ref()
                        .is_some_and(|w| !sref.is_some_and(|s| w.contains(s)))
                    {
                        continue;
                    }
                    let st = instant_at(&b, "start").unwrap_or(now);
                    if st < start || st >= end {
                        continue;
                    }
                    if effective_status(&b, now) != "free"
                        || q.is_virtual.is_some_and(|v| v != is_virtual(&b))
                        || q.visit_type
                            .as_ref()
                            .is_some_and(|vt| visit_type_of(&b).as_ref() != Some(vt))
                    {
                        continue;
                    }
                    out.push((st, b));
                }
            }
            out.sort_by_key(|(s, _)| *s);
            out.truncate(count);
            return Ok(out.into_iter().map(|(_, b)| b).collect());
        }
        let mut base: Vec<(&'static str, String)> = vec![
            ("status", "free,busy-tentative".into()),
            ("start", format!("ge{}", utc(start))),
            ("start", format!("lt{}", utc(end))),
            ("_sort", "start".into()),
        ];
        if let Some(vt) = &q.visit_type {
            base.push(("service-type", format!("{VISIT_TYPES}|{vt}")));
        }
        let mut out: Vec<(Timestamp, Value)> = Vec::new();
        let chunks: Vec<Option<String>> = match &schedules {
            None => vec![None],
            Some(list) => list.chunks(200).map(|c| Some(c.join(","))).collect(),
        };
        for chunk in chunks {
            let mut pairs = base.clone();
            if let Some(c) = chunk {
                pairs.push(("schedule", c));
            }
            // over-fetch: held slots and the virtual filter drop some
            let qq = query("Slot", &pairs, (count * 3).min(MAX_READ))?;
            for r in store.search(&qq).await?.entries {
                let b = parse_body(&r)?;
                if effective_status(&b, now) != "free" {
                    continue;
                }
                if q.is_virtual.is_some_and(|v| v != is_virtual(&b)) {
                    continue;
                }
                let s = instant_at(&b, "start").unwrap_or(now);
                out.push((s, b));
            }
        }
        out.sort_by_key(|(s, _)| *s);
        out.truncate(count);
        Ok(out.into_iter().map(|(_, b)| b).collect())
    }

    // -----------------------------------------------------------------------------
    // $hold, $book

    /// `Appointment/$hold`: reserve a slot for `patient` for `minutes` (config default):
    /// `busy-tentative` with an expiry, after which it reads as free again.
    pub async fn hold_slot(
        &self,
        sched: &Scheduling,
        slot_id: &str,
        patient: &str,
        minutes: Option<i64>,
        now: Timestamp,
    ) -> Result<Value> {
        let minutes = minutes.unwrap_or(sched.config.hold_minutes);
        if minutes < 1 || minutes > sched.config.max_hold_minutes {
            return Err(FhirError::invalid_at(
                IssueCode::Value,
                "minutes",
                format!(
                    "a hold lasts 1 to {} minutes",
                    sched.config.max_hold_minutes
                ),
            ));
        }
        let expires = now
            .checked_add(SignedDuration::from_mins(minutes))
            .map_err(|e| FhirError::invalid(e.to_string()))?;
        in_tx!(
            self,
            format!("Slot/{slot_id} was just taken by another request"),
            |tx| async {
                tx_require(tx, patient, "patient", &["Patient"]).await?;
                tx.lock(&format!("Slot/{slot_id}")).await?;
                let (cur, slot) = tx_get(tx, "Slot", slot_id).await?;
                check_takeable(&slot, slot_id, patient, now)?;
                if instant_at(&slot, "start").is_none_or(|s| s <= now) {
                    return Err(rule(format!("Slot/{slot_id} is in the past")));
                }
                let body = hold(slot, patient, expires);
                let rec = save(tx, "Slot", slot_id, body, Some(&cur)).await?;
                parse_body(&rec)
            }
            .await
        )
    }

    /// `Appointment/$book`: create a booked Appointment for the slot and mark the slot
    /// busy, in one transaction. A slot booked, or held for another patient, is a 409.
    pub async fn book(
        &self,
        sched: &Scheduling,
        req: &BookRequest,
        ctx: &OpContext,
    ) -> Result<VersionRecord> {
        let slot_id = split_ref(&req.slot, "slot", &["Slot"])?.1.to_string();
        let now = ctx.now;
        in_tx!(
            self,
            format!("Slot/{slot_id} was just taken by another request"),
            |tx| async {
                tx_require(tx, &req.patient, "patient", &["Patient"]).await?;
                tx.lock(&format!("Slot/{slot_id}")).await?;
                let (cur, slot) = tx_get(tx, "Slot", &slot_id).await?;
                check_takeable(&slot, &slot_id, &req.patient, now)?;
                let start = instant_at(&slot, "start")
                    .ok_or_else(|| FhirError::Internal(format!("Slot/{slot_id} has no start")))?;
                if start <= now {
                    return Err(rule(format!("Slot/{slot_id} is in the past")));
                }
                let appt_id = new_id();
                let appt = appointment_for(
                    tx,
                    sched,
                    &appt_id,
                    &slot,
                    &req.patient,
                    req.comment.as_deref(),
                    now,
                )
                .await?;
                let mut busy = slot.clone();
                busy["status"] = json!("busy");
                set_ext(&mut busy, EXT_HOLD, None);
                save(tx, "Slot", &slot_id, busy, Some(&cur)).await?;
                let rec = save(tx, "Appointment", &appt_id, appt.clone(), None).await?;
                plan_reminders(tx, sched, &appt_id, &appt, now).await?;
                close_waitlist(tx, &req.patient, &slot).await?;
                Ok(rec)
            }
            .await
        )
    }

    /// `Appointment/[id]/$cancel`: the appointment becomes cancelled, its slot free,
    /// pending reminders stop, participants are notified and the slot is offered to the
    /// first patient on the waitlist.
    pub async fn cancel(
        &self,
        sched: &Scheduling,
        appt_id: &str,
        reason: Option<&str>,
        ctx: &OpContext,
    ) -> Result<VersionRecord> {
        let now = ctx.now;
        in_tx!(
            self,
            format!("Appointment/{appt_id} was changed concurrently; retry"),
            |tx| async {
                tx.lock(&format!("Appointment/{appt_id}")).await?;
                let (cur, mut appt) = tx_get(tx, "Appointment", appt_id).await?;
                let status = appt_status(&appt)?;
                status
                    .transition(VisitStatus::Cancelled)
                    .map_err(|m| rule(format!("Appointment/{appt_id}: {m}")))?;
                appt["status"] = json!("cancelled");
                if let Some(r) = reason {
                    appt["cancelationReason"] = json!({ "text": r });
                }
                if let Some(sid) = slot_of(&appt) {
                    free_slot(tx, sched, &sid, now).await?;
                }
                stop_reminders(tx, appt_id).await?;
                let rec = save(tx, "Appointment", appt_id, appt.clone(), Some(&cur)).await?;
                notify_participants(
                    tx,
                    sched,
                    &appt,
                    appt_id,
                    "cancelled",
                    &format!("Your visit on {} has been cancelled.", when(&appt)),
                    now,
                )
                .await?;
                Ok(rec)
            }
            .await
        )
    }

    /// `Appointment/[id]/$reschedule`: move a booked appointment to another slot
    /// atomically; into a slot that is not free (or held for someone else) → 409 and
    /// nothing changes.
    pub async fn reschedule(
        &self,
        sched: &Scheduling,
        appt_id: &str,
        new_slot: &str,
        ctx: &OpContext,
    ) -> Result<VersionRecord> {
        let new_id_ = split_ref(new_slot, "slot", &["Slot"])?.1.to_string();
        let now = ctx.now;
        in_tx!(
            self,
            format!("Slot/{new_id_} was just taken by another request"),
            |tx| {
                async {
                tx.lock(&format!("Appointment/{appt_id}")).await?;
                let (cur, appt) = tx_get(tx, "Appointment", appt_id).await?;
                let status = appt_status(&appt)?;
                if status != VisitStatus::Booked {
                    return Err(rule(format!(
                        "Appointment/{appt_id} is {} and only a booked appointment can be rescheduled",
                        status.as_str()
                    )));
                }
                let patient = patient_of(&appt)
                    .ok_or_else(|| rule(format!("Appointment/{appt_id} has no patient")))?;
                let old = slot_of(&appt);
                if old.as_deref() == Some(new_id_.as_str()) {
                    return Err(rule(format!("Appointment/{appt_id} is already in Slot/{new_id_}")));
                }
                // lock both slots in one order so two reschedules cannot deadlock
                let mut keys: Vec<&str> = vec![new_id_.as_str()];
                if let Some(o) = old.as_deref() {
                    keys.push(o);
                }
                keys.sort_unstable();
                for k in keys {
                    tx.lock(&format!("Slot/{k}")).await?;
                }
                let (ncur, nslot) = tx_get(tx, "Slot", &new_id_).await?;
                check_takeable(&nslot, &new_id_, &patient, now)?;
                if instant_at(&nslot, "start").is_none_or(|s| s <= now) {
                    return Err(rule(format!("Slot/{new_id_} is in the past")));
                }
                let mut moved = appointment_for(tx, sched, appt_id, &nslot, &patient, None, now).await?;
                // keep what the booking said (comment, created) on the moved appointment
                for key in ["comment", "created", "description"] {
                    if let Some(v) = appt.get(key) {
                        moved[key] = v.clone();
                    }
                }
                let mut busy = nslot.clone();
                busy["status"] = json!("busy");
                set_ext(&mut busy, EXT_HOLD, None);
                save(tx, "Slot", &new_id_, busy, Some(&ncur)).await?;
                if let Some(o) = &old {
                    free_slot(tx, sched, o, now).await?;
                }
                stop_reminders(tx, appt_id).await?;
                let rec = save(tx, "Appointment", appt_id, moved.clone(), Some(&cur)).await?;
                plan_reminders(tx, sched, appt_id, &moved, now).await?;
                notify_participants(
                    tx,
                    sched,
                    &moved,
                    appt_id,
                    "rescheduled",
                    &format!("Your visit on {} has moved to {}.", when(&appt), when(&moved)),
                    now,
                )
                .await?;
                Ok(rec)
            }
            .await
            }
        )
    }

    /// `Appointment/$waitlist`: put a patient on the waitlist of a schedule (a `Task`,
    /// code `waitlist`, status `requested`, `restriction.period` the acceptable window).
    pub async fn join_waitlist(
        &self,
        req: &WaitlistRequest,
        ctx: &OpContext,
    ) -> Result<VersionRecord> {
        split_ref(&req.schedule, "schedule", &["Schedule"])?;
        in_tx!(
            self,
            "waitlist changed concurrently; retry".to_string(),
            |tx| {
                async {
            tx_require(tx, &req.patient, "patient", &["Patient"]).await?;
            tx_require(tx, &req.schedule, "schedule", &["Schedule"]).await?;
            let mut task = json!({
                "resourceType": "Task",
                "status": "requested",
                "intent": "order",
                "code": {"coding": [{"system": CODES, "code": "waitlist", "display": "Waitlist for a visit"}]},
                "focus": reference(&req.schedule),
                "for": reference(&req.patient),
                "authoredOn": utc(ctx.now),
            });
            let mut period = Map::new();
            if let Some(s) = req.start {
                period.insert("start".into(), json!(utc(s)));
            }
            if let Some(e) = req.end {
                period.insert("end".into(), json!(utc(e)));
            }
            if !period.is_empty() {
                task["restriction"] = json!({ "period": period });
            }
            if let Some(vt) = &req.visit_type {
                task["input"] = json!([{
                    "type": {"coding": [{"system": CODES, "code": "visit-type"}]},
                    "valueCode": vt
                }]);
            }
            save(tx, "Task", &new_id(), task, None).await
        }
        .await
            }
        )
    }

    /// `Appointment/[id]/$set-status`: check-in (`arrived`), `fulfilled`, `noshow`
    /// (`cancelled` goes through [`FhirService::cancel`]). A fulfilled visit gets a
    /// follow-up Task for the care team, a CarePlan activity and a booking link.
    pub async fn set_visit_status(
        &self,
        sched: &Scheduling,
        appt_id: &str,
        to: &str,
        ctx: &OpContext,
    ) -> Result<VersionRecord> {
        let target = VisitStatus::parse(to).ok_or_else(|| {
            FhirError::invalid_at(
                IssueCode::CodeInvalid,
                "status",
                format!(
                    "'{to}' is not an appointment status (arrived, fulfilled, noshow, cancelled)"
                ),
            )
        })?;
        if target == VisitStatus::Cancelled {
            return self.cancel(sched, appt_id, None, ctx).await;
        }
        in_tx!(
            self,
            format!("Appointment/{appt_id} was changed concurrently; retry"),
            |tx| async {
                tx.lock(&format!("Appointment/{appt_id}")).await?;
                let (cur, mut appt) = tx_get(tx, "Appointment", appt_id).await?;
                appt_status(&appt)?
                    .transition(target)
                    .map_err(|m| rule(format!("Appointment/{appt_id}: {m}")))?;
                appt["status"] = json!(target.as_str());
                if target == VisitStatus::Noshow {
                    stop_reminders(tx, appt_id).await?;
                }
                let rec = save(tx, "Appointment", appt_id, appt.clone(), Some(&cur)).await?;
                if target == VisitStatus::Fulfilled {
                    follow_up(tx, sched, appt_id, &appt, ctx).await?;
                }
                Ok(rec)
            }
            .await
        )
    }

    // -----------------------------------------------------------------------------
    // outbox

    /// Claim up to `limit` due outbox messages for `worker` (status `in-progress` with
    /// a lease). A message claimed by another worker whose lease has not ended is left
    /// alone; one whose lease ended (the worker died) is taken over.
    pub async fn claim_due_messages(
        &self,
        sched: &Scheduling,
        worker: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<ClaimedMessage>> {
        let q = query(
            "Communication",
            &[
                ("status", "preparation,in-progress".into()),
                ("identifier", format!("{MESSAGE_KEY}|")),
            ],
            MAX_READ,
        )?;
        let mut due: Vec<(Timestamp, String)> = Vec::new();
        for r in self.store().search(&q).await?.entries {
            let b = parse_body(&r)?;
            if let Some(d) = claimable(&b, now) {
                due.push((d, r.id.clone()));
            }
        }
        due.sort();
        let lease = now
            .checked_add(SignedDuration::from_secs(sched.config.lease_seconds))
            .unwrap_or(now);
        let mut out = Vec::new();
        for (_, id) in due {
            if out.len() >= limit {
                break;
            }
            let claimed = in_tx!(
                self,
                format!("Communication/{id} claimed by another worker"),
                |tx| async {
                    let (cur, mut body) = tx_get(tx, "Communication", &id).await?;
                    if claimable(&body, now).is_none() {
                        return Ok(None);
                    }
                    body["status"] = json!("in-progress");
                    set_ext(
                        &mut body,
                        EXT_CLAIM,
                        Some(json!({"url": EXT_CLAIM, "extension": [
                            {"url": "worker", "valueString": worker},
                            {"url": "leaseExpires", "valueInstant": utc(lease)}
                        ]})),
                    );
                    let rec = save(tx, "Communication", &id, body.clone(), Some(&cur)).await?;
                    Ok(Some((rec.version, body)))
                }
                .await
            );
            match claimed {
                Ok(Some((version, body))) => {
                    let message = self.outbound(&id, &body).await?;
                    let medium = medium_of(&body);
                    out.push(ClaimedMessage {
                        id,
                        version,
                        medium,
                        message,
                    });
                }
                Ok(None) | Err(FhirError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Record a claimed message as sent (`completed`, `sent` = now). Refused (409)
    /// when another worker took the message over in the meantime.
    pub async fn complete_message(&self, m: &ClaimedMessage, now: Timestamp) -> Result<()> {
        let id = m.id.clone();
        in_tx!(
            self,
            format!("Communication/{id} was taken over by another worker"),
            |tx| async {
                let (cur, mut body) = tx_get(tx, "Communication", &id).await?;
                if cur.version != m.version {
                    return Err(FhirError::Conflict(String::new()));
                }
                body["status"] = json!("completed");
                body["sent"] = json!(utc(now));
                set_ext(&mut body, EXT_CLAIM, None);
                save(tx, "Communication", &id, body, Some(&cur))
                    .await
                    .map(|_| ())
            }
            .await
        )
    }

    /// A message that cannot be delivered on its channel (no address): `not-done`.
    async fn fail_message(&self, m: &ClaimedMessage, why: &str) -> Result<()> {
        let id = m.id.clone();
        in_tx!(self, format!("Communication/{id} was taken over"), |tx| {
            async {
                let (cur, mut body) = tx_get(tx, "Communication", &id).await?;
                if cur.version != m.version {
                    return Err(FhirError::Conflict(String::new()));
                }
                body["status"] = json!("not-done");
                body["statusReason"] = json!({ "text": why });
                set_ext(&mut body, EXT_CLAIM, None);
                save(tx, "Communication", &id, body, Some(&cur))
                    .await
                    .map(|_| ())
            }
            .await
        })
    }

    /// One outbox pass: claim due messages, deliver each on its channel, record it.
    /// A transport failure leaves the message claimed; it is retried when the lease ends.
    pub async fn process_outbox(
        &self,
        sched: &Scheduling,
        channels: &[Arc<dyn Channel>],
        worker: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<OutboxReport> {
        let mut report = OutboxReport::default();
        for m in self.claim_due_messages(sched, worker, now, limit).await? {
            let Some(ch) = channels.iter().find(|c| c.name() == m.medium) else {
                self.fail_message(&m, &format!("no '{}' channel is configured", m.medium))
                    .await?;
                report.failed += 1;
                continue;
            };
            match ch.send(&m.message).await {
                Ok(()) => match self.complete_message(&m, now).await {
                    Ok(()) => report.sent += 1,
                    Err(FhirError::Conflict(_)) => report.skipped += 1,
                    Err(e) => return Err(e),
                },
                Err(ChannelError::NoAddress(r)) => {
                    self.fail_message(&m, &format!("{r} has no address on {}", m.medium))
                        .await?;
                    report.failed += 1;
                }
                Err(ChannelError::Transport(e)) => {
                    tracing::warn!(message = %m.id, error = %e, "delivery failed; retried after the lease");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    async fn outbound(&self, id: &str, body: &Value) -> Result<OutboundMessage> {
        let recipient = body
            .get("recipient")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|r| str_at(r, "reference"))
            .unwrap_or("")
            .to_string();
        let medium = medium_of(body);
        let mut address = None;
        if let Some((t, rid)) = recipient.split_once('/') {
            if let Ok(r) = self.read(t, rid).await {
                let p = parse_body(&r)?;
                let want = match medium.as_str() {
                    "sms" => "sms",
                    "email" => "email",
                    _ => "",
                };
                address = p
                    .get("telecom")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|t| {
                        str_at(t, "system") == Some(want)
                            || (want == "sms"
                                && str_at(t, "system") == Some("phone")
                                && str_at(t, "use") == Some("mobile"))
                    })
                    .and_then(|t| str_at(t, "value"))
                    .map(str::to_string);
            }
        }
        let key = body
            .get("identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|i| str_at(i, "system") == Some(MESSAGE_KEY))
            .and_then(|i| str_at(i, "value"))
            .unwrap_or(id)
            .to_string();
        let text = body
            .get("payload")
            .and_then(Value::as_array)
            .and_then(|p| p.first())
            .and_then(|p| str_at(p, "contentString"))
            .unwrap_or("")
            .to_string();
        let subject = body
            .get("topic")
            .and_then(|t| str_at(t, "text"))
            .unwrap_or("Your visit")
            .to_string();
        Ok(OutboundMessage {
            communication: format!("Communication/{id}"),
            idempotency_key: key,
            recipient,
            address,
            subject,
            body: text,
        })
    }

    // -----------------------------------------------------------------------------
    // worklist, iCalendar

    /// `GET [base]/$worklist?careTeam=CareTeam/x&date=YYYY-MM-DD[&tz=Zone]`: the care
    /// team's visits of that day, its no-shows, pending follow-ups and overdue Tasks.
    pub async fn worklist(
        &self,
        care_team: &str,
        date: &str,
        tz: Option<&str>,
        now: Timestamp,
    ) -> Result<Value> {
        let (_, team_id) = split_ref(care_team, "careTeam", &["CareTeam"])?;
        let team = parse_body(&self.read("CareTeam", team_id).await?)?;
        let zone = match tz {
            Some(z) => TimeZone::get(z).map_err(|_| {
                FhirError::invalid_at(
                    IssueCode::Value,
                    "tz",
                    format!("'{z}' is not an IANA time zone"),
                )
            })?,
            None => TimeZone::UTC,
        };
        let day: Date = date.parse().map_err(|_| {
            FhirError::invalid_at(
                IssueCode::Value,
                "date",
                format!("'{date}' is not a date as YYYY-MM-DD"),
            )
        })?;
        let from = day
            .to_zoned(zone.clone())
            .map_err(|e| FhirError::invalid(e.to_string()))?;
        let to = day
            .tomorrow()
            .and_then(|d| d.to_zoned(zone.clone()))
            .map_err(|e| FhirError::invalid(e.to_string()))?;
        let members: Vec<String> = team
            .get("participant")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("member").and_then(|m| str_at(m, "reference")))
            .map(str::to_string)
            .collect();
        let subject = team
            .get("subject")
            .and_then(|s| str_at(s, "reference"))
            .map(str::to_string);
        let store = self.store();
        let search = |rtype: &'static str, pairs: Vec<(&'static str, String)>| async move {
            let q = query(rtype, &pairs, MAX_READ)?;
            store
                .search(&q)
                .await?
                .entries
                .iter()
                .map(parse_body)
                .collect::<Result<Vec<Value>>>()
        };
        let window = |pairs: &mut Vec<(&'static str, String)>| {
            pairs.push(("date", format!("ge{}", utc(from.timestamp()))));
            pairs.push(("date", format!("lt{}", utc(to.timestamp()))));
        };
        let mut appts: BTreeMap<String, Value> = BTreeMap::new();
        let providers: Vec<&String> = members
            .iter()
            .filter(|m| m.starts_with("Practitioner"))
            .collect();
        if !providers.is_empty() {
            let list: Vec<&str> = providers.iter().map(|s| s.as_str()).collect();
            let mut p = vec![("actor", list.join(","))];
            window(&mut p);
            for a in search("Appointment", p).await? {
                appts.insert(str_at(&a, "id").unwrap_or("").to_string(), a);
            }
        }
        if let Some(s) = subject.as_deref().filter(|s| s.starts_with("Patient/")) {
            let mut p = vec![("patient", s.to_string())];
            window(&mut p);
            for a in search("Appointment", p).await? {
                appts.insert(str_at(&a, "id").unwrap_or("").to_string(), a);
            }
        }
        let mut list: Vec<Value> = appts.into_values().collect();
        list.sort_by_key(|a| instant_at(a, "start"));
        let (no_shows, visits): (Vec<Value>, Vec<Value>) = list
            .into_iter()
            .filter(|a| str_at(a, "status") != Some("cancelled"))
            .partition(|a| str_at(a, "status") == Some("noshow"));
        let mut owners = vec![care_team.to_string()];
        owners.extend(members.iter().cloned());
        let tasks = search(
            "Task",
            vec![
                ("owner", owners.join(",")),
                (
                    "status",
                    "requested,accepted,ready,in-progress,on-hold".into(),
                ),
            ],
        )
        .await?;
        let overdue = |t: &Value| {
            t.get("restriction")
                .and_then(|r| r.get("period"))
                .and_then(|p| instant_at(p, "end"))
                .is_some_and(|e| e < now)
        };
        let is_follow_up = |t: &Value| {
            t.get("code")
                .and_then(|c| c.get("coding"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| {
                    str_at(c, "system") == Some(CODES) && str_at(c, "code") == Some("follow-up")
                })
        };
        let overdue_tasks: Vec<&Value> = tasks.iter().filter(|t| overdue(t)).collect();
        let pending: Vec<&Value> = tasks
            .iter()
            .filter(|t| is_follow_up(t) && !overdue(t))
            .collect();
        Ok(json!({
            "careTeam": care_team,
            "date": date,
            "timeZone": zone.iana_name().unwrap_or("UTC"),
            "visits": visits,
            "noShows": no_shows,
            "pendingFollowUps": pending,
            "overdueTasks": overdue_tasks,
        }))
    }

    /// `GET [base]/(Practitioner|PractitionerRole|Patient)/[id]/$ics`: the person's
    /// appointments as an iCalendar feed (join links are the person's own).
    pub async fn ics_feed(&self, rtype: &str, id: &str, now: Timestamp) -> Result<String> {
        let param = match rtype {
            "Patient" => "patient",
            "Practitioner" => "practitioner",
            "PractitionerRole" => "actor",
            other => {
                return Err(FhirError::NotSupported(format!(
                    "$ics is offered for Patient, Practitioner and PractitionerRole, not {other}"
                )))
            }
        };
        let who = format!("{rtype}/{id}");
        let owner = parse_body(&self.read(rtype, id).await?)?;
        let q = query(
            "Appointment",
            &[(param, who.clone()), ("_sort", "date".into())],
            5_000,
        )?;
        let mut events = Vec::new();
        for r in self.store().search(&q).await?.entries {
            let a = parse_body(&r)?;
            let (Some(start), Some(end)) = (instant_at(&a, "start"), instant_at(&a, "end")) else {
                continue;
            };
            let vs = ext(&a, EXT_VIRTUAL_SERVICE);
            let url = vs.and_then(|v| {
                v.get("extension")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| str_at(e, "url") == Some("participantLink"))
                    .find(|e| {
                        sub_ext(e, "participant")
                            .and_then(|p| p.get("valueReference"))
                            .and_then(|r| str_at(r, "reference"))
                            == Some(who.as_str())
                    })
                    .and_then(|e| sub_ext(e, "url"))
                    .and_then(|u| str_at(u, "valueUrl"))
                    .or_else(|| sub_ext(v, "addressUrl").and_then(|u| str_at(u, "valueUrl")))
                    .map(str::to_string)
            });
            let kind = visit_type_of(&a).unwrap_or_else(|| "visit".into());
            let status = match str_at(&a, "status").unwrap_or("") {
                "cancelled" | "noshow" | "entered-in-error" => "CANCELLED",
                "proposed" | "pending" | "waitlist" => "TENTATIVE",
                _ => "CONFIRMED",
            };
            events.push(ical::Event {
                uid: format!("Appointment-{}@salus", r.id),
                start,
                end,
                summary: if vs.is_some() {
                    format!("Video visit ({kind})")
                } else {
                    format!("Visit ({kind})")
                },
                description: str_at(&a, "comment").map(str::to_string),
                location: Some(if vs.is_some() {
                    "Video visit".into()
                } else {
                    "Clinic".into()
                }),
                url,
                status: status.into(),
                sequence: (r.version - 1) as u32,
            });
        }
        let name = owner
            .get("name")
            .and_then(|n| n.as_array().and_then(|a| a.first()).or(Some(n)))
            .map(|n| match n {
                Value::String(s) => s.clone(),
                n => {
                    let mut parts: Vec<String> = n
                        .get("given")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str().map(str::to_string))
                        .collect();
                    parts.extend(str_at(n, "family").map(str::to_string));
                    parts.join(" ")
                }
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| who.clone());
        Ok(ical::calendar(&format!("Visits: {name}"), &events, now))
    }
}

// ---------------------------------------------------------------------------------
// transaction steps

/// Bring a schedule's future free slots in line with its rules.
async fn regenerate(
    tx: &mut dyn StoreTx,
    schedule_id: &str,
    rules: &CompiledRules,
    sched: &Scheduling,
    now: Timestamp,
) -> Result<SlotReport> {
    let horizon = rules
        .rules
        .horizon_days
        .unwrap_or(sched.config.horizon_days);
    let desired = rules.generate(now, horizon).map_err(rule_error)?;
    let existing = tx_find(
        tx,
        "Slot",
        &[
            ("schedule", format!("Schedule/{schedule_id}")),
            ("start", format!("ge{}", utc(now))),
        ],
    )
    .await?;
    let mut report = SlotReport::default();
    let mut taken: Vec<(Timestamp, Timestamp)> = Vec::new();
    let mut free: BTreeMap<String, (VersionRecord, Value)> = BTreeMap::new();
    for (rec, body) in existing {
        if effective_status(&body, now) == "free" {
            free.insert(rec.id.clone(), (rec, body));
        } else if let (Some(s), Some(e)) = (instant_at(&body, "start"), instant_at(&body, "end")) {
            taken.push((s, e));
        }
    }
    let mut wanted = HashSet::new();
    for s in &desired {
        if taken.iter().any(|(ts, te)| s.start < *te && *ts < s.end) {
            report.blocked += 1;
            continue;
        }
        let id = slot_id(schedule_id, s);
        let body = slot_json(schedule_id, s, rules);
        wanted.insert(id.clone());
        match free.get(&id) {
            Some((_, old)) if same_slot(old, &body) => report.unchanged += 1,
            Some((rec, _)) => {
                let rec = rec.clone();
                save(tx, "Slot", &id, body, Some(&rec)).await?;
                report.created += 1;
            }
            None => {
                // a deleted slot with this id may exist (rules changed back): continue its history
                let head = tx.read("Slot", &id).await?;
                save(tx, "Slot", &id, body, head.as_ref()).await?;
                report.created += 1;
            }
        }
    }
    for (id, (rec, _)) in &free {
        if !wanted.contains(id) {
            remove(tx, rec).await?;
            report.removed += 1;
        }
    }
    Ok(report)
}

fn same_slot(a: &Value, b: &Value) -> bool {
    [
        "start",
        "end",
        "serviceType",
        "extension",
        "status",
        "identifier",
    ]
    .iter()
    .all(|k| a.get(*k) == b.get(*k))
}

/// Whether `patient` may take the slot now; the 409 says why not.
fn check_takeable(slot: &Value, slot_id: &str, patient: &str, now: Timestamp) -> Result<()> {
    match effective_status(slot, now) {
        "free" => Ok(()),
        "busy-tentative" => match hold_of(slot) {
            Some((p, _)) if p == patient => Ok(()),
            Some((_, exp)) => Err(FhirError::Conflict(format!(
                "Slot/{slot_id} is held for another patient until {}",
                utc(exp)
            ))),
            None => Err(FhirError::Conflict(format!(
                "Slot/{slot_id} is tentatively taken"
            ))),
        },
        "busy" => Err(FhirError::Conflict(format!(
            "Slot/{slot_id} is already booked"
        ))),
        other => Err(FhirError::Conflict(format!("Slot/{slot_id} is {other}"))),
    }
}

fn hold(mut slot: Value, patient: &str, expires: Timestamp) -> Value {
    slot["status"] = json!("busy-tentative");
    set_ext(
        &mut slot,
        EXT_HOLD,
        Some(json!({"url": EXT_HOLD, "extension": [
            {"url": "patient", "valueReference": reference(patient)},
            {"url": "expires", "valueInstant": utc(expires)}
        ]})),
    );
    slot
}

fn appt_status(appt: &Value) -> Result<VisitStatus> {
    let s = str_at(appt, "status").unwrap_or("");
    VisitStatus::parse(s).ok_or_else(|| FhirError::Internal(format!("appointment status '{s}'")))
}

/// `2026-03-30 07:00 UTC` for messages.
fn when(appt: &Value) -> String {
    instant_at(appt, "start")
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "(unknown time)".into())
}

/// The Appointment for `patient` in `slot`: participants (the patient, the schedule's
/// actors, a PractitionerRole's Practitioner), times, type and, for a video visit, the
/// virtual-service extension with a join link per participant.
async fn appointment_for(
    tx: &mut dyn StoreTx,
    sched: &Scheduling,
    appt_id: &str,
    slot: &Value,
    patient: &str,
    comment: Option<&str>,
    now: Timestamp,
) -> Result<Value> {
    let schedule_ref = slot
        .get("schedule")
        .and_then(|s| str_at(s, "reference"))
        .ok_or_else(|| FhirError::Internal("slot without schedule".into()))?
        .to_string();
    let schedule = tx_require(tx, &schedule_ref, "slot.schedule", &["Schedule"]).await?;
    let mut people = vec![patient.to_string()];
    for a in schedule
        .get("actor")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| str_at(a, "reference"))
    {
        if !people.iter().any(|p| p == a) {
            people.push(a.to_string());
        }
        if let Some(role_id) = a.strip_prefix("PractitionerRole/") {
            if let Some(r) = tx.read("PractitionerRole", role_id).await? {
                if let Some(p) = r
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<Value>(b).ok())
                    .and_then(|b| {
                        b.get("practitioner")
                            .and_then(|p| str_at(p, "reference"))
                            .map(str::to_string)
                    })
                {
                    if !people.contains(&p) {
                        people.push(p);
                    }
                }
            }
        }
    }
    let start = instant_at(slot, "start").unwrap_or(now);
    let end = instant_at(slot, "end").unwrap_or(start);
    let mut appt = json!({
        "resourceType": "Appointment",
        "status": "booked",
        "start": slot["start"],
        "end": slot["end"],
        "minutesDuration": (end.as_second() - start.as_second()) / 60,
        "slot": [reference(&format!("Slot/{}", str_at(slot, "id").unwrap_or("")))],
        "created": utc(now),
        "participant": people.iter().map(|p| json!({
            "actor": reference(p),
            "required": "required",
            "status": "accepted",
        })).collect::<Vec<_>>(),
    });
    if let Some(st) = slot.get("serviceType") {
        appt["serviceType"] = st.clone();
    }
    if let Some(at) = slot.get("appointmentType") {
        appt["appointmentType"] = at.clone();
    }
    if let Some(c) = comment {
        appt["comment"] = json!(c);
    }
    if is_virtual(slot) {
        let room = sched.video.room(appt_id);
        // tokens become valid 15 minutes before the visit
        let nbf = start
            .checked_sub(SignedDuration::from_mins(15))
            .unwrap_or(start);
        let mut parts = vec![
            json!({"url": "channelType", "valueCoding": {"system": "https://salus.dev/fhir/CodeSystem/video-provider", "code": room.channel}}),
            json!({"url": "addressUrl", "valueUrl": room.url}),
            json!({"url": "sessionKey", "valueString": room.room}),
        ];
        for p in &people {
            parts.push(json!({"url": "participantLink", "extension": [
                {"url": "participant", "valueReference": reference(p)},
                {"url": "url", "valueUrl": sched.video.join_url(&room, p, nbf, end)}
            ]}));
        }
        appt["extension"] = json!([{"url": EXT_VIRTUAL_SERVICE, "extension": parts}]);
    }
    Ok(appt)
}

/// Outbox message for `recipient` (status `preparation`, due at `due`).
#[allow(clippy::too_many_arguments)]
fn message(
    key: &str,
    category: &str,
    medium: &str,
    recipient: &str,
    appt_id: &str,
    topic: &str,
    text: &str,
    due: Timestamp,
) -> Value {
    json!({
        "resourceType": "Communication",
        "extension": [{"url": EXT_DUE, "valueDateTime": utc(due)}],
        "identifier": [{"system": MESSAGE_KEY, "value": key}],
        "basedOn": [reference(&format!("Appointment/{appt_id}"))],
        "status": "preparation",
        "category": [{"coding": [{"system": CODES, "code": category}]}],
        "medium": [{"coding": [{"system": MEDIUM, "code": medium}]}],
        "subject": if recipient.starts_with("Patient/") { reference(recipient) } else { Value::Null },
        "topic": {"text": topic},
        "recipient": [reference(recipient)],
        "payload": [{"contentString": text}],
    })
    .as_object()
    .map(|o| {
        Value::Object(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    })
    .expect("object")
}

async fn put_message(tx: &mut dyn StoreTx, key: &str, body: Value) -> Result<()> {
    let id = stable_id("msg", &[key]);
    let head = tx.read("Communication", &id).await?;
    if head.as_ref().is_some_and(|h| !h.is_deleted()) {
        // the same key was planned before: idempotent
        return Ok(());
    }
    save(tx, "Communication", &id, body, head.as_ref())
        .await
        .map(|_| ())
}

/// Reminders for a booked appointment at the configured offsets; the key includes the
/// start so a rescheduled visit gets fresh reminders.
async fn plan_reminders(
    tx: &mut dyn StoreTx,
    sched: &Scheduling,
    appt_id: &str,
    appt: &Value,
    now: Timestamp,
) -> Result<()> {
    let (Some(patient), Some(start)) = (patient_of(appt), instant_at(appt, "start")) else {
        return Ok(());
    };
    let occurrence = format!("Appointment/{appt_id}@{}", start.as_second());
    for r in reminders::plan(
        &occurrence,
        start,
        &sched.config.reminder_offsets_minutes,
        now,
    ) {
        let text = format!(
            "Reminder: your {} visit starts in {} ({}).",
            if ext(appt, EXT_VIRTUAL_SERVICE).is_some() {
                "video"
            } else {
                ""
            },
            reminders::describe(r.offset_minutes),
            when(appt)
        )
        .replace("your  visit", "your visit");
        let body = message(
            &r.key,
            "reminder",
            &sched.config.patient_channel,
            &patient,
            appt_id,
            "Visit reminder",
            &text,
            r.due,
        );
        put_message(tx, &r.key, body).await?;
    }
    Ok(())
}

/// Pending reminders of an appointment stop (status `stopped`).
async fn stop_reminders(tx: &mut dyn StoreTx, appt_id: &str) -> Result<()> {
    let pending = tx_find(
        tx,
        "Communication",
        &[
            ("based-on", format!("Appointment/{appt_id}")),
            ("status", "preparation".into()),
            ("category", format!("{CODES}|reminder")),
        ],
    )
    .await?;
    for (rec, mut body) in pending {
        body["status"] = json!("stopped");
        save(tx, "Communication", &rec.id, body, Some(&rec)).await?;
    }
    Ok(())
}

/// A notice (`cancelled`, `rescheduled`) to every participant, due now.
async fn notify_participants(
    tx: &mut dyn StoreTx,
    sched: &Scheduling,
    appt: &Value,
    appt_id: &str,
    what: &str,
    text: &str,
    now: Timestamp,
) -> Result<()> {
    let stamp = now.as_microsecond().to_string();
    for p in participants(appt) {
        let key = format!("Appointment/{appt_id}|{what}|{stamp}|{p}");
        let medium = if p.starts_with("Patient/") {
            sched.config.patient_channel.as_str()
        } else {
            "portal"
        };
        let body = message(
            &key,
            "notice",
            medium,
            &p,
            appt_id,
            &format!("Visit {what}"),
            text,
            now,
        );
        put_message(tx, &key, body).await?;
    }
    Ok(())
}

/// Free a slot; if a patient waits for it, hold it for them and tell them.
async fn free_slot(
    tx: &mut dyn StoreTx,
    sched: &Scheduling,
    slot_id: &str,
    now: Timestamp,
) -> Result<()> {
    tx.lock(&format!("Slot/{slot_id}")).await?;
    let Some(cur) = tx.read("Slot", slot_id).await?.filter(|r| !r.is_deleted()) else {
        return Ok(());
    };
    let mut slot = parse_body(&cur)?;
    slot["status"] = json!("free");
    set_ext(&mut slot, EXT_HOLD, None);
    let start = instant_at(&slot, "start");
    if start.is_some_and(|s| s > now) {
        if let Some((task_rec, mut task, patient)) = first_waiting(tx, &slot).await? {
            let expires = now
                .checked_add(SignedDuration::from_mins(sched.config.hold_minutes))
                .unwrap_or(now);
            let held = hold(slot, &patient, expires);
            save(tx, "Slot", slot_id, held, Some(&cur)).await?;
            task["status"] = json!("in-progress");
            task["businessStatus"] = json!({"text": "slot offered"});
            task["output"] = json!([{
                "type": {"coding": [{"system": CODES, "code": "offered-slot"}]},
                "valueReference": reference(&format!("Slot/{slot_id}"))
            }]);
            save(tx, "Task", &task_rec.id, task, Some(&task_rec)).await?;
            let key = format!("Task/{}|offer|Slot/{slot_id}", task_rec.id);
            let text = format!(
                "A visit slot opened at {}. It is held for you until {}: book it with Appointment/$book (slot Slot/{slot_id}).",
                start.map(|s| s.strftime("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default(),
                expires.strftime("%H:%M UTC"),
            );
            let mut body = message(
                &key,
                "notice",
                &sched.config.patient_channel,
                &patient,
                "none",
                "A slot opened",
                &text,
                now,
            );
            body["basedOn"] = json!([reference(&format!("Task/{}", task_rec.id))]);
            return put_message(tx, &key, body).await;
        }
    }
    save(tx, "Slot", slot_id, slot, Some(&cur))
        .await
        .map(|_| ())
}

/// The earliest waitlist Task the slot fits (schedule, visit type, window).
async fn first_waiting(
    tx: &mut dyn StoreTx,
    slot: &Value,
) -> Result<Option<(VersionRecord, Value, String)>> {
    let Some(schedule) = slot.get("schedule").and_then(|s| str_at(s, "reference")) else {
        return Ok(None);
    };
    let waiting = tx_find(
        tx,
        "Task",
        &[
            ("code", format!("{CODES}|waitlist")),
            ("status", "requested".into()),
            ("focus", schedule.to_string()),
        ],
    )
    .await?;
    let start = instant_at(slot, "start");
    let vt = visit_type_of(slot);
    let mut fits: Vec<(String, VersionRecord, Value, String)> = waiting
        .into_iter()
        .filter_map(|(rec, t)| {
            let patient = t
                .get("for")
                .and_then(|f| str_at(f, "reference"))?
                .to_string();
            let want_vt = t
                .get("input")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find_map(|i| str_at(i, "valueCode"));
            if want_vt.is_some_and(|w| Some(w) != vt.as_deref()) {
                return None;
            }
            let period = t.get("restriction").and_then(|r| r.get("period"));
            if let (Some(p), Some(s)) = (period, start) {
                if instant_at(p, "start").is_some_and(|ps| s < ps)
                    || instant_at(p, "end").is_some_and(|pe| s >= pe)
                {
                    return None;
                }
            }
            let authored = str_at(&t, "authoredOn").unwrap_or("").to_string();
            Some((authored, rec, t, patient))
        })
        .collect();
    fits.sort_by(|a, b| (&a.0, a.1.seq, &a.1.id).cmp(&(&b.0, b.1.seq, &b.1.id)));
    Ok(fits.into_iter().next().map(|(_, r, t, p)| (r, t, p)))
}

/// Booking a slot ends the patient's waitlist entries for that schedule.
async fn close_waitlist(tx: &mut dyn StoreTx, patient: &str, slot: &Value) -> Result<()> {
    let Some(schedule) = slot.get("schedule").and_then(|s| str_at(s, "reference")) else {
        return Ok(());
    };
    let open = tx_find(
        tx,
        "Task",
        &[
            ("code", format!("{CODES}|waitlist")),
            ("status", "requested,in-progress".into()),
            ("focus", schedule.to_string()),
            ("patient", patient.to_string()),
        ],
    )
    .await?;
    for (rec, mut t) in open {
        t["status"] = json!("completed");
        save(tx, "Task", &rec.id, t, Some(&rec)).await?;
    }
    Ok(())
}

/// After a fulfilled visit: a follow-up Task owned by the practitioner's care team
/// (or the practitioner), due in `follow_up_days`, with a booking link; and a CarePlan
/// with the follow-up visit as a planned activity.
async fn follow_up(
    tx: &mut dyn StoreTx,
    sched: &Scheduling,
    appt_id: &str,
    appt: &Value,
    ctx: &OpContext,
) -> Result<()> {
    let Some(patient) = patient_of(appt) else {
        return Ok(());
    };
    let providers: Vec<String> = participants(appt)
        .into_iter()
        .filter(|p| !p.starts_with("Patient/"))
        .collect();
    let mut team = None;
    if !providers.is_empty() {
        let found = tx_find(
            tx,
            "CareTeam",
            &[
                ("participant", providers.join(",")),
                ("status", "active".into()),
            ],
        )
        .await?;
        team = found.first().map(|(r, _)| format!("CareTeam/{}", r.id));
    }
    let owner = team.clone().or_else(|| providers.first().cloned());
    let due = ctx
        .now
        .checked_add(SignedDuration::from_hours(24 * sched.config.follow_up_days))
        .unwrap_or(ctx.now);
    let schedule = match slot_of(appt) {
        Some(sid) => tx
            .read("Slot", &sid)
            .await?
            .and_then(|r| r.body)
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|s| {
                s.get("schedule")
                    .and_then(|x| str_at(x, "reference"))
                    .map(str::to_string)
            }),
        None => None,
    };
    let mut link = format!("{}/Appointment/$find?", ctx.base);
    if let Some(s) = &schedule {
        link.push_str(&format!("schedule={s}&"));
    }
    if let Some(vt) = visit_type_of(appt) {
        link.push_str(&format!("visit-type={vt}&"));
    }
    link.push_str(&format!("start={}", utc(ctx.now)));
    let mut task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "plan",
        "code": {"coding": [{"system": CODES, "code": "follow-up", "display": "Follow up after a visit"}]},
        "description": format!("Follow up with the patient after the visit on {}", when(appt)),
        "focus": reference(&format!("Appointment/{appt_id}")),
        "for": reference(&patient),
        "authoredOn": utc(ctx.now),
        "restriction": {"period": {"end": utc(due)}},
        "input": [{
            "type": {"coding": [{"system": CODES, "code": "booking-link"}]},
            "valueUrl": link
        }],
    });
    if let Some(o) = &owner {
        task["owner"] = reference(o);
    }
    save(tx, "Task", &new_id(), task, None).await?;
    let mut plan = json!({
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [{"system": CODES, "code": "visit-follow-up"}]}],
        "title": "Follow-up after visit",
        "subject": reference(&patient),
        "created": utc(ctx.now),
        "supportingInfo": [reference(&format!("Appointment/{appt_id}"))],
        "activity": [{"detail": {
            "kind": "Appointment",
            "status": "not-started",
            "description": format!("Book a follow-up visit: {link}"),
            "scheduledPeriod": {"end": utc(due)}
        }}],
    });
    if let Some(t) = &team {
        plan["careTeam"] = json!([reference(t)]);
    }
    save(tx, "CarePlan", &new_id(), plan, None)
        .await
        .map(|_| ())
}

/// When an outbox message may be claimed at `now` (its due time), or `None`.
fn claimable(body: &Value, now: Timestamp) -> Option<Timestamp> {
    let due = ext(body, EXT_DUE)
        .and_then(|e| instant_at(e, "valueDateTime"))
        .unwrap_or(Timestamp::UNIX_EPOCH);
    if due > now {
        return None;
    }
    match str_at(body, "status") {
        Some("preparation") => Some(due),
        Some("in-progress") => {
            let lease = ext(body, EXT_CLAIM)
                .and_then(|c| sub_ext(c, "leaseExpires"))
                .and_then(|l| instant_at(l, "valueInstant"));
            match lease {
                Some(l) if l > now => None,
                _ => Some(due),
            }
        }
        _ => None,
    }
}

fn medium_of(body: &Value) -> String {
    body.get("medium")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|m| {
            m.get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .find(|c| str_at(c, "system") == Some(MEDIUM))
        .and_then(|c| str_at(c, "code"))
        .unwrap_or("portal")
        .to_string()
}
