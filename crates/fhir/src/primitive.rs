//! FHIR R4 primitive types and their JSON value rules
//! (<http://hl7.org/fhir/R4/datatypes.html#primitive>, <http://hl7.org/fhir/R4/json.html#primitive>).
//!
//! Each format is checked by a small hand-written parser equivalent to the regex in the
//! specification (and, for dates, stricter: the day must exist in its month). Numbers are
//! judged by their original text, which `serde_json`'s `arbitrary_precision` keeps, so
//! `1.50` stays a valid decimal and `1.0` is not an integer.
//!
//! The parsers are public so other crates (search, FHIRPath) can reuse them.

use serde_json::Value;

/// One FHIR primitive type (plus `xhtml`, the narrative's type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrimitiveType {
    Boolean,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
    String,
    Code,
    Id,
    Uri,
    Url,
    Canonical,
    Oid,
    Uuid,
    Markdown,
    Base64Binary,
    Date,
    DateTime,
    Instant,
    Time,
    Xhtml,
}

/// The JSON form a primitive takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Bool,
    Number,
    String,
}

/// Why a JSON value is not a valid primitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimitiveError {
    /// The JSON type is wrong (a number where a string belongs, an object, ...).
    WrongJsonType { expected: JsonKind },
    /// The JSON type is right but the value breaks the format.
    Format(String),
}

/// Strings longer than this (1 MiB) are invalid (R4 datatypes: string).
pub const MAX_STRING_LEN: usize = 1024 * 1024;

impl PrimitiveType {
    /// The type for a FHIR type name (`dateTime`, `positiveInt`, `xhtml`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "boolean" => Self::Boolean,
            "integer" => Self::Integer,
            "positiveInt" => Self::PositiveInt,
            "unsignedInt" => Self::UnsignedInt,
            "decimal" => Self::Decimal,
            "string" => Self::String,
            "code" => Self::Code,
            "id" => Self::Id,
            "uri" => Self::Uri,
            "url" => Self::Url,
            "canonical" => Self::Canonical,
            "oid" => Self::Oid,
            "uuid" => Self::Uuid,
            "markdown" => Self::Markdown,
            "base64Binary" => Self::Base64Binary,
            "date" => Self::Date,
            "dateTime" => Self::DateTime,
            "instant" => Self::Instant,
            "time" => Self::Time,
            "xhtml" => Self::Xhtml,
            _ => return None,
        })
    }

    /// The FHIR type name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::Integer => "integer",
            Self::PositiveInt => "positiveInt",
            Self::UnsignedInt => "unsignedInt",
            Self::Decimal => "decimal",
            Self::String => "string",
            Self::Code => "code",
            Self::Id => "id",
            Self::Uri => "uri",
            Self::Url => "url",
            Self::Canonical => "canonical",
            Self::Oid => "oid",
            Self::Uuid => "uuid",
            Self::Markdown => "markdown",
            Self::Base64Binary => "base64Binary",
            Self::Date => "date",
            Self::DateTime => "dateTime",
            Self::Instant => "instant",
            Self::Time => "time",
            Self::Xhtml => "xhtml",
        }
    }

    /// The JSON type the value must have.
    pub fn json_kind(self) -> JsonKind {
        match self {
            Self::Boolean => JsonKind::Bool,
            Self::Integer | Self::PositiveInt | Self::UnsignedInt | Self::Decimal => {
                JsonKind::Number
            }
            _ => JsonKind::String,
        }
    }

    /// Check a JSON value against this type.
    pub fn check(self, value: &Value) -> Result<(), PrimitiveError> {
        let wrong = || PrimitiveError::WrongJsonType {
            expected: self.json_kind(),
        };
        match value {
            Value::Bool(_) if self == Self::Boolean => Ok(()),
            Value::Number(n) if self.json_kind() == JsonKind::Number => {
                self.check_number_text(n.as_str())
            }
            Value::String(s) if self.json_kind() == JsonKind::String => self.check_str(s),
            _ => Err(wrong()),
        }
    }

    fn check_number_text(self, text: &str) -> Result<(), PrimitiveError> {
        let fail = |what: &str| Err(PrimitiveError::Format(format!("{what}: {text}")));
        match self {
            Self::Decimal => {
                if is_valid_decimal(text) {
                    Ok(())
                } else {
                    fail("invalid decimal")
                }
            }
            Self::Integer | Self::PositiveInt | Self::UnsignedInt => match parse_integer(text) {
                None => fail(&format!("not a {}", self.name())),
                Some(v) if v > i64::from(i32::MAX) || v < i64::from(i32::MIN) => {
                    fail("integer out of the 32-bit range")
                }
                Some(v) if self == Self::PositiveInt && v < 1 => fail("positiveInt must be >= 1"),
                Some(v) if self == Self::UnsignedInt && v < 0 => fail("unsignedInt must be >= 0"),
                Some(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Check a string value against this (string-typed) primitive.
    pub fn check_str(self, s: &str) -> Result<(), PrimitiveError> {
        if s.is_empty() {
            return Err(PrimitiveError::Format("empty string".into()));
        }
        let ok = match self {
            Self::String | Self::Markdown => {
                if s.len() > MAX_STRING_LEN && s.chars().count() > MAX_STRING_LEN {
                    return Err(PrimitiveError::Format("string longer than 1 MiB".into()));
                }
                true
            }
            Self::Code => is_valid_code(s),
            Self::Id => is_valid_id(s),
            Self::Uri | Self::Url | Self::Canonical => is_valid_uri(s),
            Self::Oid => is_valid_oid(s),
            Self::Uuid => is_valid_uuid(s),
            Self::Base64Binary => is_valid_base64(s),
            Self::Date => is_valid_date(s),
            Self::DateTime => is_valid_date_time(s),
            Self::Instant => is_valid_instant(s),
            Self::Time => is_valid_time(s),
            Self::Xhtml => is_valid_xhtml_div(s),
            Self::Boolean
            | Self::Integer
            | Self::PositiveInt
            | Self::UnsignedInt
            | Self::Decimal => false,
        };
        if ok {
            Ok(())
        } else {
            Err(PrimitiveError::Format(format!(
                "invalid {} value {:?}",
                self.name(),
                truncate(s, 80)
            )))
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// XML Schema `\s`, the whitespace of the specification's regexes.
fn is_xs_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether a string holds control characters other than tab, CR and LF, which R4 strings
/// SHOULD NOT contain (a warning, not an error).
pub fn has_discouraged_controls(s: &str) -> bool {
    s.bytes()
        .any(|b| b < 32 && !matches!(b, b'\t' | b'\n' | b'\r'))
}

/// `-?(0|[1-9][0-9]*)`, parsed; `None` when the text is not an integer or has more than
/// 18 digits.
pub fn parse_integer(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let b = digits.as_bytes();
    if b.is_empty() || b.len() > 18 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if b.len() > 1 && b[0] == b'0' {
        return None;
    }
    text.parse().ok()
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
pub fn is_valid_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_len = i - int_start;
    if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or doubled whitespace.
pub fn is_valid_code(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || is_xs_space(b[0]) || is_xs_space(b[b.len() - 1]) {
        return false;
    }
    !b.windows(2).any(|w| is_xs_space(w[0]) && is_xs_space(w[1]))
}

/// `[A-Za-z0-9\-\.]{1,64}`
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// `\S*` (uri, url, canonical): no whitespace.
pub fn is_valid_uri(s: &str) -> bool {
    !s.bytes().any(is_xs_space)
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
pub fn is_valid_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    let first = parts.next().unwrap_or_default();
    if !matches!(first, "0" | "1" | "2") {
        return false;
    }
    let mut n = 0;
    for p in parts {
        n += 1;
        let b = p.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
    }
    n > 0
}

/// `urn:uuid:` followed by a lower-case 8-4-4-4-12 hex UUID.
pub fn is_valid_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`: base64 characters in groups of four, whitespace allowed.
pub fn is_valid_base64(s: &str) -> bool {
    let mut n = 0usize;
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=' {
            n += 1;
        } else if !is_xs_space(c) {
            return false;
        }
    }
    n > 0 && n % 4 == 0
}

/// A narrative: an XHTML `<div>` in the XHTML namespace.
pub fn is_valid_xhtml_div(s: &str) -> bool {
    let t = s.trim_matches(|c: char| c.is_ascii() && is_xs_space(c as u8));
    t.starts_with("<div")
        && (t.ends_with("</div>") || t.ends_with("/>"))
        && (t.contains("xmlns=\"http://www.w3.org/1999/xhtml\"")
            || t.contains("xmlns='http://www.w3.org/1999/xhtml'"))
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let s = b.get(at..at + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u32::from(c - b'0');
    }
    Some(v)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` at the start of `b`: (bytes used, 1..=3 parts).
fn date_prefix(b: &[u8]) -> Option<(usize, u8)> {
    let year = digits(b, 0, 4)?;
    if year == 0 {
        return None;
    }
    if b.get(4) != Some(&b'-') {
        return Some((4, 1));
    }
    let month = digits(b, 5, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if b.get(7) != Some(&b'-') {
        return Some((7, 2));
    }
    let day = digits(b, 8, 2)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some((10, 3))
}

/// `hh:mm:ss(.f+)?` at the start of `b`; bytes used.
fn time_prefix(b: &[u8]) -> Option<usize> {
    let (h, m, s) = (digits(b, 0, 2)?, digits(b, 3, 2)?, digits(b, 6, 2)?);
    if b[2] != b':' || b[5] != b':' || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut i = 8;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    Some(i)
}

/// `Z` or `(+|-)hh:mm` with an offset up to 14:00, filling all of `b`.
fn is_zone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [sign, _, _, b':', _, _] if *sign == b'+' || *sign == b'-' => {
            match (digits(b, 1, 2), digits(b, 4, 2)) {
                (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
                _ => false,
            }
        }
        _ => false,
    }
}

/// `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, a real calendar date.
pub fn is_valid_date(s: &str) -> bool {
    date_prefix(s.as_bytes()).is_some_and(|(n, _)| n == s.len())
}

/// `dateTime`: a `date`, or a full date with `Thh:mm:ss[.f]` and a zone.
pub fn is_valid_date_time(s: &str) -> bool {
    let b = s.as_bytes();
    match date_prefix(b) {
        Some((n, _)) if n == b.len() => true,
        Some((n, 3)) => full_time_with_zone(&b[n..]),
        _ => false,
    }
}

/// `instant`: `YYYY-MM-DDThh:mm:ss[.f]` and a zone.
pub fn is_valid_instant(s: &str) -> bool {
    let b = s.as_bytes();
    matches!(date_prefix(b), Some((10, 3))) && full_time_with_zone(&b[10..])
}

fn full_time_with_zone(b: &[u8]) -> bool {
    if b.first() != Some(&b'T') {
        return false;
    }
    match time_prefix(&b[1..]) {
        Some(n) => is_zone(&b[1 + n..]),
        None => false,
    }
}

/// `time`: `hh:mm:ss[.f]`, no zone.
pub fn is_valid_time(s: &str) -> bool {
    time_prefix(s.as_bytes()).is_some_and(|n| n == s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn dates() {
        for ok in ["2020", "2020-02", "2020-02-29", "0001-01-01", "2000-02-29"] {
            assert!(is_valid_date(ok), "{ok}");
        }
        for bad in [
            "0000",
            "20",
            "2020-13",
            "2020-00",
            "2021-02-29",
            "1900-02-29",
            "2020-04-31",
            "2020-1-01",
            "2020-01-01T10:00:00Z",
            "2020/01/01",
            "",
        ] {
            assert!(!is_valid_date(bad), "{bad}");
        }
    }

    #[test]
    fn date_times_and_instants() {
        for ok in [
            "2015",
            "2015-02",
            "2015-02-07",
            "2015-02-07T13:28:17-05:00",
            "2017-01-01T00:00:00.000Z",
            "2017-01-01T23:59:60+14:00",
            "2017-01-01T00:00:00.1234-13:59",
        ] {
            assert!(is_valid_date_time(ok), "{ok}");
        }
        for bad in [
            "2015-02-07T13:28:17",
            "2015-02-07T13:28Z",
            "2015-02T13:28:17Z",
            "2015-02-07T24:00:00Z",
            "2015-02-07T13:28:17+14:30",
            "2015-02-07T13:28:17.Z",
            "2015-02-07 13:28:17Z",
        ] {
            assert!(!is_valid_date_time(bad), "{bad}");
        }
        assert!(is_valid_instant("2015-02-07T13:28:17.239+02:00"));
        assert!(!is_valid_instant("2015-02-07"));
        assert!(!is_valid_instant("2015-02-07T13:28:17"));
        assert!(is_valid_time("13:28:17") && is_valid_time("00:00:00.5"));
        assert!(!is_valid_time("13:28") && !is_valid_time("13:28:17Z"));
    }

    #[test]
    fn numbers_by_their_text() {
        let dec = PrimitiveType::Decimal;
        assert!(dec.check(&num("1.50")).is_ok());
        assert!(dec.check(&num("-0.0001e-5")).is_ok());
        assert!(dec.check(&json!("1.5")).is_err());
        let int = PrimitiveType::Integer;
        assert!(int.check(&num("2147483647")).is_ok());
        assert!(int.check(&num("-2147483648")).is_ok());
        assert!(int.check(&num("2147483648")).is_err());
        assert!(int.check(&num("99999999999999999999999")).is_err());
        assert!(int.check(&num("1.0")).is_err());
        assert!(int.check(&num("1e2")).is_err());
        assert!(int.check(&json!("1")).is_err());
        assert!(PrimitiveType::PositiveInt.check(&num("0")).is_err());
        assert!(PrimitiveType::PositiveInt.check(&num("1")).is_ok());
        assert!(PrimitiveType::UnsignedInt.check(&num("0")).is_ok());
        assert!(PrimitiveType::UnsignedInt.check(&num("-1")).is_err());
        assert!(PrimitiveType::Boolean.check(&json!(true)).is_ok());
        assert!(PrimitiveType::Boolean.check(&json!("true")).is_err());
    }

    #[test]
    fn string_formats() {
        use PrimitiveType as P;
        assert!(P::String.check(&json!("")).is_err());
        assert!(P::String.check(&json!(" ")).is_ok());
        assert!(P::Code.check(&json!("a b")).is_ok());
        for bad in [" a", "a ", "a  b", "a\n"] {
            assert!(P::Code.check(&json!(bad)).is_err(), "{bad:?}");
        }
        assert!(P::Id.check(&json!("a-B.9")).is_ok());
        assert!(P::Id.check(&json!("a_b")).is_err());
        assert!(P::Id.check(&json!("x".repeat(65))).is_err());
        assert!(P::Uri.check(&json!("http://x/y z")).is_err());
        assert!(P::Oid.check(&json!("urn:oid:1.2.840.10008")).is_ok());
        assert!(P::Oid.check(&json!("urn:oid:3.1")).is_err());
        assert!(P::Oid.check(&json!("urn:oid:1")).is_err());
        assert!(P::Oid.check(&json!("urn:oid:1.02")).is_err());
        assert!(P::Uuid
            .check(&json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"))
            .is_ok());
        assert!(P::Uuid
            .check(&json!("urn:uuid:C757873D-EC9A-4326-A141-556F43239520"))
            .is_err());
        assert!(P::Base64Binary.check(&json!("SGVs bG8=")).is_ok());
        assert!(P::Base64Binary.check(&json!("SGVsbG8")).is_err());
        assert!(P::Base64Binary.check(&json!("SGV*bG8=")).is_err());
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml">hi</div>"#;
        assert!(P::Xhtml.check(&json!(div)).is_ok());
        assert!(P::Xhtml.check(&json!("<p>hi</p>")).is_err());
        assert!(P::Markdown.check(&json!("# x")).is_ok());
        assert!(has_discouraged_controls("a\u{1}b"));
        assert!(!has_discouraged_controls("a\tb\r\n"));
    }

    #[test]
    fn names_round_trip() {
        for name in [
            "boolean",
            "dateTime",
            "positiveInt",
            "base64Binary",
            "xhtml",
        ] {
            assert_eq!(PrimitiveType::from_name(name).unwrap().name(), name);
        }
        assert!(PrimitiveType::from_name("HumanName").is_none());
    }
}
