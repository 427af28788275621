//! Device mapping ("device content") templates and normalization of device messages.
//!
//! The format is the open-source IoMT FHIR connector's / Azure MedTech service's device
//! mapping: a `CollectionContent` document whose `template` array holds `JsonPathContent`,
//! `IotJsonPathContent`, `IotCentralJsonPathContent` and `CalculatedContent` templates.
//! A bare (non-collection) template is accepted as a collection of one.
//!
//! For each template, the type-match expression selects tokens from the message; each token
//! becomes one [`Measurement`]. Expressions of the JSONPath templates are evaluated against
//! the matched token; those of `CalculatedContent` against the whole message with the token
//! added as `matchedToken`.

use crate::error::{NormalizeError, TemplateError, TemplateProblem};
use crate::expression::{Expression, Language};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};

/// A normalized measurement: what one matched token of a device message says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// The template's `typeName`; the FHIR mapping template is chosen by it.
    #[serde(rename = "type")]
    pub type_name: String,
    /// When the measurement was taken (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub occurrence_time: OffsetDateTime,
    /// Device identifier as sent by the device or its hub.
    pub device_id: String,
    /// Patient identifier, when the template extracts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    /// Encounter identifier, when the template extracts one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter_id: Option<String>,
    /// Correlation (session) identifier; measurements sharing one form one Observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `valueName` → value as text (numbers keep their JSON spelling).
    pub properties: BTreeMap<String, String>,
}

impl Measurement {
    /// The value named `name`, if present.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str)
    }

    /// The value named `name` as a number, if present and numeric.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.value(name)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
    }
}

/// The result of normalizing one device message: the measurements it yields, and the
/// matches that could not be turned into measurements (missing required values, no device id,
/// unparseable timestamps). The caller decides whether a message with errors is rejected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Normalized {
    /// Measurements, in template order then match order.
    pub measurements: Vec<Measurement>,
    /// Problems, one per failed match.
    pub errors: Vec<NormalizeError>,
}

/// The kinds of content template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContentTemplateKind {
    /// Generic JSON messages; JSONPath; device id and timestamp expressions required.
    JsonPathContent,
    /// Messages routed through Azure IoT Hub (`Body`, `Properties`, `SystemProperties`):
    /// device id from `SystemProperties.iothub-connection-device-id`, time from
    /// `Properties.iothub-creation-time-utc`, else `SystemProperties.iothub-enqueuedtime`
    /// (device id and timestamp expressions in the template are ignored).
    IotJsonPathContent,
    /// Azure IoT Central data export messages: device id from `deviceId`, time from
    /// `enqueuedTime`.
    IotCentralJsonPathContent,
    /// JSONPath or JMESPath (per expression or `defaultExpressionLanguage`), evaluated on the
    /// message with the matched token as `matchedToken`.
    CalculatedContent,
}

impl ContentTemplateKind {
    const ALL: [ContentTemplateKind; 4] = [
        ContentTemplateKind::JsonPathContent,
        ContentTemplateKind::IotJsonPathContent,
        ContentTemplateKind::IotCentralJsonPathContent,
        ContentTemplateKind::CalculatedContent,
    ];

    /// The `templateType` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentTemplateKind::JsonPathContent => "JsonPathContent",
            ContentTemplateKind::IotJsonPathContent => "IotJsonPathContent",
            ContentTemplateKind::IotCentralJsonPathContent => "IotCentralJsonPathContent",
            ContentTemplateKind::CalculatedContent => "CalculatedContent",
        }
    }

    fn parse(s: &str) -> Option<ContentTemplateKind> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }

    fn implied_device_id(self) -> &'static [&'static str] {
        match self {
            ContentTemplateKind::IotJsonPathContent => {
                &["$.SystemProperties.iothub-connection-device-id"]
            }
            ContentTemplateKind::IotCentralJsonPathContent => &["$.deviceId"],
            _ => &[],
        }
    }

    fn implied_timestamp(self) -> &'static [&'static str] {
        match self {
            ContentTemplateKind::IotJsonPathContent => &[
                "$.Properties.iothub-creation-time-utc",
                "$.SystemProperties.iothub-enqueuedtime",
            ],
            ContentTemplateKind::IotCentralJsonPathContent => &["$.enqueuedTime"],
            _ => &[],
        }
    }
}

/// One value a template extracts.
#[derive(Debug, Clone)]
pub struct ValueTemplate {
    /// Property name in the measurement.
    pub name: String,
    /// Where to find it.
    pub expression: Expression,
    /// A match missing a required value is an error; a missing optional value is skipped.
    pub required: bool,
}

/// One content template.
#[derive(Debug, Clone)]
pub struct ContentTemplate {
    /// Which kind (decides the evaluation context and implied expressions).
    pub kind: ContentTemplateKind,
    /// The measurement type this template produces.
    pub type_name: String,
    type_match: Expression,
    /// Candidates in order; the first that yields a value wins (IoT Hub falls back from
    /// creation time to enqueued time).
    device_id: Vec<Expression>,
    timestamp: Vec<Expression>,
    patient_id: Option<Expression>,
    encounter_id: Option<Expression>,
    correlation_id: Option<Expression>,
    values: Vec<ValueTemplate>,
    label: String,
}

/// A loaded device mapping: an ordered set of content templates.
#[derive(Debug, Clone, Default)]
pub struct ContentTemplates {
    templates: Vec<ContentTemplate>,
}

/// Strips a UTF-8 byte-order mark and parses JSON, for template files saved by Windows tools.
pub(crate) fn parse_json_text(text: &str) -> Result<Value, TemplateError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| TemplateError::Json(e.to_string()))
}

pub(crate) fn problem(location: &str, message: impl Into<String>) -> TemplateProblem {
    TemplateProblem {
        location: location.to_string(),
        message: message.into(),
    }
}

/// Splits a `{templateType, template}` wrapper; `Err` holds the problem.
pub(crate) fn wrapper<'a>(
    v: &'a Value,
    location: &str,
) -> Result<(&'a str, &'a Value), TemplateProblem> {
    let obj = v.as_object().ok_or_else(|| {
        problem(
            location,
            "expected an object with 'templateType' and 'template'",
        )
    })?;
    let tt = match obj.get("templateType") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(problem(location, "'templateType' must be a string")),
        None => return Err(problem(location, "missing required 'templateType'")),
    };
    let template = obj
        .get("template")
        .ok_or_else(|| problem(location, "missing required 'template'"))?;
    if let Some(k) = obj
        .keys()
        .find(|k| *k != "templateType" && *k != "template")
    {
        return Err(problem(location, format!("unknown member '{k}'")));
    }
    Ok((tt, template))
}

impl ContentTemplates {
    /// Loads a device mapping from JSON text (a UTF-8 byte-order mark is ignored).
    pub fn from_json_str(text: &str) -> Result<ContentTemplates, TemplateError> {
        Self::from_value(&parse_json_text(text)?)
    }

    /// Loads a device mapping: `{"templateType": "CollectionContent", "template": [...]}` or a
    /// single content template. Every problem in the document is reported.
    pub fn from_value(doc: &Value) -> Result<ContentTemplates, TemplateError> {
        let (tt, body) = wrapper(doc, "template").map_err(|p| TemplateError::Invalid(vec![p]))?;
        let mut problems = Vec::new();
        let mut templates = Vec::new();
        if tt.eq_ignore_ascii_case("CollectionContent") {
            let Some(items) = body.as_array() else {
                return Err(TemplateError::Invalid(vec![problem(
                    "template",
                    "CollectionContent 'template' must be an array of templates",
                )]));
            };
            for (i, item) in items.iter().enumerate() {
                let loc = format!("template[{i}]");
                match parse_template(item, &loc) {
                    Ok(t) => templates.push(t),
                    Err(mut p) => problems.append(&mut p),
                }
            }
        } else if ContentTemplateKind::parse(tt).is_some() {
            match parse_template(doc, "template") {
                Ok(t) => templates.push(t),
                Err(mut p) => problems.append(&mut p),
            }
        } else {
            problems.push(unsupported_type("template", tt));
        }
        if problems.is_empty() {
            Ok(ContentTemplates { templates })
        } else {
            Err(TemplateError::Invalid(problems))
        }
    }

    /// The templates, in document order.
    pub fn templates(&self) -> &[ContentTemplate] {
        &self.templates
    }

    /// Number of templates.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// `true` when the mapping holds no template (every message then yields nothing).
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Normalizes one device message: every template is tried, every match becomes a
    /// measurement or an error. Never panics, whatever the message.
    pub fn normalize(&self, message: &Value) -> Normalized {
        let mut out = Normalized::default();
        for t in &self.templates {
            t.apply(message, &mut out);
        }
        out
    }
}

fn unsupported_type(location: &str, tt: &str) -> TemplateProblem {
    let kinds: Vec<&str> = ContentTemplateKind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    problem(
        location,
        format!(
            "unsupported templateType '{tt}' (expected CollectionContent or one of {})",
            kinds.join(", ")
        ),
    )
}

const COMMON_MEMBERS: [&str; 8] = [
    "typeName",
    "typeMatchExpression",
    "deviceIdExpression",
    "patientIdExpression",
    "encounterIdExpression",
    "correlationIdExpression",
    "timestampExpression",
    "values",
];

fn parse_template(item: &Value, loc: &str) -> Result<ContentTemplate, Vec<TemplateProblem>> {
    let (tt, body) = wrapper(item, loc).map_err(|p| vec![p])?;
    let Some(kind) = ContentTemplateKind::parse(tt) else {
        return Err(vec![unsupported_type(loc, tt)]);
    };
    let Some(obj) = body.as_object() else {
        return Err(vec![problem(
            &format!("{loc} ({})", kind.as_str()),
            "'template' must be an object",
        )]);
    };
    let type_name = obj
        .get("typeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    let label = if type_name.is_empty() {
        format!("{loc} ({})", kind.as_str())
    } else {
        format!("{loc} ({} '{}')", kind.as_str(), type_name)
    };
    let mut problems = Vec::new();
    let mut p = |m: String| problems.push(problem(&label, m));

    match obj.get("typeName") {
        None => p("missing required 'typeName'".into()),
        Some(Value::String(_)) if type_name.is_empty() => p("'typeName' must not be blank".into()),
        Some(Value::String(_)) => {}
        Some(_) => p("'typeName' must be a string".into()),
    }

    let calculated = kind == ContentTemplateKind::CalculatedContent;
    let default_language = if calculated {
        match obj.get("defaultExpressionLanguage") {
            None => Language::JsonPath,
            Some(Value::String(s)) => match Language::parse(s) {
                Some(l) => l,
                None => {
                    p(format!(
                        "'defaultExpressionLanguage' '{s}' is not JsonPath or JmesPath"
                    ));
                    Language::JsonPath
                }
            },
            Some(_) => {
                p("'defaultExpressionLanguage' must be a string".into());
                Language::JsonPath
            }
        }
    } else {
        Language::JsonPath
    };
    for k in obj.keys() {
        let known = COMMON_MEMBERS.contains(&k.as_str())
            || (calculated && k == "defaultExpressionLanguage");
        if !known {
            p(format!("unknown member '{k}'"));
        }
    }

    let expr = |name: &str, p: &mut dyn FnMut(String)| -> Option<Expression> {
        let v = obj.get(name)?;
        match expression(v, default_language, kind) {
            Ok(e) => Some(e),
            Err(m) => {
                p(format!("'{name}': {m}"));
                None
            }
        }
    };
    let type_match = expr("typeMatchExpression", &mut p);
    // IoT Hub / IoT Central templates take device id and time from the hub's metadata; like
    // the connector, they ignore these expressions if a template carries them.
    let device_expr = if kind.implied_device_id().is_empty() {
        expr("deviceIdExpression", &mut p)
    } else {
        None
    };
    let timestamp_expr = if kind.implied_timestamp().is_empty() {
        expr("timestampExpression", &mut p)
    } else {
        None
    };
    let patient_id = expr("patientIdExpression", &mut p);
    let encounter_id = expr("encounterIdExpression", &mut p);
    let correlation_id = expr("correlationIdExpression", &mut p);

    if !obj.contains_key("typeMatchExpression") {
        p("missing required 'typeMatchExpression'".into());
    }
    let implied = |paths: &[&str]| -> Vec<Expression> {
        paths
            .iter()
            .filter_map(|s| Expression::compile(s, Language::JsonPath).ok())
            .collect()
    };
    let device_id = match device_expr {
        Some(e) => vec![e],
        None => implied(kind.implied_device_id()),
    };
    let timestamp = match timestamp_expr {
        Some(e) => vec![e],
        None => implied(kind.implied_timestamp()),
    };
    if !obj.contains_key("deviceIdExpression") && kind.implied_device_id().is_empty() {
        p("missing required 'deviceIdExpression'".into());
    }
    if !obj.contains_key("timestampExpression") && kind.implied_timestamp().is_empty() {
        p("missing required 'timestampExpression'".into());
    }

    let mut values = Vec::new();
    match obj.get("values") {
        None => p("missing required 'values'".into()),
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                match value_template(v, default_language, kind) {
                    Ok(vt) => values.push(vt),
                    Err(m) => p(format!("values[{i}]: {m}")),
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for v in &values {
                if !seen.insert(v.name.as_str()) {
                    p(format!("values: duplicate valueName '{}'", v.name));
                }
            }
        }
        Some(_) => p("'values' must be an array".into()),
    }

    match type_match {
        Some(type_match) if problems.is_empty() => Ok(ContentTemplate {
            kind,
            type_name,
            type_match,
            device_id,
            timestamp,
            patient_id,
            encounter_id,
            correlation_id,
            values,
            label,
        }),
        _ => Err(problems),
    }
}

/// An expression: a string in the default language, or `{"value", "language"}`.
fn expression(
    v: &Value,
    default: Language,
    kind: ContentTemplateKind,
) -> Result<Expression, String> {
    let (source, language) = match v {
        Value::String(s) => (s.as_str(), default),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| *k != "value" && *k != "language") {
                return Err(format!("unknown member '{k}' in expression object"));
            }
            let source = match o.get("value") {
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err("expression 'value' must be a string".into()),
                None => return Err("expression object is missing 'value'".into()),
            };
            let language = match o.get("language") {
                None => default,
                Some(Value::String(l)) => Language::parse(l)
                    .ok_or_else(|| format!("language '{l}' is not JsonPath or JmesPath"))?,
                Some(_) => return Err("expression 'language' must be a string".into()),
            };
            (source, language)
        }
        _ => return Err("an expression must be a string or an object {value, language}".into()),
    };
    if language == Language::JmesPath && kind != ContentTemplateKind::CalculatedContent {
        return Err(format!(
            "JMESPath is supported only in CalculatedContent templates, not {}",
            kind.as_str()
        ));
    }
    Expression::compile(source, language)
}

fn value_template(
    v: &Value,
    default: Language,
    kind: ContentTemplateKind,
) -> Result<ValueTemplate, String> {
    let o = v
        .as_object()
        .ok_or("expected an object {valueName, valueExpression, required}")?;
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "valueName" | "valueExpression" | "required"))
    {
        return Err(format!("unknown member '{k}'"));
    }
    let name = match o.get("valueName") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) => return Err("'valueName' must not be blank".into()),
        Some(_) => return Err("'valueName' must be a string".into()),
        None => return Err("missing required 'valueName'".into()),
    };
    let expression = match o.get("valueExpression") {
        Some(e) => {
            expression(e, default, kind).map_err(|m| format!("'valueExpression' ({name}): {m}"))?
        }
        None => return Err(format!("missing required 'valueExpression' ({name})")),
    };
    let required = match o.get("required") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => return Err(format!("'required' must be true or false, not {other}")),
    };
    Ok(ValueTemplate {
        name,
        expression,
        required,
    })
}

/// Text of a scalar (strings as-is, numbers in their JSON spelling); objects and arrays as JSON.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        other => Some(other.to_string()),
    }
}

/// Parses a device timestamp: RFC 3339 (any fraction length), or a date-time without offset,
/// which is taken as UTC (as Json.NET does for such messages in UTC hubs).
pub(crate) fn parse_time(s: &str) -> Option<OffsetDateTime> {
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t.to_offset(UtcOffset::UTC));
    }
    // Lower-case 'z' / 't' and a missing offset.
    let upper = s.to_ascii_uppercase();
    if let Ok(t) = OffsetDateTime::parse(&upper, &Rfc3339) {
        return Some(t.to_offset(UtcOffset::UTC));
    }
    let fmt = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    PrimitiveDateTime::parse(&upper, &fmt)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

impl ContentTemplate {
    /// `template[i] (Kind 'typeName')`, the label used in error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn apply(&self, message: &Value, out: &mut Normalized) {
        let matches = match self.type_match.matches(message) {
            Ok(m) => m,
            Err(e) => {
                out.errors.push(NormalizeError {
                    template: self.label.clone(),
                    match_index: 0,
                    message: format!("typeMatchExpression: {e}"),
                });
                return;
            }
        };
        // CalculatedContent sees the message plus `matchedToken`: copy the message once per
        // template, not once per match (a batch message can hold thousands of matches).
        let mut calculated =
            (self.kind == ContentTemplateKind::CalculatedContent).then(|| match message {
                Value::Object(o) => Value::Object(o.clone()),
                _ => Value::Object(Map::new()),
            });
        for (i, token) in matches.into_iter().enumerate() {
            let result = match calculated.as_mut() {
                Some(ctx) => {
                    if let Value::Object(m) = ctx {
                        m.insert("matchedToken".into(), token);
                    }
                    self.measurement(ctx)
                }
                None => self.measurement(&token),
            };
            match result {
                Ok(m) => out.measurements.push(m),
                Err(message) => out.errors.push(NormalizeError {
                    template: self.label.clone(),
                    match_index: i,
                    message,
                }),
            }
        }
    }

    fn measurement(&self, ctx: &Value) -> Result<Measurement, String> {
        let first_text = |exprs: &[Expression]| -> Result<Option<String>, String> {
            for e in exprs {
                if let Some(v) = e.first(ctx)? {
                    if let Some(t) = text_of(&v).filter(|t| !t.trim().is_empty()) {
                        return Ok(Some(t));
                    }
                }
            }
            Ok(None)
        };
        let describe = |exprs: &[Expression]| {
            exprs
                .iter()
                .map(|e| e.source())
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let device_id = first_text(&self.device_id)?
            .ok_or_else(|| format!("device id not found ({})", describe(&self.device_id)))?;
        let ts_text = first_text(&self.timestamp)?
            .ok_or_else(|| format!("timestamp not found ({})", describe(&self.timestamp)))?;
        let occurrence_time = parse_time(&ts_text)
            .ok_or_else(|| format!("timestamp '{ts_text}' is not an ISO 8601 date-time"))?;
        let opt = |e: &Option<Expression>| -> Result<Option<String>, String> {
            match e {
                Some(e) => first_text(std::slice::from_ref(e)),
                None => Ok(None),
            }
        };
        let mut properties = BTreeMap::new();
        for v in &self.values {
            match v.expression.first(ctx)?.as_ref().and_then(text_of) {
                Some(t) => {
                    properties.insert(v.name.clone(), t);
                }
                None if v.required => {
                    return Err(format!(
                        "required value '{}' ({}) not found",
                        v.name,
                        v.expression.source()
                    ))
                }
                None => {}
            }
        }
        Ok(Measurement {
            type_name: self.type_name.clone(),
            occurrence_time,
            device_id,
            patient_id: opt(&self.patient_id)?,
            encounter_id: opt(&self.encounter_id)?,
            correlation_id: opt(&self.correlation_id)?,
            properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn load(v: Value) -> Result<ContentTemplates, TemplateError> {
        ContentTemplates::from_value(&v)
    }

    #[test]
    fn json_path_template_normalizes() {
        let t = load(json!({"templateType": "CollectionContent", "template": [{
            "templateType": "JsonPathContent",
            "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartrate)]",
                "deviceIdExpression": "$.device", "timestampExpression": "$.date",
                "patientIdExpression": "$.patient",
                "values": [{"required": "true", "valueExpression": "$.heartrate", "valueName": "hr"}]}}]}))
        .unwrap();
        let n = t.normalize(&json!({"readings": [
            {"heartrate": 61, "device": "d1", "patient": "p1", "date": "2024-01-01T10:00:00Z"},
            {"heartrate": "62", "device": "d1", "date": "2024-01-01T10:00:05.1234567+01:00"},
            {"heartrate": 63, "date": "2024-01-01T10:00:10Z"}
        ]}));
        assert_eq!(n.measurements.len(), 2);
        assert_eq!(n.measurements[0].value("hr"), Some("61"));
        assert_eq!(n.measurements[0].patient_id.as_deref(), Some("p1"));
        assert_eq!(n.measurements[1].number("hr"), Some(62.0));
        assert_eq!(
            n.measurements[1].occurrence_time.format(&Rfc3339).unwrap(),
            "2024-01-01T09:00:05.1234567Z"
        );
        assert_eq!(n.errors.len(), 1);
        assert_eq!(n.errors[0].match_index, 2);
        assert!(
            n.errors[0]
                .to_string()
                .contains("device id not found ($.device)"),
            "{}",
            n.errors[0]
        );
    }

    #[test]
    fn problems_are_named_and_all_reported() {
        let e = load(json!({"templateType": "CollectionContent", "template": [
            {"templateType": "JsonPathContent", "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@hr)]",
                "timestampExpression": "$.t", "values": [{"valueExpression": "$.hr"}]}},
            {"templateType": "Nope", "template": {}},
            {"templateType": "IotJsonPathContent", "template": {"typeName": "x", "typeMatchExpression": "$[",
                "values": [], "extra": 1}},
            {"templateType": "JsonPathContent", "template": {"typeName": "y", "typeMatchExpression": {"value": "a", "language": "JmesPath"},
                "deviceIdExpression": "$.d", "timestampExpression": "$.t", "values": []}}
        ]}))
        .unwrap_err();
        let all = e.problems();
        let has = |s: &str| all.iter().any(|p| p.contains(s));
        assert!(
            has("template[0] (JsonPathContent 'heartrate'): missing required 'deviceIdExpression'"),
            "{all:?}"
        );
        assert!(has("template[0] (JsonPathContent 'heartrate'): values[0]: missing required 'valueName'"), "{all:?}");
        assert!(
            has("template[1]: unsupported templateType 'Nope'"),
            "{all:?}"
        );
        assert!(
            has("template[2] (IotJsonPathContent 'x'): 'typeMatchExpression': invalid JSONPath"),
            "{all:?}"
        );
        assert!(
            has("template[2] (IotJsonPathContent 'x'): unknown member 'extra'"),
            "{all:?}"
        );
        assert!(
            has("JMESPath is supported only in CalculatedContent"),
            "{all:?}"
        );
    }

    #[test]
    fn calculated_sees_message_and_matched_token() {
        let t = load(json!({"templateType": "CalculatedContent", "template": {
            "typeName": "bp", "typeMatchExpression": "$..[?(@sys)]",
            "deviceIdExpression": "$.Body.deviceId",
            "timestampExpression": {"value": "fromUnixTimestamp(matchedToken.ts)", "language": "JmesPath"},
            "values": [{"valueName": "sys", "valueExpression": "$.matchedToken.sys", "required": true},
                       {"valueName": "note", "valueExpression": "$.matchedToken.note", "required": false}]}}))
        .unwrap();
        let n = t.normalize(
            &json!({"Body": {"deviceId": "dev", "data": [{"sys": 120, "ts": 1700000000}]}}),
        );
        assert_eq!(n.errors, vec![]);
        assert_eq!(n.measurements[0].device_id, "dev");
        assert_eq!(
            n.measurements[0].occurrence_time.unix_timestamp(),
            1_700_000_000
        );
        assert_eq!(n.measurements[0].properties.len(), 1);
    }

    #[test]
    fn iot_templates_ignore_device_and_time_expressions() {
        let t = load(json!({"templateType": "IotJsonPathContent", "template": {
            "typeName": "hr", "typeMatchExpression": "$..[?(@Body.hr)]",
            "deviceIdExpression": "$.Body.other", "timestampExpression": "not a path [",
            "values": [{"valueName": "hr", "valueExpression": "$.Body.hr", "required": true}]}}))
        .unwrap();
        let n = t.normalize(&json!({"Body": {"hr": 60, "other": "x"},
            "SystemProperties": {"iothub-connection-device-id": "hub-dev", "iothub-enqueuedtime": "2024-01-01T00:00:00Z"}}));
        assert_eq!(n.errors, vec![]);
        assert_eq!(n.measurements[0].device_id, "hub-dev");
    }

    #[test]
    fn timestamps() {
        assert!(parse_time("2019-02-01T22:46:01.8750000Z").is_some());
        assert!(parse_time("2019-02-01t22:46:01z").is_some());
        assert!(parse_time("2019-02-01T22:46:01").is_some());
        assert!(parse_time("2019-02-01T22:46:01.5").is_some());
        assert!(parse_time("yesterday").is_none());
        assert!(parse_time("").is_none());
    }

    #[test]
    fn measurement_serde_round_trip() {
        let m = Measurement {
            type_name: "hr".into(),
            occurrence_time: OffsetDateTime::UNIX_EPOCH,
            device_id: "d".into(),
            patient_id: None,
            encounter_id: None,
            correlation_id: Some("c".into()),
            properties: BTreeMap::from([("hr".into(), "60".into())]),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "hr");
        assert_eq!(v["occurrenceTime"], "1970-01-01T00:00:00Z");
        let back: Measurement = serde_json::from_value(v).unwrap();
        assert_eq!(back, m);
    }
}
