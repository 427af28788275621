//! Partial dates, date-times and times with FHIRPath precision semantics.
//!
//! A value keeps the precision it was written with (`2015`, `2015-02`, `2015-02-04T14`, ...),
//! and its fractional seconds as written, so `toString()` gives back what came in.
//! Comparisons follow the specification: values are compared as intervals at their
//! precision, so `@2018-03 < @2018-03-01` is undetermined (empty) while
//! `@2012-01 < @2012-02-15` is true; seconds and milliseconds count as one precision. When
//! only one side has a time-zone offset, the other is widened by ±14 hours (the largest
//! offset), so the answer is given only when it holds for any zone.
//!
//! Arithmetic adds calendar quantities (`year`, `month`, `week`, `day`, `hour`, `minute`,
//! `second`, `millisecond`, or the UCUM `a`, `mo`, `wk`, `d`, `h`, `min`, `s`, `ms`),
//! converting the quantity to the value's precision first (`@2014 + 24 months` is `@2016`),
//! and clamping to the end of the month (`@2019-01-31 + 1 month` is `@2019-02-28`).

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::cmp::Ordering;
use std::fmt;

/// The finest component a date/time value carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Seconds with a fractional part (any number of digits).
    Millisecond,
}

impl Precision {
    /// Seconds and milliseconds are one precision for comparisons.
    fn level(self) -> u8 {
        match self {
            Precision::Year => 0,
            Precision::Month => 1,
            Precision::Day => 2,
            Precision::Hour => 3,
            Precision::Minute => 4,
            Precision::Second | Precision::Millisecond => 5,
        }
    }
}

/// A calendar or definite time unit usable in date/time arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CalendarUnit {
    Year,
    Month,
    Week,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

impl CalendarUnit {
    /// Parse a FHIRPath calendar keyword (`year`, `years`, ...).
    pub fn from_keyword(s: &str) -> Option<Self> {
        Some(match s {
            "year" | "years" => Self::Year,
            "month" | "months" => Self::Month,
            "week" | "weeks" => Self::Week,
            "day" | "days" => Self::Day,
            "hour" | "hours" => Self::Hour,
            "minute" | "minutes" => Self::Minute,
            "second" | "seconds" => Self::Second,
            "millisecond" | "milliseconds" => Self::Millisecond,
            _ => return None,
        })
    }

    /// The UCUM time unit accepted in date arithmetic (`a`, `mo`, `wk`, `d`, ...).
    pub fn from_ucum(s: &str) -> Option<Self> {
        Some(match s {
            "a" => Self::Year,
            "mo" => Self::Month,
            "wk" => Self::Week,
            "d" => Self::Day,
            "h" => Self::Hour,
            "min" => Self::Minute,
            "s" => Self::Second,
            "ms" => Self::Millisecond,
            _ => return None,
        })
    }

    /// The UCUM code of the definite duration of the same name.
    pub fn ucum(self) -> &'static str {
        match self {
            Self::Year => "a",
            Self::Month => "mo",
            Self::Week => "wk",
            Self::Day => "d",
            Self::Hour => "h",
            Self::Minute => "min",
            Self::Second => "s",
            Self::Millisecond => "ms",
        }
    }

    /// Length in seconds for the definite units (week and below).
    fn seconds(self) -> Option<Decimal> {
        Some(match self {
            Self::Week => Decimal::from(604_800),
            Self::Day => Decimal::from(86_400),
            Self::Hour => Decimal::from(3_600),
            Self::Minute => Decimal::from(60),
            Self::Second => Decimal::ONE,
            Self::Millisecond => Decimal::new(1, 3),
            Self::Year | Self::Month => return None,
        })
    }
}

const NANOS_PER_SEC: i128 = 1_000_000_000;
const NANOS_PER_DAY: i128 = 86_400 * NANOS_PER_SEC;
const FOURTEEN_HOURS: i128 = 14 * 3_600 * NANOS_PER_SEC;

/// A (partial) date or date-time. A `Date` is a value whose precision is at most
/// [`Precision::Day`]; absent components are 1 (month, day) or 0 (time fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTime {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Fractional second in nanoseconds.
    pub nanos: u32,
    /// How many fraction digits were written (kept for `toString()`).
    pub frac_digits: u8,
    pub precision: Precision,
    /// Offset from UTC in minutes, when the value has a zone.
    pub offset: Option<i16>,
}

/// A (partial) time of day, without a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Time {
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    pub nanos: u32,
    pub frac_digits: u8,
    /// [`Precision::Hour`] or finer.
    pub precision: Precision,
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: i64, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Fixed-width digits at `s[i..i+n]`.
fn num(s: &[u8], i: usize, n: usize) -> Option<u32> {
    let part = s.get(i..i + n)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        part.iter()
            .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0')),
    )
}

/// Parse `hh(:mm(:ss(.f+)?)?)?` at `s[i..]`; returns the time and the index after it.
fn parse_time_at(s: &[u8], mut i: usize) -> Option<(Time, usize)> {
    let hour = num(s, i, 2)?;
    i += 2;
    let mut t = Time {
        hour: u8::try_from(hour).ok().filter(|h| *h < 24)?,
        minute: 0,
        second: 0,
        nanos: 0,
        frac_digits: 0,
        precision: Precision::Hour,
    };
    if s.get(i) == Some(&b':') {
        t.minute = u8::try_from(num(s, i + 1, 2)?).ok().filter(|m| *m < 60)?;
        t.precision = Precision::Minute;
        i += 3;
        if s.get(i) == Some(&b':') {
            t.second = u8::try_from(num(s, i + 1, 2)?).ok().filter(|m| *m < 60)?;
            t.precision = Precision::Second;
            i += 3;
            if s.get(i) == Some(&b'.') {
                let start = i + 1;
                let mut j = start;
                while s.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                if j == start {
                    return None;
                }
                let digits = &s[start..j];
                let mut nanos = 0u32;
                for k in 0..9 {
                    nanos = nanos * 10 + digits.get(k).map_or(0, |b| u32::from(b - b'0'));
                }
                t.nanos = nanos;
                t.frac_digits = u8::try_from(digits.len().min(255)).unwrap_or(255);
                t.precision = Precision::Millisecond;
                i = j;
            }
        }
    }
    Some((t, i))
}

impl Time {
    /// Parse `hh(:mm(:ss(.fff)?)?)?` (no zone).
    pub fn parse(s: &str) -> Option<Time> {
        let (t, end) = parse_time_at(s.as_bytes(), 0)?;
        (end == s.len()).then_some(t)
    }

    fn nanos_of_day(&self) -> i128 {
        (i128::from(self.hour) * 3_600 + i128::from(self.minute) * 60 + i128::from(self.second))
            * NANOS_PER_SEC
            + i128::from(self.nanos)
    }

    fn width(&self) -> i128 {
        match self.precision {
            Precision::Hour => 3_600 * NANOS_PER_SEC,
            Precision::Minute => 60 * NANOS_PER_SEC,
            _ => 1,
        }
    }

    /// Compare at precision; `None` when undetermined.
    pub fn compare(&self, other: &Time) -> Option<Ordering> {
        let (alo, blo) = (self.nanos_of_day(), other.nanos_of_day());
        if self.precision.level() == other.precision.level() {
            return Some(alo.cmp(&blo));
        }
        interval_cmp(alo, alo + self.width(), blo, blo + other.width())
    }

    /// Equivalence: same precision and same value.
    pub fn equivalent(&self, other: &Time) -> bool {
        self.precision.level() == other.precision.level()
            && self.nanos_of_day() == other.nanos_of_day()
    }

    /// Add a time quantity (wrapping around midnight); `None` for units above hours.
    pub fn add(&self, amount: Decimal, unit: CalendarUnit) -> Option<Time> {
        let secs = unit.seconds()?;
        if unit == CalendarUnit::Week || unit == CalendarUnit::Day {
            return None;
        }
        let total = amount.checked_mul(secs)?;
        let mut delta = to_nanos(total)?;
        delta = truncate_to(delta, self.precision);
        let n = (self.nanos_of_day() + delta).rem_euclid(NANOS_PER_DAY);
        let mut t = *self;
        set_time_from_nanos(&mut t.hour, &mut t.minute, &mut t.second, &mut t.nanos, n);
        Some(t)
    }
}

fn to_nanos(secs: Decimal) -> Option<i128> {
    let n = secs.checked_mul(Decimal::from(1_000_000_000))?.trunc();
    n.to_i128()
}

/// Truncate a nanosecond delta to the unit of `precision` (for time precisions).
fn truncate_to(delta: i128, precision: Precision) -> i128 {
    let unit = match precision {
        Precision::Hour => 3_600 * NANOS_PER_SEC,
        Precision::Minute => 60 * NANOS_PER_SEC,
        Precision::Second => NANOS_PER_SEC,
        Precision::Millisecond => 1_000_000,
        _ => NANOS_PER_DAY,
    };
    delta / unit * unit
}

fn set_time_from_nanos(h: &mut u8, m: &mut u8, s: &mut u8, ns: &mut u32, n: i128) {
    let secs = n / NANOS_PER_SEC;
    *ns = (n % NANOS_PER_SEC) as u32;
    *h = (secs / 3_600) as u8;
    *m = (secs / 60 % 60) as u8;
    *s = (secs % 60) as u8;
}

fn interval_cmp(alo: i128, ahi: i128, blo: i128, bhi: i128) -> Option<Ordering> {
    if ahi <= blo {
        Some(Ordering::Less)
    } else if bhi <= alo {
        Some(Ordering::Greater)
    } else {
        None
    }
}

impl DateTime {
    /// Parse a date: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    pub fn parse_date(s: &str) -> Option<DateTime> {
        let (d, end) = Self::parse_date_at(s.as_bytes())?;
        (end == s.len()).then_some(d)
    }

    fn parse_date_at(s: &[u8]) -> Option<(DateTime, usize)> {
        let year = num(s, 0, 4)?;
        let mut d = DateTime {
            year: year as i32,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            frac_digits: 0,
            precision: Precision::Year,
            offset: None,
        };
        let mut i = 4;
        if s.get(i) == Some(&b'-') {
            d.month = u8::try_from(num(s, i + 1, 2)?)
                .ok()
                .filter(|m| (1..=12).contains(m))?;
            d.precision = Precision::Month;
            i += 3;
            if s.get(i) == Some(&b'-') {
                let day = u8::try_from(num(s, i + 1, 2)?).ok()?;
                if day == 0 || day > days_in_month(i64::from(d.year), d.month) {
                    return None;
                }
                d.day = day;
                d.precision = Precision::Day;
                i += 3;
            }
        }
        Some((d, i))
    }

    /// Parse a date-time: a date, optionally followed by `T`, an optional time and an
    /// optional zone (`Z` or `±hh:mm`). `2015`, `2015T`, `2015-02-04T14:34:28.123+10:00`.
    pub fn parse_datetime(s: &str) -> Option<DateTime> {
        let b = s.as_bytes();
        let (mut d, mut i) = Self::parse_date_at(b)?;
        if i == b.len() {
            return Some(d);
        }
        if b[i] != b'T' {
            return None;
        }
        i += 1;
        if i == b.len() {
            return Some(d);
        }
        if d.precision != Precision::Day {
            return None;
        }
        let (t, j) = parse_time_at(b, i)?;
        d.hour = t.hour;
        d.minute = t.minute;
        d.second = t.second;
        d.nanos = t.nanos;
        d.frac_digits = t.frac_digits;
        d.precision = t.precision;
        i = j;
        match b.get(i) {
            None => {}
            Some(b'Z') if i + 1 == b.len() => d.offset = Some(0),
            Some(sign @ (b'+' | b'-')) if b.len() == i + 6 && b[i + 3] == b':' => {
                let h = num(b, i + 1, 2)?;
                let m = num(b, i + 4, 2)?;
                if h > 14 || m > 59 {
                    return None;
                }
                let off = (h * 60 + m) as i16;
                d.offset = Some(if *sign == b'-' { -off } else { off });
            }
            _ => return None,
        }
        Some(d)
    }

    /// The current instant in UTC (millisecond precision).
    pub fn now_utc() -> DateTime {
        let dur = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let millis = i128::try_from(dur.as_millis()).unwrap_or(0);
        Self::from_unix_nanos(millis * 1_000_000, 0)
    }

    /// A date-time (millisecond precision) from nanoseconds since the Unix epoch, shown at
    /// the given offset in minutes.
    pub fn from_unix_nanos(nanos: i128, offset_minutes: i16) -> DateTime {
        let local = nanos + i128::from(offset_minutes) * 60 * NANOS_PER_SEC;
        let mut d = DateTime {
            year: 1970,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            frac_digits: 3,
            precision: Precision::Millisecond,
            offset: Some(offset_minutes),
        };
        d.set_local_nanos(local - local.rem_euclid(1_000_000));
        d
    }

    /// Whether this value has only date components (year, month, day).
    pub fn is_date_only(&self) -> bool {
        self.precision <= Precision::Day
    }

    /// The date part at day precision (or coarser, if this value is coarser).
    pub fn date_part(&self) -> DateTime {
        let mut d = *self;
        d.precision = d.precision.min(Precision::Day);
        d.hour = 0;
        d.minute = 0;
        d.second = 0;
        d.nanos = 0;
        d.frac_digits = 0;
        d.offset = None;
        d
    }

    /// Nanoseconds since 1970-01-01T00:00 of the wall-clock start of the value.
    fn local_nanos(&self) -> i128 {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        i128::from(days) * NANOS_PER_DAY
            + (i128::from(self.hour) * 3_600
                + i128::from(self.minute) * 60
                + i128::from(self.second))
                * NANOS_PER_SEC
            + i128::from(self.nanos)
    }

    fn set_local_nanos(&mut self, n: i128) {
        let days = n.div_euclid(NANOS_PER_DAY);
        let rest = n.rem_euclid(NANOS_PER_DAY);
        let (y, m, d) = civil_from_days(days as i64);
        self.year = y as i32;
        self.month = m;
        self.day = d;
        set_time_from_nanos(
            &mut self.hour,
            &mut self.minute,
            &mut self.second,
            &mut self.nanos,
            rest,
        );
    }

    fn width(&self) -> i128 {
        match self.precision {
            Precision::Year => {
                i128::from(if is_leap(i64::from(self.year)) {
                    366
                } else {
                    365
                }) * NANOS_PER_DAY
            }
            Precision::Month => {
                i128::from(days_in_month(i64::from(self.year), self.month)) * NANOS_PER_DAY
            }
            Precision::Day => NANOS_PER_DAY,
            Precision::Hour => 3_600 * NANOS_PER_SEC,
            Precision::Minute => 60 * NANOS_PER_SEC,
            Precision::Second | Precision::Millisecond => 1,
        }
    }

    /// `[start, end)` in nanoseconds: UTC when the value has an offset, wall-clock otherwise.
    fn interval(&self) -> (i128, i128) {
        let mut lo = self.local_nanos();
        if let Some(off) = self.offset {
            if self.precision >= Precision::Hour {
                lo -= i128::from(off) * 60 * NANOS_PER_SEC;
            }
        }
        (lo, lo + self.width())
    }

    fn has_zone(&self) -> bool {
        self.offset.is_some() && self.precision >= Precision::Hour
    }

    /// Compare at precision: `None` when the answer depends on digits one side lacks, or on
    /// the zone of a value that has none.
    pub fn compare(&self, other: &DateTime) -> Option<Ordering> {
        let (mut alo, mut ahi) = self.interval();
        let (mut blo, mut bhi) = other.interval();
        if self.has_zone() != other.has_zone() {
            if self.has_zone() {
                blo -= FOURTEEN_HOURS;
                bhi += FOURTEEN_HOURS;
            } else {
                alo -= FOURTEEN_HOURS;
                ahi += FOURTEEN_HOURS;
            }
            return interval_cmp(alo, ahi, blo, bhi);
        }
        if self.precision.level() == other.precision.level() {
            return Some(alo.cmp(&blo));
        }
        interval_cmp(alo, ahi, blo, bhi)
    }

    /// Equivalence: same precision and the same instant (false where equality would be
    /// undetermined).
    pub fn equivalent(&self, other: &DateTime) -> bool {
        self.precision.level() == other.precision.level()
            && self.compare(other) == Some(Ordering::Equal)
    }

    /// Add `amount` of `unit`, converting it to this value's precision first and truncating.
    /// `None` when the result is out of range (years 1..=9999).
    pub fn add(&self, amount: Decimal, unit: CalendarUnit) -> Option<DateTime> {
        use CalendarUnit as U;
        let p = self.precision;
        let mut out = *self;
        let trunc = |d: Decimal| d.trunc().to_i64();
        match unit {
            U::Year | U::Month => {
                let months = if unit == U::Year {
                    trunc(amount)?.checked_mul(12)?
                } else {
                    trunc(amount)?
                };
                let months = if p == Precision::Year {
                    months / 12 * 12
                } else {
                    months
                };
                out.add_months(months)?;
            }
            _ => {
                let secs = amount.checked_mul(unit.seconds()?)?;
                if p <= Precision::Day {
                    let days = trunc(secs / Decimal::from(86_400))?;
                    match p {
                        Precision::Year => out.add_months(days / 365 * 12)?,
                        Precision::Month => out.add_months(days / 30)?,
                        _ => {
                            let n = days_from_civil(i64::from(out.year), out.month, out.day)
                                .checked_add(days)?;
                            let (y, m, d) = civil_from_days(n);
                            out.year = i32::try_from(y).ok()?;
                            out.month = m;
                            out.day = d;
                        }
                    }
                } else {
                    let delta = truncate_to(to_nanos(secs)?, p);
                    out.set_local_nanos(out.local_nanos().checked_add(delta)?);
                    if p == Precision::Millisecond && out.frac_digits == 0 {
                        out.frac_digits = 3;
                    }
                }
            }
        }
        (1..=9999).contains(&out.year).then_some(out)
    }

    fn add_months(&mut self, months: i64) -> Option<()> {
        let total = i64::from(self.year)
            .checked_mul(12)?
            .checked_add(i64::from(self.month) - 1)?
            .checked_add(months)?;
        self.year = i32::try_from(total.div_euclid(12)).ok()?;
        self.month = (total.rem_euclid(12) + 1) as u8;
        let dim = days_in_month(i64::from(self.year), self.month);
        if self.day > dim {
            self.day = dim;
        }
        Some(())
    }

    fn fmt_date(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision >= Precision::Month {
            write!(f, "-{:02}", self.month)?;
        }
        if self.precision >= Precision::Day {
            write!(f, "-{:02}", self.day)?;
        }
        Ok(())
    }
}

fn fmt_time(
    f: &mut fmt::Formatter<'_>,
    p: Precision,
    h: u8,
    m: u8,
    s: u8,
    nanos: u32,
    digits: u8,
) -> fmt::Result {
    write!(f, "{h:02}")?;
    if p >= Precision::Minute {
        write!(f, ":{m:02}")?;
    }
    if p >= Precision::Second {
        write!(f, ":{s:02}")?;
    }
    if p >= Precision::Millisecond {
        let digits = usize::from(digits.clamp(1, 9));
        let frac = format!("{nanos:09}");
        write!(f, ".{}", &frac[..digits])?;
    }
    Ok(())
}

impl fmt::Display for DateTime {
    /// The FHIR/FHIRPath text form at the value's precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_date(f)?;
        if self.precision >= Precision::Hour {
            f.write_str("T")?;
            fmt_time(
                f,
                self.precision,
                self.hour,
                self.minute,
                self.second,
                self.nanos,
                self.frac_digits,
            )?;
            match self.offset {
                Some(0) => f.write_str("Z")?,
                Some(off) => {
                    let sign = if off < 0 { '-' } else { '+' };
                    let off = off.unsigned_abs();
                    write!(f, "{sign}{:02}:{:02}", off / 60, off % 60)?;
                }
                None => {}
            }
        }
        Ok(())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_time(
            f,
            self.precision,
            self.hour,
            self.minute,
            self.second,
            self.nanos,
            self.frac_digits,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dt(s: &str) -> DateTime {
        DateTime::parse_datetime(s).unwrap()
    }

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "2015",
            "2015-02",
            "2015-02-04",
            "2015-02-04T14",
            "2015-02-04T14:34",
            "2015-02-04T14:34:28",
            "2015-02-04T14:34:28.1",
            "2015-02-04T14:34:28.123456",
            "2015-02-04T14:34:28Z",
            "2015-02-04T14:34:28-05:30",
        ] {
            assert_eq!(dt(s).to_string(), s);
        }
        assert_eq!(dt("2015T").precision, Precision::Year);
        assert!(DateTime::parse_datetime("2015-02-30").is_none());
        assert!(DateTime::parse_datetime("2015-13").is_none());
        assert!(DateTime::parse_datetime("2015-02-04T25:00").is_none());
        assert!(DateTime::parse_datetime("2015-02-04T10:00+15:00").is_none());
        assert!(DateTime::parse_date("2015-02-04T10").is_none());
        assert_eq!(
            Time::parse("14:34:28.123").unwrap().to_string(),
            "14:34:28.123"
        );
        assert!(Time::parse("14:34Z").is_none());
    }

    #[test]
    fn precision_aware_comparison() {
        use Ordering::*;
        assert_eq!(dt("2018-03").compare(&dt("2018-03-01")), None);
        assert_eq!(dt("2012-01").compare(&dt("2012-02-15")), Some(Less));
        assert_eq!(dt("2018-03-01T10").compare(&dt("2018-03-01T10:30")), None);
        assert_eq!(
            dt("2018-03-01T10:30:00").compare(&dt("2018-03-01T10:30:00.0")),
            Some(Equal)
        );
        assert_eq!(
            dt("2017-11-05T01:30:00.0-04:00").compare(&dt("2017-11-05T01:15:00.0-05:00")),
            Some(Less)
        );
        // One side without a zone: undetermined when within 14 hours.
        assert_eq!(
            dt("2012-04-15T15:00:00Z").compare(&dt("2012-04-15T10:00:00")),
            None
        );
        assert_eq!(
            dt("1974-12-25").compare(&dt("2020-01-01T10:00:00Z")),
            Some(Less)
        );
        let t = |s| Time::parse(s).unwrap();
        assert_eq!(t("10").compare(&t("10:30")), None);
        assert_eq!(t("10:30:00").compare(&t("10:30:00.0")), Some(Equal));
        assert!(!dt("2012-04-15").equivalent(&dt("2012-04-15T10:00:00")));
    }

    #[test]
    fn calendar_arithmetic() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        use CalendarUnit::*;
        assert_eq!(dt("2014").add(d("24"), Month).unwrap().to_string(), "2016");
        assert_eq!(
            dt("2019-01-31").add(d("1"), Month).unwrap().to_string(),
            "2019-02-28"
        );
        assert_eq!(
            dt("2019-03-01").add(d("24"), Hour).unwrap().to_string(),
            "2019-03-02"
        );
        assert_eq!(
            dt("2019-12-31T23:30:00Z")
                .add(d("45"), Minute)
                .unwrap()
                .to_string(),
            "2020-01-01T00:15:00Z"
        );
        assert_eq!(
            dt("2016-02-29").add(d("-1"), Year).unwrap().to_string(),
            "2015-02-28"
        );
        assert_eq!(
            dt("2000-01-01").add(d("-7"), Day).unwrap().to_string(),
            "1999-12-25"
        );
        let t = Time::parse("23:00").unwrap();
        assert_eq!(t.add(d("2"), Hour).unwrap().to_string(), "01:00");
        assert!(dt("9999").add(d("1"), Year).is_none());
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000i64, -1, 0, 59, 60, 11_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
