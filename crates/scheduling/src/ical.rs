//! iCalendar (RFC 5545) feeds: a writer for VCALENDAR/VEVENT and a small reader.
//!
//! Lines end in CRLF and are folded at 75 octets (RFC 5545 3.1), never inside a UTF-8
//! character; TEXT values escape backslash, semicolon, comma and newlines (3.3.11);
//! DATE-TIME values are written in UTC with the `Z` suffix (3.3.5, form #2).

use jiff::Timestamp;

/// One calendar event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Globally unique and stable across feeds (`Appointment/123@salus`).
    pub uid: String,
    pub start: Timestamp,
    pub end: Timestamp,
    pub summary: String,
    pub description: Option<String>,
    pub location: Option<String>,
    /// Join link of a video visit.
    pub url: Option<String>,
    /// `CONFIRMED`, `TENTATIVE` or `CANCELLED` (3.8.1.11).
    pub status: String,
    /// Version of the underlying record, for clients that track changes.
    pub sequence: u32,
}

/// `19970714T173000Z`.
pub fn utc(ts: Timestamp) -> String {
    ts.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Escape a TEXT value (RFC 5545 3.3.11).
pub fn escape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Append one content line, folded at 75 octets with CRLF + space (RFC 5545 3.1).
fn push_line(out: &mut String, line: &str) {
    let mut width = 0;
    for c in line.chars() {
        let n = c.len_utf8();
        // a continuation line starts with a space, which counts toward its 75 octets
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += n;
    }
    out.push_str("\r\n");
}

/// A complete `VCALENDAR` with `events`; `name` becomes `X-WR-CALNAME`.
pub fn calendar(name: &str, events: &[Event], now: Timestamp) -> String {
    let mut out = String::new();
    push_line(&mut out, "BEGIN:VCALENDAR");
    push_line(&mut out, "VERSION:2.0");
    push_line(&mut out, "PRODID:-//Salus//Scheduling//EN");
    push_line(&mut out, "CALSCALE:GREGORIAN");
    push_line(&mut out, "METHOD:PUBLISH");
    push_line(&mut out, &format!("X-WR-CALNAME:{}", escape_text(name)));
    let stamp = utc(now);
    for e in events {
        push_line(&mut out, "BEGIN:VEVENT");
        push_line(&mut out, &format!("UID:{}", escape_text(&e.uid)));
        push_line(&mut out, &format!("DTSTAMP:{stamp}"));
        push_line(&mut out, &format!("DTSTART:{}", utc(e.start)));
        push_line(&mut out, &format!("DTEND:{}", utc(e.end)));
        push_line(&mut out, &format!("SEQUENCE:{}", e.sequence));
        push_line(&mut out, &format!("SUMMARY:{}", escape_text(&e.summary)));
        if let Some(d) = &e.description {
            push_line(&mut out, &format!("DESCRIPTION:{}", escape_text(d)));
        }
        if let Some(l) = &e.location {
            push_line(&mut out, &format!("LOCATION:{}", escape_text(l)));
        }
        if let Some(u) = &e.url {
            // URL is of type URI (3.8.4.6): not TEXT-escaped
            push_line(&mut out, &format!("URL:{u}"));
        }
        push_line(&mut out, &format!("STATUS:{}", e.status));
        push_line(&mut out, "END:VEVENT");
    }
    push_line(&mut out, "END:VCALENDAR");
    out
}

/// A parsed content line: name, parameters, value (TEXT escapes undone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub name: String,
    pub params: Vec<(String, String)>,
    pub value: String,
}

/// Why a feed could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {0}: a content line needs a ':'")]
    NoColon(usize),
    #[error("line {0}: a line must end in CRLF")]
    BareLf(usize),
    #[error("line {line}: line is {octets} octets long (at most 75 before folding)")]
    TooLong { line: usize, octets: usize },
    #[error("unbalanced BEGIN/END: {0}")]
    Unbalanced(String),
}

/// Unfold and split a feed into its components' properties: one `Vec<Property>` per
/// `VEVENT`, checking CRLF line ends, the 75-octet limit and BEGIN/END nesting.
pub fn parse_events(text: &str) -> Result<Vec<Vec<Property>>, ParseError> {
    let mut logical: Vec<String> = Vec::new();
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let Some(line) = raw.strip_suffix("\r\n") else {
            return Err(ParseError::BareLf(i + 1));
        };
        if line.len() > 75 {
            return Err(ParseError::TooLong {
                line: i + 1,
                octets: line.len(),
            });
        }
        if let Some(rest) = line.strip_prefix(' ').or_else(|| line.strip_prefix('\t')) {
            match logical.last_mut() {
                Some(l) => l.push_str(rest),
                None => return Err(ParseError::NoColon(i + 1)),
            }
        } else {
            logical.push(line.to_string());
        }
    }
    let mut stack: Vec<String> = Vec::new();
    let mut events = Vec::new();
    let mut current: Option<Vec<Property>> = None;
    for (i, l) in logical.iter().enumerate() {
        let p = parse_property(l).ok_or(ParseError::NoColon(i + 1))?;
        match p.name.as_str() {
            "BEGIN" => {
                if p.value == "VEVENT" {
                    current = Some(Vec::new());
                }
                stack.push(p.value);
            }
            "END" => {
                if stack.pop().as_deref() != Some(p.value.as_str()) {
                    return Err(ParseError::Unbalanced(p.value));
                }
                if p.value == "VEVENT" {
                    events.extend(current.take());
                }
            }
            _ => {
                if let Some(c) = current.as_mut() {
                    c.push(p);
                }
            }
        }
    }
    if let Some(open) = stack.pop() {
        return Err(ParseError::Unbalanced(open));
    }
    Ok(events)
}

fn parse_property(line: &str) -> Option<Property> {
    // the value starts at the first ':' outside a quoted parameter value
    let mut quoted = false;
    let mut colon = None;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let colon = colon?;
    let (head, value) = (&line[..colon], &line[colon + 1..]);
    let mut parts = head.split(';');
    let name = parts.next()?.to_ascii_uppercase();
    let params = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_ascii_uppercase(), v.trim_matches('"').to_string()))
        .collect();
    Some(Property {
        name,
        params,
        value: unescape_text(value),
    })
}

fn unescape_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') | Some('N') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of the first property named `name`.
pub fn value<'a>(event: &'a [Property], name: &str) -> Option<&'a str> {
    event
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            uid: "Appointment/a1@salus".into(),
            start: "2026-03-30T07:00:00Z".parse().unwrap(),
            end: "2026-03-30T07:15:00Z".parse().unwrap(),
            summary: "Video visit; Dr. Müller, cardiology\nbring your readings".into(),
            description: Some("ÄÖÜ ".repeat(40)),
            location: None,
            url: Some(format!(
                "https://meet.example.org/room?jwt={}",
                "x".repeat(120)
            )),
            status: "CONFIRMED".into(),
            sequence: 2,
        }
    }

    #[test]
    fn writes_folded_escaped_utc_lines_that_read_back() {
        let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        let text = calendar("Dr. Müller, visits", &[event()], now);
        assert!(text.starts_with("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n"));
        assert!(text.contains("DTSTART:20260330T070000Z\r\n"));
        assert!(text.contains("SUMMARY:Video visit\\; Dr. Müller\\, cardiology\\nbring"));
        for line in text.split("\r\n") {
            assert!(line.len() <= 75, "{line}");
        }
        let events = parse_events(&text).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(value(e, "UID"), Some("Appointment/a1@salus"));
        assert_eq!(value(e, "DTSTAMP"), Some("20260301T120000Z"));
        assert_eq!(value(e, "DTEND"), Some("20260330T071500Z"));
        assert_eq!(value(e, "SUMMARY"), Some(event().summary.as_str()));
        assert_eq!(value(e, "DESCRIPTION"), event().description.as_deref());
        assert_eq!(value(e, "URL"), event().url.as_deref());
        assert_eq!(value(e, "STATUS"), Some("CONFIRMED"));
    }

    #[test]
    fn folding_never_splits_a_character() {
        let mut out = String::new();
        push_line(&mut out, &format!("X:{}", "é".repeat(100)));
        for line in out.split("\r\n") {
            assert!(line.len() <= 75);
        }
        assert!(String::from_utf8(out.into_bytes()).is_ok());
    }

    #[test]
    fn reader_rejects_broken_feeds() {
        assert_eq!(
            parse_events("BEGIN:VCALENDAR\nEND:VCALENDAR\n"),
            Err(ParseError::BareLf(1))
        );
        assert!(matches!(
            parse_events("BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nEND:VCALENDAR\r\n"),
            Err(ParseError::Unbalanced(_))
        ));
    }
}
