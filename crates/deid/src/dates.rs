//! Dates for `dateShift` and partial redaction: FHIR `date`/`dateTime`/`instant` text
//! parsed into its parts, shifted by whole days (time and zone kept), truncated to the
//! year, and the HIPAA Safe Harbor age test (a year that puts the person over 89).

/// A civil date (proleptic Gregorian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ymd {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

impl Ymd {
    /// Today (UTC) from the system clock.
    pub fn today() -> Ymd {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        civil_from_days(secs.div_euclid(86_400))
    }
}

/// A parsed FHIR date, dateTime or instant: the date parts present and the rest of the
/// text after the date (`T10:00:00+01:00`, or empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FhirDate<'a> {
    pub year: i32,
    pub month: Option<u32>,
    pub day: Option<u32>,
    pub rest: &'a str,
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

pub(crate) fn parse(s: &str) -> Option<FhirDate<'_>> {
    let year = digits(s.get(0..4)?)? as i32;
    let mut rest = &s[4..];
    let mut month = None;
    let mut day = None;
    if let Some(r) = rest.strip_prefix('-') {
        let m = digits(r.get(0..2)?)?;
        if !(1..=12).contains(&m) {
            return None;
        }
        month = Some(m);
        rest = &r[2..];
        if let Some(r) = rest.strip_prefix('-') {
            let d = digits(r.get(0..2)?)?;
            if d < 1 || d > days_in_month(year, m) {
                return None;
            }
            day = Some(d);
            rest = &r[2..];
        }
    }
    if !rest.is_empty() && (day.is_none() || !rest.starts_with('T')) {
        return None;
    }
    Some(FhirDate {
        year,
        month,
        day,
        rest,
    })
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (H. Hinnant's civil-date algorithm).
pub(crate) fn days_from_civil(d: Ymd) -> i64 {
    let y = i64::from(d.year) - i64::from(d.month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(d.month);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) fn civil_from_days(z: i64) -> Ymd {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    Ymd {
        year: (y + i64::from(m <= 2)) as i32,
        month: m,
        day: d,
    }
}

/// Shift a full-precision date by `days`, keeping any time and zone text.
pub(crate) fn shift(d: &FhirDate<'_>, days: i64) -> Option<String> {
    let (Some(month), Some(day)) = (d.month, d.day) else {
        return None;
    };
    let n = days_from_civil(Ymd {
        year: d.year,
        month,
        day,
    });
    let s = civil_from_days(n + days);
    if !(1..=9999).contains(&s.year) {
        return None;
    }
    Some(format!(
        "{:04}-{:02}-{:02}{}",
        s.year, s.month, s.day, d.rest
    ))
}

/// Whether a date indicates an age over 89 as of `today` (a year alone counts whole
/// years; with month and day, a birthday not yet reached this year is taken into
/// account).
pub(crate) fn indicates_age_over_89(d: &FhirDate<'_>, today: Ymd) -> bool {
    let mut age = i64::from(today.year) - i64::from(d.year);
    if let (Some(m), Some(day)) = (d.month, d.day) {
        if (today.month, today.day) < (m, day) {
            age -= 1;
        }
    }
    age > 89
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let d = parse("2020-02-29T10:00:00+01:00").unwrap();
        assert_eq!(
            (d.year, d.month, d.day, d.rest),
            (2020, Some(2), Some(29), "T10:00:00+01:00")
        );
        assert_eq!(parse("2021").unwrap().month, None);
        assert_eq!(parse("2021-07").unwrap().day, None);
        assert!(parse("2021-02-29").is_none());
        assert!(parse("2021-13").is_none());
        assert!(parse("20x1").is_none());
        assert!(parse("2021T10").is_none());
        assert!(parse("").is_none());
        assert!(parse("2é").is_none());
    }

    #[test]
    fn shifting_crosses_months_and_years() {
        let d = parse("2020-12-25").unwrap();
        assert_eq!(shift(&d, 10).unwrap(), "2021-01-04");
        let d = parse("2020-03-01T00:00:00Z").unwrap();
        assert_eq!(shift(&d, -1).unwrap(), "2020-02-29T00:00:00Z");
        assert!(shift(&parse("2020").unwrap(), 3).is_none());
        for n in [-800_000, -1, 0, 1, 19_000, 2_900_000] {
            assert_eq!(days_from_civil(civil_from_days(n)), n);
        }
    }

    #[test]
    fn age_threshold() {
        let today = Ymd {
            year: 2024,
            month: 6,
            day: 15,
        };
        assert!(indicates_age_over_89(&parse("1934").unwrap(), today));
        assert!(!indicates_age_over_89(&parse("1935").unwrap(), today));
        assert!(indicates_age_over_89(&parse("1934-06-15").unwrap(), today));
        assert!(!indicates_age_over_89(&parse("1934-06-16").unwrap(), today));
    }
}
