//! Reminder planning: for a visit at `start`, one reminder per configured offset
//! before it (24 h, 1 h), each with an idempotency key `Appointment/<id>|<offset>m` so
//! that planning twice, or two workers, never yield two reminders for the same moment.

use jiff::{SignedDuration, Timestamp};

/// A reminder to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedReminder {
    /// `Appointment/<id>|1440m`: unique per appointment and offset.
    pub key: String,
    pub offset_minutes: i64,
    /// When to send it.
    pub due: Timestamp,
}

/// The reminders still worth sending at `now` for a visit starting at `start`: offsets
/// whose moment has passed are skipped (a visit booked 30 minutes ahead gets no 24 h
/// reminder), except that nothing is planned once the visit has started.
pub fn plan(
    appointment: &str,
    start: Timestamp,
    offsets_minutes: &[i64],
    now: Timestamp,
) -> Vec<PlannedReminder> {
    if start <= now {
        return vec![];
    }
    let mut out: Vec<PlannedReminder> = offsets_minutes
        .iter()
        .filter(|m| **m > 0)
        .filter_map(|m| {
            let due = start.checked_sub(SignedDuration::from_mins(*m)).ok()?;
            (due >= now).then(|| PlannedReminder {
                key: key(appointment, *m),
                offset_minutes: *m,
                due,
            })
        })
        .collect();
    out.sort_by_key(|r| r.due);
    out.dedup_by(|a, b| a.key == b.key);
    out
}

/// The idempotency key of a reminder.
pub fn key(appointment: &str, offset_minutes: i64) -> String {
    format!("{appointment}|{offset_minutes}m")
}

/// Human wording of an offset: `24 hours`, `1 hour`, `30 minutes`.
pub fn describe(offset_minutes: i64) -> String {
    match offset_minutes {
        m if m % 60 == 0 && m / 60 == 1 => "1 hour".into(),
        m if m % 60 == 0 => format!("{} hours", m / 60),
        m => format!("{m} minutes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_future_offsets_only() {
        let start: Timestamp = "2026-05-02T10:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-05-01T12:00:00Z".parse().unwrap();
        let r = plan("Appointment/a", start, &[1440, 60, 60], now);
        assert_eq!(r.len(), 1, "{r:?}"); // the 24 h moment (10:00 yesterday) has passed
        assert_eq!(r[0].key, "Appointment/a|60m");
        assert_eq!(
            r[0].due,
            "2026-05-02T09:00:00Z".parse::<Timestamp>().unwrap()
        );
        let early: Timestamp = "2026-04-20T00:00:00Z".parse().unwrap();
        assert_eq!(plan("Appointment/a", start, &[1440, 60], early).len(), 2);
        assert!(plan("Appointment/a", start, &[60], start).is_empty());
        assert_eq!(describe(1440), "24 hours");
        assert_eq!(describe(60), "1 hour");
    }
}
