//! Alert rules over measurement streams, evaluated per subject (patient), with episodes.
//!
//! A rule watches one measurement type (and, except for missing-data rules, one numeric
//! value of it) and has exactly one condition:
//! - `threshold`: `{ "op": ">", "value": 120 }`, optionally `sustainedFor` a duration (every
//!   reading from the first one that met the condition until one at least that long after it);
//! - `trend`: `{ "change": 2.0, "within": "3d" }`: the value rose by at least `change` (or, for
//!   a negative `change`, fell by at least its size) against the lowest (highest) reading of
//!   the window;
//! - `missing`: `{ "after": "24h" }`: no reading of the type for that long, checked by
//!   [`RuleEngine::tick`].
//!
//! Episodes: a rule fires once when its condition starts to hold (an [`AlertStatus::Triggered`]
//! alert), stays quiet while it keeps holding, and re-arms when it clears (an
//! [`AlertStatus::Resolved`] alert). Readings older than the newest one seen for a rule and
//! subject are late: they update trend windows and missing-data clocks but do not close
//! episodes, and open one only when they alone meet an instantaneous threshold (no
//! `sustained_for`) while none is open, so a dangerous reading is never lost to reordering.
//! The whole state is serde-serializable ([`RuleEngine::state`], [`RuleEngine::with_state`])
//! so the server can persist it between messages and restarts.
//!
//! The subject of a measurement is its `patient_id`, else `device:<device id>`.

use crate::content::Measurement;
use crate::fhir::{fmt_time, stable_hash};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use time::{Duration, OffsetDateTime};

/// A rule set that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Not JSON, or not the rule format.
    #[error("rule configuration is not valid: {0}")]
    Format(String),
    /// A rule is inconsistent.
    #[error("rule '{id}': {message}")]
    Invalid {
        /// The rule's id (or `rules[i]` when it has none).
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// A duration written as seconds (`300`) or text with a unit: `"90s"`, `"5m"`, `"2h"`, `"3d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub i64);

impl Span {
    fn duration(self) -> Duration {
        Duration::seconds(self.0)
    }

    /// Parses `"90s"`, `"5m"`, `"2h"`, `"3d"`, `"1w"` or a bare number of seconds.
    pub fn parse(s: &str) -> Option<Span> {
        let s = s.trim();
        let (num, mult) = match s.char_indices().last() {
            Some((i, 's')) => (&s[..i], 1),
            Some((i, 'm')) => (&s[..i], 60),
            Some((i, 'h')) => (&s[..i], 3600),
            Some((i, 'd')) => (&s[..i], 86_400),
            Some((i, 'w')) => (&s[..i], 604_800),
            _ => (s, 1),
        };
        num.trim()
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .filter(|n| *n >= 0)
            .map(Span)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s != 0 && s % 86_400 == 0 {
            write!(f, "{}d", s / 86_400)
        } else if s != 0 && s % 3600 == 0 {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s % 60 == 0 {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Span, D::Error> {
        let v = Value::deserialize(d)?;
        let parsed = match &v {
            Value::Number(n) => n.as_i64().filter(|n| *n >= 0).map(Span),
            Value::String(s) => Span::parse(s),
            _ => None,
        };
        parsed.ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {v} (use seconds or \"90s\", \"5m\", \"2h\", \"3d\")"
            ))
        })
    }
}

/// Comparison of a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Greater than.
    #[serde(rename = ">")]
    Gt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    fn holds(self, v: f64, limit: f64) -> bool {
        match self {
            Op::Gt => v > limit,
            Op::Ge => v >= limit,
            Op::Lt => v < limit,
            Op::Le => v <= limit,
        }
    }
    fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

/// `threshold` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    /// Comparison.
    pub op: Op,
    /// Limit.
    pub value: f64,
}

/// `trend` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trend {
    /// Rise (positive) or fall (negative) that triggers.
    pub change: f64,
    /// Window the change is measured over.
    pub within: Span,
}

/// `missing` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Missing {
    /// Silence that triggers.
    pub after: Span,
}

/// How urgent an alert is (drives `Task.priority` / `Communication.priority`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Routine review.
    Low,
    /// Prompt review (default).
    #[default]
    Moderate,
    /// Immediate action.
    High,
}

/// One rule, as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Unique id; part of alert identifiers, so keep it stable.
    pub id: String,
    /// Human text for the Flag and Task.
    #[serde(default)]
    pub description: Option<String>,
    /// Measurement type (`typeName` of the device mapping).
    #[serde(rename = "type")]
    pub measurement_type: String,
    /// The measurement value the condition reads (not used by `missing`).
    #[serde(default)]
    pub value: Option<String>,
    /// Urgency.
    #[serde(default)]
    pub severity: Severity,
    /// Threshold condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    /// With `threshold`: how long the condition must hold before the rule fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sustained_for: Option<Span>,
    /// Trend condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<Trend>,
    /// Missing-data condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
}

/// The rule configuration document: `{"rules": [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    /// The rules.
    pub rules: Vec<Rule>,
}

/// Most readings a trend window keeps per rule and subject (oldest dropped first).
pub const MAX_WINDOW: usize = 10_000;

impl RuleSet {
    /// Parses and checks a rule configuration.
    pub fn from_json_str(text: &str) -> Result<RuleSet, RuleError> {
        let set: RuleSet =
            serde_json::from_str(text).map_err(|e| RuleError::Format(e.to_string()))?;
        set.validate()?;
        Ok(set)
    }

    /// Checks ids are unique and each rule has one consistent condition.
    pub fn validate(&self) -> Result<(), RuleError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let id = if r.id.trim().is_empty() {
                format!("rules[{i}]")
            } else {
                r.id.clone()
            };
            let bad = |m: &str| RuleError::Invalid {
                id: id.clone(),
                message: m.to_string(),
            };
            if r.id.trim().is_empty() {
                return Err(bad("'id' must not be blank"));
            }
            if !seen.insert(r.id.as_str()) {
                return Err(bad("duplicate rule id"));
            }
            if r.measurement_type.trim().is_empty() {
                return Err(bad("'type' must not be blank"));
            }
            let n = [
                r.threshold.is_some(),
                r.trend.is_some(),
                r.missing.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if n != 1 {
                return Err(bad("needs exactly one of 'threshold', 'trend', 'missing'"));
            }
            if r.missing.is_none() && r.value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                return Err(bad("'value' (the measurement value to read) is required"));
            }
            if r.sustained_for.is_some() && r.threshold.is_none() {
                return Err(bad("'sustainedFor' applies to 'threshold' rules only"));
            }
            if let Some(t) = &r.threshold {
                if !t.value.is_finite() {
                    return Err(bad("threshold value must be a finite number"));
                }
            }
            if let Some(t) = &r.trend {
                if !t.change.is_finite() || t.change == 0.0 {
                    return Err(bad("trend 'change' must be a non-zero number"));
                }
                if t.within.0 == 0 {
                    return Err(bad("trend 'within' must be longer than 0s"));
                }
            }
            if let Some(m) = &r.missing {
                if m.after.0 == 0 {
                    return Err(bad("missing 'after' must be longer than 0s"));
                }
            }
        }
        Ok(())
    }
}

/// Whether an alert opens or closes an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition started to hold: notify.
    Triggered,
    /// The condition cleared: the episode is over, the rule re-armed.
    Resolved,
}

/// A rule firing (or its episode ending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Rule id.
    pub rule_id: String,
    /// Rule description, or a generated one.
    pub description: String,
    /// Urgency.
    pub severity: Severity,
    /// Triggered or resolved.
    pub status: AlertStatus,
    /// Subject key (patient id, else `device:<id>`).
    pub subject: String,
    /// Patient id from the measurements, if any.
    pub patient_id: Option<String>,
    /// Device of the latest reading, if any.
    pub device_id: Option<String>,
    /// Measurement type.
    pub measurement_type: String,
    /// The reading that triggered (none for missing data).
    pub value: Option<f64>,
    /// When the episode's condition started to hold.
    #[serde(with = "time::serde::rfc3339")]
    pub episode_start: OffsetDateTime,
    /// Evaluation time (`now`).
    #[serde(with = "time::serde::rfc3339")]
    pub detected_at: OffsetDateTime,
    /// Human message.
    pub message: String,
    /// Deterministic id of the episode (rule, subject, start): alert resources built twice
    /// for one episode have the same identifiers.
    pub episode_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Episode {
    #[serde(with = "time::serde::rfc3339")]
    start: OffsetDateTime,
    fired: bool,
}

/// Per rule and subject.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Track {
    #[serde(default, with = "time::serde::rfc3339::option")]
    last_time: Option<OffsetDateTime>,
    #[serde(default)]
    episode: Option<Episode>,
    #[serde(default)]
    window: Vec<(i64, f64)>,
    #[serde(default)]
    patient_id: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
}

/// The engine's state: per rule id, per subject. Serialize it to persist it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineState {
    tracks: BTreeMap<String, BTreeMap<String, Track>>,
}

impl EngineState {
    /// Which of `shards` parts (0..shards) holds a subject's tracks when the state is
    /// persisted in parts (stable across releases: FNV-1a of the subject).
    pub fn shard_of(subject: &str, shards: u32) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in subject.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h % shards.max(1)
    }

    /// The part of the state whose subjects fall in `shard` (see [`EngineState::shard_of`]).
    pub fn shard(&self, shard: u32, shards: u32) -> EngineState {
        let mut tracks = BTreeMap::new();
        for (rule, subjects) in &self.tracks {
            let part: BTreeMap<String, Track> = subjects
                .iter()
                .filter(|(s, _)| Self::shard_of(s, shards) == shard)
                .map(|(s, t)| (s.clone(), t.clone()))
                .collect();
            if !part.is_empty() {
                tracks.insert(rule.clone(), part);
            }
        }
        EngineState { tracks }
    }

    /// The parts `which` of the state in one pass (parts without state are absent).
    pub fn shards(&self, which: &BTreeSet<u32>, shards: u32) -> BTreeMap<u32, EngineState> {
        let mut out: BTreeMap<u32, EngineState> = BTreeMap::new();
        for (rule, subjects) in &self.tracks {
            for (s, t) in subjects {
                let k = Self::shard_of(s, shards);
                if which.contains(&k) {
                    out.entry(k)
                        .or_default()
                        .tracks
                        .entry(rule.clone())
                        .or_default()
                        .insert(s.clone(), t.clone());
                }
            }
        }
        out
    }

    /// Drop the tracks of the subjects in part `shard`.
    pub fn clear_shard(&mut self, shard: u32, shards: u32) {
        for subjects in self.tracks.values_mut() {
            subjects.retain(|s, _| Self::shard_of(s, shards) != shard);
        }
    }

    /// Add a persisted part (its tracks replace any held for the same rule and subject).
    pub fn merge(&mut self, part: EngineState) {
        for (rule, subjects) in part.tracks {
            self.tracks.entry(rule).or_default().extend(subjects);
        }
    }

    /// Subjects with any state.
    pub fn subjects(&self) -> usize {
        let all: BTreeSet<&String> = self.tracks.values().flat_map(|s| s.keys()).collect();
        all.len()
    }

    /// Forget a subject (GDPR erasure of its patient). Returns whether it had state.
    pub fn forget(&mut self, subject: &str) -> bool {
        let mut had = false;
        for subjects in self.tracks.values_mut() {
            had |= subjects.remove(subject).is_some();
        }
        had
    }
}

/// The subject a measurement's rule state is kept under: its patient id, else
/// `device:<device id>`.
pub fn subject_of(m: &Measurement) -> String {
    match &m.patient_id {
        Some(p) => p.clone(),
        None => format!("device:{}", m.device_id),
    }
}

/// Evaluates a [`RuleSet`] over measurements.
#[derive(Debug, Clone)]
pub struct RuleEngine {
    rules: RuleSet,
    state: EngineState,
}

impl RuleEngine {
    /// An engine with fresh state.
    pub fn new(rules: RuleSet) -> Result<RuleEngine, RuleError> {
        Self::with_state(rules, EngineState::default())
    }

    /// An engine resuming from persisted state. State of rules no longer configured is dropped.
    pub fn with_state(rules: RuleSet, mut state: EngineState) -> Result<RuleEngine, RuleError> {
        rules.validate()?;
        state
            .tracks
            .retain(|id, _| rules.rules.iter().any(|r| &r.id == id));
        Ok(RuleEngine { rules, state })
    }

    /// The state to persist.
    pub fn state(&self) -> &EngineState {
        &self.state
    }

    /// Drop the state of the subjects in part `shard` (before loading it again).
    pub fn clear_shard(&mut self, shard: u32, shards: u32) {
        self.state.clear_shard(shard, shards);
    }

    /// Forget a subject's state (GDPR erasure). Returns whether it had any.
    pub fn forget(&mut self, subject: &str) -> bool {
        self.state.forget(subject)
    }

    /// Add a persisted part of the state ([`EngineState::shard`]); tracks of rules no
    /// longer configured are dropped.
    pub fn load(&mut self, mut part: EngineState) {
        part.tracks
            .retain(|id, _| self.rules.rules.iter().any(|r| &r.id == id));
        self.state.merge(part);
    }

    /// The rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    /// Feeds one measurement; returns the alerts it causes.
    pub fn observe(&mut self, m: &Measurement, now: OffsetDateTime) -> Vec<Alert> {
        let mut out = Vec::new();
        let subject = subject_of(m);
        for rule in &self.rules.rules {
            if rule.measurement_type != m.type_name {
                continue;
            }
            let track = self
                .state
                .tracks
                .entry(rule.id.clone())
                .or_default()
                .entry(subject.clone())
                .or_default();
            let late = track.last_time.is_some_and(|t| m.occurrence_time < t);
            if !late {
                track.last_time = Some(m.occurrence_time);
                track.patient_id = m.patient_id.clone().or(track.patient_id.take());
                track.device_id = Some(m.device_id.clone());
            }
            if rule.missing.is_some() {
                if !late {
                    if let Some(e) = track.episode.take_if(|e| e.fired) {
                        out.push(alert(
                            rule,
                            &subject,
                            track,
                            AlertStatus::Resolved,
                            e.start,
                            now,
                            None,
                        ));
                    }
                }
                continue;
            }
            let Some(v) = rule.value.as_deref().and_then(|name| m.number(name)) else {
                continue;
            };
            let t = m.occurrence_time;
            let holds = if let Some(th) = &rule.threshold {
                th.op.holds(v, th.value)
            } else if let Some(tr) = &rule.trend {
                let ts = t.unix_timestamp();
                track.window.push((ts, v));
                track.window.sort_by_key(|(s, _)| *s);
                let newest = track.window.last().map(|(s, _)| *s).unwrap_or(ts);
                track.window.retain(|(s, _)| newest - s <= tr.within.0);
                if track.window.len() > MAX_WINDOW {
                    let extra = track.window.len() - MAX_WINDOW;
                    track.window.drain(..extra);
                }
                let window = track
                    .window
                    .iter()
                    .filter(|(s, _)| ts - s <= tr.within.0 && *s <= ts);
                if tr.change > 0.0 {
                    window.map(|(_, x)| *x).fold(f64::INFINITY, f64::min) <= v - tr.change
                } else {
                    window.map(|(_, x)| *x).fold(f64::NEG_INFINITY, f64::max) >= v - tr.change
                }
            } else {
                false
            };
            let sustain = rule
                .sustained_for
                .map(Span::duration)
                .unwrap_or(Duration::ZERO);
            if late {
                // A late reading that alone meets an instantaneous threshold (no
                // `sustained_for`) while no episode is open still alerts: a dangerous value
                // must not be lost because a newer, normal one came first (one device's
                // messages can be reordered, e.g. across the connections of a shared MQTT
                // subscription). The next in-order reading that does not hold ends it.
                if holds && rule.threshold.is_some() && sustain.is_zero() && track.episode.is_none()
                {
                    track.episode = Some(Episode {
                        start: t,
                        fired: true,
                    });
                    out.push(alert(
                        rule,
                        &subject,
                        track,
                        AlertStatus::Triggered,
                        t,
                        now,
                        Some(v),
                    ));
                }
                continue;
            }
            if holds {
                let e = track.episode.get_or_insert(Episode {
                    start: t,
                    fired: false,
                });
                if !e.fired && t - e.start >= sustain {
                    e.fired = true;
                    let start = e.start;
                    out.push(alert(
                        rule,
                        &subject,
                        track,
                        AlertStatus::Triggered,
                        start,
                        now,
                        Some(v),
                    ));
                }
            } else if let Some(e) = track.episode.take() {
                if e.fired {
                    out.push(alert(
                        rule,
                        &subject,
                        track,
                        AlertStatus::Resolved,
                        e.start,
                        now,
                        Some(v),
                    ));
                }
            }
        }
        out
    }

    /// Checks missing-data rules at `now`: one alert per subject whose last reading of the
    /// type is older than the rule's `after`. Only subjects seen at least once are known.
    pub fn tick(&mut self, now: OffsetDateTime) -> Vec<Alert> {
        let mut out = Vec::new();
        for rule in &self.rules.rules {
            let Some(missing) = &rule.missing else {
                continue;
            };
            let Some(tracks) = self.state.tracks.get_mut(&rule.id) else {
                continue;
            };
            for (subject, track) in tracks.iter_mut() {
                let Some(last) = track.last_time else {
                    continue;
                };
                let Some(start) = last.checked_add(missing.after.duration()) else {
                    continue;
                };
                if track.episode.is_none() && now >= start {
                    track.episode = Some(Episode { start, fired: true });
                    out.push(alert(
                        rule,
                        subject,
                        track,
                        AlertStatus::Triggered,
                        start,
                        now,
                        None,
                    ));
                }
            }
        }
        out
    }
}

fn alert(
    rule: &Rule,
    subject: &str,
    track: &Track,
    status: AlertStatus,
    episode_start: OffsetDateTime,
    now: OffsetDateTime,
    value: Option<f64>,
) -> Alert {
    let description = rule.description.clone().unwrap_or_else(|| describe(rule));
    let what = match (status, value) {
        (AlertStatus::Triggered, Some(v)) => format!(
            "{description}: {} = {v}",
            rule.value.as_deref().unwrap_or("value")
        ),
        (AlertStatus::Triggered, None) => description.clone(),
        (AlertStatus::Resolved, _) => format!("{description}: resolved"),
    };
    Alert {
        rule_id: rule.id.clone(),
        description,
        severity: rule.severity,
        status,
        subject: subject.to_string(),
        patient_id: track.patient_id.clone(),
        device_id: track.device_id.clone(),
        measurement_type: rule.measurement_type.clone(),
        value,
        episode_start,
        detected_at: now,
        message: format!("{what} (since {})", fmt_time(episode_start)),
        episode_id: stable_hash(&["episode", &rule.id, subject, &fmt_time(episode_start)]),
    }
}

fn describe(rule: &Rule) -> String {
    let value = rule.value.as_deref().unwrap_or("value");
    if let Some(t) = &rule.threshold {
        let mut s = format!(
            "{} {value} {} {}",
            rule.measurement_type,
            t.op.symbol(),
            t.value
        );
        if let Some(d) = rule.sustained_for {
            s.push_str(&format!(" for {d}"));
        }
        s
    } else if let Some(t) = &rule.trend {
        format!(
            "{} {value} changed by {:+} within {}",
            rule.measurement_type, t.change, t.within
        )
    } else if let Some(m) = &rule.missing {
        format!("no {} reading for {}", rule.measurement_type, m.after)
    } else {
        rule.id.clone()
    }
}

/// References the alert resources point at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertContext {
    /// `Patient/{id}` of the alert's subject.
    pub patient_reference: String,
    /// The care team (`CareTeam/{id}`, `Practitioner/{id}`, …) that owns the Task and
    /// receives the Communication.
    pub care_team_reference: Option<String>,
    /// The Device that produced the readings (`Device/{id}`).
    pub device_reference: Option<String>,
    /// `Identifier.system` of the alert resources (default `urn:salus:devices:alert`).
    pub identifier_system: Option<String>,
}

/// The FHIR side of an alert. Triggered: a `Flag` (active, for the episode), a `Task` for the
/// care team and a `Communication` to it. Resolved: the `Flag`, now inactive with its period
/// closed. Each carries a deterministic identifier (episode id plus kind), so writing them with
/// conditional updates on it is idempotent and the resolved Flag replaces the active one.
pub fn alert_resources(alert: &Alert, ctx: &AlertContext) -> Vec<Value> {
    let system = ctx
        .identifier_system
        .as_deref()
        .unwrap_or("urn:salus:devices:alert");
    let ident =
        |kind: &str| json!([{"system": system, "value": format!("{}-{kind}", alert.episode_id)}]);
    let subject = json!({"reference": ctx.patient_reference});
    let code = json!({
        "coding": [{"system": "urn:salus:devices:alert-rule", "code": alert.rule_id, "display": alert.description}],
        "text": alert.description,
    });
    let mut period = Map::new();
    period.insert("start".into(), json!(fmt_time(alert.episode_start)));
    if alert.status == AlertStatus::Resolved {
        period.insert(
            "end".into(),
            json!(fmt_time(alert.detected_at.max(alert.episode_start))),
        );
    }
    let mut flag = json!({
        "resourceType": "Flag",
        "identifier": ident("flag"),
        "status": if alert.status == AlertStatus::Triggered { "active" } else { "inactive" },
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "clinical", "display": "Clinical"}]}],
        "code": code,
        "subject": subject,
        "period": Value::Object(period),
    });
    if let (Some(d), Some(obj)) = (&ctx.device_reference, flag.as_object_mut()) {
        obj.insert("author".into(), json!({"reference": d}));
    }
    if alert.status == AlertStatus::Resolved {
        return vec![flag];
    }
    let priority = match alert.severity {
        Severity::Low => "routine",
        Severity::Moderate => "urgent",
        Severity::High => "stat",
    };
    let now = fmt_time(alert.detected_at);
    let mut task = json!({
        "resourceType": "Task",
        "identifier": ident("task"),
        "status": "requested",
        "intent": "order",
        "priority": priority,
        "code": {"text": "Review remote monitoring alert"},
        "description": alert.message,
        "focus": {"identifier": {"system": system, "value": format!("{}-flag", alert.episode_id)}, "type": "Flag"},
        "for": subject,
        "authoredOn": now,
        "reasonCode": code,
    });
    let mut comm = json!({
        "resourceType": "Communication",
        "identifier": ident("communication"),
        "status": "in-progress",
        "category": [{"text": "Remote monitoring alert"}],
        "priority": priority,
        "subject": subject,
        "sent": now,
        "reasonCode": [code],
        "payload": [{"contentString": alert.message}],
    });
    if let Some(team) = &ctx.care_team_reference {
        if let Some(o) = task.as_object_mut() {
            o.insert("owner".into(), json!({"reference": team}));
        }
        if let Some(o) = comm.as_object_mut() {
            o.insert("recipient".into(), json!([{"reference": team}]));
        }
    }
    vec![flag, task, comm]
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn reading(ty: &str, name: &str, v: f64, at: OffsetDateTime) -> Measurement {
        Measurement {
            type_name: ty.into(),
            occurrence_time: at,
            device_id: "d1".into(),
            patient_id: Some("p1".into()),
            encounter_id: None,
            correlation_id: None,
            properties: BTreeMap::from([(name.to_string(), v.to_string())]),
        }
    }

    fn engine(json: &str) -> RuleEngine {
        RuleEngine::new(RuleSet::from_json_str(json).unwrap()).unwrap()
    }

    const T0: OffsetDateTime = datetime!(2024-06-01 12:00:00 UTC);

    #[test]
    fn state_persisted_in_shards_resumes_episodes() {
        let rules = r#"{"rules": [{"id": "tachy", "type": "heartrate", "value": "hr", "severity": "high",
            "threshold": {"op": ">", "value": 120}}]}"#;
        let mut e = engine(rules);
        let mut fired = Vec::new();
        for (p, hr) in [("p1", 130.0), ("p2", 90.0), ("p3", 150.0), ("p4", 100.0)] {
            let mut m = reading("heartrate", "hr", hr, T0);
            m.patient_id = Some(p.into());
            fired.extend(e.observe(&m, T0));
        }
        assert_eq!(fired.len(), 2);
        assert_eq!(e.state().subjects(), 4);
        // Persist in parts (through JSON, as the server does) and resume in a new engine.
        let shards = 8;
        let mut parts = vec![];
        for k in 0..shards {
            let part = e.state().shard(k, shards);
            for subject in ["p1", "p2", "p3", "p4"] {
                let holds = !part.shard(k, shards).tracks.is_empty()
                    && part.tracks["tachy"].contains_key(subject);
                assert_eq!(holds, EngineState::shard_of(subject, shards) == k);
            }
            parts.push(serde_json::to_string(&part).unwrap());
        }
        let mut resumed = engine(rules);
        for p in &parts {
            resumed.load(serde_json::from_str(p).unwrap());
        }
        assert_eq!(resumed.state(), e.state());
        // The open episodes stay open (no second alert while the condition holds) and
        // close when it clears.
        let later = T0 + Duration::minutes(1);
        let mut m = reading("heartrate", "hr", 140.0, later);
        assert!(resumed.observe(&m, later).is_empty());
        m.properties.insert("hr".into(), "100".into());
        let closed = resumed.observe(&m, later);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].status, AlertStatus::Resolved);
        assert_eq!(closed[0].episode_id, fired[0].episode_id);
        // Rules no longer configured are dropped on load; erasure forgets a subject.
        let mut other = engine(
            r#"{"rules": [{"id": "brady", "type": "heartrate", "value": "hr", "severity": "high",
            "threshold": {"op": "<", "value": 40}}]}"#,
        );
        for p in &parts {
            other.load(serde_json::from_str(p).unwrap());
        }
        assert_eq!(other.state().subjects(), 0);
        assert!(resumed.forget("p3"));
        assert!(!resumed.forget("p3"));
        assert_eq!(resumed.state().subjects(), 3);
    }

    #[test]
    fn threshold_fires_once_per_episode_and_rearms() {
        let mut e = engine(
            r#"{"rules": [{"id": "tachy", "type": "heartrate", "value": "hr", "severity": "high",
            "threshold": {"op": ">", "value": 120}}]}"#,
        );
        let mut fired = Vec::new();
        for (i, hr) in [100.0, 130.0, 135.0, 140.0, 110.0, 125.0]
            .into_iter()
            .enumerate()
        {
            let at = T0 + Duration::minutes(i as i64);
            fired.extend(e.observe(&reading("heartrate", "hr", hr, at), at));
        }
        let statuses: Vec<(AlertStatus, Option<f64>)> =
            fired.iter().map(|a| (a.status, a.value)).collect();
        assert_eq!(
            statuses,
            vec![
                (AlertStatus::Triggered, Some(130.0)),
                (AlertStatus::Resolved, Some(110.0)),
                (AlertStatus::Triggered, Some(125.0))
            ]
        );
        assert_eq!(
            fired[0].message,
            "heartrate hr > 120: hr = 130 (since 2024-06-01T12:01:00Z)"
        );
        assert_ne!(fired[0].episode_id, fired[2].episode_id);
        // Other types and values are ignored.
        assert!(e
            .observe(&reading("steps", "hr", 500.0, T0 + Duration::hours(1)), T0)
            .is_empty());
    }

    #[test]
    fn sustained_threshold() {
        let mut e = engine(
            r#"{"rules": [{"id": "hypoxia", "type": "spo2", "value": "pct",
            "threshold": {"op": "<", "value": 90}, "sustainedFor": "5m"}]}"#,
        );
        let mut fired = Vec::new();
        // Low from 12:00 to 12:04 only: no alert; dips again at 12:10, still low at 12:15.
        for (min, v) in [
            (0, 88.0),
            (2, 87.0),
            (4, 86.0),
            (5, 93.0),
            (10, 85.0),
            (12, 86.0),
            (15, 84.0),
            (16, 83.0),
        ] {
            let at = T0 + Duration::minutes(min);
            fired.extend(e.observe(&reading("spo2", "pct", v, at), at));
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].episode_start, T0 + Duration::minutes(10));
        assert_eq!(fired[0].value, Some(84.0));
    }

    #[test]
    fn trend_rise_within_window() {
        let mut e = engine(
            r#"{"rules": [{"id": "weight-gain", "type": "weight", "value": "kg",
            "trend": {"change": 2, "within": "3d"}}]}"#,
        );
        let day = |d: i64| T0 + Duration::days(d);
        let mut fired = Vec::new();
        for (d, kg) in [
            (0, 80.0),
            (1, 80.5),
            (2, 81.0),
            (6, 82.5),
            (7, 83.0),
            (8, 84.6),
            (9, 84.8),
        ] {
            fired.extend(e.observe(&reading("weight", "kg", kg, day(d)), day(d)));
        }
        // Day 6 is 2.5 above day 0 but 4 days later; day 8 is 2.1 above day 6 (82.5): fires.
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].value, Some(84.6));
        assert_eq!(fired[0].episode_start, day(8));
        let mut fall = engine(
            r#"{"rules": [{"id": "w-loss", "type": "weight", "value": "kg",
            "trend": {"change": -1.5, "within": "2d"}}]}"#,
        );
        assert!(fall
            .observe(&reading("weight", "kg", 80.0, day(0)), day(0))
            .is_empty());
        assert_eq!(
            fall.observe(&reading("weight", "kg", 78.4, day(1)), day(1))
                .len(),
            1
        );
    }

    #[test]
    fn missing_data_via_tick_and_state_round_trip() {
        let mut e = engine(
            r#"{"rules": [{"id": "no-bp", "type": "bloodpressure", "missing": {"after": "24h"}}]}"#,
        );
        assert!(e
            .observe(&reading("bloodpressure", "systolic", 120.0, T0), T0)
            .is_empty());
        assert!(e.tick(T0 + Duration::hours(23)).is_empty());
        let a = e.tick(T0 + Duration::hours(25));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].episode_start, T0 + Duration::hours(24));
        assert!(
            e.tick(T0 + Duration::hours(30)).is_empty(),
            "fires once per episode"
        );
        // Persist and restore.
        let saved = serde_json::to_string(e.state()).unwrap();
        let state: EngineState = serde_json::from_str(&saved).unwrap();
        let mut e2 = RuleEngine::with_state(e.rules().clone(), state).unwrap();
        let r = e2.observe(
            &reading("bloodpressure", "systolic", 118.0, T0 + Duration::hours(31)),
            T0 + Duration::hours(31),
        );
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, AlertStatus::Resolved);
        assert!(e2.tick(T0 + Duration::hours(40)).is_empty());
        assert_eq!(e2.tick(T0 + Duration::hours(56)).len(), 1);
    }

    #[test]
    fn late_readings_do_not_flip_episodes() {
        let mut e = engine(
            r#"{"rules": [{"id": "tachy", "type": "heartrate", "value": "hr", "threshold": {"op": ">=", "value": 120}}]}"#,
        );
        assert_eq!(
            e.observe(&reading("heartrate", "hr", 150.0, T0), T0).len(),
            1
        );
        assert!(e
            .observe(
                &reading("heartrate", "hr", 60.0, T0 - Duration::minutes(5)),
                T0
            )
            .is_empty());
        assert!(e
            .observe(
                &reading("heartrate", "hr", 151.0, T0 + Duration::minutes(1)),
                T0
            )
            .is_empty());
    }

    #[test]
    fn a_late_reading_over_an_instantaneous_threshold_still_alerts_once() {
        let mut e = engine(
            r#"{"rules": [{"id": "tachy", "type": "heartrate", "value": "hr", "threshold": {"op": ">=", "value": 120}},
                {"id": "sustained", "type": "heartrate", "value": "hr", "threshold": {"op": ">=", "value": 120},
                 "sustainedFor": "1m"}]}"#,
        );
        let at = |m: i64| T0 + Duration::minutes(m);
        assert!(e
            .observe(&reading("heartrate", "hr", 60.0, at(1)), at(1))
            .is_empty());
        // the dangerous reading arrives after the newer normal one: the instantaneous rule
        // fires (the sustained one cannot judge a duration from a late reading)
        let late = e.observe(&reading("heartrate", "hr", 150.0, at(0)), at(1));
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!(late[0].rule_id, "tachy");
        assert_eq!(late[0].status, AlertStatus::Triggered);
        // redelivered: the episode is open, no second alert
        assert!(e
            .observe(&reading("heartrate", "hr", 150.0, at(0)), at(1))
            .is_empty());
        // the next in-order normal reading resolves it
        let r = e.observe(&reading("heartrate", "hr", 70.0, at(2)), at(2));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, AlertStatus::Resolved);
    }

    #[test]
    fn configuration_errors() {
        let bad = [
            (
                r#"{"rules": [{"id": "a", "type": "hr", "value": "hr"}]}"#,
                "rule 'a': needs exactly one of",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "threshold": {"op": ">", "value": 1}}]}"#,
                "rule 'a': 'value'",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "value": "v", "threshold": {"op": "~", "value": 1}}]}"#,
                "not valid",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "value": "v", "trend": {"change": 0, "within": "1d"}}]}"#,
                "non-zero",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "missing": {"after": "soon"}}]}"#,
                "invalid duration",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "missing": {"after": 60}}, {"id": "a", "type": "x", "missing": {"after": 1}}]}"#,
                "duplicate",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "missing": {"after": 60}, "sustainedFor": "1m"}]}"#,
                "threshold' rules only",
            ),
            (
                r#"{"rules": [{"id": "a", "type": "hr", "missing": {"after": 60}, "colour": "red"}]}"#,
                "unknown field",
            ),
        ];
        for (json, want) in bad {
            let e = RuleSet::from_json_str(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        assert_eq!(Span::parse("3d"), Some(Span(259_200)));
        assert_eq!(Span::parse("90"), Some(Span(90)));
        assert_eq!(Span::parse("-1m"), None);
        assert_eq!(Span::parse("99999999999999999d"), None);
        assert_eq!(Span(300).to_string(), "5m");
    }

    #[test]
    fn alert_resources_shape() {
        let mut e = engine(
            r#"{"rules": [{"id": "tachy", "type": "heartrate", "value": "hr", "severity": "high",
            "description": "Tachycardia", "threshold": {"op": ">", "value": 120}}]}"#,
        );
        let a = e
            .observe(&reading("heartrate", "hr", 130.0, T0), T0)
            .remove(0);
        let ctx = AlertContext {
            patient_reference: "Patient/p1".into(),
            care_team_reference: Some("CareTeam/ct1".into()),
            device_reference: Some("Device/d1".into()),
            identifier_system: None,
        };
        let rs = alert_resources(&a, &ctx);
        let types: Vec<&str> = rs
            .iter()
            .map(|r| r["resourceType"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["Flag", "Task", "Communication"]);
        assert_eq!(rs[1]["priority"], "stat");
        assert_eq!(rs[1]["owner"]["reference"], "CareTeam/ct1");
        assert_eq!(rs[2]["recipient"][0]["reference"], "CareTeam/ct1");
        assert_eq!(alert_resources(&a, &ctx), rs, "deterministic");
        let r = e
            .observe(
                &reading("heartrate", "hr", 90.0, T0 + Duration::minutes(3)),
                T0 + Duration::minutes(3),
            )
            .remove(0);
        let closed = alert_resources(&r, &ctx);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0]["status"], "inactive");
        assert_eq!(closed[0]["identifier"], rs[0]["identifier"]);
        assert_eq!(closed[0]["period"]["end"], "2024-06-01T12:03:00Z");
    }
}
