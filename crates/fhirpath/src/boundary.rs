//! `lowBoundary([precision])` and `highBoundary([precision])` (FHIRPath 3.0, "Utility
//! functions"; also used by SQL-on-FHIR v2): the least and greatest values that a value of
//! limited precision could stand for.
//!
//! - Decimal (and Integer, and the value of a Quantity): `1.587` stands for
//!   `[1.5865, 1.5875)`, so its boundaries are `1.5865` and `1.5875`, written at the
//!   requested number of decimal places (default 8).
//! - Date: missing month/day become the first (low) or last (high); precision in digits
//!   4 (year), 6 (month) or 8 (day, the default).
//! - DateTime: missing components become their least/greatest values, and a missing zone
//!   becomes `+14:00` (low) or `-12:00` (high); precision 4, 6, 8, 10, 12, 14 or 17 (the
//!   default, milliseconds).
//! - Time: precision 2, 4, 6 or 9 (the default, milliseconds).
//!
//! An unsupported precision gives an empty result.

use crate::datetime::{days_in_month, DateTime, Precision, Time};
use rust_decimal::{Decimal, RoundingStrategy};

/// The largest scale a [`Decimal`] can hold.
const MAX_SCALE: u32 = 28;

/// The boundary of a decimal written with `d.scale()` decimal places, at `precision`
/// decimal places (default 8).
pub(crate) fn decimal(d: Decimal, precision: Option<i64>, high: bool) -> Option<Decimal> {
    let target = u32::try_from(precision.unwrap_or(8)).ok()?;
    if target > MAX_SCALE {
        return None;
    }
    let scale = d.scale();
    if scale >= MAX_SCALE {
        return Some(d);
    }
    let half = Decimal::new(5, scale + 1);
    let exact = if high {
        d.checked_add(half)?
    } else {
        d.checked_sub(half)?
    };
    let mut out = if target > scale {
        exact
    } else {
        let strategy = if high {
            RoundingStrategy::ToPositiveInfinity
        } else {
            RoundingStrategy::ToNegativeInfinity
        };
        exact.round_dp_with_strategy(target, strategy)
    };
    out.rescale(target);
    Some(out)
}

fn date_precision(digits: i64) -> Option<Precision> {
    Some(match digits {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        14 => Precision::Second,
        17 => Precision::Millisecond,
        _ => return None,
    })
}

/// The boundary of a Date (`is_date`, precision up to day) or DateTime.
pub(crate) fn date_time(
    v: &DateTime,
    is_date: bool,
    precision: Option<i64>,
    high: bool,
) -> Option<DateTime> {
    let target = match precision {
        None if is_date => Precision::Day,
        None => Precision::Millisecond,
        Some(p) => date_precision(p)?,
    };
    if is_date && target > Precision::Day {
        return None;
    }
    let mut out = *v;
    if v.precision < Precision::Month {
        out.month = if high { 12 } else { 1 };
    }
    if v.precision < Precision::Day {
        out.day = if high {
            days_in_month(i64::from(out.year), out.month)
        } else {
            1
        };
    }
    if v.precision < Precision::Hour {
        out.hour = if high { 23 } else { 0 };
    }
    if v.precision < Precision::Minute {
        out.minute = if high { 59 } else { 0 };
    }
    if v.precision < Precision::Second {
        out.second = if high { 59 } else { 0 };
    }
    out.nanos = fraction(v.precision, v.nanos, v.frac_digits, high);
    out.precision = target;
    out.frac_digits = if target == Precision::Millisecond {
        3
    } else {
        0
    };
    if target < Precision::Millisecond {
        out.nanos = 0;
    }
    if target < Precision::Second {
        out.second = 0;
    }
    if target < Precision::Minute {
        out.minute = 0;
    }
    if target < Precision::Hour {
        out.hour = 0;
        out.offset = None;
    } else if out.offset.is_none() {
        out.offset = Some(if high { -12 * 60 } else { 14 * 60 });
    }
    if target < Precision::Day {
        out.day = 1;
    }
    if target < Precision::Month {
        out.month = 1;
    }
    Some(out)
}

/// Milliseconds (as nanoseconds) of the boundary: a fraction written with fewer than three
/// digits is widened (`.1` spans `.100` to `.199`); finer digits are truncated.
fn fraction(p: Precision, nanos: u32, digits: u8, high: bool) -> u32 {
    if p < Precision::Millisecond {
        return if high { 999_000_000 } else { 0 };
    }
    let ms = nanos / 1_000_000 * 1_000_000;
    if high && digits < 3 {
        let span = 10u32.pow(9 - u32::from(digits.clamp(1, 3)));
        (ms + span - 1_000_000).min(999_000_000)
    } else {
        ms
    }
}

/// The boundary of a Time.
pub(crate) fn time(v: &Time, precision: Option<i64>, high: bool) -> Option<Time> {
    let target = match precision.unwrap_or(9) {
        2 => Precision::Hour,
        4 => Precision::Minute,
        6 => Precision::Second,
        9 => Precision::Millisecond,
        _ => return None,
    };
    let mut out = *v;
    if v.precision < Precision::Minute {
        out.minute = if high { 59 } else { 0 };
    }
    if v.precision < Precision::Second {
        out.second = if high { 59 } else { 0 };
    }
    out.nanos = fraction(v.precision, v.nanos, v.frac_digits, high);
    out.precision = target;
    out.frac_digits = if target == Precision::Millisecond {
        3
    } else {
        0
    };
    if target < Precision::Millisecond {
        out.nanos = 0;
    }
    if target < Precision::Second {
        out.second = 0;
    }
    if target < Precision::Minute {
        out.minute = 0;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn decimal_boundaries() {
        let b =
            |s: &str, p: Option<i64>, high: bool| decimal(dec(s), p, high).map(|d| d.to_string());
        assert_eq!(b("1.587", None, false).as_deref(), Some("1.58650000"));
        assert_eq!(b("1.587", None, true).as_deref(), Some("1.58750000"));
        assert_eq!(b("1.587", Some(6), false).as_deref(), Some("1.586500"));
        assert_eq!(b("1.587", Some(2), false).as_deref(), Some("1.58"));
        assert_eq!(b("1.587", Some(2), true).as_deref(), Some("1.59"));
        assert_eq!(b("-1.587", None, false).as_deref(), Some("-1.58750000"));
        assert_eq!(b("1.0", Some(2), false).as_deref(), Some("0.95"));
        assert_eq!(b("1.0", Some(2), true).as_deref(), Some("1.05"));
        assert_eq!(b("1", Some(0), false).as_deref(), Some("0"));
        assert_eq!(b("1", Some(1), true).as_deref(), Some("1.5"));
        assert_eq!(b("1", Some(-1), true), None);
        assert_eq!(b("1", Some(40), true), None);
    }

    #[test]
    fn date_and_date_time_boundaries() {
        let d = DateTime::parse_date("1970-06").unwrap();
        assert_eq!(
            date_time(&d, true, None, false).unwrap().to_string(),
            "1970-06-01"
        );
        assert_eq!(
            date_time(&d, true, None, true).unwrap().to_string(),
            "1970-06-30"
        );
        let leap = DateTime::parse_date("2024-02").unwrap();
        assert_eq!(
            date_time(&leap, true, None, true).unwrap().to_string(),
            "2024-02-29"
        );
        let y = DateTime::parse_date("2014").unwrap();
        assert_eq!(
            date_time(&y, true, Some(6), true).unwrap().to_string(),
            "2014-12"
        );
        assert!(date_time(&y, true, Some(10), true).is_none());

        let dt = DateTime::parse_datetime("2010-10-10").unwrap();
        assert_eq!(
            date_time(&dt, false, None, false).unwrap().to_string(),
            "2010-10-10T00:00:00.000+14:00"
        );
        assert_eq!(
            date_time(&dt, false, None, true).unwrap().to_string(),
            "2010-10-10T23:59:59.999-12:00"
        );
        let zoned = DateTime::parse_datetime("2014-01-01T08:05Z").unwrap();
        assert_eq!(
            date_time(&zoned, false, None, true).unwrap().to_string(),
            "2014-01-01T08:05:59.999Z"
        );
        let frac = DateTime::parse_datetime("2014-01-01T08:05:30.1+01:00").unwrap();
        assert_eq!(
            date_time(&frac, false, None, true).unwrap().to_string(),
            "2014-01-01T08:05:30.199+01:00"
        );
        assert_eq!(
            date_time(&frac, false, Some(8), true).unwrap().to_string(),
            "2014-01-01"
        );
    }

    #[test]
    fn time_boundaries() {
        let t = Time::parse("12:34").unwrap();
        assert_eq!(time(&t, None, false).unwrap().to_string(), "12:34:00.000");
        assert_eq!(time(&t, None, true).unwrap().to_string(), "12:34:59.999");
        assert_eq!(time(&t, Some(6), true).unwrap().to_string(), "12:34:59");
        assert!(time(&t, Some(3), true).is_none());
    }
}
