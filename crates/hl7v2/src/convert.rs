//! HL7 v2 messages → FHIR R4 transaction Bundles.
//!
//! The mappings follow the HL7 v2-to-FHIR IG (<https://build.fhir.org/ig/HL7/v2-to-fhir/>)
//! segment maps where it speaks: PID → Patient, PD1/NK1 → Patient (contact), PV1/PV2 →
//! Encounter, OBX → Observation, OBR → DiagnosticReport / ServiceRequest, ORC →
//! ServiceRequest (identifiers, status, requester), AL1 → AllergyIntolerance, DG1 →
//! Condition, RXA/RXR → Immunization, SCH/AIS/AIG/AIL/AIP → Appointment, TXA/OBX →
//! DocumentReference, MSH → Provenance. See `docs/hl7v2.md` for the tables.
//!
//! ## Identity and idempotency
//! Every entry has a `urn:uuid:` fullUrl (deterministic: derived from the message text,
//! so the same message gives the same Bundle) and resources reference each other through
//! those fullUrls. Resources with a business identifier are written with a conditional
//! update, so a repeated or updating message updates instead of duplicating:
//! `PUT Patient?identifier=system|value` (PID-3), `PUT Encounter?identifier=…` (PV1-19),
//! `PUT DiagnosticReport?identifier=…` (OBR-3/OBR-2), `PUT ServiceRequest?identifier=…`
//! (ORC-2/ORC-3), `PUT Immunization?identifier=…` (ORC-3), `PUT Appointment?identifier=…`
//! (SCH-2/SCH-1), `PUT DocumentReference?identifier=…` (TXA-12), `PUT
//! Practitioner?identifier=…` (XCN-1), `PUT Observation?identifier=…` (OBX-21, else for a
//! result of an ORU order `<filler>/<OBX-1>/<OBX-3.1>/<OBX-4>`). Resources without one
//! (other Observations, AllergyIntolerance, Condition, Provenance, an Encounter without
//! PV1-19) are created with POST.
//!
//! ## A40 (merge patient)
//! The Bundle holds (1) a conditional update of the surviving patient (PID) carrying its
//! own identifiers plus the merged ones from MRG-1 (marked `use: old`), `active: true`;
//! (2) a conditional update of the merged (prior) patient, found by its MRG-1 identifier
//! and *not* the survivor's (`identifier=old&identifier:not=new`, so that a resent A40
//! still finds one record once the survivor carries the old identifier), with
//! `active: false` and `link: [{other: survivor, type: replaced-by}]`, its
//! identifiers (use `old`) and MRG-7 name. A transaction cannot say "rewrite every
//! reference to patient X", so relinking clinical resources is left to the caller:
//! [`Conversion::follow_up`] holds a [`FollowUp::RelinkPatient`] with both conditional
//! references and the resource types to visit; after committing the Bundle the caller
//! searches each type for resources referencing the merged patient
//! (`{type}?patient=Patient/{old id}`, or `subject`) and rewrites them with
//! [`relink_references`], then writes them back.

use crate::datatypes::{self as dt, non_empty, put, put_str, string, Loc};
use crate::parser::{parse, Message, MessageType, ParseError, Repetition, Segment};
use crate::tables;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};

/// Why a message could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The text is not a parseable message.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A message type this crate does not convert.
    #[error("unsupported message type {message_type}: supported are {}", SUPPORTED.join(", "))]
    Unsupported {
        /// MSH-9 as received.
        message_type: String,
    },
    /// A value that does not conform to its v2 data type.
    #[error("{location}: {value:?} is not a valid {datatype}")]
    InvalidValue {
        /// Segment and field, e.g. `PID-7` or `OBX-5 (segment 9)`.
        location: String,
        /// The offending value (shortened).
        value: String,
        /// The v2 data type expected, e.g. `TS`.
        datatype: &'static str,
    },
    /// A segment the message type requires is absent.
    #[error("{segment}: segment required by {message_type} is missing")]
    MissingSegment {
        /// The segment ID.
        segment: &'static str,
        /// MSH-9.
        message_type: String,
    },
    /// A field needed to build a valid resource is empty.
    #[error("{location}: {what} is required")]
    MissingValue {
        /// Segment and field.
        location: String,
        /// What the field holds.
        what: &'static str,
    },
    /// `$convert-data`'s rootTemplate does not name this message's type.
    #[error("rootTemplate {template:?} does not match the message type {message_type} (MSH-9)")]
    TemplateMismatch {
        /// The template asked for.
        template: String,
        /// MSH-9 of the message.
        message_type: String,
    },
}

type Result<T> = std::result::Result<T, ConvertError>;

/// Message types (`CODE_TRIGGER`) [`convert`] supports.
pub const SUPPORTED: &[&str] = &[
    "ADT_A01", "ADT_A02", "ADT_A03", "ADT_A04", "ADT_A05", "ADT_A08", "ADT_A11", "ADT_A12",
    "ADT_A13", "ADT_A28", "ADT_A31", "ADT_A40", "ORU_R01", "ORM_O01", "OML_O21", "SIU_S12",
    "SIU_S13", "SIU_S14", "SIU_S15", "VXU_V04", "MDM_T02",
];

/// Resource types whose references to a merged patient the caller relinks after an A40
/// (the clinical resources this converter writes, plus common Patient-compartment ones).
pub const RELINK_TYPES: &[&str] = &[
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "ServiceRequest",
    "Immunization",
    "Appointment",
    "DocumentReference",
    "AllergyIntolerance",
    "Condition",
    "Procedure",
    "MedicationRequest",
    "Provenance",
];

/// Settings for conversion; the defaults suit a server that has no configuration.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Prefix for identifier systems built from an assigning-authority namespace (CX-4.1
    /// without a universal ID), followed by the namespace: `urn:salus:hl7v2:id:HOSP`.
    pub identifier_system_base: String,
    /// Explicit namespace → system URI map (takes precedence over the prefix).
    pub namespace_systems: BTreeMap<String, String>,
    /// Prefix for code systems named locally (CWE-3 not in table 0396's well-known set).
    pub code_system_base: String,
    /// Zone (`+02:00`, `Z`) for date-times that carry a time but no zone, when MSH-7 has
    /// none either. `None`: such values keep their date only, since a FHIR dateTime with
    /// a time needs a zone.
    pub default_offset: Option<String>,
    /// Add a Provenance entry naming the message (MSH) and targeting every resource.
    pub provenance: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            identifier_system_base: "urn:salus:hl7v2:id:".into(),
            namespace_systems: BTreeMap::new(),
            code_system_base: "urn:salus:hl7v2:codesystem:".into(),
            default_offset: None,
            provenance: true,
        }
    }
}

impl ConvertOptions {
    /// The identifier system for an assigning-authority namespace.
    pub fn namespace_system(&self, namespace: &str) -> String {
        match self.namespace_systems.get(namespace) {
            Some(s) => s.clone(),
            None => format!("{}{}", self.identifier_system_base, uri_segment(namespace)),
        }
    }
}

/// Percent-encode `s` for use inside a URN/URI path segment.
pub(crate) fn uri_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.trim().bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a search parameter value (keeps `:` and `/` readable).
fn query_value(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// FHIR search escaping of `\ | , $` (R4 search.html#escaping), then percent-encoding.
fn token_part(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '|' | ',' | '$') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    query_value(&escaped)
}

/// `identifier=system|value` search criteria for an Identifier; `identifier=|value`
/// (explicitly no system) when it has none, so that a bare value never matches an
/// identifier of another system.
fn identifier_criteria(id: &Value) -> Option<String> {
    Some(format!("identifier={}", identifier_token(id)?))
}

fn identifier_token(id: &Value) -> Option<String> {
    let value = id.get("value")?.as_str()?;
    let system = id.get("system").and_then(Value::as_str).unwrap_or("");
    Some(format!("{}|{}", token_part(system), token_part(value)))
}

/// What the caller must do after committing a conversion's Bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUp {
    /// A40: rewrite references to the merged patient (`from`, a conditional reference such
    /// as `Patient?identifier=sys|old`) into references to the survivor (`to`), in every
    /// resource of `resource_types` that references the merged patient.
    RelinkPatient {
        /// Conditional reference of the merged (prior) patient.
        from: String,
        /// Conditional reference of the surviving patient.
        to: String,
        /// Types to search ([`RELINK_TYPES`]).
        resource_types: &'static [&'static str],
    },
}

/// The result of converting one message.
#[derive(Debug, Clone)]
pub struct Conversion {
    /// A FHIR R4 `transaction` Bundle.
    pub bundle: Value,
    /// MSH-9.
    pub message_type: MessageType,
    /// MSH-10, for the ACK.
    pub control_id: String,
    /// Work the caller does after the Bundle commits (A40 relinking).
    pub follow_up: Vec<FollowUp>,
    /// Values that were not converted (the message still converted), for logs and the
    /// ACK's ERR segments with severity W.
    pub warnings: Vec<String>,
}

/// Rewrite every `reference` equal to `from` into `to` inside `resource`; returns how
/// many were rewritten. The caller uses it for A40 relinking ([`FollowUp`]).
pub fn relink_references(resource: &mut Value, from: &str, to: &str) -> usize {
    match resource {
        Value::Object(obj) => {
            let mut n = 0;
            for (k, v) in obj.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" && s == from => {
                        *s = to.to_string();
                        n += 1;
                    }
                    _ => n += relink_references(v, from, to),
                }
            }
            n
        }
        Value::Array(a) => a.iter_mut().map(|v| relink_references(v, from, to)).sum(),
        _ => 0,
    }
}

/// Parse and convert with default options.
pub fn convert_text(text: &str) -> Result<Conversion> {
    convert(&parse(text)?)
}

/// Convert a parsed message with default options.
pub fn convert(message: &Message) -> Result<Conversion> {
    convert_with(message, &ConvertOptions::default())
}

/// For `$convert-data`: parse `text`, check that `root_template` (e.g. `ADT_A01`) names
/// its type — `CODE_TRIGGER` from MSH-9.1/9.2, or the structure MSH-9.3 — and convert.
pub fn convert_for_template(
    text: &str,
    root_template: &str,
    options: &ConvertOptions,
) -> Result<Conversion> {
    let m = parse(text)?;
    let mt = m.message_type();
    let want = root_template.trim().to_ascii_uppercase();
    let event = format!("{}_{}", mt.code, mt.trigger);
    if want != event && (mt.structure.is_empty() || want != mt.structure) {
        return Err(ConvertError::TemplateMismatch {
            template: root_template.to_string(),
            message_type: mt.to_string(),
        });
    }
    convert_with(&m, options)
}

/// Convert a parsed message.
pub fn convert_with(message: &Message, options: &ConvertOptions) -> Result<Conversion> {
    let mt = message.message_type();
    let key = format!("{}_{}", mt.code, mt.trigger);
    if !SUPPORTED.contains(&key.as_str()) {
        return Err(ConvertError::Unsupported {
            message_type: if mt.code.is_empty() {
                "(empty MSH-9)".into()
            } else {
                mt.to_string()
            },
        });
    }
    let mut c = Ctx::new(message, options, &mt);
    match mt.code.as_str() {
        "ADT" => c.adt(&mt.trigger)?,
        "ORU" => c.oru()?,
        "ORM" | "OML" => c.orders()?,
        "SIU" => c.siu(&mt.trigger)?,
        "VXU" => c.vxu()?,
        "MDM" => c.mdm()?,
        _ => {
            return Err(ConvertError::Unsupported {
                message_type: mt.to_string(),
            })
        }
    }
    c.provenance()?;
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("type".into(), json!("transaction"));
    bundle.insert("entry".into(), Value::Array(std::mem::take(&mut c.entries)));
    let bundle = Value::Object(bundle);
    Ok(Conversion {
        bundle,
        control_id: message.control_id(),
        message_type: mt,
        follow_up: c.follow_up,
        warnings: c.warnings,
    })
}

/// A patient written in this Bundle.
#[derive(Clone)]
struct PatientRef {
    full_url: String,
}

/// Segment IDs that occur once per message group: their locations omit the position.
const SINGLE: &[&str] = &[
    "MSH", "EVN", "PID", "PD1", "PV1", "PV2", "MRG", "SCH", "TXA",
];

fn loc(seg: &Segment, field: usize) -> Loc {
    if SINGLE.contains(&seg.id()) {
        Loc(format!("{}-{field}", seg.id()))
    } else {
        Loc(format!("{}-{field} (segment {})", seg.id(), seg.index()))
    }
}

fn reference(url: &str) -> Value {
    json!({ "reference": url })
}

struct Ctx<'a> {
    m: &'a Message,
    opts: &'a ConvertOptions,
    mt: MessageType,
    entries: Vec<Value>,
    seed: u64,
    counter: u64,
    msh_offset: Option<String>,
    warnings: Vec<String>,
    follow_up: Vec<FollowUp>,
    /// Practitioners already in the Bundle, by criteria → fullUrl.
    practitioners: HashMap<String, String>,
    /// Conditional URLs already in the Bundle (a second resource with the same
    /// identifier reuses the first entry: a transaction may not write one twice).
    conditionals: HashMap<String, String>,
}

impl<'a> Ctx<'a> {
    fn new(m: &'a Message, opts: &'a ConvertOptions, mt: &MessageType) -> Self {
        let text = m.to_er7();
        // FNV-1a over the message: deterministic fullUrls.
        let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            seed ^= u64::from(b);
            seed = seed.wrapping_mul(0x0100_0000_01b3);
        }
        let msh7 = m.field(m.msh(), 7).first().text(1).to_string();
        let msh_offset = dt::Dtm::parse(&msh7).and_then(|d| d.offset);
        Ctx {
            m,
            opts,
            mt: mt.clone(),
            entries: Vec::new(),
            seed,
            counter: 0,
            msh_offset,
            warnings: Vec::new(),
            follow_up: Vec::new(),
            practitioners: HashMap::new(),
            conditionals: HashMap::new(),
        }
    }

    fn offset(&self) -> Option<&str> {
        self.msh_offset
            .as_deref()
            .or(self.opts.default_offset.as_deref())
    }

    fn new_urn(&mut self) -> String {
        self.counter += 1;
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let a = mix(self.seed ^ self.counter.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let b = mix(a ^ self.counter);
        let hex = format!("{a:016x}{b:016x}");
        format!(
            "urn:uuid:{}-{}-8{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// Add an entry; `conditional` (criteria after `?`) makes it a conditional update.
    fn add(&mut self, rtype: &str, resource: Value, conditional: Option<String>) -> String {
        if let Some(q) = &conditional {
            let url = format!("{rtype}?{q}");
            if let Some(existing) = self.conditionals.get(&url).cloned() {
                // A transaction may write a resource once: keep the first. For a report
                // split over several OBR with one filler number, keep all its results.
                let extra = resource.get("result").and_then(Value::as_array).cloned();
                if let (Some(extra), Some(first)) = (
                    extra,
                    self.entries
                        .iter_mut()
                        .find(|e| e["fullUrl"].as_str() == Some(existing.as_str())),
                ) {
                    if let Some(list) = first["resource"]["result"].as_array_mut() {
                        list.extend(extra);
                    } else {
                        first["resource"]["result"] = Value::Array(extra);
                    }
                }
                self.warnings.push(format!(
                    "{url}: a second {rtype} with the same identifier in one message; the first is kept"
                ));
                return existing;
            }
        }
        let full = self.new_urn();
        let request = match &conditional {
            Some(q) => {
                let url = format!("{rtype}?{q}");
                self.conditionals.insert(url.clone(), full.clone());
                json!({"method": "PUT", "url": url})
            }
            None => json!({"method": "POST", "url": rtype}),
        };
        // Built by hand: `json!` would deep-copy `resource` through its serializer.
        let mut entry = Map::new();
        entry.insert("fullUrl".into(), Value::String(full.clone()));
        entry.insert("resource".into(), resource);
        entry.insert("request".into(), request);
        self.entries.push(Value::Object(entry));
        full
    }

    fn field(&self, seg: &'a Segment, n: usize) -> crate::parser::Field<'a> {
        self.m.field(seg, n)
    }

    fn first(&self, seg: &'a Segment, n: usize) -> Repetition<'a> {
        self.m.field(seg, n).first()
    }

    fn text(&self, seg: &'a Segment, n: usize) -> Option<String> {
        string(&self.first(seg, n).text(1))
    }

    fn date_time(&self, seg: &Segment, n: usize) -> Result<Option<String>> {
        let v = self.m.field(seg, n).first().text(1).to_string();
        dt::date_time(&v, &loc(seg, n), self.opts, self.msh_offset.as_deref())
    }

    fn instant(&self, seg: &Segment, n: usize) -> Result<Option<String>> {
        let v = self.m.field(seg, n).first().text(1).to_string();
        Ok(dt::dtm(&v, &loc(seg, n))?.and_then(|d| d.instant(self.offset())))
    }

    fn concept(&self, seg: &'a Segment, n: usize) -> Option<Value> {
        dt::codeable_concept(&self.first(seg, n), self.opts)
    }

    fn concepts(&self, seg: &'a Segment, n: usize) -> Option<Value> {
        let v: Vec<Value> = self
            .field(seg, n)
            .repetitions()
            .filter_map(|r| dt::codeable_concept(&r, self.opts))
            .collect();
        (!v.is_empty()).then_some(Value::Array(v))
    }

    /// Split the message into the segments before the first PID and one group per PID.
    fn groups(&self) -> (Vec<&'a Segment>, Vec<Vec<&'a Segment>>) {
        let mut head = Vec::new();
        let mut groups: Vec<Vec<&'a Segment>> = Vec::new();
        for s in self.m.segments() {
            if s.id() == "PID" {
                groups.push(vec![s]);
            } else if let Some(g) = groups.last_mut() {
                g.push(s);
            } else {
                head.push(s);
            }
        }
        (head, groups)
    }

    fn require_pid(&self) -> Result<Vec<Vec<&'a Segment>>> {
        let (_, groups) = self.groups();
        if groups.is_empty() {
            return Err(ConvertError::MissingSegment {
                segment: "PID",
                message_type: self.mt.to_string(),
            });
        }
        Ok(groups)
    }

    // -----------------------------------------------------------------------------------
    // Patient, practitioners, encounter.

    fn identifiers(
        &self,
        seg: &'a Segment,
        n: usize,
        default_type: Option<&str>,
    ) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for rep in self.field(seg, n).repetitions() {
            if let Some(id) = dt::identifier(&rep, default_type, &loc(seg, n), self.opts)? {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// The identifier used to match a patient: the first PID-3 identifier of type MR
    /// with a system, else the first with a system, else the first.
    fn matching_identifier(ids: &[Value]) -> Option<&Value> {
        let has_sys = |i: &&Value| i.get("system").is_some();
        let is_mr =
            |i: &&Value| i.pointer("/type/coding/0/code").and_then(Value::as_str) == Some("MR");
        ids.iter()
            .find(|i| has_sys(i) && is_mr(i))
            .or_else(|| ids.iter().find(has_sys))
            .or_else(|| ids.first())
    }

    /// Build the Patient resource of a PID group (PID, PD1, NK1).
    fn patient_resource(&self, group: &[&'a Segment]) -> Result<(Value, Vec<Value>)> {
        let pid = group[0];
        let mut p = Map::new();
        p.insert("resourceType".into(), json!("Patient"));
        let mut ids = self.identifiers(pid, 3, None)?;
        // PID-2 (patient ID, external; backwards compatible) and PID-4 (alternate).
        for n in [2, 4] {
            for id in self.identifiers(pid, n, None)? {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        if let Some(ssn) = self.text(pid, 19) {
            ids.push(json!({
                "type": {"coding": [dt::v2_coding("0203", "SS", tables::identifier_type_display("SS"))]},
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": ssn,
            }));
        }
        if !ids.is_empty() {
            p.insert("identifier".into(), Value::Array(ids.clone()));
        }
        let mut names = Vec::new();
        for rep in self.field(pid, 5).repetitions() {
            if let Some(n) = dt::human_name(&rep, &loc(pid, 5))? {
                names.push(n);
            }
        }
        // PID-9 (patient alias) → further names (v2-to-FHIR PID map).
        for rep in self.field(pid, 9).repetitions() {
            if let Some(n) = dt::human_name(&rep, &loc(pid, 9))? {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        if !names.is_empty() {
            p.insert("name".into(), Value::Array(names));
        }
        let mut telecom = Vec::new();
        for (n, use_) in [(13, "home"), (14, "work")] {
            for rep in self.field(pid, n).repetitions() {
                if let Some(cp) = dt::contact_point(&rep, Some(use_)) {
                    telecom.push(cp);
                }
            }
        }
        if !telecom.is_empty() {
            p.insert("telecom".into(), Value::Array(telecom));
        }
        // An unknown code is reported by `check_gender`, where the warnings list is at hand.
        if let Some(code) = self.text(pid, 8).and_then(|g| tables::gender(&g)) {
            p.insert("gender".into(), json!(code));
        }
        let birth = self.first(pid, 7).text(1).to_string();
        if let Some(d) = dt::dtm(&birth, &loc(pid, 7))? {
            p.insert("birthDate".into(), json!(d.date()));
            if d.hour.is_some() && d.day.is_some() {
                let full = d.date_time(self.offset());
                if full.contains('T') {
                    p.insert(
                        "_birthDate".into(),
                        json!({"extension": [{
                            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                            "valueDateTime": full,
                        }]}),
                    );
                }
            }
        }
        let death = self.date_time(pid, 29)?;
        if let Some(d) = death {
            p.insert("deceasedDateTime".into(), json!(d));
        } else if let Some(flag) = self.text(pid, 30) {
            match flag.as_str() {
                "Y" => {
                    p.insert("deceasedBoolean".into(), json!(true));
                }
                "N" => {
                    p.insert("deceasedBoolean".into(), json!(false));
                }
                _ => {}
            }
        }
        let mut addresses = Vec::new();
        for rep in self.field(pid, 11).repetitions() {
            if let Some(a) = dt::address(&rep, &loc(pid, 11))? {
                addresses.push(a);
            }
        }
        if !addresses.is_empty() {
            p.insert("address".into(), Value::Array(addresses));
        }
        let ms = self.first(pid, 16);
        if let Some(code) = dt::code(&ms.text(1)) {
            let mut codings = Vec::new();
            if let Some((v3, display)) = tables::marital_status(&code) {
                codings.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": v3, "display": display,
                }));
            }
            let mut cc = json!({"coding": codings});
            if let Some(t) = string(&ms.text(2)) {
                cc["text"] = json!(t);
            }
            if codings_len(&cc) > 0 || cc.get("text").is_some() {
                if codings_len(&cc) == 0 {
                    cc.as_object_mut().map(|o| o.remove("coding"));
                }
                p.insert("maritalStatus".into(), cc);
            }
        }
        match self.text(pid, 24).as_deref() {
            Some("Y") => {
                let order = dt::integer(&self.first(pid, 25).text(1), &loc(pid, 25))?;
                p.insert("multipleBirthInteger".into(), order.unwrap_or(json!(1)));
                if p.get("multipleBirthInteger") == Some(&json!(1)) && self.text(pid, 25).is_none()
                {
                    p.remove("multipleBirthInteger");
                    p.insert("multipleBirthBoolean".into(), json!(true));
                }
            }
            Some("N") => {
                p.insert("multipleBirthBoolean".into(), json!(false));
            }
            _ => {}
        }
        if let Some(lang) = self.concept(pid, 15) {
            p.insert(
                "communication".into(),
                json!([{"language": lang, "preferred": true}]),
            );
        }
        if let Some(mm) = string(&self.first(pid, 6).component(1).sub(1)) {
            p.insert(
                "extension".into(),
                json!([{
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                    "valueString": mm,
                }]),
            );
        }
        let mut contacts = Vec::new();
        for nk1 in group.iter().filter(|s| s.id() == "NK1") {
            if let Some(c) = self.contact(nk1)? {
                contacts.push(c);
            }
        }
        if !contacts.is_empty() {
            p.insert("contact".into(), Value::Array(contacts));
        }
        Ok((Value::Object(p), ids))
    }

    /// NK1 → Patient.contact (v2-to-FHIR maps NK1 to RelatedPerson or Patient.contact;
    /// contact keeps a repeated ADT idempotent: it travels inside the Patient update).
    fn contact(&self, nk1: &'a Segment) -> Result<Option<Value>> {
        let mut c = Map::new();
        let mut rel = Vec::new();
        let r3 = self.first(nk1, 3);
        if let Some(code) = dt::v2_coding("0063", &r3.text(1), Some(&r3.text(2))) {
            rel.push(json!({"coding": [code]}));
        }
        let r7 = self.first(nk1, 7);
        if let Some(code) = dt::v2_coding("0131", &r7.text(1), Some(&r7.text(2))) {
            rel.push(json!({"coding": [code]}));
        }
        if !rel.is_empty() {
            c.insert("relationship".into(), Value::Array(rel));
        }
        if let Some(n) = dt::human_name(&self.first(nk1, 2), &loc(nk1, 2))? {
            c.insert("name".into(), n);
        }
        let mut telecom = Vec::new();
        for (n, use_) in [(5, "home"), (6, "work")] {
            for rep in self.field(nk1, n).repetitions() {
                if let Some(cp) = dt::contact_point(&rep, Some(use_)) {
                    telecom.push(cp);
                }
            }
        }
        if !telecom.is_empty() {
            c.insert("telecom".into(), Value::Array(telecom));
        }
        if let Some(a) = dt::address(&self.first(nk1, 4), &loc(nk1, 4))? {
            c.insert("address".into(), a);
        }
        if let Some(g) = self.text(nk1, 15).and_then(|g| tables::gender(&g)) {
            c.insert("gender".into(), json!(g));
        }
        let mut period = Map::new();
        put_str(
            &mut period,
            "start",
            dt::date(&self.first(nk1, 8).text(1), &loc(nk1, 8))?,
        );
        put_str(
            &mut period,
            "end",
            dt::date(&self.first(nk1, 9).text(1), &loc(nk1, 9))?,
        );
        put(&mut c, "period", non_empty(period));
        if c.get("name").is_none() && c.get("telecom").is_none() && c.get("address").is_none() {
            // ele-1 / pat-1: a contact needs at least a name, telecom, address or organization.
            return Ok(None);
        }
        Ok(Some(Value::Object(c)))
    }

    /// Write the Patient of a PID group; returns its reference.
    fn patient(&mut self, group: &[&'a Segment]) -> Result<PatientRef> {
        let (resource, ids) = self.patient_resource(group)?;
        self.check_gender(group[0]);
        let criteria = Self::matching_identifier(&ids).and_then(identifier_criteria);
        let full_url = self.add("Patient", resource, criteria);
        Ok(PatientRef { full_url })
    }

    fn check_gender(&mut self, pid: &Segment) {
        let g = self.m.field(pid, 8).first().text(1).trim().to_string();
        if !g.is_empty() && tables::gender(&g).is_none() {
            self.warnings.push(format!(
                "PID-8: administrative sex {g:?} is not in table 0001; omitted"
            ));
        }
    }

    /// XCN → a reference to a Practitioner written in this Bundle (conditional on XCN-1
    /// and its assigning authority XCN-9), or a display-only reference when there is no
    /// ID; `None` when empty.
    fn practitioner(&mut self, rep: &Repetition<'a>, at: &Loc) -> Result<Option<Value>> {
        let name = dt::xcn_name(rep, at)?;
        let id_value = string(&rep.text(1));
        let Some(value) = id_value else {
            return Ok(name.map(|n| json!({"display": display_name(&n)})));
        };
        let auth = rep.component(9);
        let mut ident = Map::new();
        if let Some(sys) = dt::hd_system(&auth.sub(1), &auth.sub(2), &auth.sub(3), self.opts) {
            ident.insert("system".into(), json!(sys));
        }
        ident.insert("value".into(), json!(value));
        let ident = Value::Object(ident);
        let criteria = identifier_criteria(&ident);
        let key = criteria.clone().unwrap_or_default();
        if let Some(url) = self.practitioners.get(&key) {
            return Ok(Some(reference(url)));
        }
        let mut p = Map::new();
        p.insert("resourceType".into(), json!("Practitioner"));
        p.insert("identifier".into(), json!([ident]));
        if let Some(n) = name {
            p.insert("name".into(), json!([n]));
        }
        let url = self.add("Practitioner", Value::Object(p), criteria);
        self.practitioners.insert(key, url.clone());
        Ok(Some(reference(&url)))
    }

    fn practitioner_field(&mut self, seg: &'a Segment, n: usize) -> Result<Option<Value>> {
        let rep = self.first(seg, n);
        self.practitioner(&rep, &loc(seg, n))
    }

    /// PV1 (+PV2) → Encounter; `None` when PV1 describes no visit (empty, or class N
    /// without a visit number).
    fn encounter(
        &mut self,
        group: &[&'a Segment],
        patient: &PatientRef,
        event: &str,
    ) -> Result<Option<String>> {
        let Some(pv1) = group.iter().copied().find(|s| s.id() == "PV1") else {
            return Ok(None);
        };
        let pv2 = group.iter().copied().find(|s| s.id() == "PV2");
        let class_code = self.text(pv1, 2).unwrap_or_default().to_ascii_uppercase();
        let ids = self.identifiers(pv1, 19, Some("VN"))?;
        if ids.is_empty() && (class_code.is_empty() || class_code == "N") {
            return Ok(None);
        }
        let mut e = Map::new();
        e.insert("resourceType".into(), json!("Encounter"));
        if !ids.is_empty() {
            e.insert("identifier".into(), Value::Array(ids.clone()));
        }
        let start = self.date_time(pv1, 44)?;
        // A13 (cancel discharge): the visit is open again, whatever PV1-45 still says.
        let end = if event == "A13" {
            None
        } else {
            self.date_time(pv1, 45)?
        };
        let status = match event {
            "A01" | "A02" | "A04" | "A12" | "A13" | "A06" | "A07" => "in-progress",
            "A03" => "finished",
            "A05" | "A14" => "planned",
            "A11" | "A27" | "A38" => "cancelled",
            _ => {
                if end.is_some() {
                    "finished"
                } else if class_code == "P" {
                    "planned"
                } else if start.is_some() {
                    "in-progress"
                } else {
                    "unknown"
                }
            }
        };
        e.insert("status".into(), json!(status));
        let class = match tables::encounter_class(&class_code) {
            Some((code, display)) => json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": code, "display": display,
            }),
            None => json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
                "code": "UNK", "display": "unknown",
            }),
        };
        e.insert("class".into(), class);
        if let Some(t) = dt::v2_concept("0007", &self.first(pv1, 4)) {
            e.insert("type".into(), json!([t]));
        }
        if let Some(s) = dt::v2_concept("0069", &self.first(pv1, 10)) {
            e.insert("serviceType".into(), s);
        }
        e.insert("subject".into(), reference(&patient.full_url));
        let mut participants = Vec::new();
        for (n, code, display) in [
            (7, "ATND", "attender"),
            (8, "REF", "referrer"),
            (9, "CON", "consultant"),
            (17, "ADM", "admitter"),
        ] {
            let reps: Vec<Repetition<'a>> = self.field(pv1, n).repetitions().collect();
            for rep in reps {
                if let Some(r) = self.practitioner(&rep, &loc(pv1, n))? {
                    participants.push(json!({
                        "type": [{"coding": [{
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": code, "display": display,
                        }]}],
                        "individual": r,
                    }));
                }
            }
        }
        if !participants.is_empty() {
            e.insert("participant".into(), Value::Array(participants));
        }
        // A planned visit (A05 pre-admit) is described by PV2-8/PV2-9, the expected
        // admit and discharge times, when PV1-44/45 are empty.
        let (start, end) = match (status, pv2) {
            ("planned", Some(p)) => (
                match start {
                    Some(s) => Some(s),
                    None => self.date_time(p, 8)?,
                },
                match end {
                    Some(e) => Some(e),
                    None => self.date_time(p, 9)?,
                },
            ),
            _ => (start, end),
        };
        let mut period = Map::new();
        put_str(&mut period, "start", start);
        put_str(&mut period, "end", end);
        put(&mut e, "period", non_empty(period));
        if let Some(reason) = pv2.and_then(|p| self.concept(p, 3)) {
            e.insert("reasonCode".into(), json!([reason]));
        }
        let mut hosp = Map::new();
        put(
            &mut hosp,
            "admitSource",
            dt::v2_concept("0023", &self.first(pv1, 14)),
        );
        put(
            &mut hosp,
            "reAdmission",
            dt::v2_concept("0092", &self.first(pv1, 13)),
        );
        put(
            &mut hosp,
            "dischargeDisposition",
            dt::v2_concept("0112", &self.first(pv1, 36)),
        );
        put(&mut e, "hospitalization", non_empty(hosp));
        let mut locations = Vec::new();
        if let Some(l) = location_display(&self.first(pv1, 3)) {
            let status = if status == "planned" {
                "planned"
            } else if status == "finished" {
                "completed"
            } else {
                "active"
            };
            locations.push(json!({"location": {"display": l}, "status": status}));
        }
        if let Some(l) = location_display(&self.first(pv1, 6)) {
            locations.push(json!({"location": {"display": l}, "status": "completed"}));
        }
        if !locations.is_empty() {
            e.insert("location".into(), Value::Array(locations));
        }
        let criteria = ids.first().and_then(identifier_criteria);
        Ok(Some(self.add("Encounter", Value::Object(e), criteria)))
    }

    // -----------------------------------------------------------------------------------
    // Clinical segments.

    /// OBX → Observation. `report_time` is OBR-7, used when OBX-14 is empty.
    fn observation(
        &mut self,
        obx: &'a Segment,
        subject: &str,
        encounter: Option<&str>,
        report_time: Option<&str>,
        order_id: Option<&Value>,
        notes: &[String],
    ) -> Result<Option<String>> {
        let mut o = Map::new();
        o.insert("resourceType".into(), json!("Observation"));
        let mut ids: Vec<Value> = self
            .field(obx, 21)
            .repetitions()
            .filter_map(|r| dt::entity_identifier(&r, None, self.opts))
            .collect();
        if ids.is_empty() {
            // A result of an order without OBX-21: an identity derived from the order's
            // filler number and OBX-1/OBX-3/OBX-4, so that a resent or corrected result
            // updates its Observation instead of leaving a stale copy (our choice; the IG
            // gives results no identity of their own).
            if let Some(derived) = order_id.and_then(|id| self.result_identifier(id, obx)) {
                ids.push(derived);
            }
        }
        if !ids.is_empty() {
            o.insert("identifier".into(), Value::Array(ids.clone()));
        }
        let status = tables::observation_status(&self.first(obx, 11).text(1));
        o.insert("status".into(), json!(status));
        let Some(code) = self.concept(obx, 3) else {
            // Observation.code is required: an OBX without OBX-3 says nothing usable.
            self.warnings.push(format!(
                "{}: no observation identifier; OBX skipped",
                loc(obx, 3).0
            ));
            return Ok(None);
        };
        o.insert("code".into(), code);
        o.insert("subject".into(), reference(subject));
        if let Some(e) = encounter {
            o.insert("encounter".into(), reference(e));
        }
        let effective = match self.date_time(obx, 14)? {
            Some(t) => Some(t),
            None => report_time.map(str::to_owned),
        };
        put_str(&mut o, "effectiveDateTime", effective);
        self.observation_value(obx, &mut o)?;
        let interp: Vec<Value> = self
            .field(obx, 8)
            .repetitions()
            .filter_map(|r| {
                let c = dt::code(&r.text(1))?;
                Some(match tables::interpretation(&c) {
                    Some(v3) => json!({"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": v3,
                    }]}),
                    None => json!({"coding": [dt::v2_coding("0078", &c, Some(&r.text(2)))]}),
                })
            })
            .collect();
        if !interp.is_empty() {
            o.insert("interpretation".into(), Value::Array(interp));
        }
        if let Some(rr) = self.reference_range(obx) {
            o.insert("referenceRange".into(), json!([rr]));
        }
        put(&mut o, "method", self.concept(obx, 17));
        let reps: Vec<Repetition<'a>> = self.field(obx, 16).repetitions().collect();
        let mut performers = Vec::new();
        for rep in reps {
            if let Some(r) = self.practitioner(&rep, &loc(obx, 16))? {
                performers.push(r);
            }
        }
        if !performers.is_empty() {
            o.insert("performer".into(), Value::Array(performers));
        }
        if !notes.is_empty() {
            o.insert(
                "note".into(),
                Value::Array(notes.iter().map(|t| json!({"text": t})).collect()),
            );
        }
        let criteria = ids.first().and_then(identifier_criteria);
        Ok(Some(self.add("Observation", Value::Object(o), criteria)))
    }

    /// `{order}/{OBX-1}/{OBX-3.1}/{OBX-4}` in the order identifier's system.
    fn result_identifier(&self, order_id: &Value, obx: &'a Segment) -> Option<Value> {
        let order = order_id.get("value")?.as_str()?;
        let code = dt::code(&self.first(obx, 3).text(1))?;
        let set_id = self.first(obx, 1).text(1).trim().to_string();
        let sub_id = self.first(obx, 4).text(1).trim().to_string();
        let mut id = Map::new();
        if let Some(sys) = order_id.get("system") {
            id.insert("system".into(), sys.clone());
        }
        id.insert(
            "type".into(),
            json!({"text": "order filler number / OBX-1 / OBX-3 / OBX-4 (derived)"}),
        );
        id.insert(
            "value".into(),
            json!(format!("{order}/{set_id}/{code}/{sub_id}")),
        );
        Some(Value::Object(id))
    }

    /// OBX-2/OBX-5/OBX-6 → value[x] (v2-to-FHIR OBX map, by value type).
    fn observation_value(&mut self, obx: &'a Segment, o: &mut Map<String, Value>) -> Result<()> {
        let vt = self.text(obx, 2).unwrap_or_default().to_ascii_uppercase();
        let field = self.field(obx, 5);
        let reps: Vec<Repetition<'a>> = field.repetitions().filter(|r| !r.is_empty()).collect();
        let Some(first) = reps.first() else {
            return Ok(());
        };
        let at = loc(obx, 5);
        let unit = self.unit(obx);
        if reps.len() > 1 && !matches!(vt.as_str(), "ST" | "TX" | "FT") {
            self.warnings.push(format!(
                "{}: {} repetitions of a {vt} value; only the first is converted",
                at.0,
                reps.len()
            ));
        }
        match vt.as_str() {
            "NM" => {
                let text = first.whole_text().trim().to_string();
                let q = match dt::decimal(&text, &at) {
                    Ok(Some(v)) => Some(quantity(v, None, &unit)),
                    Ok(None) => None,
                    Err(e) => {
                        // "<5", ">=10": a comparator sent in an NM field.
                        let (cmp, rest) = split_comparator(&text);
                        match (cmp, dt::decimal(rest, &at)) {
                            (Some(c), Ok(Some(v))) => Some(quantity(v, Some(c), &unit)),
                            _ => return Err(e),
                        }
                    }
                };
                put(o, "valueQuantity", q);
            }
            "SN" => {
                let cmp = first.text(1).trim().to_string();
                let n1 = dt::decimal(&first.text(2), &at.comp(2))?;
                let sep = first.text(3).trim().to_string();
                let n2 = dt::decimal(&first.text(4), &at.comp(4))?;
                match (sep.as_str(), n1, n2) {
                    (":" | "/", Some(a), Some(b)) => {
                        o.insert(
                            "valueRatio".into(),
                            json!({"numerator": {"value": a}, "denominator": {"value": b}}),
                        );
                    }
                    ("-", a, b) if a.is_some() || b.is_some() => {
                        let mut r = Map::new();
                        put(&mut r, "low", a.map(|v| quantity(v, None, &unit)));
                        put(&mut r, "high", b.map(|v| quantity(v, None, &unit)));
                        o.insert("valueRange".into(), Value::Object(r));
                    }
                    (_, Some(a), _) => {
                        let c = match cmp.as_str() {
                            "<" | "<=" | ">" | ">=" => Some(cmp.as_str()),
                            "" | "=" => None,
                            other => {
                                return Err(at.comp(1).err(other, "SN comparator"));
                            }
                        };
                        o.insert("valueQuantity".into(), quantity(a, c, &unit));
                    }
                    _ => {}
                }
            }
            "ST" | "TX" | "FT" | "" => {
                let text: Vec<String> = reps.iter().map(|r| r.whole_text().into_owned()).collect();
                put_str(o, "valueString", string(&text.join("\n")));
            }
            "CE" | "CWE" | "CNE" | "CF" | "CD" => {
                put(
                    o,
                    "valueCodeableConcept",
                    dt::codeable_concept(first, self.opts),
                );
            }
            "IS" | "ID" => {
                if let Some(c) = dt::code(&first.text(1)) {
                    o.insert(
                        "valueCodeableConcept".into(),
                        json!({"coding": [{"code": c}]}),
                    );
                }
            }
            "DT" => put_str(o, "valueDateTime", dt::date(&first.text(1), &at)?),
            "TS" | "DTM" => put_str(
                o,
                "valueDateTime",
                dt::date_time(&first.text(1), &at, self.opts, self.msh_offset.as_deref())?,
            ),
            "TM" => put_str(o, "valueTime", dt::time(&first.text(1), &at)?),
            "RP" => put_str(o, "valueString", string(&first.text(1))),
            other => {
                self.warnings.push(format!(
                    "{}: value type {other:?} is not converted to an Observation value",
                    at.0
                ));
            }
        }
        Ok(())
    }

    /// OBX-6 → (unit text, UCUM code).
    fn unit(&self, obx: &'a Segment) -> Unit {
        let u = self.first(obx, 6);
        let code_v = dt::code(&u.text(1));
        let text = string(&u.text(2)).or_else(|| code_v.clone());
        let ucum = tables::coding_system(&u.text(3), self.opts).as_deref()
            == Some("http://unitsofmeasure.org");
        Unit {
            text,
            ucum_code: if ucum { code_v } else { None },
        }
    }

    /// OBX-7 → referenceRange (`low-high`, `<high`, `>low`, else text).
    fn reference_range(&self, obx: &'a Segment) -> Option<Value> {
        let text = string(&self.first(obx, 7).whole_text())?;
        let unit = self.unit(obx);
        let num =
            |s: &str| dt::decimal_text(s).and_then(|t| serde_json::from_str::<Value>(&t).ok());
        let q = |v: Value| simple_quantity(v, &unit);
        if let Some(rest) = text.strip_prefix('<') {
            if let Some(v) = num(rest.trim_start_matches('=')) {
                return Some(json!({"high": q(v)}));
            }
        }
        if let Some(rest) = text.strip_prefix('>') {
            if let Some(v) = num(rest.trim_start_matches('=')) {
                return Some(json!({"low": q(v)}));
            }
        }
        let split = text
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == '-')
            .map(|(i, _)| i);
        if let Some(i) = split {
            if let (Some(lo), Some(hi)) = (num(&text[..i]), num(&text[i + 1..])) {
                return Some(json!({"low": q(lo), "high": q(hi)}));
            }
        }
        // "4.3 to 6.2"
        if let Some((a, b)) = text.split_once(" to ") {
            if let (Some(lo), Some(hi)) = (num(a), num(b)) {
                return Some(json!({"low": q(lo), "high": q(hi), "text": text}));
            }
        }
        Some(json!({ "text": text }))
    }

    /// NTE segments directly after `index` (a segment's position in the message).
    fn notes_after(&self, seg: &Segment) -> Vec<String> {
        let mut out = Vec::new();
        for s in self.m.segments().iter().skip(seg.index()) {
            if s.id() != "NTE" {
                break;
            }
            let text: Vec<String> = self
                .m
                .field(s, 3)
                .repetitions()
                .map(|r| r.whole_text().into_owned())
                .collect();
            if let Some(t) = string(&text.join("\n")) {
                out.push(t);
            }
        }
        out
    }

    /// AL1 → AllergyIntolerance.
    fn allergy(&mut self, al1: &'a Segment, patient: &str) -> Result<()> {
        let mut a = Map::new();
        a.insert("resourceType".into(), json!("AllergyIntolerance"));
        a.insert(
            "clinicalStatus".into(),
            json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                "code": "active",
            }]}),
        );
        if let Some(cat) = self.text(al1, 2).and_then(|c| tables::allergy_category(&c)) {
            a.insert("category".into(), json!([cat]));
        }
        if let Some(crit) = self
            .text(al1, 4)
            .and_then(|c| tables::allergy_criticality(&c))
        {
            a.insert("criticality".into(), json!(crit));
        }
        let Some(code) = self.concept(al1, 3) else {
            self.warnings
                .push(format!("{}: no allergen; AL1 skipped", loc(al1, 3).0));
            return Ok(());
        };
        a.insert("code".into(), code);
        a.insert("patient".into(), reference(patient));
        put_str(&mut a, "onsetDateTime", self.date_time(al1, 6)?);
        let reactions: Vec<Value> = self
            .field(al1, 5)
            .repetitions()
            .filter_map(|r| string(&r.whole_text()))
            .map(|t| json!({"manifestation": [{"text": t}]}))
            .collect();
        if !reactions.is_empty() {
            a.insert("reaction".into(), Value::Array(reactions));
        }
        self.add("AllergyIntolerance", Value::Object(a), None);
        Ok(())
    }

    /// DG1 → Condition (category encounter-diagnosis).
    fn condition(
        &mut self,
        dg1: &'a Segment,
        patient: &str,
        encounter: Option<&str>,
    ) -> Result<()> {
        let mut c = Map::new();
        c.insert("resourceType".into(), json!("Condition"));
        let verification = match self.text(dg1, 6).as_deref() {
            Some("F") => Some("confirmed"),
            Some("W" | "A") => Some("provisional"),
            _ => None,
        };
        if let Some(v) = verification {
            c.insert(
                "verificationStatus".into(),
                json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": v,
                }]}),
            );
        }
        c.insert(
            "category".into(),
            json!([{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "encounter-diagnosis",
                "display": "Encounter Diagnosis",
            }]}]),
        );
        let code = self
            .concept(dg1, 3)
            .or_else(|| self.text(dg1, 4).map(|t| json!({ "text": t })));
        let Some(code) = code else {
            self.warnings
                .push(format!("{}: no diagnosis code; DG1 skipped", loc(dg1, 3).0));
            return Ok(());
        };
        c.insert("code".into(), code);
        c.insert("subject".into(), reference(patient));
        if let Some(e) = encounter {
            c.insert("encounter".into(), reference(e));
        }
        put_str(&mut c, "onsetDateTime", self.date_time(dg1, 5)?);
        put_str(&mut c, "recordedDate", self.date_time(dg1, 19)?);
        self.add("Condition", Value::Object(c), None);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Message types.

    fn adt(&mut self, event: &str) -> Result<()> {
        let groups = self.require_pid()?;
        for group in groups {
            if event == "A40" {
                self.merge(&group)?;
                continue;
            }
            let patient = self.patient(&group)?;
            let encounter = self.encounter(&group, &patient, event)?;
            for seg in group.iter().copied() {
                self.clinical(seg, &patient, encounter.as_deref())?;
            }
        }
        Ok(())
    }

    /// A40: the PID group's patient survives; MRG names the merged one.
    fn merge(&mut self, group: &[&'a Segment]) -> Result<()> {
        let Some(mrg) = group.iter().copied().find(|s| s.id() == "MRG") else {
            return Err(ConvertError::MissingSegment {
                segment: "MRG",
                message_type: self.mt.to_string(),
            });
        };
        let mut old_ids = self.identifiers(mrg, 1, None)?;
        if old_ids.is_empty() {
            return Err(ConvertError::MissingValue {
                location: loc(mrg, 1).0,
                what: "the prior patient identifier list",
            });
        }
        for id in old_ids.iter_mut() {
            id["use"] = json!("old");
        }
        let (mut survivor, ids) = self.patient_resource(group)?;
        self.check_gender(group[0]);
        let Some(criteria) = Self::matching_identifier(&ids).and_then(identifier_criteria) else {
            return Err(ConvertError::MissingValue {
                location: "PID-3".into(),
                what: "the surviving patient's identifier",
            });
        };
        // The merged record is the one with the old identifier *without* the survivor's:
        // after a first merge the survivor carries the old identifier too, and a resent
        // A40 must still find exactly one record.
        let old_criteria = match (
            Self::matching_identifier(&old_ids).and_then(identifier_criteria),
            Self::matching_identifier(&ids).and_then(identifier_token),
        ) {
            (Some(old), Some(new)) => format!("{old}&identifier:not={new}"),
            (Some(old), None) => old,
            _ => String::new(),
        };
        if let Some(list) = survivor.get_mut("identifier").and_then(Value::as_array_mut) {
            list.extend(old_ids.iter().cloned());
        }
        survivor["active"] = json!(true);
        let survivor_url = self.add("Patient", survivor, Some(criteria.clone()));
        let mut old = Map::new();
        old.insert("resourceType".into(), json!("Patient"));
        old.insert("identifier".into(), Value::Array(old_ids));
        old.insert("active".into(), json!(false));
        if let Some(n) = dt::human_name(&self.first(mrg, 7), &loc(mrg, 7))? {
            old.insert("name".into(), json!([n]));
        }
        old.insert(
            "link".into(),
            json!([{"other": reference(&survivor_url), "type": "replaced-by"}]),
        );
        self.add("Patient", Value::Object(old), Some(old_criteria.clone()));
        self.follow_up.push(FollowUp::RelinkPatient {
            from: format!("Patient?{old_criteria}"),
            to: format!("Patient?{criteria}"),
            resource_types: RELINK_TYPES,
        });
        if let Some(e) = self.encounter(
            group,
            &PatientRef {
                full_url: survivor_url,
            },
            "A40",
        )? {
            let _ = e;
        }
        Ok(())
    }

    fn oru(&mut self) -> Result<()> {
        let groups = self.require_pid()?;
        for group in groups {
            let patient = self.patient(&group)?;
            let encounter = self.encounter(&group, &patient, "R01")?;
            let mut orc: Option<&'a Segment> = None;
            let mut report: Option<Report<'a>> = None;
            for seg in group.iter().copied() {
                match seg.id() {
                    "ORC" => orc = Some(seg),
                    "OBR" => {
                        if let Some(r) = report.take() {
                            self.finish_report(r, &patient, encounter.as_deref())?;
                        }
                        let time = self.date_time(seg, 7)?;
                        let orc = orc.take();
                        let order_id =
                            filler_first(&self.order_identifiers(orc, Some(seg))).cloned();
                        report = Some(Report {
                            obr: seg,
                            orc,
                            results: Vec::new(),
                            time,
                            order_id,
                        });
                    }
                    "OBX" => {
                        let notes = self.notes_after(seg);
                        let time = report.as_ref().and_then(|r| r.time.clone());
                        let order_id = report.as_ref().and_then(|r| r.order_id.clone());
                        if let Some(url) = self.observation(
                            seg,
                            &patient.full_url,
                            encounter.as_deref(),
                            time.as_deref(),
                            order_id.as_ref(),
                            &notes,
                        )? {
                            if let Some(r) = report.as_mut().filter(|r| !r.results.contains(&url)) {
                                r.results.push(url);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(r) = report.take() {
                self.finish_report(r, &patient, encounter.as_deref())?;
            }
        }
        Ok(())
    }

    /// OBR (+ORC) → ServiceRequest (basedOn) and DiagnosticReport with its results.
    fn finish_report(
        &mut self,
        r: Report<'a>,
        patient: &PatientRef,
        encounter: Option<&str>,
    ) -> Result<()> {
        let order = self.service_request(r.orc, Some(r.obr), patient, encounter)?;
        let obr = r.obr;
        let mut d = Map::new();
        d.insert("resourceType".into(), json!("DiagnosticReport"));
        let ids = self.order_identifiers(r.orc, Some(obr));
        if !ids.is_empty() {
            d.insert("identifier".into(), Value::Array(ids.clone()));
        }
        if let Some(o) = &order {
            d.insert("basedOn".into(), json!([reference(o)]));
        }
        d.insert(
            "status".into(),
            json!(tables::report_status(&self.first(obr, 25).text(1))),
        );
        if let Some(cat) = dt::v2_concept("0074", &self.first(obr, 24)) {
            d.insert("category".into(), json!([cat]));
        }
        let Some(code) = self.concept(obr, 4) else {
            return Err(ConvertError::MissingValue {
                location: loc(obr, 4).0,
                what: "the universal service identifier",
            });
        };
        d.insert("code".into(), code);
        d.insert("subject".into(), reference(&patient.full_url));
        if let Some(e) = encounter {
            d.insert("encounter".into(), reference(e));
        }
        put_str(&mut d, "effectiveDateTime", r.time.clone());
        put_str(&mut d, "issued", self.instant(obr, 22)?);
        if !r.results.is_empty() {
            d.insert(
                "result".into(),
                Value::Array(r.results.iter().map(|u| reference(u)).collect()),
            );
        }
        let criteria = filler_first(&ids).and_then(identifier_criteria);
        self.add("DiagnosticReport", Value::Object(d), criteria);
        Ok(())
    }

    /// ORC-2/OBR-2 placer (PLAC) and ORC-3/OBR-3 filler (FILL) identifiers.
    fn order_identifiers(&self, orc: Option<&'a Segment>, obr: Option<&'a Segment>) -> Vec<Value> {
        let mut out = Vec::new();
        for (n, ty) in [(2, "PLAC"), (3, "FILL")] {
            let id = orc
                .and_then(|s| dt::entity_identifier(&self.first(s, n), Some(ty), self.opts))
                .or_else(|| {
                    obr.and_then(|s| dt::entity_identifier(&self.first(s, n), Some(ty), self.opts))
                });
            if let Some(id) = id {
                out.push(id);
            }
        }
        out
    }

    /// ORC + its detail segment (OBR, or RXO / ODS for pharmacy and diet orders) →
    /// ServiceRequest; the code comes from OBR-4, RXO-1 or ODS-3. `None` when neither
    /// an ORC nor a code says anything about the order.
    fn service_request(
        &mut self,
        orc: Option<&'a Segment>,
        detail: Option<&'a Segment>,
        patient: &PatientRef,
        encounter: Option<&str>,
    ) -> Result<Option<String>> {
        let code = detail.and_then(|d| match d.id() {
            "OBR" => self.concept(d, 4),
            "RXO" => self.concept(d, 1),
            "ODS" => self.concept(d, 3),
            _ => None,
        });
        let obr = detail.filter(|d| d.id() == "OBR");
        if code.is_none() && orc.is_none() {
            return Ok(None);
        }
        let mut s = Map::new();
        s.insert("resourceType".into(), json!("ServiceRequest"));
        let ids = self.order_identifiers(orc, obr);
        if !ids.is_empty() {
            s.insert("identifier".into(), Value::Array(ids.clone()));
        }
        let status = match orc {
            Some(o) => tables::order_status(&self.first(o, 5).text(1), &self.first(o, 1).text(1)),
            None => "unknown",
        };
        // In a result message the order's state follows the results (OBR-25) unless
        // ORC-5 says otherwise: final or corrected results complete it.
        let orc5_empty = orc.is_none_or(|o| self.field(o, 5).is_empty());
        let status = if self.mt.code == "ORU" && orc5_empty {
            match obr.map(|b| tables::report_status(&self.first(b, 25).text(1))) {
                Some("final" | "corrected") => "completed",
                Some("cancelled") => "revoked",
                _ => "active",
            }
        } else {
            status
        };
        s.insert("status".into(), json!(status));
        s.insert("intent".into(), json!("order"));
        let priority = obr.and_then(|o| self.text(o, 5)).or_else(|| {
            self.m
                .segments()
                .iter()
                .find(|x| x.id() == "TQ1")
                .and_then(|t| self.text(t, 9))
        });
        if let Some(p) = priority.as_deref().and_then(|p| match p {
            "S" => Some("stat"),
            "A" => Some("asap"),
            "R" => Some("routine"),
            _ => None,
        }) {
            s.insert("priority".into(), json!(p));
        }
        put(&mut s, "code", code);
        s.insert("subject".into(), reference(&patient.full_url));
        if let Some(e) = encounter {
            s.insert("encounter".into(), reference(e));
        }
        if let Some(o) = orc {
            put_str(&mut s, "authoredOn", self.date_time(o, 9)?);
        }
        let requester = match orc {
            Some(o) if !self.field(o, 12).is_empty() => self.practitioner_field(o, 12)?,
            _ => match obr {
                Some(b) => self.practitioner_field(b, 16)?,
                None => None,
            },
        };
        put(&mut s, "requester", requester);
        if let Some(b) = obr {
            put(&mut s, "reasonCode", self.concepts(b, 31));
        }
        if let Some(b) = detail.or(orc) {
            let notes = self.notes_after(b);
            if !notes.is_empty() {
                s.insert(
                    "note".into(),
                    Value::Array(notes.iter().map(|t| json!({"text": t})).collect()),
                );
            }
        }
        let criteria = placer_first(&ids).and_then(identifier_criteria);
        Ok(Some(self.add("ServiceRequest", Value::Object(s), criteria)))
    }

    /// OBX, AL1 and DG1 of a patient group (ADT, orders, SIU): Observation,
    /// AllergyIntolerance, Condition.
    fn clinical(
        &mut self,
        seg: &'a Segment,
        patient: &PatientRef,
        encounter: Option<&str>,
    ) -> Result<()> {
        match seg.id() {
            "OBX" => {
                let notes = self.notes_after(seg);
                self.observation(seg, &patient.full_url, encounter, None, None, &notes)?;
            }
            "AL1" => self.allergy(seg, &patient.full_url)?,
            "DG1" => self.condition(seg, &patient.full_url, encounter)?,
            _ => {}
        }
        Ok(())
    }

    /// ORM^O01 / OML^O21: each ORC with its detail segment (OBR, RXO or ODS) →
    /// ServiceRequest; OBX, AL1 and DG1 as in ADT.
    fn orders(&mut self) -> Result<()> {
        let groups = self.require_pid()?;
        let mut written = 0;
        for group in groups {
            let patient = self.patient(&group)?;
            let encounter = self.encounter(&group, &patient, "O01")?;
            let mut pending: Option<(Option<&'a Segment>, Option<&'a Segment>)> = None;
            for seg in group.iter().copied() {
                match seg.id() {
                    "ORC" => {
                        if let Some((o, d)) = pending.take() {
                            written += self.order(o, d, &patient, encounter.as_deref())?;
                        }
                        pending = Some((Some(seg), None));
                    }
                    "OBR" | "RXO" | "ODS" => match pending.as_mut() {
                        Some((_, d @ None)) => *d = Some(seg),
                        _ => {
                            if let Some((o, d)) = pending.take() {
                                written += self.order(o, d, &patient, encounter.as_deref())?;
                            }
                            pending = Some((None, Some(seg)));
                        }
                    },
                    _ => self.clinical(seg, &patient, encounter.as_deref())?,
                }
            }
            if let Some((o, d)) = pending.take() {
                written += self.order(o, d, &patient, encounter.as_deref())?;
            }
        }
        if written == 0 {
            return Err(ConvertError::MissingSegment {
                segment: "ORC",
                message_type: self.mt.to_string(),
            });
        }
        Ok(())
    }

    fn order(
        &mut self,
        orc: Option<&'a Segment>,
        detail: Option<&'a Segment>,
        patient: &PatientRef,
        encounter: Option<&str>,
    ) -> Result<usize> {
        if let Some(obr) = detail.filter(|d| d.id() == "OBR") {
            if self.concept(obr, 4).is_none() {
                return Err(ConvertError::MissingValue {
                    location: loc(obr, 4).0,
                    what: "the universal service identifier",
                });
            }
        }
        Ok(usize::from(
            self.service_request(orc, detail, patient, encounter)?
                .is_some(),
        ))
    }

    /// SIU^S12–S15: SCH + resources → Appointment.
    fn siu(&mut self, event: &str) -> Result<()> {
        let Some(sch) = self.m.segment("SCH") else {
            return Err(ConvertError::MissingSegment {
                segment: "SCH",
                message_type: self.mt.to_string(),
            });
        };
        let groups = self.require_pid()?;
        let first_group = &groups[0];
        let patient = self.patient(first_group)?;
        let encounter = self.encounter(first_group, &patient, event)?;
        // The patient group's own OBX/DG1/AL1 (SIU_S12 PATIENT group); the resource groups
        // (RGS and after) only describe the appointment.
        for seg in first_group.iter().copied() {
            if matches!(seg.id(), "RGS" | "AIS" | "AIG" | "AIL" | "AIP") {
                break;
            }
            self.clinical(seg, &patient, encounter.as_deref())?;
        }
        let mut a = Map::new();
        a.insert("resourceType".into(), json!("Appointment"));
        let mut ids = Vec::new();
        for (n, ty) in [(1, "PLAC"), (2, "FILL")] {
            if let Some(id) = dt::entity_identifier(&self.first(sch, n), Some(ty), self.opts) {
                ids.push(id);
            }
        }
        if !ids.is_empty() {
            a.insert("identifier".into(), Value::Array(ids.clone()));
        }
        let status = if event == "S15" {
            "cancelled"
        } else {
            self.text(sch, 25)
                .and_then(|s| tables::appointment_status(&s))
                .unwrap_or("booked")
        };
        a.insert("status".into(), json!(status));
        if event == "S15" {
            put(&mut a, "cancelationReason", self.concept(sch, 6));
        }
        let segs = self.m.segments();
        let service_types: Vec<Value> = segs
            .iter()
            .filter(|s| s.id() == "AIS")
            .filter_map(|s| self.concept(s, 3))
            .collect();
        if !service_types.is_empty() {
            a.insert("serviceType".into(), Value::Array(service_types));
        }
        put(&mut a, "appointmentType", self.concept(sch, 8));
        if let Some(r) = self.concept(sch, 7) {
            a.insert("reasonCode".into(), json!([r]));
        }
        // Start/end: TQ1-7/8, else SCH-11.4/11.5 (TQ, deprecated since v2.5), else AIS-4.
        let tq1 = segs.iter().find(|s| s.id() == "TQ1");
        let mut start = match tq1 {
            Some(t) => self.instant(t, 7)?,
            None => None,
        };
        let mut end = match tq1 {
            Some(t) => self.instant(t, 8)?,
            None => None,
        };
        if start.is_none() {
            let tq = self.first(sch, 11);
            let l = loc(sch, 11);
            start = dt::dtm(&tq.component(4).sub(1), &l.comp(4))?
                .and_then(|d| d.instant(self.offset()));
            end = dt::dtm(&tq.component(5).sub(1), &l.comp(5))?
                .and_then(|d| d.instant(self.offset()));
        }
        if start.is_none() {
            if let Some(ais) = segs.iter().find(|s| s.id() == "AIS") {
                start = self.instant(ais, 4)?;
            }
        }
        if let (Some(s), Some(e)) = (&start, &end) {
            if s > e {
                end = None;
            }
        }
        put_str(&mut a, "start", start);
        put_str(&mut a, "end", end);
        let dur = self.first(sch, 9).text(1).trim().to_string();
        let units = self.first(sch, 10).text(1).trim().to_ascii_lowercase();
        if let Ok(n) = dur.parse::<u32>() {
            let minutes = match units.as_str() {
                "min" | "m" | "minutes" | "minute" => Some(n),
                "h" | "hr" | "hours" | "hour" => n.checked_mul(60),
                _ => None,
            };
            if let Some(m) = minutes.filter(|m| *m > 0) {
                a.insert("minutesDuration".into(), json!(m));
            }
        }
        // NTE of the SCH group follow SCH and its TQ1 segments.
        let mut after = sch;
        for s in self.m.segments().iter().skip(sch.index()) {
            if s.id() != "TQ1" {
                break;
            }
            after = s;
        }
        let notes: Vec<String> = self.notes_after(after);
        put_str(&mut a, "comment", string(&notes.join("\n")));
        let mut participants = vec![json!({
            "actor": reference(&patient.full_url),
            "status": "accepted",
        })];
        for seg in segs.iter() {
            match seg.id() {
                "AIP" => {
                    let reps: Vec<Repetition<'a>> = self.field(seg, 3).repetitions().collect();
                    for rep in reps {
                        if let Some(r) = self.practitioner(&rep, &loc(seg, 3))? {
                            let mut p = json!({"actor": r, "status": "accepted"});
                            if let Some(role) = self.concept(seg, 4) {
                                p["type"] = json!([role]);
                            }
                            participants.push(p);
                        }
                    }
                }
                "AIL" => {
                    if let Some(l) = location_display(&self.first(seg, 3)) {
                        participants.push(json!({"actor": {"display": l}, "status": "accepted"}));
                    }
                }
                "AIG" => {
                    if let Some(t) =
                        string(&self.first(seg, 3).text(2)).or_else(|| self.text(seg, 3))
                    {
                        participants.push(json!({"actor": {"display": t}, "status": "accepted"}));
                    }
                }
                _ => {}
            }
        }
        a.insert("participant".into(), Value::Array(participants));
        let criteria = filler_first(&ids).and_then(identifier_criteria);
        self.add("Appointment", Value::Object(a), criteria);
        Ok(())
    }

    /// VXU^V04: ORC + RXA (+RXR, OBX) → Immunization.
    fn vxu(&mut self) -> Result<()> {
        let groups = self.require_pid()?;
        let mut any = false;
        for group in groups {
            let patient = self.patient(&group)?;
            let encounter = self.encounter(&group, &patient, "V04")?;
            let mut orc: Option<&'a Segment> = None;
            let mut i = 0;
            while i < group.len() {
                let seg = group[i];
                match seg.id() {
                    "ORC" => orc = Some(seg),
                    "RXA" => {
                        let rxr = group.get(i + 1).copied().filter(|s| s.id() == "RXR");
                        self.immunization(seg, rxr, orc.take(), &patient, encounter.as_deref())?;
                        any = true;
                    }
                    // Eligibility and funding source belong to the Immunization
                    // (v2-to-FHIR VXU_V04 message map); other OBX are Observations.
                    "OBX" if any && immunization_obx(&self.first(seg, 3).text(1)).is_some() => {}
                    "OBX" => {
                        let notes = self.notes_after(seg);
                        self.observation(
                            seg,
                            &patient.full_url,
                            encounter.as_deref(),
                            None,
                            None,
                            &notes,
                        )?;
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        if !any {
            return Err(ConvertError::MissingSegment {
                segment: "RXA",
                message_type: self.mt.to_string(),
            });
        }
        Ok(())
    }

    fn immunization(
        &mut self,
        rxa: &'a Segment,
        rxr: Option<&'a Segment>,
        orc: Option<&'a Segment>,
        patient: &PatientRef,
        encounter: Option<&str>,
    ) -> Result<()> {
        let mut im = Map::new();
        im.insert("resourceType".into(), json!("Immunization"));
        let ids: Vec<Value> = orc
            .and_then(|o| dt::entity_identifier(&self.first(o, 3), Some("FILL"), self.opts))
            .into_iter()
            .collect();
        if !ids.is_empty() {
            im.insert("identifier".into(), Value::Array(ids.clone()));
        }
        let completion = self.text(rxa, 20).unwrap_or_default().to_ascii_uppercase();
        let status = if self.text(rxa, 21).as_deref() == Some("D") {
            "entered-in-error"
        } else if matches!(completion.as_str(), "RE" | "NA") {
            "not-done"
        } else {
            "completed"
        };
        im.insert("status".into(), json!(status));
        if status == "not-done" {
            put(&mut im, "statusReason", self.concept(rxa, 18));
        }
        let Some(vaccine) = self.concept(rxa, 5) else {
            return Err(ConvertError::MissingValue {
                location: loc(rxa, 5).0,
                what: "the administered code (vaccine)",
            });
        };
        im.insert("vaccineCode".into(), vaccine);
        im.insert("patient".into(), reference(&patient.full_url));
        if let Some(e) = encounter {
            im.insert("encounter".into(), reference(e));
        }
        let Some(when) = self.date_time(rxa, 3)? else {
            return Err(ConvertError::MissingValue {
                location: loc(rxa, 3).0,
                what: "the date/time of administration",
            });
        };
        im.insert("occurrenceDateTime".into(), json!(when));
        match self.text(rxa, 9).as_deref() {
            Some("00") => {
                im.insert("primarySource".into(), json!(true));
            }
            Some(_) => {
                im.insert("primarySource".into(), json!(false));
                put(&mut im, "reportOrigin", self.concept(rxa, 9));
            }
            None => {}
        }
        put_str(&mut im, "lotNumber", self.text(rxa, 15));
        put_str(
            &mut im,
            "expirationDate",
            dt::date(&self.first(rxa, 16).text(1), &loc(rxa, 16))?,
        );
        let mvx = self.first(rxa, 17);
        if let Some(name) = string(&mvx.text(2)).or_else(|| string(&mvx.text(1))) {
            im.insert("manufacturer".into(), json!({"display": name}));
        }
        if let Some(r) = rxr {
            put(&mut im, "route", self.concept(r, 1));
            put(&mut im, "site", self.concept(r, 2));
        }
        let amount = self.first(rxa, 6).text(1).trim().to_string();
        if !amount.is_empty() && amount != "999" {
            if let Some(v) = dt::decimal(&amount, &loc(rxa, 6))? {
                let u = self.first(rxa, 7);
                let unit = Unit {
                    text: string(&u.text(2)).or_else(|| dt::code(&u.text(1))),
                    ucum_code: (tables::coding_system(&u.text(3), self.opts).as_deref()
                        == Some("http://unitsofmeasure.org"))
                    .then(|| dt::code(&u.text(1)))
                    .flatten(),
                };
                im.insert("doseQuantity".into(), simple_quantity(v, &unit));
            }
        }
        let reps: Vec<Repetition<'a>> = self.field(rxa, 10).repetitions().collect();
        let mut performers = Vec::new();
        for rep in reps {
            if let Some(r) = self.practitioner(&rep, &loc(rxa, 10))? {
                performers.push(json!({
                    "function": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0443",
                        "code": "AP", "display": "Administering Provider",
                    }]},
                    "actor": r,
                }));
            }
        }
        if !performers.is_empty() {
            im.insert("performer".into(), Value::Array(performers));
        }
        let mut eligibility = Vec::new();
        for seg in self.m.segments().iter().skip(rxa.index()) {
            if matches!(seg.id(), "ORC" | "RXA" | "PID") {
                break;
            }
            if seg.id() != "OBX" {
                continue;
            }
            let Some(kind) = immunization_obx(&self.first(seg, 3).text(1)) else {
                continue;
            };
            let Some(value) = self.concept(seg, 5) else {
                continue;
            };
            if kind == "fundingSource" {
                im.insert("fundingSource".into(), value);
            } else {
                eligibility.push(value);
            }
        }
        if !eligibility.is_empty() {
            im.insert("programEligibility".into(), Value::Array(eligibility));
        }
        let criteria = ids.first().and_then(identifier_criteria);
        self.add("Immunization", Value::Object(im), criteria);
        Ok(())
    }

    /// MDM^T02: TXA + OBX → DocumentReference.
    fn mdm(&mut self) -> Result<()> {
        let Some(txa) = self.m.segment("TXA") else {
            return Err(ConvertError::MissingSegment {
                segment: "TXA",
                message_type: self.mt.to_string(),
            });
        };
        let groups = self.require_pid()?;
        let patient = self.patient(&groups[0])?;
        let encounter = self.encounter(&groups[0], &patient, "T02")?;
        let mut d = Map::new();
        d.insert("resourceType".into(), json!("DocumentReference"));
        let master = dt::entity_identifier(&self.first(txa, 12), None, self.opts);
        if let Some(mi) = &master {
            d.insert("masterIdentifier".into(), mi.clone());
        }
        let status = match self
            .text(txa, 19)
            .unwrap_or_default()
            .to_ascii_uppercase()
            .as_str()
        {
            "CA" => "entered-in-error",
            "OB" => "superseded",
            _ => "current",
        };
        d.insert("status".into(), json!(status));
        let doc_status = match self
            .text(txa, 17)
            .unwrap_or_default()
            .to_ascii_uppercase()
            .as_str()
        {
            "AU" | "LA" => Some("final"),
            "IP" | "IN" | "PA" | "DI" | "DO" => Some("preliminary"),
            _ => None,
        };
        put_str(&mut d, "docStatus", doc_status.map(str::to_owned));
        put(&mut d, "type", dt::v2_concept("0270", &self.first(txa, 2)));
        d.insert("subject".into(), reference(&patient.full_url));
        put_str(&mut d, "date", self.instant(txa, 4)?);
        let mut authors = Vec::new();
        for n in [5, 9] {
            let reps: Vec<Repetition<'a>> = self.field(txa, n).repetitions().collect();
            for rep in reps {
                if let Some(r) = self.practitioner(&rep, &loc(txa, n))? {
                    if !authors.contains(&r) {
                        authors.push(r);
                    }
                }
            }
        }
        if !authors.is_empty() {
            d.insert("author".into(), Value::Array(authors));
        }
        let mut content = Vec::new();
        let mut text_parts = Vec::new();
        for obx in self.m.segments().iter().filter(|s| s.id() == "OBX") {
            let vt = self.text(obx, 2).unwrap_or_default().to_ascii_uppercase();
            let field = self.field(obx, 5);
            match vt.as_str() {
                "ED" => {
                    let ed = field.first();
                    let ty = ed.text(2).trim().to_ascii_lowercase();
                    let sub = ed.text(3).trim().to_ascii_lowercase();
                    let encoding = ed.text(4).trim().to_ascii_uppercase();
                    let data: String = ed.text(5).chars().filter(|c| !c.is_whitespace()).collect();
                    let mime = match (ty.as_str(), sub.as_str()) {
                        ("", _) => "application/octet-stream".to_string(),
                        (t, "") => format!("{t}/octet-stream"),
                        (t, s) => format!("{t}/{s}"),
                    };
                    if encoding == "BASE64" && is_base64(&data) && !data.is_empty() {
                        content.push(json!({"attachment": {"contentType": mime, "data": data}}));
                    } else if !data.is_empty() {
                        content.push(json!({"attachment": {
                            "contentType": mime,
                            "data": base64_encode(data.as_bytes()),
                        }}));
                    } else {
                        self.warnings.push(format!(
                            "{}: encapsulated data is empty; not attached",
                            loc(obx, 5).0
                        ));
                    }
                }
                "RP" => {
                    if let Some(url) =
                        string(&field.first().text(1)).filter(|u| !u.contains(char::is_whitespace))
                    {
                        content.push(json!({"attachment": {"url": url}}));
                    }
                }
                _ => {
                    for rep in field.repetitions() {
                        text_parts.push(rep.whole_text().into_owned());
                    }
                }
            }
        }
        if let Some(text) = string(&text_parts.join("\n")) {
            content.insert(
                0,
                json!({"attachment": {
                    "contentType": "text/plain",
                    "data": base64_encode(text.as_bytes()),
                }}),
            );
        }
        if content.is_empty() {
            return Err(ConvertError::MissingValue {
                location: "OBX-5".into(),
                what: "document content (MDM^T02 carries the document in OBX)",
            });
        }
        d.insert("content".into(), Value::Array(content));
        if let Some(e) = encounter {
            d.insert("context".into(), json!({"encounter": [reference(&e)]}));
        }
        let criteria = master.as_ref().and_then(identifier_criteria);
        self.add("DocumentReference", Value::Object(d), criteria);
        Ok(())
    }

    /// MSH → Provenance targeting every resource of the Bundle (v2-to-FHIR maps MSH to
    /// MessageHeader and Provenance; a stored MessageHeader would describe a message
    /// exchange the server is not part of, so only the Provenance is written).
    fn provenance(&mut self) -> Result<()> {
        if !self.opts.provenance || self.entries.is_empty() {
            return Ok(());
        }
        let targets: Vec<Value> = self
            .entries
            .iter()
            .filter_map(|e| e.get("fullUrl").and_then(Value::as_str))
            .map(reference)
            .collect();
        let msh = self.m.msh();
        let recorded = match self.instant(msh, 7) {
            Ok(Some(t)) => t,
            _ => now_instant(),
        };
        let app = self.first(msh, 3).text(1).trim().to_string();
        let fac = self.first(msh, 4).text(1).trim().to_string();
        let who = match (app.is_empty(), fac.is_empty()) {
            (false, false) => format!("{app} ({fac})"),
            (false, true) => app,
            (true, false) => fac,
            (true, true) => "unknown sender".into(),
        };
        let mut p = Map::new();
        p.insert("resourceType".into(), json!("Provenance"));
        p.insert("target".into(), Value::Array(targets));
        p.insert("recorded".into(), json!(recorded));
        if let Some(c) = dt::v2_coding("0003", &self.mt.trigger, None) {
            p.insert("activity".into(), json!({ "coding": [c] }));
        }
        p.insert(
            "agent".into(),
            json!([{
                "type": {"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "author",
                }]},
                "who": {"display": who},
            }]),
        );
        let control = self.m.control_id();
        let mut what = Map::new();
        what.insert(
            "display".into(),
            json!(format!("HL7 v2 message {} {}", self.mt, control)
                .trim()
                .to_string()),
        );
        if let Some(c) = string(&control) {
            what.insert("identifier".into(), json!({ "value": c }));
        }
        p.insert(
            "entity".into(),
            json!([{"role": "source", "what": Value::Object(what)}]),
        );
        self.add("Provenance", Value::Object(p), None);
        Ok(())
    }
}

/// LOINC codes of VXU OBX segments that are Immunization elements (CDC IIS guide).
fn immunization_obx(code: &str) -> Option<&'static str> {
    match code.trim() {
        "64994-7" => Some("programEligibility"),
        "30963-3" => Some("fundingSource"),
        _ => None,
    }
}

struct Report<'a> {
    obr: &'a Segment,
    orc: Option<&'a Segment>,
    results: Vec<String>,
    time: Option<String>,
    /// The report's filler (else placer) order identifier, for result identities.
    order_id: Option<Value>,
}

#[derive(Clone)]
struct Unit {
    text: Option<String>,
    ucum_code: Option<String>,
}

fn quantity(value: Value, comparator: Option<&str>, unit: &Unit) -> Value {
    let mut q = Map::new();
    q.insert("value".into(), value);
    if let Some(c) = comparator {
        q.insert("comparator".into(), json!(c));
    }
    put_str(&mut q, "unit", unit.text.clone());
    if let Some(code) = &unit.ucum_code {
        q.insert("system".into(), json!("http://unitsofmeasure.org"));
        q.insert("code".into(), json!(code));
    }
    Value::Object(q)
}

fn simple_quantity(value: Value, unit: &Unit) -> Value {
    quantity(value, None, unit)
}

fn split_comparator(text: &str) -> (Option<&'static str>, &str) {
    for c in ["<=", ">=", "<", ">"] {
        if let Some(rest) = text.strip_prefix(c) {
            let cmp: &'static str = match c {
                "<=" => "<=",
                ">=" => ">=",
                "<" => "<",
                _ => ">",
            };
            return (Some(cmp), rest.trim());
        }
    }
    (None, text)
}

fn codings_len(cc: &Value) -> usize {
    cc.get("coding")
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

fn display_name(name: &Value) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for key in ["prefix", "given"] {
        if let Some(a) = name.get(key).and_then(Value::as_array) {
            parts.extend(a.iter().filter_map(Value::as_str));
        }
    }
    if let Some(f) = name.get("family").and_then(Value::as_str) {
        parts.push(f);
    }
    parts.join(" ")
}

/// PL (person location) → display text: facility, building, floor, point of care,
/// room, bed.
fn location_display(rep: &Repetition<'_>) -> Option<String> {
    let parts: Vec<String> = [4, 7, 8, 1, 2, 3]
        .iter()
        .filter_map(|&n| string(&rep.component(n).sub(1)))
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

fn filler_first(ids: &[Value]) -> Option<&Value> {
    let is =
        |i: &&Value, t: &str| i.pointer("/type/coding/0/code").and_then(Value::as_str) == Some(t);
    ids.iter().find(|i| is(i, "FILL")).or_else(|| ids.first())
}

fn placer_first(ids: &[Value]) -> Option<&Value> {
    let is =
        |i: &&Value, t: &str| i.pointer("/type/coding/0/code").and_then(Value::as_str) == Some(t);
    ids.iter().find(|i| is(i, "PLAC")).or_else(|| ids.first())
}

fn is_base64(s: &str) -> bool {
    s.len() % 4 == 0
        && s.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || (b == b'=' && i + 2 >= s.len())
        })
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn now_instant() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o);
            assert!(is_base64(o));
        }
        assert!(!is_base64("abc"));
    }

    #[test]
    fn criteria_are_encoded() {
        let id = json!({"system": "urn:oid:1.2.3", "value": "A B&C|D,E"});
        // FHIR search escapes (`\|`, `\,`) first, then percent-encoding.
        assert_eq!(
            identifier_criteria(&id).unwrap(),
            "identifier=urn:oid:1.2.3|A%20B%26C%5C%7CD%5C%2CE"
        );
        assert_eq!(
            identifier_criteria(&json!({"value": "9"})).unwrap(),
            "identifier=|9"
        );
    }

    #[test]
    fn relink_rewrites_only_matching_references() {
        let mut r = json!({"subject": {"reference": "Patient/old"}, "x": [{"reference": "Patient/other"}], "reference": "Patient/old"});
        assert_eq!(relink_references(&mut r, "Patient/old", "Patient/new"), 2);
        assert_eq!(r["subject"]["reference"], "Patient/new");
        assert_eq!(r["x"][0]["reference"], "Patient/other");
    }

    #[test]
    fn urns_are_uuids() {
        let m = parse("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||1^^^H^MR").unwrap();
        let opts = ConvertOptions::default();
        let mut c = Ctx::new(&m, &opts, &m.message_type());
        let a = c.new_urn();
        let b = c.new_urn();
        assert_ne!(a, b);
        let hex = a.trim_start_matches("urn:uuid:");
        let parts: Vec<usize> = hex.split('-').map(str::len).collect();
        assert_eq!(parts, vec![8, 4, 4, 4, 12]);
    }
}
