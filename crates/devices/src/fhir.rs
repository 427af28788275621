//! FHIR destination mapping templates (`CollectionFhir` of `CodeValueFhir`) and the
//! Observations built from measurements.
//!
//! Grouping follows the connector: `periodInterval` 0 makes one Observation per measurement;
//! 60 and 1440 collect a device's measurements of one type into hourly / daily UTC buckets
//! (`effectivePeriod` covers the whole bucket, `end` one millisecond before the next bucket);
//! measurements that carry a correlation id are grouped by it instead. `SampledData` values
//! hold one slot per `defaultPeriod` milliseconds from `effectivePeriod.start`, `"E"` where no
//! sample arrived; a later sample in the same slot replaces an earlier one. Other value types
//! take the latest measurement of the group.
//!
//! Each group has a deterministic identifier (a SHA-256 over device, type and period, or
//! device, type and correlation id): writing it with a conditional update on that identifier
//! makes re-processing idempotent, and [`merge`] folds late samples into the stored
//! Observation.

use crate::content::{parse_json_text, parse_time, problem, wrapper, Measurement};
use crate::error::{MappingError, TemplateError, TemplateProblem};
use serde_json::{json, Map, Number, Value};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime, Time};

/// How measurements are grouped into Observations (`periodInterval`, minutes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PeriodInterval {
    /// `0`: one Observation per measurement.
    Instance,
    /// `60`: one per device, type and UTC hour.
    Hourly,
    /// `1440`: one per device, type and UTC day.
    Daily,
}

impl PeriodInterval {
    fn minutes(self) -> i64 {
        match self {
            PeriodInterval::Instance => 0,
            PeriodInterval::Hourly => 60,
            PeriodInterval::Daily => 1440,
        }
    }
}

/// A code of the template (`codes[]`), a FHIR Coding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    /// `Coding.code`.
    pub code: String,
    /// `Coding.system`.
    pub system: Option<String>,
    /// `Coding.display`.
    pub display: Option<String>,
}

/// A category entry (`category[]`: `{codes, text}`), a FHIR CodeableConcept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    /// Codings.
    pub codes: Vec<Code>,
    /// Text.
    pub text: Option<String>,
}

/// The FHIR type a measurement value is written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `valueSampledData`: samples every `default_period_ms` milliseconds.
    SampledData {
        /// `SampledData.period` in milliseconds (the template's `defaultPeriod`).
        default_period_ms: u32,
        /// `SampledData.origin.unit`.
        unit: Option<String>,
    },
    /// `valueQuantity`.
    Quantity {
        /// Human unit.
        unit: Option<String>,
        /// Coded unit (UCUM code).
        code: Option<String>,
        /// Unit system (`http://unitsofmeasure.org`).
        system: Option<String>,
    },
    /// `valueCodeableConcept`: fixed codes, written when the value is present.
    CodeableConcept {
        /// Codings.
        codes: Vec<Code>,
        /// Text.
        text: Option<String>,
    },
    /// `valueString`: the value's text.
    String,
}

/// `value` of a template or a component: which measurement property, in which FHIR type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueMapping {
    /// Measurement property (`valueName`).
    pub value_name: String,
    /// FHIR type.
    pub kind: ValueKind,
}

/// `components[]`: an Observation.component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentMapping {
    /// `component.code` codings.
    pub codes: Vec<Code>,
    /// `component.value[x]`.
    pub value: ValueMapping,
}

/// One `CodeValueFhir` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeValueFhir {
    /// The measurement type it applies to.
    pub type_name: String,
    /// Grouping.
    pub period: PeriodInterval,
    /// `Observation.category`.
    pub category: Vec<Concept>,
    /// `Observation.code.coding`.
    pub codes: Vec<Code>,
    /// `Observation.value[x]`.
    pub value: Option<ValueMapping>,
    /// `Observation.component`.
    pub components: Vec<ComponentMapping>,
}

/// A loaded FHIR destination mapping.
#[derive(Debug, Clone, Default)]
pub struct FhirTemplates {
    templates: Vec<CodeValueFhir>,
}

/// The most SampledData slots one Observation may hold (a day at 1 s is 86,400).
pub const MAX_SAMPLES: i64 = 100_000;

impl FhirTemplates {
    /// Loads a FHIR mapping from JSON text (a UTF-8 byte-order mark is ignored).
    pub fn from_json_str(text: &str) -> Result<FhirTemplates, TemplateError> {
        Self::from_value(&parse_json_text(text)?)
    }

    /// Loads `{"templateType": "CollectionFhir", "template": [...]}` or a single `CodeValueFhir`.
    /// Every problem is reported; two templates for one type name are a problem too.
    pub fn from_value(doc: &Value) -> Result<FhirTemplates, TemplateError> {
        let (tt, body) = wrapper(doc, "template").map_err(|p| TemplateError::Invalid(vec![p]))?;
        let mut problems = Vec::new();
        let mut templates: Vec<CodeValueFhir> = Vec::new();
        if tt.eq_ignore_ascii_case("CollectionFhir") {
            let Some(items) = body.as_array() else {
                return Err(TemplateError::Invalid(vec![problem(
                    "template",
                    "CollectionFhir 'template' must be an array of templates",
                )]));
            };
            for (i, item) in items.iter().enumerate() {
                let loc = format!("template[{i}]");
                match parse_item(item, &loc) {
                    Ok(t) => {
                        if templates.iter().any(|x| x.type_name == t.type_name) {
                            problems.push(problem(
                                &format!("{loc} (CodeValueFhir '{}')", t.type_name),
                                "another template already maps this typeName",
                            ));
                        } else {
                            templates.push(t);
                        }
                    }
                    Err(mut p) => problems.append(&mut p),
                }
            }
        } else if tt.eq_ignore_ascii_case("CodeValueFhir") {
            match parse_item(doc, "template") {
                Ok(t) => templates.push(t),
                Err(mut p) => problems.append(&mut p),
            }
        } else {
            problems.push(problem(
                "template",
                format!(
                    "unsupported templateType '{tt}' (expected CollectionFhir or CodeValueFhir)"
                ),
            ));
        }
        if problems.is_empty() {
            Ok(FhirTemplates { templates })
        } else {
            Err(TemplateError::Invalid(problems))
        }
    }

    /// The templates, in document order.
    pub fn templates(&self) -> &[CodeValueFhir] {
        &self.templates
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// `true` when there is none.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// The template for a measurement type.
    pub fn get(&self, type_name: &str) -> Option<&CodeValueFhir> {
        self.templates.iter().find(|t| t.type_name == type_name)
    }

    /// Groups measurements into Observation groups (see the module docs). Measurements
    /// without a template are reported, the rest still grouped. Groups come out ordered by
    /// type, device, and start.
    pub fn group(
        &self,
        measurements: &[Measurement],
    ) -> (Vec<ObservationGroup>, Vec<MappingError>) {
        let mut groups: BTreeMap<(String, String, String), ObservationGroup> = BTreeMap::new();
        let mut errors = Vec::new();
        for m in measurements {
            let Some(t) = self.get(&m.type_name) else {
                errors.push(MappingError::NoTemplate(m.type_name.clone()));
                continue;
            };
            let (start, end, scope) = match (&m.correlation_id, t.period) {
                (Some(c), _) => (
                    m.occurrence_time,
                    m.occurrence_time,
                    GroupScope::Correlation(c.clone()),
                ),
                (None, PeriodInterval::Instance) => {
                    (m.occurrence_time, m.occurrence_time, GroupScope::Period)
                }
                (None, p) => {
                    let s = bucket_start(m.occurrence_time, p);
                    let Some(e) =
                        s.checked_add(Duration::minutes(p.minutes()) - Duration::milliseconds(1))
                    else {
                        errors.push(MappingError::Value {
                            type_name: m.type_name.clone(),
                            device_id: m.device_id.clone(),
                            message: "occurrence time out of range".into(),
                        });
                        continue;
                    };
                    (s, e, GroupScope::Period)
                }
            };
            let scope_key = match &scope {
                GroupScope::Correlation(c) => format!("c:{c}"),
                GroupScope::Period => format!("p:{}", fmt_time(start)),
            };
            let key = (m.type_name.clone(), m.device_id.clone(), scope_key);
            let g = groups.entry(key).or_insert_with(|| ObservationGroup {
                template: t.clone(),
                device_id: m.device_id.clone(),
                scope,
                start,
                end,
                measurements: Vec::new(),
            });
            if matches!(g.scope, GroupScope::Correlation(_)) {
                g.start = g.start.min(m.occurrence_time);
                g.end = g.end.max(m.occurrence_time);
            }
            g.measurements.push(m.clone());
        }
        let mut out: Vec<ObservationGroup> = groups.into_values().collect();
        for g in &mut out {
            g.measurements.sort_by_key(|m| m.occurrence_time);
        }
        out.sort_by(|a, b| {
            (&a.template.type_name, &a.device_id, a.start).cmp(&(
                &b.template.type_name,
                &b.device_id,
                b.start,
            ))
        });
        (out, errors)
    }
}

fn bucket_start(t: OffsetDateTime, p: PeriodInterval) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    match p {
        PeriodInterval::Daily => t.replace_time(Time::MIDNIGHT),
        _ => t.replace_time(Time::from_hms(t.hour(), 0, 0).unwrap_or(Time::MIDNIGHT)),
    }
}

pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn opt_str(o: &Map<String, Value>, key: &str, p: &mut Vec<String>) -> Option<String> {
    match o.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            p.push(format!("'{key}' must be a string"));
            None
        }
    }
}

fn check_keys(o: &Map<String, Value>, allowed: &[&str], ctx: &str, p: &mut Vec<String>) {
    for k in o.keys() {
        if !allowed.contains(&k.as_str()) {
            p.push(format!("{ctx}unknown member '{k}'"));
        }
    }
}

fn codes(v: Option<&Value>, ctx: &str, required: bool, p: &mut Vec<String>) -> Vec<Code> {
    let items = match v {
        None if required => {
            p.push(format!("missing required '{ctx}'"));
            return Vec::new();
        }
        None => return Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            p.push(format!("'{ctx}' must be an array"));
            return Vec::new();
        }
    };
    if required && items.is_empty() {
        p.push(format!("'{ctx}' must hold at least one code"));
    }
    let mut out = Vec::new();
    for (i, c) in items.iter().enumerate() {
        let here = format!("{ctx}[{i}]: ");
        let Some(o) = c.as_object() else {
            p.push(format!(
                "{here}expected an object {{code, system, display}}"
            ));
            continue;
        };
        check_keys(o, &["code", "system", "display"], &here, p);
        let mut local = Vec::new();
        let code = opt_str(o, "code", &mut local);
        let system = opt_str(o, "system", &mut local);
        let display = opt_str(o, "display", &mut local);
        p.extend(local.into_iter().map(|m| format!("{here}{m}")));
        match code {
            Some(code) => out.push(Code {
                code,
                system,
                display,
            }),
            None => p.push(format!("{here}missing required 'code'")),
        }
    }
    out
}

fn value_mapping(
    v: &Value,
    ctx: &str,
    period: PeriodInterval,
    p: &mut Vec<String>,
) -> Option<ValueMapping> {
    let Some(o) = v.as_object() else {
        p.push(format!("'{ctx}' must be an object"));
        return None;
    };
    check_keys(
        o,
        &[
            "valueName",
            "valueType",
            "defaultPeriod",
            "unit",
            "code",
            "system",
            "codes",
            "text",
        ],
        &format!("{ctx}: "),
        p,
    );
    let mut local = Vec::new();
    let value_name = opt_str(o, "valueName", &mut local);
    let value_type = opt_str(o, "valueType", &mut local);
    let unit = opt_str(o, "unit", &mut local);
    let code = opt_str(o, "code", &mut local);
    let system = opt_str(o, "system", &mut local);
    let text = opt_str(o, "text", &mut local);
    if value_name.is_none() {
        local.push("missing required 'valueName'".into());
    }
    let kind = match value_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => {
            local.push(
                "missing required 'valueType' (SampledData, Quantity, CodeableConcept or String)"
                    .into(),
            );
            None
        }
        Some("sampleddata") => match o.get("defaultPeriod").and_then(Value::as_u64) {
            Some(ms) if ms > 0 && ms <= u64::from(u32::MAX) => {
                let slots = period.minutes() * 60_000 / ms as i64;
                if slots > MAX_SAMPLES {
                    local.push(format!(
                        "'defaultPeriod' {ms} ms gives {slots} samples per Observation (at most {MAX_SAMPLES})"
                    ));
                }
                Some(ValueKind::SampledData {
                    default_period_ms: ms as u32,
                    unit,
                })
            }
            _ => {
                local.push(
                    "SampledData needs 'defaultPeriod', a positive number of milliseconds".into(),
                );
                None
            }
        },
        Some("quantity") => Some(ValueKind::Quantity { unit, code, system }),
        Some("codeableconcept") => {
            let mut cp = Vec::new();
            let cs = codes(o.get("codes"), "codes", false, &mut cp);
            local.extend(cp);
            if cs.is_empty() && text.is_none() {
                local.push("CodeableConcept needs 'codes' or 'text'".into());
            }
            Some(ValueKind::CodeableConcept { codes: cs, text })
        }
        Some("string") => Some(ValueKind::String),
        Some(_) => {
            local.push(format!(
                "'valueType' '{}' is not SampledData, Quantity, CodeableConcept or String",
                value_type.unwrap_or_default()
            ));
            None
        }
    };
    let ok = local.is_empty();
    p.extend(local.into_iter().map(|m| format!("{ctx}: {m}")));
    match (ok, value_name, kind) {
        (true, Some(value_name), Some(kind)) => Some(ValueMapping { value_name, kind }),
        _ => None,
    }
}

fn parse_item(item: &Value, loc: &str) -> Result<CodeValueFhir, Vec<TemplateProblem>> {
    let (tt, body) = wrapper(item, loc).map_err(|p| vec![p])?;
    if !tt.eq_ignore_ascii_case("CodeValueFhir") {
        return Err(vec![problem(
            loc,
            format!("unsupported templateType '{tt}' (expected CodeValueFhir)"),
        )]);
    }
    let Some(o) = body.as_object() else {
        return Err(vec![problem(
            &format!("{loc} (CodeValueFhir)"),
            "'template' must be an object",
        )]);
    };
    let type_name = o
        .get("typeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    let label = if type_name.is_empty() {
        format!("{loc} (CodeValueFhir)")
    } else {
        format!("{loc} (CodeValueFhir '{type_name}')")
    };
    let mut p: Vec<String> = Vec::new();
    check_keys(
        o,
        &[
            "typeName",
            "periodInterval",
            "category",
            "codes",
            "value",
            "components",
        ],
        "",
        &mut p,
    );
    match o.get("typeName") {
        None => p.push("missing required 'typeName'".into()),
        Some(Value::String(_)) if type_name.is_empty() => {
            p.push("'typeName' must not be blank".into())
        }
        Some(Value::String(_)) => {}
        Some(_) => p.push("'typeName' must be a string".into()),
    }
    let period = match o.get("periodInterval") {
        None | Some(Value::Null) => PeriodInterval::Instance,
        Some(v) => match v.as_i64() {
            Some(0) => PeriodInterval::Instance,
            Some(60) => PeriodInterval::Hourly,
            Some(1440) => PeriodInterval::Daily,
            _ => {
                p.push(format!("'periodInterval' {v} is not 0, 60 or 1440"));
                PeriodInterval::Instance
            }
        },
    };
    let cs = codes(o.get("codes"), "codes", true, &mut p);
    let mut category = Vec::new();
    match o.get("category") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, c) in items.iter().enumerate() {
                let ctx = format!("category[{i}]");
                let Some(co) = c.as_object() else {
                    p.push(format!("{ctx}: expected an object {{codes, text}}"));
                    continue;
                };
                check_keys(co, &["codes", "text"], &format!("{ctx}: "), &mut p);
                let mut local = Vec::new();
                let text = opt_str(co, "text", &mut local);
                let ccodes = codes(co.get("codes"), "codes", false, &mut local);
                if ccodes.is_empty() && text.is_none() {
                    local.push("needs 'codes' or 'text'".into());
                }
                p.extend(local.into_iter().map(|m| format!("{ctx}: {m}")));
                category.push(Concept {
                    codes: ccodes,
                    text,
                });
            }
        }
        Some(_) => p.push("'category' must be an array".into()),
    }
    let value = o
        .get("value")
        .and_then(|v| value_mapping(v, "value", period, &mut p));
    let mut components = Vec::new();
    match o.get("components") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, c) in items.iter().enumerate() {
                let ctx = format!("components[{i}]");
                let Some(co) = c.as_object() else {
                    p.push(format!("{ctx}: expected an object {{codes, value}}"));
                    continue;
                };
                check_keys(co, &["codes", "value"], &format!("{ctx}: "), &mut p);
                let mut local = Vec::new();
                let ccodes = codes(co.get("codes"), "codes", true, &mut local);
                let v = match co.get("value") {
                    Some(v) => value_mapping(v, "value", period, &mut local),
                    None => {
                        local.push("missing required 'value'".into());
                        None
                    }
                };
                p.extend(local.into_iter().map(|m| format!("{ctx}: {m}")));
                if let Some(value) = v {
                    components.push(ComponentMapping {
                        codes: ccodes,
                        value,
                    });
                }
            }
        }
        Some(_) => p.push("'components' must be an array".into()),
    }
    if p.is_empty() {
        Ok(CodeValueFhir {
            type_name,
            period,
            category,
            codes: cs,
            value,
            components,
        })
    } else {
        Err(p.into_iter().map(|m| problem(&label, m)).collect())
    }
}

/// What an Observation group is keyed by, besides device and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupScope {
    /// The bucket (or, for `periodInterval` 0, the instant) `start`..`end`.
    Period,
    /// A correlation id: all its measurements, whenever they were taken.
    Correlation(String),
}

/// Measurements of one device and type that belong in one Observation.
#[derive(Debug, Clone)]
pub struct ObservationGroup {
    /// The FHIR mapping template of the type.
    pub template: CodeValueFhir,
    /// Device identifier (from the messages).
    pub device_id: String,
    /// Period or correlation.
    pub scope: GroupScope,
    /// Start of `effectivePeriod` (or the instant).
    pub start: OffsetDateTime,
    /// End of `effectivePeriod`.
    pub end: OffsetDateTime,
    /// The measurements, oldest first.
    pub measurements: Vec<Measurement>,
}

/// A FHIR identifier (system and value).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identifier {
    /// `Identifier.system`.
    pub system: String,
    /// `Identifier.value`.
    pub value: String,
}

impl Identifier {
    /// The search URL for a conditional create/update: `Type?identifier=system|value`.
    pub fn search_url(&self, resource_type: &str) -> String {
        format!(
            "{resource_type}?identifier={}|{}",
            encode_query(&self.system),
            encode_query(&self.value)
        )
    }

    /// `{"system": …, "value": …}`.
    pub fn to_json(&self) -> Value {
        json!({"system": self.system, "value": self.value})
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Hex SHA-256 over NUL-separated parts (the first 32 hex digits: 128 bits).
pub(crate) fn stable_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// References for an Observation's `subject`, `device` and (optionally) `encounter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `Observation.subject.reference`: `Patient/123` or a transaction `urn:uuid:…`.
    pub patient: String,
    /// `Observation.device.reference`.
    pub device: String,
}

impl ObservationGroup {
    /// The deterministic identifier value of this group (see the module docs).
    pub fn identifier_value(&self) -> String {
        match &self.scope {
            GroupScope::Correlation(c) => {
                stable_hash(&["correlation", &self.device_id, &self.template.type_name, c])
            }
            GroupScope::Period => stable_hash(&[
                "period",
                &self.device_id,
                &self.template.type_name,
                &fmt_time(self.start),
                &fmt_time(self.end),
            ]),
        }
    }

    fn latest(&self, name: &str) -> Option<&str> {
        self.measurements.iter().rev().find_map(|m| m.value(name))
    }

    /// The encounter id of the latest measurement that has one.
    pub fn encounter_id(&self) -> Option<&str> {
        self.measurements
            .iter()
            .rev()
            .find_map(|m| m.encounter_id.as_deref())
    }

    /// The patient id of the latest measurement that has one.
    pub fn patient_id(&self) -> Option<&str> {
        self.measurements
            .iter()
            .rev()
            .find_map(|m| m.patient_id.as_deref())
    }

    fn error(&self, message: String) -> MappingError {
        MappingError::Value {
            type_name: self.template.type_name.clone(),
            device_id: self.device_id.clone(),
            message,
        }
    }

    fn samples(&self, name: &str) -> Vec<(OffsetDateTime, &str)> {
        self.measurements
            .iter()
            .filter_map(|m| m.value(name).map(|v| (m.occurrence_time, v)))
            .collect()
    }

    /// `(value[x] name, value)` for a mapping, or `None` when no measurement has the value.
    fn value_json(
        &self,
        mapping: &ValueMapping,
    ) -> Result<Option<(&'static str, Value)>, MappingError> {
        let name = mapping.value_name.as_str();
        Ok(match &mapping.kind {
            ValueKind::SampledData {
                default_period_ms,
                unit,
            } => {
                let samples = self.samples(name);
                if samples.is_empty() {
                    return Ok(None);
                }
                let slots = sample_slots(self.start, self.end, *default_period_ms, &[], &samples)
                    .map_err(|m| self.error(format!("value '{name}': {m}")))?;
                Some((
                    "valueSampledData",
                    sampled_data(*default_period_ms, unit.as_deref(), &slots),
                ))
            }
            ValueKind::Quantity { unit, code, system } => match self.latest(name) {
                None => None,
                Some(text) => {
                    let n = decimal(text).ok_or_else(|| {
                        self.error(format!("value '{name}' = '{text}' is not a number"))
                    })?;
                    let mut q = Map::new();
                    q.insert("value".into(), Value::Number(n));
                    for (k, v) in [("unit", unit), ("system", system), ("code", code)] {
                        if let Some(v) = v {
                            q.insert(k.into(), json!(v));
                        }
                    }
                    Some(("valueQuantity", Value::Object(q)))
                }
            },
            ValueKind::CodeableConcept { codes, text } => self
                .latest(name)
                .map(|_| ("valueCodeableConcept", concept_json(codes, text.as_deref()))),
            ValueKind::String => self.latest(name).map(|t| ("valueString", json!(t))),
        })
    }

    /// A new Observation for this group.
    pub fn to_observation(
        &self,
        identifier: &Identifier,
        subject: &Subject,
        encounter: Option<&Identifier>,
    ) -> Result<Value, MappingError> {
        let t = &self.template;
        let mut obs = Map::new();
        obs.insert("resourceType".into(), json!("Observation"));
        obs.insert("identifier".into(), json!([identifier.to_json()]));
        obs.insert("status".into(), json!("final"));
        if !t.category.is_empty() {
            let cats: Vec<Value> = t
                .category
                .iter()
                .map(|c| concept_json(&c.codes, c.text.as_deref()))
                .collect();
            obs.insert("category".into(), Value::Array(cats));
        }
        obs.insert("code".into(), concept_json(&t.codes, Some(&t.type_name)));
        obs.insert("subject".into(), json!({"reference": subject.patient}));
        if let Some(e) = encounter {
            obs.insert("encounter".into(), json!({"identifier": e.to_json()}));
        }
        let sampled = t
            .value
            .iter()
            .chain(t.components.iter().map(|c| &c.value))
            .any(|v| matches!(v.kind, ValueKind::SampledData { .. }));
        if self.start == self.end && !sampled {
            obs.insert("effectiveDateTime".into(), json!(fmt_time(self.start)));
        } else {
            obs.insert(
                "effectivePeriod".into(),
                json!({"start": fmt_time(self.start), "end": fmt_time(self.end)}),
            );
        }
        obs.insert("device".into(), json!({"reference": subject.device}));
        let mut any_value = false;
        if let Some(v) = &t.value {
            if let Some((k, val)) = self.value_json(v)? {
                obs.insert(k.into(), val);
                any_value = true;
            }
        }
        let mut comps = Vec::new();
        for c in &t.components {
            if let Some((k, val)) = self.value_json(&c.value)? {
                comps.push(json!({"code": concept_json(&c.codes, None), k: val}));
            }
        }
        if !comps.is_empty() {
            obs.insert("component".into(), Value::Array(comps));
            any_value = true;
        }
        if !any_value && (t.value.is_some() || !t.components.is_empty()) {
            return Err(
                self.error("none of the template's values is present in the measurements".into())
            );
        }
        Ok(Value::Object(obs))
    }
}

fn concept_json(codes: &[Code], text: Option<&str>) -> Value {
    let mut c = Map::new();
    if !codes.is_empty() {
        let coding: Vec<Value> = codes
            .iter()
            .map(|k| {
                let mut m = Map::new();
                if let Some(s) = &k.system {
                    m.insert("system".into(), json!(s));
                }
                m.insert("code".into(), json!(k.code));
                if let Some(d) = &k.display {
                    m.insert("display".into(), json!(d));
                }
                Value::Object(m)
            })
            .collect();
        c.insert("coding".into(), Value::Array(coding));
    }
    if let Some(t) = text.filter(|t| !t.trim().is_empty()) {
        c.insert("text".into(), json!(t));
    }
    Value::Object(c)
}

/// A JSON number from a measurement's text, keeping its spelling (`98.4363928627`).
fn decimal(text: &str) -> Option<Number> {
    let t = text.trim();
    let f: f64 = t.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    serde_json::from_str::<Number>(t)
        .ok()
        .or_else(|| Number::from_f64(f))
}

fn sampled_data(period_ms: u32, unit: Option<&str>, slots: &[Cow<'_, str>]) -> Value {
    let mut origin = Map::new();
    origin.insert("value".into(), json!(0));
    if let Some(u) = unit {
        origin.insert("unit".into(), json!(u));
    }
    let mut data = String::with_capacity(slots.iter().map(|s| s.len() + 1).sum());
    for (i, s) in slots.iter().enumerate() {
        if i > 0 {
            data.push(' ');
        }
        data.push_str(s);
    }
    json!({
        "origin": Value::Object(origin),
        "period": period_ms,
        "dimensions": 1,
        "data": data,
    })
}

/// A sample's text as [`decimal`] would write it back, without parsing: true for a plain
/// JSON number without exponent (`-12.50`, `0`, `72`), which [`decimal`] keeps as it is.
/// Anything else (`+5`, `.5`, `007`, `1e3`, over 64 bytes) takes the full parse.
fn canonical_decimal(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if digits.is_empty() || b.len() > 64 {
        return false;
    }
    let (int, frac) = match digits.iter().position(|&c| c == b'.') {
        Some(i) => (&digits[..i], Some(&digits[i + 1..])),
        None => (digits, None),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    all_digits(int) && (int.len() == 1 || int[0] != b'0') && frac.is_none_or(all_digits)
}

/// Slot values from `start` to `end` every `period_ms`: existing samples (time, text) first,
/// then new ones, later ones in a slot replacing earlier ones.
fn sample_slots<'a>(
    start: OffsetDateTime,
    end: OffsetDateTime,
    period_ms: u32,
    existing: &[(OffsetDateTime, &'a str)],
    new: &[(OffsetDateTime, &'a str)],
) -> Result<Vec<Cow<'a, str>>, String> {
    let period = i128::from(period_ms.max(1));
    let span = (end - start).whole_milliseconds().max(0);
    let count = span / period + 1;
    if count > i128::from(MAX_SAMPLES) {
        return Err(format!("{count} samples exceed the limit of {MAX_SAMPLES}"));
    }
    let mut slots: Vec<Cow<'a, str>> = vec![Cow::Borrowed("E"); count as usize];
    let mut put = |t: OffsetDateTime, v: &'a str| -> Result<(), String> {
        let text = if canonical_decimal(v) {
            Cow::Borrowed(v)
        } else {
            let d = decimal(v).ok_or_else(|| format!("'{v}' is not a number"))?;
            Cow::Owned(d.to_string())
        };
        let idx = (t - start).whole_milliseconds() / period;
        if let Some(slot) = usize::try_from(idx).ok().and_then(|i| slots.get_mut(i)) {
            *slot = text;
        }
        Ok(())
    };
    for (t, v) in existing {
        put(*t, v)?;
    }
    for (t, v) in new {
        put(*t, v)?;
    }
    Ok(slots)
}

/// A sample's time and its text as stored.
type Sample<'a> = (OffsetDateTime, &'a str);

/// Reads the samples of an existing SampledData back as (time, text).
fn existing_samples(sd: &Value, start: OffsetDateTime) -> Result<(u32, Vec<Sample<'_>>), String> {
    let period = sd
        .get("period")
        .and_then(Value::as_f64)
        .filter(|p| *p >= 1.0 && *p <= f64::from(u32::MAX))
        .ok_or("SampledData.period missing or not a positive number")? as u32;
    let data = sd.get("data").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    for (i, tok) in data.split_whitespace().enumerate() {
        if i as i64 >= MAX_SAMPLES {
            return Err(format!("SampledData holds more than {MAX_SAMPLES} samples"));
        }
        if matches!(tok, "E" | "U" | "L") {
            continue;
        }
        if let Some(t) = start.checked_add(Duration::milliseconds(i as i64 * i64::from(period))) {
            out.push((t, tok));
        }
    }
    Ok((period, out))
}

/// Folds a group's measurements into an Observation stored earlier for the same identifier
/// (late or redelivered samples). SampledData keeps the stored samples and adds the new ones
/// (a new sample replaces a stored one in the same slot); `effectivePeriod` grows to cover
/// both; other values take the group's latest. Subject, device and everything else stored are
/// kept. Merging the same samples twice gives the same Observation.
pub fn merge(existing: &Value, group: &ObservationGroup) -> Result<Value, MappingError> {
    let bad = |m: &str| MappingError::Merge(m.to_string());
    let obj = existing
        .as_object()
        .ok_or_else(|| bad("not a JSON object"))?;
    if obj.get("resourceType").and_then(Value::as_str) != Some("Observation") {
        return Err(bad("resourceType is not Observation"));
    }
    let want = group.identifier_value();
    let has_id = obj
        .get("identifier")
        .and_then(Value::as_array)
        .is_some_and(|ids| {
            ids.iter()
                .any(|i| i.get("value").and_then(Value::as_str) == Some(want.as_str()))
        });
    if !has_id {
        return Err(bad(
            "its identifier does not match the group (different device, type or period)",
        ));
    }
    let (old_start, old_end) = match (obj.get("effectivePeriod"), obj.get("effectiveDateTime")) {
        (Some(p), _) => (
            p.get("start").and_then(Value::as_str).and_then(parse_time),
            p.get("end").and_then(Value::as_str).and_then(parse_time),
        ),
        (None, Some(Value::String(t))) => (parse_time(t), parse_time(t)),
        _ => (None, None),
    };
    let (old_start, old_end) = match (old_start, old_end) {
        (Some(s), Some(e)) => (s, e),
        _ => {
            return Err(bad(
                "effectivePeriod / effectiveDateTime missing or unparseable",
            ))
        }
    };
    let start = old_start.min(group.start);
    let end = old_end.max(group.end);
    let mut out = obj.clone();
    if out.contains_key("effectivePeriod") || start != end {
        // A correlation group stored as one instant becomes a period once it spans more.
        out.remove("effectiveDateTime");
        out.insert(
            "effectivePeriod".into(),
            json!({"start": fmt_time(start), "end": fmt_time(end)}),
        );
    }

    let merge_value = |target: &mut Map<String, Value>,
                       mapping: &ValueMapping|
     -> Result<(), MappingError> {
        match &mapping.kind {
            ValueKind::SampledData {
                default_period_ms,
                unit,
            } => {
                let new = group.samples(&mapping.value_name);
                let (period, old) = match target.get("valueSampledData") {
                    Some(sd) => existing_samples(sd, old_start).map_err(|m| bad(&m))?,
                    None => (*default_period_ms, Vec::new()),
                };
                if new.is_empty() && old.is_empty() {
                    return Ok(());
                }
                let slots = sample_slots(start, end, period, &old, &new).map_err(|m| bad(&m))?;
                let unit = target
                    .get("valueSampledData")
                    .and_then(|sd| sd.pointer("/origin/unit"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| unit.clone());
                let value = sampled_data(period, unit.as_deref(), &slots);
                target.insert("valueSampledData".into(), value);
            }
            _ => {
                if let Some((k, v)) = group.value_json(mapping)? {
                    target.insert(k.into(), v);
                }
            }
        }
        Ok(())
    };
    if let Some(v) = &group.template.value {
        merge_value(&mut out, v)?;
    }
    if !group.template.components.is_empty() {
        let mut comps: Vec<Value> = out
            .get("component")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in &group.template.components {
            let code = concept_json(&c.codes, None);
            let pos = comps.iter().position(|x| x.get("code") == Some(&code));
            let mut target = match pos {
                Some(i) => comps[i].as_object().cloned().unwrap_or_default(),
                None => {
                    let mut m = Map::new();
                    m.insert("code".into(), code);
                    m
                }
            };
            merge_value(&mut target, &c.value)?;
            if target.len() > 1 {
                match pos {
                    Some(i) => comps[i] = Value::Object(target),
                    None => comps.push(Value::Object(target)),
                }
            }
        }
        if !comps.is_empty() {
            out.insert("component".into(), Value::Array(comps));
        }
    }
    // A stored Observation's meta describes the stored version; the server sets the new one.
    out.remove("meta");
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn samples_kept_as_written_are_the_ones_decimal_would_write() {
        // The shortcut in `sample_slots` must give what the full parse gives.
        for t in [
            "0",
            "72",
            "-5",
            "72.50",
            "0.001",
            "-0.0",
            "123456789012345678901234567890",
        ] {
            assert!(canonical_decimal(t), "{t}");
            assert_eq!(decimal(t).map(|d| d.to_string()).as_deref(), Some(t), "{t}");
        }
        for t in [
            "", "-", "+5", ".5", "5.", "007", "1e3", "1E-2", "1.2.3", "abc", "NaN", "- 1",
        ] {
            assert!(!canonical_decimal(t), "{t}");
        }
        // Those still go through the parse: normalised or refused as before.
        assert_eq!(decimal("+5").map(|d| d.to_string()).as_deref(), Some("5.0"));
        assert!(decimal("abc").is_none());
    }

    fn hr_templates() -> FhirTemplates {
        FhirTemplates::from_value(&json!({"templateType": "CollectionFhir", "template": [
            {"templateType": "CodeValueFhir", "template": {"typeName": "heartrate", "periodInterval": 60,
              "codes": [{"code": "8867-4", "system": "http://loinc.org", "display": "Heart rate"}],
              "value": {"valueName": "hr", "valueType": "SampledData", "defaultPeriod": 60000, "unit": "count/min"}}},
            {"templateType": "CodeValueFhir", "template": {"typeName": "weight",
              "codes": [{"code": "29463-7", "system": "http://loinc.org"}],
              "value": {"valueName": "kg", "valueType": "Quantity", "unit": "kg", "code": "kg", "system": "http://unitsofmeasure.org"}}}
        ]}))
        .unwrap()
    }

    fn m(t: OffsetDateTime, ty: &str, name: &str, v: &str) -> Measurement {
        Measurement {
            type_name: ty.into(),
            occurrence_time: t,
            device_id: "dev-1".into(),
            patient_id: Some("p1".into()),
            encounter_id: None,
            correlation_id: None,
            properties: BTreeMap::from([(name.to_string(), v.to_string())]),
        }
    }

    fn subject() -> Subject {
        Subject {
            patient: "Patient/p1".into(),
            device: "Device/d1".into(),
        }
    }

    #[test]
    fn hourly_sampled_data_with_gaps_and_merge() {
        let t = hr_templates();
        let ms = vec![
            m(datetime!(2024-03-01 10:00:30 UTC), "heartrate", "hr", "70"),
            m(datetime!(2024-03-01 10:02:00 UTC), "heartrate", "hr", "72"),
            m(datetime!(2024-03-01 11:00:00 UTC), "heartrate", "hr", "90"),
        ];
        let (groups, errors) = t.group(&ms);
        assert!(errors.is_empty());
        assert_eq!(groups.len(), 2);
        let g = &groups[0];
        let id = Identifier {
            system: "urn:test".into(),
            value: g.identifier_value(),
        };
        let obs = g.to_observation(&id, &subject(), None).unwrap();
        assert_eq!(obs["effectivePeriod"]["start"], "2024-03-01T10:00:00Z");
        assert_eq!(obs["effectivePeriod"]["end"], "2024-03-01T10:59:59.999Z");
        let data = obs["valueSampledData"]["data"].as_str().unwrap();
        let tokens: Vec<&str> = data.split(' ').collect();
        assert_eq!(tokens.len(), 60);
        assert_eq!(&tokens[..4], &["70", "E", "72", "E"]);
        assert_eq!(obs["valueSampledData"]["period"], 60000);

        // A late sample for the same hour merges into the stored Observation.
        let late = vec![m(
            datetime!(2024-03-01 10:01:10 UTC),
            "heartrate",
            "hr",
            "71",
        )];
        let (lg, _) = t.group(&late);
        assert_eq!(lg[0].identifier_value(), g.identifier_value());
        let merged = merge(&obs, &lg[0]).unwrap();
        let tokens: Vec<String> = merged["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .split(' ')
            .map(String::from)
            .collect();
        assert_eq!(&tokens[..4], &["70", "71", "72", "E"]);
        // Idempotent: merging again changes nothing.
        assert_eq!(merge(&merged, &lg[0]).unwrap(), merged);
        // Wrong group is refused.
        assert!(merge(&obs, &groups[1]).is_err());
        assert!(merge(&json!({"resourceType": "Patient"}), &lg[0]).is_err());
        assert!(merge(&json!(null), &lg[0]).is_err());
    }

    #[test]
    fn instance_quantity_uses_effective_date_time() {
        let t = hr_templates();
        let (groups, _) = t.group(&[m(
            datetime!(2024-03-01 08:00:00 UTC),
            "weight",
            "kg",
            "81.50",
        )]);
        let id = Identifier {
            system: "urn:test".into(),
            value: groups[0].identifier_value(),
        };
        let obs = groups[0].to_observation(&id, &subject(), None).unwrap();
        assert_eq!(obs["effectiveDateTime"], "2024-03-01T08:00:00Z");
        assert_eq!(obs["valueQuantity"]["value"].to_string(), "81.50");
        let (g2, _) = t.group(&[m(
            datetime!(2024-03-01 08:00:00 UTC),
            "weight",
            "kg",
            "heavy",
        )]);
        assert!(g2[0].to_observation(&id, &subject(), None).is_err());
    }

    #[test]
    fn daily_components_and_correlation_groups() {
        let t = FhirTemplates::from_value(&json!({"templateType": "CodeValueFhir", "template": {
            "typeName": "bp", "periodInterval": 1440, "codes": [{"code": "85354-9", "system": "http://loinc.org"}],
            "components": [
              {"codes": [{"code": "8480-6"}], "value": {"valueName": "sys", "valueType": "SampledData", "defaultPeriod": 3600000}},
              {"codes": [{"code": "8462-4"}], "value": {"valueName": "dia", "valueType": "Quantity", "unit": "mmHg"}}]}}))
        .unwrap();
        let bp = |at: OffsetDateTime, sys: &str, dia: &str, corr: Option<&str>| Measurement {
            correlation_id: corr.map(String::from),
            properties: BTreeMap::from([("sys".into(), sys.into()), ("dia".into(), dia.into())]),
            ..m(at, "bp", "x", "0")
        };
        let (g, _) = t.group(&[
            bp(datetime!(2024-03-01 01:30 UTC), "120", "80", None),
            bp(datetime!(2024-03-01 23:10 UTC), "130", "85", None),
        ]);
        assert_eq!(g.len(), 1);
        let id = Identifier {
            system: "urn:t".into(),
            value: g[0].identifier_value(),
        };
        let obs = g[0].to_observation(&id, &subject(), None).unwrap();
        assert_eq!(obs["effectivePeriod"]["end"], "2024-03-01T23:59:59.999Z");
        let sys: Vec<&str> = obs["component"][0]["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .split(' ')
            .collect();
        assert_eq!((sys.len(), sys[1], sys[23]), (24, "120", "130"));
        assert_eq!(
            obs["component"][1]["valueQuantity"]["value"].to_string(),
            "85"
        );
        // A late reading at 05:00 lands in slot 5; the Quantity takes the group's latest.
        let (late, _) = t.group(&[bp(datetime!(2024-03-01 05:00 UTC), "110", "70", None)]);
        let merged = merge(&obs, &late[0]).unwrap();
        let sys: Vec<&str> = merged["component"][0]["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .split(' ')
            .collect();
        assert_eq!((sys[1], sys[5], sys[23]), ("120", "110", "130"));
        assert_eq!(
            merged["component"][1]["valueQuantity"]["value"].to_string(),
            "70"
        );

        // With a correlation id: one group across days, period spanning the readings.
        let (g, _) = t.group(&[
            bp(datetime!(2024-03-01 23:00 UTC), "120", "80", Some("s1")),
            bp(datetime!(2024-03-02 01:00 UTC), "121", "81", Some("s1")),
        ]);
        assert_eq!(g.len(), 1);
        assert_eq!(
            (g[0].start, g[0].end),
            (
                datetime!(2024-03-01 23:00 UTC),
                datetime!(2024-03-02 01:00 UTC)
            )
        );
        let id = Identifier {
            system: "urn:t".into(),
            value: g[0].identifier_value(),
        };
        let obs = g[0].to_observation(&id, &subject(), None).unwrap();
        assert_eq!(obs["component"][0]["valueSampledData"]["data"], "120 E 121");
        let (more, _) = t.group(&[bp(datetime!(2024-03-02 03:00 UTC), "125", "82", Some("s1"))]);
        assert_eq!(more[0].identifier_value(), g[0].identifier_value());
        let merged = merge(&obs, &more[0]).unwrap();
        assert_eq!(merged["effectivePeriod"]["end"], "2024-03-02T03:00:00Z");
        assert_eq!(
            merged["component"][0]["valueSampledData"]["data"],
            "120 E 121 E 125"
        );

        // An instant Observation of a correlation group widens to a period on merge.
        let q = FhirTemplates::from_value(&json!({"templateType": "CodeValueFhir", "template": {"typeName": "w",
            "codes": [{"code": "29463-7"}], "value": {"valueName": "kg", "valueType": "Quantity"}}}))
        .unwrap();
        let w = |at, v: &str| Measurement {
            correlation_id: Some("visit".into()),
            ..m(at, "w", "kg", v)
        };
        let (g, _) = q.group(&[w(datetime!(2024-03-01 08:00 UTC), "80")]);
        let id = Identifier {
            system: "urn:t".into(),
            value: g[0].identifier_value(),
        };
        let obs = g[0].to_observation(&id, &subject(), None).unwrap();
        assert_eq!(obs["effectiveDateTime"], "2024-03-01T08:00:00Z");
        let (g2, _) = q.group(&[w(datetime!(2024-03-01 08:05 UTC), "81")]);
        let merged = merge(&obs, &g2[0]).unwrap();
        assert!(merged.get("effectiveDateTime").is_none());
        assert_eq!(merged["effectivePeriod"]["end"], "2024-03-01T08:05:00Z");
        assert_eq!(merged["valueQuantity"]["value"].to_string(), "81");
    }

    #[test]
    fn unknown_type_is_reported() {
        let (g, e) = hr_templates().group(&[m(OffsetDateTime::UNIX_EPOCH, "steps", "n", "1")]);
        assert!(g.is_empty());
        assert_eq!(
            e[0].to_string(),
            "no FHIR mapping template for measurement type 'steps'"
        );
    }

    #[test]
    fn template_problems() {
        let e = FhirTemplates::from_value(&json!({"templateType": "CollectionFhir", "template": [
            {"templateType": "CodeValueFhir", "template": {"typeName": "a", "periodInterval": 61, "codes": [{"code": "x"}],
              "value": {"valueName": "v", "valueType": "SampledData", "defaultPeriod": 10}}},
            {"templateType": "CodeValueFhir", "template": {"typeName": "b", "codes": [{"code": "x"}], "value": {"valueType": "Text"}}}
        ]}))
        .unwrap_err();
        let all = e.problems();
        assert!(
            all.contains(
                &"template[0] (CodeValueFhir 'a'): 'periodInterval' 61 is not 0, 60 or 1440"
                    .to_string()
            ),
            "{all:?}"
        );
        assert!(
            all.iter().any(|p| p.starts_with(
                "template[1] (CodeValueFhir 'b'): value: missing required 'valueName'"
            )),
            "{all:?}"
        );
        assert!(
            all.iter().any(|p| p.contains("'valueType' 'Text' is not")),
            "{all:?}"
        );
        // Hourly at 10 ms would be 360,000 samples.
        let e = FhirTemplates::from_value(&json!({"templateType": "CodeValueFhir", "template": {"typeName": "a", "periodInterval": 60,
            "codes": [{"code": "x"}], "value": {"valueName": "v", "valueType": "SampledData", "defaultPeriod": 10}}}))
        .unwrap_err();
        assert!(e.to_string().contains("360000 samples"), "{e}");
    }

    #[test]
    fn identifiers_are_stable_and_url_safe() {
        let id = Identifier {
            system: "urn:salus:devices:observation".into(),
            value: stable_hash(&["a", "b"]),
        };
        assert_eq!(id.value, stable_hash(&["a", "b"]));
        assert_ne!(stable_hash(&["ab", ""]), stable_hash(&["a", "b"]));
        assert_eq!(id.value.len(), 32);
        assert!(id
            .search_url("Observation")
            .starts_with("Observation?identifier=urn:salus:devices:observation|"));
        let odd = Identifier {
            system: "s".into(),
            value: "a|b c".into(),
        };
        assert_eq!(odd.search_url("Device"), "Device?identifier=s|a%7Cb%20c");
    }
}
