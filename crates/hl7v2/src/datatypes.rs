//! HL7 v2 data types → FHIR R4 data types, following the v2-to-FHIR IG data type maps
//! (<https://build.fhir.org/ig/HL7/v2-to-fhir/datatype_maps.html>): CX → Identifier,
//! XPN → HumanName, XAD → Address, XTN → ContactPoint, CE/CWE/CNE → CodeableConcept,
//! HD → system URI, TS/DTM → dateTime/instant/date, NM → decimal, SN → Quantity/Range/Ratio.
//!
//! Every function returns FHIR-valid JSON or nothing: an empty v2 value gives `None`, an
//! invalid one (a date that does not exist, a number that is not one) gives a
//! [`ConvertError::InvalidValue`] naming the field.

use crate::convert::{ConvertError, ConvertOptions};
use crate::parser::{Component, Repetition};
use crate::tables;
use serde_json::{json, Map, Value};

/// Where a value came from, for error messages: `PID-7`, `OBX-5 (segment 9)`.
#[derive(Debug, Clone)]
pub(crate) struct Loc(pub String);

impl Loc {
    pub(crate) fn err(&self, value: &str, datatype: &'static str) -> ConvertError {
        ConvertError::InvalidValue {
            location: self.0.clone(),
            value: value.chars().take(80).collect(),
            datatype,
        }
    }
    pub(crate) fn comp(&self, n: usize) -> Loc {
        Loc(format!("{}.{n}", self.0))
    }
}

/// Make a FHIR `code` out of v2 text: trimmed, inner whitespace collapsed to one space.
pub(crate) fn code(text: &str) -> Option<String> {
    let s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!s.is_empty()).then_some(s)
}

/// A FHIR `string`: trimmed of surrounding whitespace, `None` when empty.
pub(crate) fn string(text: &str) -> Option<String> {
    let s = text.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Insert `key: value` when `value` is `Some`.
pub(crate) fn put(obj: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        obj.insert(key.to_string(), v);
    }
}

pub(crate) fn put_str(obj: &mut Map<String, Value>, key: &str, value: Option<String>) {
    if let Some(v) = value {
        obj.insert(key.to_string(), Value::String(v));
    }
}

pub(crate) fn non_empty(obj: Map<String, Value>) -> Option<Value> {
    (!obj.is_empty()).then_some(Value::Object(obj))
}

// ---------------------------------------------------------------------------------------
// Date and time (v2 Chapter 2A, DTM / TS).

/// A parsed v2 DTM: `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dtm {
    pub year: u16,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub hour: Option<u8>,
    pub minute: Option<u8>,
    pub second: Option<u8>,
    /// Fraction digits as written (1–4 of them).
    pub fraction: Option<String>,
    /// `+HH:MM` / `-HH:MM`, when the value carried one.
    pub offset: Option<String>,
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

impl Dtm {
    /// Parse the first component of a TS (the DTM); `None` when the text is not a DTM.
    pub(crate) fn parse(text: &str) -> Option<Dtm> {
        let text = text.trim();
        let (main, offset) = match text.find(['+', '-']) {
            Some(i) => (&text[..i], Some(&text[i..])),
            None => (text, None),
        };
        let (digits, fraction) = match main.split_once('.') {
            Some((d, f)) => (d, Some(f)),
            None => (main, None),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit())
            || !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14)
        {
            return None;
        }
        let num = |a: usize| -> Option<u8> { digits.get(a..a + 2)?.parse().ok() };
        let year: u16 = digits.get(0..4)?.parse().ok()?;
        let month = num(4);
        let day = num(6);
        let hour = num(8);
        let minute = num(10);
        let second = num(12);
        if let Some(m) = month {
            if !(1..=12).contains(&m) {
                return None;
            }
            if let Some(d) = day {
                if d == 0 || d > days_in_month(year, m) {
                    return None;
                }
            }
        }
        if hour.is_some_and(|h| h > 23)
            || minute.is_some_and(|m| m > 59)
            || second.is_some_and(|s| s > 59)
        {
            return None;
        }
        let fraction = match fraction {
            None => None,
            Some(f)
                if second.is_some()
                    && (1..=4).contains(&f.len())
                    && f.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Some(f.to_string())
            }
            Some(_) => return None,
        };
        let offset = match offset {
            None => None,
            Some(o) => {
                let b = o.as_bytes();
                if b.len() != 5 || !b[1..].iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let hh: u8 = o.get(1..3)?.parse().ok()?;
                let mm: u8 = o.get(3..5)?.parse().ok()?;
                if hh > 14 || mm > 59 {
                    return None;
                }
                Some(format!("{}{:02}:{:02}", char::from(b[0]), hh, mm))
            }
        };
        Some(Dtm {
            year,
            month,
            day,
            hour,
            minute,
            second,
            fraction,
            offset,
        })
    }

    /// FHIR `date` (time and zone dropped).
    pub(crate) fn date(&self) -> String {
        let mut s = format!("{:04}", self.year);
        if let Some(m) = self.month {
            s.push_str(&format!("-{m:02}"));
            if let Some(d) = self.day {
                s.push_str(&format!("-{d:02}"));
            }
        }
        s
    }

    /// FHIR `dateTime`. A time needs a zone in FHIR: the value's own, else `default_offset`
    /// (the zone of MSH-7, else the configured one — v2 Chapter 2A DTM: a value without
    /// a zone is in the sender's zone). Missing minutes/seconds become `00`.
    pub(crate) fn date_time(&self, default_offset: Option<&str>) -> String {
        let Some(hour) = self.hour else {
            return self.date();
        };
        let Some(offset) = self.offset.as_deref().or(default_offset) else {
            return self.date();
        };
        let mut s = format!(
            "{}T{:02}:{:02}:{:02}",
            self.date(),
            hour,
            self.minute.unwrap_or(0),
            self.second.unwrap_or(0)
        );
        if let Some(f) = &self.fraction {
            s.push('.');
            s.push_str(f);
        }
        s.push_str(if offset == "+00:00" { "Z" } else { offset });
        s
    }

    /// FHIR `instant`: needs at least a full date and a time; `None` otherwise.
    pub(crate) fn instant(&self, default_offset: Option<&str>) -> Option<String> {
        self.day?;
        self.hour?;
        self.offset.as_deref().or(default_offset)?;
        Some(self.date_time(default_offset))
    }
}

/// TS/DTM field value → FHIR dateTime; `Ok(None)` when empty.
pub(crate) fn date_time(
    text: &str,
    loc: &Loc,
    opts: &ConvertOptions,
    msh_offset: Option<&str>,
) -> Result<Option<String>, ConvertError> {
    Ok(dtm(text, loc)?.map(|d| d.date_time(msh_offset.or(opts.default_offset.as_deref()))))
}

/// TS/DTM/DT field value → FHIR date; `Ok(None)` when empty.
pub(crate) fn date(text: &str, loc: &Loc) -> Result<Option<String>, ConvertError> {
    Ok(dtm(text, loc)?.map(|d| d.date()))
}

pub(crate) fn dtm(text: &str, loc: &Loc) -> Result<Option<Dtm>, ConvertError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    Dtm::parse(t).map(Some).ok_or_else(|| loc.err(t, "TS"))
}

/// v2 TM → FHIR time (`HH:MM:SS`).
pub(crate) fn time(text: &str, loc: &Loc) -> Result<Option<String>, ConvertError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let main = t.split(['+', '-']).next().unwrap_or("");
    let (digits, frac) = main.split_once('.').unwrap_or((main, ""));
    let ok = digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(digits.len(), 2 | 4 | 6)
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(loc.err(t, "TM"));
    }
    let n = |a: usize| digits.get(a..a + 2).and_then(|s| s.parse::<u8>().ok());
    let (h, m, s) = (n(0).unwrap_or(99), n(2).unwrap_or(0), n(4).unwrap_or(0));
    if h > 23 || m > 59 || s > 59 {
        return Err(loc.err(t, "TM"));
    }
    let mut out = format!("{h:02}:{m:02}:{s:02}");
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Ok(Some(out))
}

// ---------------------------------------------------------------------------------------
// Numbers.

/// v2 NM → FHIR decimal text (JSON number). v2 allows a leading `+`, leading zeros and
/// a bare leading/trailing point (Chapter 2A.2.47); FHIR's decimal grammar does not, so
/// they are normalised while the written precision is kept (`1.50` stays `1.50`).
pub(crate) fn decimal_text(text: &str) -> Option<String> {
    let t = text.trim();
    let (neg, rest) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (rest, None),
    };
    if !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.unwrap_or("").bytes().all(|b| b.is_ascii_digit())
        || (int.is_empty() && frac.unwrap_or("").is_empty())
    {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    s.push_str(if int.is_empty() { "0" } else { int });
    if let Some(f) = frac.filter(|f| !f.is_empty()) {
        s.push('.');
        s.push_str(f);
    }
    if s == "-0" {
        s = "0".into();
    }
    Some(s)
}

/// v2 NM → JSON number (precision kept).
pub(crate) fn decimal(text: &str, loc: &Loc) -> Result<Option<Value>, ConvertError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let s = decimal_text(text).ok_or_else(|| loc.err(text.trim(), "NM"))?;
    serde_json::from_str::<Value>(&s)
        .map(Some)
        .map_err(|_| loc.err(text.trim(), "NM"))
}

/// v2 NM → FHIR integer (for counts such as birth order).
pub(crate) fn integer(text: &str, loc: &Loc) -> Result<Option<Value>, ConvertError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<i32>()
        .map(|n| Some(json!(n)))
        .map_err(|_| loc.err(t, "NM"))
}

// ---------------------------------------------------------------------------------------
// Coded values.

/// CE/CWE/CNE/CF (and ID/IS, which are the first component alone) → CodeableConcept:
/// components 1–3 and 4–6 become codings (system via [`tables::coding_system`]),
/// text from CWE-9 (original text), else CWE-2.
pub(crate) fn codeable_concept(rep: &Repetition<'_>, opts: &ConvertOptions) -> Option<Value> {
    let mut codings = Vec::new();
    for base in [1usize, 4] {
        if let Some(c) = coding(rep, base, opts) {
            codings.push(c);
        }
    }
    let mut cc = Map::new();
    if !codings.is_empty() {
        cc.insert("coding".into(), Value::Array(codings));
    }
    let text = string(&rep.text(9)).or_else(|| {
        if cc.is_empty() {
            string(&rep.text(2))
        } else {
            None
        }
    });
    put_str(&mut cc, "text", text);
    non_empty(cc)
}

/// One coding from the triplet starting at component `base` (code, text, system name).
pub(crate) fn coding(rep: &Repetition<'_>, base: usize, opts: &ConvertOptions) -> Option<Value> {
    let code_v = code(&rep.text(base));
    let display = string(&rep.text(base + 1));
    code_v.as_ref()?;
    let mut c = Map::new();
    if let Some(sys) = tables::coding_system(&rep.text(base + 2), opts) {
        c.insert("system".into(), Value::String(sys));
    }
    put_str(&mut c, "code", code_v);
    put_str(&mut c, "display", display);
    non_empty(c)
}

/// A coding of an HL7 table (`http://terminology.hl7.org/CodeSystem/v2-nnnn`).
pub(crate) fn v2_coding(table: &str, code_text: &str, display: Option<&str>) -> Option<Value> {
    let c = code(code_text)?;
    let mut m = Map::new();
    m.insert(
        "system".into(),
        json!(format!("http://terminology.hl7.org/CodeSystem/v2-{table}")),
    );
    m.insert("code".into(), json!(c));
    if let Some(d) = display.and_then(string) {
        m.insert("display".into(), json!(d));
    }
    Some(Value::Object(m))
}

/// A CodeableConcept holding one HL7-table coding; the component's own text as display.
pub(crate) fn v2_concept(table: &str, rep: &Repetition<'_>) -> Option<Value> {
    let c = v2_coding(table, &rep.text(1), Some(&rep.text(2)))?;
    Some(json!({ "coding": [c] }))
}

// ---------------------------------------------------------------------------------------
// Identifiers.

/// HD (hierarchic designator) → a system URI: HD-2 with HD-3 `ISO` → `urn:oid:`,
/// `UUID` → `urn:uuid:`, `URI`/`URL` → HD-2 itself; otherwise the namespace HD-1 through
/// [`ConvertOptions::namespace_system`].
pub(crate) fn hd_system(
    namespace: &str,
    universal: &str,
    kind: &str,
    opts: &ConvertOptions,
) -> Option<String> {
    let universal = universal.trim();
    let kind = kind.trim().to_ascii_uppercase();
    if !universal.is_empty() {
        match kind.as_str() {
            "ISO" if is_oid(universal) => return Some(format!("urn:oid:{universal}")),
            "UUID"
                if universal.len() == 36
                    && universal
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b'-') =>
            {
                return Some(format!("urn:uuid:{}", universal.to_ascii_lowercase()))
            }
            "URI" | "URL" if !universal.contains(char::is_whitespace) => {
                return Some(universal.to_string())
            }
            _ => {}
        }
    }
    let ns = namespace.trim();
    if !ns.is_empty() {
        return Some(opts.namespace_system(ns));
    }
    if !universal.is_empty() && is_oid(universal) {
        return Some(format!("urn:oid:{universal}"));
    }
    None
}

pub(crate) fn is_oid(s: &str) -> bool {
    let mut parts = s.split('.');
    let first_ok = matches!(parts.next(), Some("0" | "1" | "2"));
    let rest: Vec<&str> = parts.collect();
    first_ok
        && !rest.is_empty()
        && rest.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

/// CX (extended composite ID) → Identifier. CX-4 → system, CX-5 → type (table 0203),
/// CX-7/8 → period. `default_type` applies when CX-5 is empty (e.g. `VN` for PV1-19).
pub(crate) fn identifier(
    rep: &Repetition<'_>,
    default_type: Option<&str>,
    loc: &Loc,
    opts: &ConvertOptions,
) -> Result<Option<Value>, ConvertError> {
    let Some(value) = string(&rep.text(1)) else {
        return Ok(None);
    };
    let auth = rep.component(4);
    let mut id = Map::new();
    if let Some(sys) = hd_system(&auth.sub(1), &auth.sub(2), &auth.sub(3), opts) {
        id.insert("system".into(), json!(sys));
    }
    id.insert("value".into(), json!(value));
    let ty = code(&rep.text(5)).or_else(|| default_type.map(str::to_owned));
    if let Some(t) = ty {
        if let Some(c) = v2_coding("0203", &t, tables::identifier_type_display(&t)) {
            id.insert("type".into(), json!({ "coding": [c] }));
        }
    }
    let mut period = Map::new();
    put_str(&mut period, "start", date(&rep.text(7), &loc.comp(7))?);
    put_str(&mut period, "end", date(&rep.text(8), &loc.comp(8))?);
    put(&mut id, "period", non_empty(period));
    Ok(Some(Value::Object(id)))
}

/// An EI (entity identifier: ID, namespace, universal ID, type) → Identifier.
pub(crate) fn entity_identifier(
    rep: &Repetition<'_>,
    type_code: Option<&str>,
    opts: &ConvertOptions,
) -> Option<Value> {
    let value = string(&rep.text(1))?;
    let mut id = Map::new();
    if let Some(sys) = hd_system(&rep.text(2), &rep.text(3), &rep.text(4), opts) {
        id.insert("system".into(), json!(sys));
    }
    id.insert("value".into(), json!(value));
    if let Some(t) = type_code {
        if let Some(c) = v2_coding("0203", t, tables::identifier_type_display(t)) {
            id.insert("type".into(), json!({ "coding": [c] }));
        }
    }
    Some(Value::Object(id))
}

// ---------------------------------------------------------------------------------------
// Names, addresses, telecom.

/// XPN → HumanName. XPN-1.1 family, XPN-2/3 given, XPN-4 and XPN-6 suffix, XPN-5 prefix,
/// XPN-7 name type (table 0200) → use, XPN-10 (or 12/13) → period.
pub(crate) fn human_name(rep: &Repetition<'_>, loc: &Loc) -> Result<Option<Value>, ConvertError> {
    name_parts(
        rep.component(1).sub(1).as_ref(),
        &[rep.text(2).as_ref(), rep.text(3).as_ref()],
        &[rep.text(5).as_ref()],
        &[
            rep.text(4).as_ref(),
            rep.text(6).as_ref(),
            rep.text(14).as_ref(),
        ],
        &rep.text(7),
        rep,
        10,
        loc,
    )
}

/// XCN (extended composite ID and name for persons) → HumanName: XCN-2 family,
/// XCN-3/4 given, XCN-5 suffix, XCN-6 prefix, XCN-7 degree, XCN-10 name type.
pub(crate) fn xcn_name(rep: &Repetition<'_>, loc: &Loc) -> Result<Option<Value>, ConvertError> {
    name_parts(
        rep.component(2).sub(1).as_ref(),
        &[rep.text(3).as_ref(), rep.text(4).as_ref()],
        &[rep.text(6).as_ref()],
        &[rep.text(5).as_ref(), rep.text(7).as_ref()],
        &rep.text(10),
        rep,
        0,
        loc,
    )
}

#[allow(clippy::too_many_arguments)]
fn name_parts(
    family: &str,
    given: &[&str],
    prefix: &[&str],
    suffix: &[&str],
    name_type: &str,
    rep: &Repetition<'_>,
    period_comp: usize,
    loc: &Loc,
) -> Result<Option<Value>, ConvertError> {
    let mut n = Map::new();
    let list = |xs: &[&str]| -> Option<Value> {
        let v: Vec<Value> = xs
            .iter()
            .filter_map(|s| string(s))
            .map(Value::String)
            .collect();
        (!v.is_empty()).then_some(Value::Array(v))
    };
    put_str(&mut n, "family", string(family));
    put(&mut n, "given", list(given));
    put(&mut n, "prefix", list(prefix));
    put(&mut n, "suffix", list(suffix));
    if n.is_empty() {
        return Ok(None);
    }
    if let Some(u) = tables::name_use(name_type) {
        n.insert("use".into(), json!(u));
    }
    if period_comp > 0 {
        let range = rep.component(period_comp);
        let mut period = Map::new();
        let start = if range.is_empty() {
            rep.text(12)
        } else {
            range.sub(1)
        };
        let end = if range.is_empty() {
            rep.text(13)
        } else {
            range.sub(2)
        };
        put_str(&mut period, "start", date(&start, &loc.comp(period_comp))?);
        put_str(&mut period, "end", date(&end, &loc.comp(period_comp))?);
        put(&mut n, "period", non_empty(period));
    }
    Ok(Some(Value::Object(n)))
}

/// XAD → Address. XAD-1.1 and XAD-2 lines, 3 city, 4 state, 5 postal code, 6 country,
/// 7 address type (table 0190) → use/type, 9 county → district, 12/13/14 → period.
pub(crate) fn address(rep: &Repetition<'_>, loc: &Loc) -> Result<Option<Value>, ConvertError> {
    let mut a = Map::new();
    let street: Component<'_> = rep.component(1);
    // SAD-1 is the whole street line; some senders put only the house number there and
    // the street name in SAD-2: join them then.
    let (sad1, sad2) = (street.sub(1), street.sub(2));
    let first_line = match (string(&sad1), string(&sad2)) {
        (Some(a), Some(b)) if !a.contains(b.as_str()) => Some(format!("{a} {b}")),
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    let lines: Vec<Value> = [first_line, string(&rep.text(2))]
        .into_iter()
        .flatten()
        .map(Value::String)
        .collect();
    if !lines.is_empty() {
        a.insert("line".into(), Value::Array(lines));
    }
    put_str(&mut a, "city", string(&rep.text(3)));
    put_str(&mut a, "district", string(&rep.text(9)));
    put_str(&mut a, "state", string(&rep.text(4)));
    put_str(&mut a, "postalCode", string(&rep.text(5)));
    put_str(&mut a, "country", string(&rep.text(6)));
    if a.is_empty() {
        return Ok(None);
    }
    let (use_, type_) = tables::address_use(&rep.text(7));
    put_str(&mut a, "use", use_.map(str::to_owned));
    put_str(&mut a, "type", type_.map(str::to_owned));
    let range = rep.component(12);
    let mut period = Map::new();
    let start = if range.is_empty() {
        rep.text(13)
    } else {
        range.sub(1)
    };
    let end = if range.is_empty() {
        rep.text(14)
    } else {
        range.sub(2)
    };
    put_str(&mut period, "start", date(&start, &loc.comp(13))?);
    put_str(&mut period, "end", date(&end, &loc.comp(14))?);
    put(&mut a, "period", non_empty(period));
    Ok(Some(Value::Object(a)))
}

/// XTN → ContactPoint. XTN-2 use (table 0201), XTN-3 equipment (table 0202) → system;
/// the value is XTN-4 for e-mail, else `+country (area) local ext`, else XTN-1.
pub(crate) fn contact_point(rep: &Repetition<'_>, default_use: Option<&str>) -> Option<Value> {
    let use_code = rep.text(2).trim().to_ascii_uppercase();
    let equip = rep.text(3).trim().to_ascii_uppercase();
    let email = string(&rep.text(4));
    let is_email = use_code == "NET" || equip == "INTERNET" || equip == "X.400";
    let (value, system) = if is_email && email.is_some() {
        (email, "email")
    } else {
        let local = string(&rep.text(7));
        let number = match local {
            Some(l) => {
                let mut s = String::new();
                if let Some(c) = string(&rep.text(5)) {
                    s.push_str(&format!("+{c} "));
                }
                if let Some(a) = string(&rep.text(6)) {
                    s.push_str(&format!("({a}) "));
                }
                s.push_str(&l);
                if let Some(x) = string(&rep.text(8)) {
                    s.push_str(&format!(" ext. {x}"));
                }
                Some(s)
            }
            None => string(&rep.text(1)).or(email),
        };
        let system = match equip.as_str() {
            "FX" => "fax",
            "BP" => "pager",
            "INTERNET" | "X.400" => "email",
            "MD" | "TDD" | "TTY" => "other",
            _ => "phone",
        };
        (number, system)
    };
    let value = value?;
    let mut cp = Map::new();
    cp.insert("system".into(), json!(system));
    cp.insert("value".into(), json!(value));
    let u = if equip == "CP" {
        Some("mobile")
    } else {
        tables::telecom_use(&use_code).or(default_use)
    };
    put_str(&mut cp, "use", u.map(str::to_owned));
    Some(Value::Object(cp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    fn rep_of(field: &str, f: impl FnOnce(&Repetition<'_>)) {
        let text = format!("MSH|^~\\&\rZZZ|{field}");
        let m = parse(&text).unwrap();
        let seg = &m.segments()[1];
        let rep = m.field(seg, 1).first();
        f(&rep);
    }

    #[test]
    fn dtm_precision_and_zone() {
        let d = Dtm::parse("198808181126+0215").unwrap();
        assert_eq!(d.date(), "1988-08-18");
        assert_eq!(d.date_time(None), "1988-08-18T11:26:00+02:15");
        let d = Dtm::parse("20240102030405.1234-0500").unwrap();
        assert_eq!(d.date_time(None), "2024-01-02T03:04:05.1234-05:00");
        let d = Dtm::parse("2024010203").unwrap();
        assert_eq!(d.date_time(None), "2024-01-02");
        assert_eq!(d.date_time(Some("+01:00")), "2024-01-02T03:00:00+01:00");
        assert_eq!(d.instant(None), None);
        assert_eq!(
            Dtm::parse("202401").unwrap().date_time(Some("Z")),
            "2024-01"
        );
        assert_eq!(
            Dtm::parse("20240102120000+0000").unwrap().date_time(None),
            "2024-01-02T12:00:00Z"
        );
        for bad in [
            "2024-13-01",
            "20241301",
            "20240230",
            "2024010225",
            "20240101+25",
            "abc",
            "20240",
            "20240101120000.12345",
        ] {
            assert!(Dtm::parse(bad).is_none(), "{bad}");
        }
        assert!(Dtm::parse("20240229").is_some());
        assert!(Dtm::parse("20230229").is_none());
        let e = date("2024-13-01", &Loc("PID-7".into())).unwrap_err();
        assert_eq!(e.to_string(), "PID-7: \"2024-13-01\" is not a valid TS");
    }

    #[test]
    fn decimals() {
        for (i, o) in [
            ("+5", "5"),
            (".5", "0.5"),
            ("007.50", "7.50"),
            ("5.", "5"),
            ("-0", "0"),
            ("-.25", "-0.25"),
            ("1.50", "1.50"),
        ] {
            assert_eq!(decimal_text(i).as_deref(), Some(o), "{i}");
        }
        for bad in ["", ".", "1.2.3", "abc", "1e5", "- 1"] {
            assert_eq!(decimal_text(bad), None, "{bad}");
        }
        let v = decimal("1.50", &Loc("OBX-5".into())).unwrap().unwrap();
        assert_eq!(v.to_string(), "1.50");
    }

    #[test]
    fn identifiers_names_addresses() {
        let opts = ConvertOptions::default();
        rep_of("123^^^HOSP&1.2.3&ISO^MR^^20200101", |r| {
            let id = identifier(r, None, &Loc("PID-3".into()), &opts)
                .unwrap()
                .unwrap();
            assert_eq!(id["system"], "urn:oid:1.2.3");
            assert_eq!(id["value"], "123");
            assert_eq!(id["type"]["coding"][0]["code"], "MR");
            assert_eq!(id["period"]["start"], "2020-01-01");
        });
        rep_of("123^^^HOSP^MR", |r| {
            let id = identifier(r, None, &Loc("PID-3".into()), &opts)
                .unwrap()
                .unwrap();
            assert_eq!(id["system"], "urn:salus:hl7v2:id:HOSP");
        });
        rep_of("DOE&van^JOHN^Q^JR^DR^MD^L", |r| {
            let n = human_name(r, &Loc("PID-5".into())).unwrap().unwrap();
            assert_eq!(
                n,
                json!({"family": "DOE", "given": ["JOHN", "Q"], "prefix": ["DR"], "suffix": ["JR", "MD"], "use": "official"})
            );
        });
        rep_of("1000&Hospital Lane^^Town", |r| {
            let a = address(r, &Loc("PID-11".into())).unwrap().unwrap();
            assert_eq!(a["line"], json!(["1000 Hospital Lane"]));
        });
        rep_of("1 Main St&Main St&1^Apt 2^Town^ST^12345^USA^H", |r| {
            let a = address(r, &Loc("PID-11".into())).unwrap().unwrap();
            assert_eq!(a["line"], json!(["1 Main St", "Apt 2"]));
            assert_eq!(a["use"], "home");
        });
        rep_of("^PRN^PH^^1^555^1234567^89", |r| {
            let c = contact_point(r, None).unwrap();
            assert_eq!(
                c,
                json!({"system": "phone", "value": "+1 (555) 1234567 ext. 89", "use": "home"})
            );
        });
        rep_of("^NET^Internet^a@b.org", |r| {
            let c = contact_point(r, None).unwrap();
            assert_eq!(c["system"], "email");
            assert_eq!(c["value"], "a@b.org");
        });
        rep_of("8867-4^Heart rate^LN^HR^Heart rate local^99LOC", |r| {
            let cc = codeable_concept(r, &opts).unwrap();
            assert_eq!(cc["coding"][0]["system"], "http://loinc.org");
            assert_eq!(
                cc["coding"][1]["system"],
                "urn:salus:hl7v2:codesystem:99LOC"
            );
        });
    }
}
