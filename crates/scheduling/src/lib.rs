//! Virtual-visit scheduling: the pure domain rules.
//!
//! Owns: availability rules (weekly hours per visit type, buffers, exceptions, one-off
//! hours, an IANA time zone with its DST rules compiled in) and the slots they generate
//! ([`availability`]); visit status transitions ([`status`]); video-room links with
//! per-participant signed tokens behind the [`video::VideoProvider`] trait; reminder
//! planning ([`reminders`]); the iCalendar (RFC 5545) writer and a small reader
//! ([`ical`]); and notification channels behind the [`channel::Channel`] trait.
//!
//! Must not touch: storage or HTTP serving. FHIR resources are built and stored by
//! `salus-service` (`crates/service/src/scheduling.rs`), which calls into this crate;
//! the only network access here is a channel delivering a message it was handed.

pub mod availability;
pub mod channel;
pub mod ical;
pub mod reminders;
pub mod status;
pub mod video;

pub use availability::{AvailabilityRules, GeneratedSlot, VisitType};
pub use channel::{Channel, ChannelError, OutboundMessage};
pub use status::VisitStatus;
pub use video::{JitsiProvider, VideoProvider, VideoRoom};

/// A problem with rules or input a client sent; always says what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RuleError {
    /// Where in the input (`weekly[1].start`).
    pub path: String,
    pub message: String,
}

impl RuleError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        RuleError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Format an instant for a FHIR `instant` element in a zone: `2026-03-30T09:00:00+02:00`.
pub fn fhir_instant(ts: jiff::Timestamp, tz: &jiff::tz::TimeZone) -> String {
    ts.to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// Parse a FHIR `instant` / `dateTime` with a time and offset.
pub fn parse_instant(s: &str) -> Option<jiff::Timestamp> {
    s.parse::<jiff::Timestamp>().ok()
}

/// Re-exported so callers use the same time types (and the same bundled tz database).
pub use jiff;

/// A deterministic FHIR id (at most 64 characters) for `prefix` and `parts`: slots and
/// reminders get the same id every time they are generated, so regenerating is
/// idempotent and two writers creating the same one collide instead of duplicating.
pub fn stable_id(prefix: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}
