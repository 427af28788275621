//! FHIR instants, dates and dateTimes as time ranges (`meta.lastUpdated`, `_since`, `_at`, date search).

use ::time::format_description::well_known::Rfc3339;
use ::time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Current time in microseconds since the epoch, truncated to milliseconds
/// (the precision `meta.lastUpdated` is written with).
pub fn now_micros() -> i64 {
    let now = OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64 * 1_000
}

/// Format micros as a FHIR instant, `2026-11-23T09:14:54.123Z`.
pub fn format_instant(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// HTTP date (RFC 7231 IMF-fixdate) for `Last-Modified`.
pub fn format_http_date(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The inclusive range of micros a FHIR date/dateTime/instant covers, by its precision:
/// `2024` covers the whole year, `2024-03-01T10:00:00Z` one second.
/// Values without a time zone are taken as UTC.
pub fn parse_range(s: &str) -> Option<(i64, i64)> {
    let to_micros = |t: OffsetDateTime| (t.unix_timestamp_nanos() / 1_000) as i64;
    let date = |y: i32, m: u8, d: u8| Date::from_calendar_date(y, Month::try_from(m).ok()?, d).ok();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i32>().ok();
    match s.len() {
        4 => {
            let y = num(0..4)?;
            let lo = date(y, 1, 1)?.midnight().assume_utc();
            let hi = date(y + 1, 1, 1)?.midnight().assume_utc();
            Some((to_micros(lo), to_micros(hi) - 1))
        }
        7 if b[4] == b'-' => {
            let (y, m) = (num(0..4)?, num(5..7)? as u8);
            let lo = date(y, m, 1)?.midnight().assume_utc();
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let hi = date(ny, nm, 1)?.midnight().assume_utc();
            Some((to_micros(lo), to_micros(hi) - 1))
        }
        10 => {
            let d = date(num(0..4)?, num(5..7)? as u8, num(8..10)? as u8)?;
            let lo = d.midnight().assume_utc();
            Some((to_micros(lo), to_micros(lo) + 86_400_000_000 - 1))
        }
        _ => {
            let t = parse_datetime(s)?;
            let frac = s
                .find('.')
                .map(|i| {
                    s[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .count()
                })
                .unwrap_or(0);
            let width = match frac {
                0 => 1_000_000,
                1 => 100_000,
                2 => 10_000,
                3 => 1_000,
                4 => 100,
                5 => 10,
                _ => 1,
            };
            let lo = to_micros(t);
            Some((lo, lo + width - 1))
        }
    }
}

fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // dateTime without zone, or with minutes only: be liberal in what we accept.
    let (date_part, time_part) = s.split_once('T')?;
    let d = Date::parse(
        date_part,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    let (clock, offset) = match time_part.find(['Z', '+', '-']) {
        Some(i) => (&time_part[..i], &time_part[i..]),
        None => (time_part, ""),
    };
    let mut parts = clock.split(':');
    let h: u8 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next().unwrap_or("0").parse().ok()?;
    let t =
        Time::from_hms_micro(h, m, sec.trunc() as u8, (sec.fract() * 1e6).round() as u32).ok()?;
    let off = match offset {
        "" | "Z" => UtcOffset::UTC,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            UtcOffset::from_hms(
                sign * oh.parse::<i8>().ok()?,
                sign * om.parse::<i8>().ok()?,
                0,
            )
            .ok()?
        }
    };
    Some(PrimitiveDateTime::new(d, t).assume_offset(off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instant_round_trip() {
        let m = 1_700_000_000_123_000;
        let s = format_instant(m);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_range(&s), Some((m, m + 999)));
    }

    #[test]
    fn ranges_follow_precision() {
        let (lo, hi) = parse_range("2024").unwrap();
        assert_eq!(format_instant(lo), "2024-01-01T00:00:00.000Z");
        assert_eq!(format_instant(hi), "2024-12-31T23:59:59.999Z");
        let (lo, hi) = parse_range("2024-02").unwrap();
        assert_eq!(
            format_instant(hi - lo + 1 + lo - 1),
            "2024-02-29T23:59:59.999Z"
        );
        assert!(parse_range("2024-13").is_none());
        assert!(parse_range("garbage").is_none());
        let (lo, _) = parse_range("2024-03-01T10:00:00+02:00").unwrap();
        assert_eq!(format_instant(lo), "2024-03-01T08:00:00.000Z");
    }

    #[test]
    fn http_date() {
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
