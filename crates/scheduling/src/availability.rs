//! Availability rules and slot generation.
//!
//! A provider publishes [`AvailabilityRules`]: windows of working hours per weekday,
//! each for one visit type (duration, buffer after each visit, virtual or in person),
//! dates without availability, and extra one-off hours, in one IANA time zone. Local
//! times are wall-clock times in that zone: 09:00 stays 09:00 across a DST change (the
//! UTC instant moves). A local time that does not exist (skipped by a spring-forward
//! change) is moved forward by the gap; an ambiguous one takes the earlier instant.

use crate::RuleError;
use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Largest horizon accepted, in days.
pub const MAX_HORIZON_DAYS: u32 = 400;

/// The rules a clinic publishes for one Schedule (JSON: see `docs/scheduling.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AvailabilityRules {
    /// IANA zone name (`Europe/Berlin`) the local times are in.
    pub time_zone: String,
    /// Visit types offered.
    pub visit_types: Vec<VisitType>,
    /// Recurring weekly windows.
    #[serde(default)]
    pub weekly: Vec<WeeklyWindow>,
    /// Dates (or inclusive date ranges) with no recurring availability.
    #[serde(default)]
    pub exceptions: Vec<DateRange>,
    /// One-off windows on given dates (added even on exception dates).
    #[serde(default)]
    pub extra: Vec<OneOffWindow>,
    /// Days ahead to keep slots for; the server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub horizon_days: Option<u32>,
}

/// A kind of visit: `video-15`, `in-person-30`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VisitType {
    /// Code, used as `Slot.serviceType` and in `$find?visit-type=`.
    pub code: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// Length of one visit.
    pub minutes: u32,
    /// Gap kept free after each visit.
    #[serde(default)]
    pub buffer_minutes: u32,
    /// A video visit (true) or in person (false).
    #[serde(rename = "virtual")]
    pub is_virtual: bool,
}

/// Working hours on some weekdays for one visit type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeeklyWindow {
    /// `mon` … `sun`.
    pub days: Vec<String>,
    /// Local start, `HH:MM`.
    pub start: String,
    /// Local end, `HH:MM` (after start, same day).
    pub end: String,
    /// A [`VisitType::code`].
    pub visit_type: String,
}

/// An inclusive range of dates (`to` absent: a single date).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DateRange {
    pub from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Extra hours on one date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OneOffWindow {
    pub date: String,
    pub start: String,
    pub end: String,
    pub visit_type: String,
}

/// One slot the rules produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedSlot {
    pub start: Timestamp,
    pub end: Timestamp,
    pub visit_type: String,
    pub is_virtual: bool,
}

/// Rules checked and parsed, ready to generate slots.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    pub rules: AvailabilityRules,
    pub tz: TimeZone,
    weekly: Vec<(Vec<Weekday>, Time, Time, usize)>,
    exceptions: Vec<(Date, Date)>,
    extra: Vec<(Date, Time, Time, usize)>,
}

fn parse_weekday(s: &str) -> Option<Weekday> {
    Some(match s.to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => return None,
    })
}

/// `HH:MM` (24-hour clock; `24:00` is not accepted).
fn parse_time(s: &str, path: &str) -> Result<Time, RuleError> {
    let bad = || RuleError::new(path, format!("'{s}' is not a time of day as HH:MM"));
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

pub fn parse_date(s: &str, path: &str) -> Result<Date, RuleError> {
    s.parse::<Date>()
        .map_err(|_| RuleError::new(path, format!("'{s}' is not a date as YYYY-MM-DD")))
}

impl AvailabilityRules {
    /// Parse rules from JSON, naming the first problem.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, RuleError> {
        serde_json::from_value(v.clone()).map_err(|e| RuleError::new("availability", e.to_string()))
    }

    /// Check every field and compile the rules.
    pub fn compile(&self) -> Result<CompiledRules, RuleError> {
        let tz = TimeZone::get(&self.time_zone).map_err(|_| {
            RuleError::new(
                "timeZone",
                format!("'{}' is not an IANA time zone name", self.time_zone),
            )
        })?;
        if self.visit_types.is_empty() {
            return Err(RuleError::new(
                "visitTypes",
                "at least one visit type is needed",
            ));
        }
        for (i, vt) in self.visit_types.iter().enumerate() {
            let p = format!("visitTypes[{i}]");
            let code_ok = !vt.code.is_empty()
                && vt.code.len() <= 64
                && vt
                    .code
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !code_ok {
                return Err(RuleError::new(
                    format!("{p}.code"),
                    format!("'{}' is not a code (letters, digits, - _ .)", vt.code),
                ));
            }
            if vt.minutes == 0 || vt.minutes > 24 * 60 {
                return Err(RuleError::new(
                    format!("{p}.minutes"),
                    "a visit lasts 1 to 1440 minutes",
                ));
            }
            if vt.buffer_minutes > 24 * 60 {
                return Err(RuleError::new(
                    format!("{p}.bufferMinutes"),
                    "a buffer is at most 1440 minutes",
                ));
            }
            if self.visit_types[..i].iter().any(|o| o.code == vt.code) {
                return Err(RuleError::new(
                    format!("{p}.code"),
                    format!("visit type '{}' is listed twice", vt.code),
                ));
            }
        }
        if let Some(h) = self.horizon_days {
            if h == 0 || h > MAX_HORIZON_DAYS {
                return Err(RuleError::new(
                    "horizonDays",
                    format!("the horizon is 1 to {MAX_HORIZON_DAYS} days"),
                ));
            }
        }
        let vt_index = |code: &str, path: String| {
            self.visit_types
                .iter()
                .position(|v| v.code == code)
                .ok_or_else(|| RuleError::new(path, format!("unknown visit type '{code}'")))
        };
        let window = |start: &str, end: &str, p: &str| -> Result<(Time, Time), RuleError> {
            let s = parse_time(start, &format!("{p}.start"))?;
            let e = parse_time(end, &format!("{p}.end"))?;
            if e <= s {
                return Err(RuleError::new(
                    format!("{p}.end"),
                    format!("end {end} is not after start {start}"),
                ));
            }
            Ok((s, e))
        };
        let mut weekly = Vec::new();
        for (i, w) in self.weekly.iter().enumerate() {
            let p = format!("weekly[{i}]");
            if w.days.is_empty() {
                return Err(RuleError::new(format!("{p}.days"), "no weekday given"));
            }
            let days = w
                .days
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    parse_weekday(d).ok_or_else(|| {
                        RuleError::new(
                            format!("{p}.days[{j}]"),
                            format!("'{d}' is not a weekday (mon … sun)"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (s, e) = window(&w.start, &w.end, &p)?;
            let vt = vt_index(&w.visit_type, format!("{p}.visitType"))?;
            weekly.push((days, s, e, vt));
        }
        // Windows of one weekday must not overlap: one provider sees one patient at a time.
        for (i, a) in weekly.iter().enumerate() {
            for b in &weekly[..i] {
                if a.0.iter().any(|d| b.0.contains(d)) && a.1 < b.2 && b.1 < a.2 {
                    return Err(RuleError::new(
                        format!("weekly[{i}]"),
                        "overlaps another weekly window on the same weekday",
                    ));
                }
            }
        }
        let mut exceptions = Vec::new();
        for (i, x) in self.exceptions.iter().enumerate() {
            let p = format!("exceptions[{i}]");
            let from = parse_date(&x.from, &format!("{p}.from"))?;
            let to = match &x.to {
                Some(t) => parse_date(t, &format!("{p}.to"))?,
                None => from,
            };
            if to < from {
                return Err(RuleError::new(
                    format!("{p}.to"),
                    "range ends before it starts",
                ));
            }
            exceptions.push((from, to));
        }
        let mut extra = Vec::new();
        for (i, x) in self.extra.iter().enumerate() {
            let p = format!("extra[{i}]");
            let d = parse_date(&x.date, &format!("{p}.date"))?;
            let (s, e) = window(&x.start, &x.end, &p)?;
            let vt = vt_index(&x.visit_type, format!("{p}.visitType"))?;
            extra.push((d, s, e, vt));
        }
        Ok(CompiledRules {
            rules: self.clone(),
            tz,
            weekly,
            exceptions,
            extra,
        })
    }
}

/// A local wall-clock time on a date as an instant (gaps move forward, folds take the
/// earlier instant: RFC 5545 3.3.5 and the usual calendar behaviour).
fn local_instant(tz: &TimeZone, date: Date, time: Time) -> Result<Timestamp, RuleError> {
    date.to_datetime(time)
        .to_zoned(tz.clone())
        .map(|z| z.timestamp())
        .map_err(|e| RuleError::new("timeZone", format!("cannot place {date} {time}: {e}")))
}

impl CompiledRules {
    /// Whether recurring availability is suspended on `date`.
    pub fn is_exception(&self, date: Date) -> bool {
        self.exceptions
            .iter()
            .any(|(f, t)| *f <= date && date <= *t)
    }

    /// Every slot starting at or after `from` on the `days` local dates beginning with
    /// `from`'s local date, in start order.
    pub fn generate(&self, from: Timestamp, days: u32) -> Result<Vec<GeneratedSlot>, RuleError> {
        let first = from.to_zoned(self.tz.clone()).date();
        let mut out = Vec::new();
        let mut date = first;
        for _ in 0..days {
            let mut windows: Vec<(Time, Time, usize)> = Vec::new();
            if !self.is_exception(date) {
                for (wd, s, e, vt) in &self.weekly {
                    if wd.contains(&date.weekday()) {
                        windows.push((*s, *e, *vt));
                    }
                }
            }
            for (d, s, e, vt) in &self.extra {
                if *d == date {
                    windows.push((*s, *e, *vt));
                }
            }
            for (s, e, vt) in windows {
                let kind = &self.rules.visit_types[vt];
                let len = SignedDuration::from_mins(kind.minutes.into());
                let step = SignedDuration::from_mins((kind.minutes + kind.buffer_minutes).into());
                let window_end = local_instant(&self.tz, date, e)?;
                let mut start = local_instant(&self.tz, date, s)?;
                loop {
                    let end = start
                        .checked_add(len)
                        .map_err(|e| RuleError::new("weekly", e.to_string()))?;
                    if end > window_end {
                        break;
                    }
                    if start >= from {
                        out.push(GeneratedSlot {
                            start,
                            end,
                            visit_type: kind.code.clone(),
                            is_virtual: kind.is_virtual,
                        });
                    }
                    start = start
                        .checked_add(step)
                        .map_err(|e| RuleError::new("weekly", e.to_string()))?;
                }
            }
            date = match date.tomorrow() {
                Ok(d) => d,
                Err(_) => break,
            };
        }
        out.sort_by_key(|s| s.start);
        // Extra hours may overlap recurring ones: keep the first of overlapping slots.
        let mut kept: Vec<GeneratedSlot> = Vec::with_capacity(out.len());
        for s in out {
            if kept.last().is_some_and(|k| s.start < k.end) {
                continue;
            }
            kept.push(s);
        }
        Ok(kept)
    }

    /// The visit type with this code.
    pub fn visit_type(&self, code: &str) -> Option<&VisitType> {
        self.rules.visit_types.iter().find(|v| v.code == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(v: serde_json::Value) -> CompiledRules {
        AvailabilityRules::from_json(&v).unwrap().compile().unwrap()
    }

    fn berlin_mornings() -> CompiledRules {
        rules(json!({
            "timeZone": "Europe/Berlin",
            "visitTypes": [{"code": "video-15", "minutes": 15, "bufferMinutes": 5, "virtual": true}],
            "weekly": [{"days": ["sat", "sun", "mon"], "start": "09:00", "end": "10:00", "visitType": "video-15"}]
        }))
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn local(slot: &GeneratedSlot, tz: &TimeZone) -> String {
        crate::fhir_instant(slot.start, tz)
    }

    #[test]
    fn buffers_space_the_slots() {
        let r = berlin_mornings();
        // Saturday 2026-03-21, Berlin in winter time (+01:00)
        let slots = r.generate(ts("2026-03-20T23:00:00Z"), 1).unwrap();
        let starts: Vec<String> = slots.iter().map(|s| local(s, &r.tz)).collect();
        // 15 min visit + 5 min buffer: 09:00, 09:20, 09:40 (09:40–09:55 fits, 10:00 would not)
        assert_eq!(
            starts,
            [
                "2026-03-21T09:00:00+01:00",
                "2026-03-21T09:20:00+01:00",
                "2026-03-21T09:40:00+01:00"
            ]
        );
        assert_eq!(slots[0].end, ts("2026-03-21T08:15:00Z"));
        assert!(slots
            .iter()
            .all(|s| s.is_virtual && s.visit_type == "video-15"));
    }

    #[test]
    fn nine_local_stays_nine_local_across_spring_dst() {
        // Europe/Berlin changes to summer time on the last Sunday of March: 2026-03-29.
        let r = berlin_mornings();
        let slots = r.generate(ts("2026-03-27T23:00:00Z"), 3).unwrap();
        let firsts: Vec<&GeneratedSlot> = slots
            .iter()
            .filter(|s| {
                local(s, &r.tz).ends_with("T09:00:00+01:00")
                    || local(s, &r.tz).ends_with("T09:00:00+02:00")
            })
            .collect();
        assert_eq!(firsts.len(), 3);
        assert_eq!(firsts[0].start, ts("2026-03-28T08:00:00Z")); // Sat, +01:00
        assert_eq!(firsts[1].start, ts("2026-03-29T07:00:00Z")); // Sun, +02:00
        assert_eq!(firsts[2].start, ts("2026-03-30T07:00:00Z")); // Mon, +02:00
        assert_eq!(local(firsts[1], &r.tz), "2026-03-29T09:00:00+02:00");
    }

    #[test]
    fn nine_local_stays_nine_local_across_autumn_dst() {
        // back to winter time on the last Sunday of October: 2026-10-25
        let r = berlin_mornings();
        let slots = r.generate(ts("2026-10-23T22:00:00Z"), 3).unwrap();
        let nine: Vec<Timestamp> = slots
            .iter()
            .filter(|s| local(s, &r.tz).contains("T09:00:00"))
            .map(|s| s.start)
            .collect();
        assert_eq!(
            nine,
            [
                ts("2026-10-24T07:00:00Z"),
                ts("2026-10-25T08:00:00Z"),
                ts("2026-10-26T08:00:00Z")
            ]
        );
    }

    #[test]
    fn a_window_across_the_spring_gap_keeps_real_durations() {
        let r = rules(json!({
            "timeZone": "Europe/Berlin",
            "visitTypes": [{"code": "night-60", "minutes": 60, "virtual": false}],
            "weekly": [{"days": ["sun"], "start": "01:00", "end": "04:00", "visitType": "night-60"}]
        }));
        // 01:00 → 04:00 local on 2026-03-29 is only two real hours (02:00–03:00 does not exist)
        let slots = r.generate(ts("2026-03-28T12:00:00Z"), 2).unwrap();
        assert_eq!(slots.len(), 2);
        assert_eq!(local(&slots[0], &r.tz), "2026-03-29T01:00:00+01:00");
        assert_eq!(local(&slots[1], &r.tz), "2026-03-29T03:00:00+02:00");
    }

    #[test]
    fn exceptions_remove_days_and_extra_hours_add_them() {
        let r = rules(json!({
            "timeZone": "America/New_York",
            "visitTypes": [
                {"code": "video-15", "minutes": 15, "virtual": true},
                {"code": "in-person-30", "minutes": 30, "virtual": false}
            ],
            "weekly": [
                {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "09:30", "visitType": "video-15"},
                {"days": ["mon"], "start": "14:00", "end": "15:00", "visitType": "in-person-30"}
            ],
            "exceptions": [{"from": "2026-12-24", "to": "2026-12-25", "reason": "holiday"}],
            "extra": [{"date": "2026-12-26", "start": "10:00", "end": "10:30", "visitType": "in-person-30"}]
        }));
        // Mon 2026-12-21 … Sat 2026-12-26 (New York, -05:00)
        let slots = r.generate(ts("2026-12-21T05:00:00Z"), 6).unwrap();
        let by_day = |d: &str| {
            slots
                .iter()
                .filter(|s| crate::fhir_instant(s.start, &r.tz).starts_with(d))
                .count()
        };
        assert_eq!(by_day("2026-12-21"), 4); // 2 video + 2 in person
        assert_eq!(by_day("2026-12-23"), 2);
        assert_eq!(by_day("2026-12-24"), 0);
        assert_eq!(by_day("2026-12-25"), 0);
        assert_eq!(by_day("2026-12-26"), 1);
        let extra = slots.last().unwrap();
        assert_eq!(
            crate::fhir_instant(extra.start, &r.tz),
            "2026-12-26T10:00:00-05:00"
        );
        assert!(!extra.is_virtual);
    }

    #[test]
    fn slots_before_from_are_left_out() {
        let r = berlin_mornings();
        let slots = r.generate(ts("2026-03-21T08:10:00Z"), 1).unwrap();
        assert_eq!(slots.len(), 2); // 09:20 and 09:40 local remain
    }

    #[test]
    fn bad_rules_are_named() {
        let err = |v: serde_json::Value| {
            AvailabilityRules::from_json(&v)
                .and_then(|r| r.compile().map(|_| ()))
                .unwrap_err()
        };
        let base = |tz: &str, start: &str, day: &str, vt: &str| {
            json!({
                "timeZone": tz,
                "visitTypes": [{"code": "video-15", "minutes": 15, "virtual": true}],
                "weekly": [{"days": [day], "start": start, "end": "10:00", "visitType": vt}]
            })
        };
        assert_eq!(
            err(base("Mars/Olympus", "09:00", "mon", "video-15")).path,
            "timeZone"
        );
        assert_eq!(
            err(base("UTC", "9am", "mon", "video-15")).path,
            "weekly[0].start"
        );
        assert_eq!(
            err(base("UTC", "11:00", "mon", "video-15")).path,
            "weekly[0].end"
        );
        assert_eq!(
            err(base("UTC", "09:00", "funday", "video-15")).path,
            "weekly[0].days[0]"
        );
        assert_eq!(
            err(base("UTC", "09:00", "mon", "x")).path,
            "weekly[0].visitType"
        );
        let e = err(json!({"timeZone": "UTC", "visitTypes": [], "colour": "red"}));
        assert!(e.message.contains("colour"), "{e}");
        let overlap = json!({
            "timeZone": "UTC",
            "visitTypes": [{"code": "a", "minutes": 15, "virtual": true}],
            "weekly": [
                {"days": ["mon"], "start": "09:00", "end": "10:00", "visitType": "a"},
                {"days": ["mon", "tue"], "start": "09:30", "end": "11:00", "visitType": "a"}
            ]
        });
        assert_eq!(err(overlap).path, "weekly[1]");
    }
}
