//! ER7 ("pipe and hat") parsing: HL7 v2.x Chapter 2, section 2.5 (message construction
//! rules) and 2.7 (use of escape sequences in text fields).
//!
//! The parser splits a message into segments and keeps each field's raw (still escaped)
//! text; repetitions, components and subcomponents are split on access with the
//! delimiters the message declares in MSH-1 and MSH-2, and escape sequences are decoded
//! only when a value is read ([`Component::text`], [`Repetition::text`]). Splitting on
//! access keeps parsing a single pass over the input and lets the converter read a value
//! either as a composite or as plain text (OBX-5 of type TX, for instance).
//!
//! Every delimiter must be ASCII, so the parser only ever splits at ASCII bytes and never
//! inside a multi-byte UTF-8 character; every index is checked: no input makes it panic.

use std::borrow::Cow;
use std::fmt;

/// Problems that make a text unparseable as an HL7 v2 message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace (or MLLP framing bytes).
    #[error("empty message")]
    Empty,
    /// The first segment is not MSH.
    #[error("a message must start with an MSH segment, found {found:?}")]
    NotMsh {
        /// The first characters of the text.
        found: String,
    },
    /// MSH-1 or MSH-2 do not declare a usable set of delimiters.
    #[error("MSH-{field}: {reason}")]
    Delimiters {
        /// 1 (field separator) or 2 (encoding characters).
        field: u8,
        /// What is wrong.
        reason: String,
    },
    /// A segment whose identifier is not three upper-case letters or digits.
    #[error(
        "segment {index}: {id:?} is not a valid segment ID (three upper-case letters or digits)"
    )]
    SegmentId {
        /// 1-based position of the segment in the message.
        index: usize,
        /// The text before the first field separator (shortened).
        id: String,
    },
    /// A second MSH: one text holds one message (batches are split by the caller).
    #[error("segment {index}: a second MSH segment; send one message at a time")]
    SecondHeader {
        /// 1-based position of the segment in the message.
        index: usize,
    },
}

/// The delimiters a message declares in MSH-1 and MSH-2 (HL7 v2 Chapter 2, 2.5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// MSH-1, usually `|`.
    pub field: u8,
    /// First character of MSH-2, usually `^`.
    pub component: u8,
    /// Second character of MSH-2, usually `~`.
    pub repetition: u8,
    /// Third character of MSH-2, usually `\`; absent in some old messages.
    pub escape: Option<u8>,
    /// Fourth character of MSH-2, usually `&`.
    pub subcomponent: Option<u8>,
    /// Fifth character of MSH-2 (v2.7+ truncation character, usually `#`).
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: Some(b'\\'),
            subcomponent: Some(b'&'),
            truncation: None,
        }
    }
}

impl Delimiters {
    /// MSH-2 as it would be written.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        for b in [
            Some(self.component),
            Some(self.repetition),
            self.escape,
            self.subcomponent,
            self.truncation,
        ]
        .into_iter()
        .flatten()
        {
            s.push(char::from(b));
        }
        s
    }

    /// Escape `text` so that it can be written into a field (Chapter 2, 2.7).
    pub fn escape(&self, text: &str) -> String {
        let Some(esc) = self.escape else {
            return text.to_string();
        };
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let code = match u8::try_from(c) {
                Ok(b) if b == self.field => Some('F'),
                Ok(b) if b == self.component => Some('S'),
                Ok(b) if b == self.repetition => Some('R'),
                Ok(b) if b == esc => Some('E'),
                Ok(b) if Some(b) == self.subcomponent => Some('T'),
                Ok(b) if Some(b) == self.truncation => Some('P'),
                Ok(b'\r') => {
                    out.push(char::from(esc));
                    out.push_str("X0D");
                    out.push(char::from(esc));
                    continue;
                }
                Ok(b'\n') => {
                    out.push(char::from(esc));
                    out.push_str(".br");
                    out.push(char::from(esc));
                    continue;
                }
                _ => None,
            };
            match code {
                Some(code) => {
                    out.push(char::from(esc));
                    out.push(code);
                    out.push(char::from(esc));
                }
                None => out.push(c),
            }
        }
        out
    }

    /// Decode the escape sequences of `raw` (Chapter 2, 2.7): delimiters (`\F\ \S\ \T\ \R\
    /// \E\ \P\`), hexadecimal data (`\Xhh…\`, decoded as UTF-8, else as ISO 8859-1),
    /// formatting commands (`\.br\` and `\.sp\` become line breaks, the other formatting,
    /// highlighting `\H\ \N\` and character-set sequences are dropped). An unterminated
    /// or unknown sequence is kept as written.
    pub fn unescape<'a>(&self, raw: &'a str) -> Cow<'a, str> {
        let Some(esc) = self.escape else {
            return Cow::Borrowed(raw);
        };
        if !raw.as_bytes().contains(&esc) {
            return Cow::Borrowed(raw);
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(pos) = rest.bytes().position(|b| b == esc) {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            let Some(end) = after.bytes().position(|b| b == esc) else {
                // Unterminated: keep the remainder literally.
                out.push_str(&rest[pos..]);
                return Cow::Owned(out);
            };
            let seq = &after[..end];
            if !self.decode_sequence(seq, &mut out) {
                // Unknown sequence: keep it, both escape characters included.
                out.push_str(&rest[pos..pos + end + 2]);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// Decode one escape sequence (without its escape characters) into `out`; false when
    /// the sequence is not recognised.
    fn decode_sequence(&self, seq: &str, out: &mut String) -> bool {
        let push = |out: &mut String, b: Option<u8>| match b {
            Some(b) => {
                out.push(char::from(b));
                true
            }
            None => false,
        };
        match seq {
            "F" => push(out, Some(self.field)),
            "S" => push(out, Some(self.component)),
            "R" => push(out, Some(self.repetition)),
            "E" => push(out, self.escape),
            "T" => push(out, self.subcomponent),
            "P" => push(out, self.truncation),
            "H" | "N" => true,
            ".br" => {
                out.push('\n');
                true
            }
            _ => {
                let first = seq.as_bytes().first().copied();
                match first {
                    Some(b'X') => {
                        let hex = &seq[1..];
                        match decode_hex(hex) {
                            Some(bytes) => {
                                match String::from_utf8(bytes) {
                                    Ok(s) => out.push_str(&s),
                                    Err(e) => {
                                        out.extend(e.into_bytes().into_iter().map(char::from))
                                    }
                                }
                                true
                            }
                            None => false,
                        }
                    }
                    Some(b'.') => {
                        // `.sp n` → n line breaks (at least one); other formatting dropped.
                        if let Some(n) = seq.strip_prefix(".sp") {
                            let n = n.trim().parse::<usize>().unwrap_or(1).clamp(1, 100);
                            out.extend(std::iter::repeat_n('\n', n));
                        }
                        true
                    }
                    // Character-set switches (\Cxxyy\, \Mxxyyzz\) and locally defined
                    // escapes (\Z…\) carry no text of their own.
                    Some(b'C' | b'M' | b'Z') => true,
                    _ => false,
                }
            }
        }
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// One segment: its identifier and its fields' raw (escaped) text.
///
/// Fields are numbered as in the standard: `field(1)` is the first field after the
/// segment ID, and for MSH `field(1)` is the field separator itself and `field(2)` the
/// encoding characters, so MSH-9 is `field(9)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Index 0 holds the segment ID.
    fields: Vec<String>,
    /// 1-based position in the message, for error messages.
    index: usize,
}

impl Segment {
    /// The three-character segment ID (`PID`, `ZPI`, …).
    pub fn id(&self) -> &str {
        self.fields.first().map(String::as_str).unwrap_or("")
    }

    /// 1-based position of the segment in its message.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of fields present (the last one's number).
    pub fn field_count(&self) -> usize {
        self.fields.len().saturating_sub(1)
    }

    /// The raw (escaped) text of field `n` (1-based); `""` when absent.
    pub fn raw(&self, n: usize) -> &str {
        if n == 0 {
            return "";
        }
        self.fields.get(n).map(String::as_str).unwrap_or("")
    }

    fn to_er7(&self, d: &Delimiters) -> String {
        let sep = char::from(d.field).to_string();
        if self.id() == "MSH" {
            // fields[1] is MSH-1 itself: join skipping it.
            let mut parts: Vec<&str> = vec!["MSH"];
            parts.extend(self.fields.iter().skip(2).map(String::as_str));
            parts.join(&sep)
        } else {
            self.fields.join(&sep)
        }
    }
}

/// A parsed message: its delimiters and segments, in order (Z-segments included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    delimiters: Delimiters,
    segments: Vec<Segment>,
}

/// MSH-9: message code, trigger event and message structure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageType {
    /// MSH-9.1, e.g. `ADT`.
    pub code: String,
    /// MSH-9.2, e.g. `A01`.
    pub trigger: String,
    /// MSH-9.3, e.g. `ADT_A01` (often absent before v2.3.1).
    pub structure: String,
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}^{}", self.code, self.trigger)?;
        if !self.structure.is_empty() {
            write!(f, "^{}", self.structure)?;
        }
        Ok(())
    }
}

impl Message {
    /// The delimiters declared in MSH-1 and MSH-2.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// All segments in order; the first is MSH.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The MSH segment.
    pub fn msh(&self) -> &Segment {
        // `parse` never builds a message without MSH; the fallback keeps this total.
        static EMPTY: Segment = Segment {
            fields: Vec::new(),
            index: 0,
        };
        self.segments.first().unwrap_or(&EMPTY)
    }

    /// The first segment with this ID.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id() == id)
    }

    /// A field accessor for `segment`.
    pub fn field<'a>(&'a self, segment: &'a Segment, n: usize) -> Field<'a> {
        Field {
            raw: segment.raw(n),
            d: &self.delimiters,
        }
    }

    /// MSH-9.
    pub fn message_type(&self) -> MessageType {
        let f = self.field(self.msh(), 9).first();
        MessageType {
            code: f.text(1).trim().to_ascii_uppercase(),
            trigger: f.text(2).trim().to_ascii_uppercase(),
            structure: f.text(3).trim().to_ascii_uppercase(),
        }
    }

    /// MSH-10, the message control ID.
    pub fn control_id(&self) -> String {
        self.field(self.msh(), 10)
            .first()
            .text(1)
            .trim()
            .to_string()
    }

    /// MSH-12.1, the version ID (e.g. `2.5.1`).
    pub fn version(&self) -> String {
        self.field(self.msh(), 12)
            .first()
            .text(1)
            .trim()
            .to_string()
    }

    /// The message written back as ER7, segments ended by CR.
    pub fn to_er7(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push_str(&s.to_er7(&self.delimiters));
            out.push('\r');
        }
        out
    }
}

/// A field: zero or more repetitions.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    d: &'a Delimiters,
}

impl<'a> Field<'a> {
    /// The raw, escaped text.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether the field is empty (or holds only the HL7 null `""`).
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty() || self.raw == "\"\""
    }

    /// The repetitions, empty ones included (the caller skips them).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + 'a {
        let d = self.d;
        let raw = self.raw;
        let parts: Box<dyn Iterator<Item = &'a str>> = if raw.is_empty() {
            Box::new(std::iter::empty())
        } else {
            Box::new(raw.split(char::from(d.repetition)))
        };
        parts.map(move |raw| Repetition { raw, d })
    }

    /// The first repetition (empty when the field is).
    pub fn first(&self) -> Repetition<'a> {
        let raw = self
            .raw
            .split(char::from(self.d.repetition))
            .next()
            .unwrap_or("");
        Repetition { raw, d: self.d }
    }
}

/// One repetition of a field: a value made of components.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    d: &'a Delimiters,
}

impl<'a> Repetition<'a> {
    /// The raw, escaped text.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Whether every component is empty (or the value is the HL7 null `""`).
    pub fn is_empty(&self) -> bool {
        self.raw == "\"\""
            || self
                .raw
                .bytes()
                .all(|b| b == self.d.component || Some(b) == self.d.subcomponent || b == b' ')
    }

    /// Component `n` (1-based); empty when absent.
    pub fn component(&self, n: usize) -> Component<'a> {
        let raw = if n == 0 {
            ""
        } else {
            self.raw
                .split(char::from(self.d.component))
                .nth(n - 1)
                .unwrap_or("")
        };
        Component { raw, d: self.d }
    }

    /// Component `n`'s first subcomponent, unescaped.
    pub fn text(&self, n: usize) -> Cow<'a, str> {
        self.component(n).text()
    }

    /// The whole repetition unescaped, delimiters inside it kept as written (for text
    /// values such as ST, TX and FT, where a stray `^` is data).
    pub fn whole_text(&self) -> Cow<'a, str> {
        self.d.unescape(self.raw)
    }

    /// The delimiters in force.
    pub fn delimiters(&self) -> &'a Delimiters {
        self.d
    }
}

/// One component: zero or more subcomponents.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    d: &'a Delimiters,
}

impl<'a> Component<'a> {
    /// The raw, escaped text.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// Subcomponent `n` (1-based), unescaped; empty when absent.
    pub fn sub(&self, n: usize) -> Cow<'a, str> {
        if n == 0 {
            return Cow::Borrowed("");
        }
        let raw = match self.d.subcomponent {
            Some(s) => self.raw.split(char::from(s)).nth(n - 1).unwrap_or(""),
            None if n == 1 => self.raw,
            None => "",
        };
        let v = self.d.unescape(raw);
        if v == "\"\"" {
            Cow::Borrowed("")
        } else {
            v
        }
    }

    /// The first subcomponent, unescaped (the component's value when it is primitive).
    pub fn text(&self) -> Cow<'a, str> {
        self.sub(1)
    }

    /// Whether the component is empty.
    pub fn is_empty(&self) -> bool {
        self.raw
            .bytes()
            .all(|b| Some(b) == self.d.subcomponent || b == b' ')
    }
}

/// Parse one ER7 message. Segments may end with CR, LF or CRLF; blank lines, a byte-order
/// mark and MLLP framing bytes around the message are ignored.
pub fn parse(text: &str) -> Result<Message, ParseError> {
    let text = text
        .trim_start_matches(['\u{feff}', '\u{0b}'])
        .trim_start()
        .trim_end_matches(['\u{1c}', '\r', '\n', ' ', '\t', '\0']);
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    let bytes = text.as_bytes();
    if !text.starts_with("MSH") {
        let found: String = text.chars().take(8).collect();
        return Err(ParseError::NotMsh { found });
    }
    let delimiters = read_delimiters(bytes)?;
    let sep = char::from(delimiters.field);
    let mut segments = Vec::new();
    for line in text.split(['\r', '\n']) {
        if line.trim().is_empty() {
            continue;
        }
        let index = segments.len() + 1;
        let mut fields: Vec<String> = line.split(sep).map(str::to_owned).collect();
        let id = fields.first().map(String::as_str).unwrap_or("");
        if !is_segment_id(id) {
            return Err(ParseError::SegmentId {
                index,
                id: id.chars().take(12).collect(),
            });
        }
        if id == "MSH" {
            if index > 1 {
                return Err(ParseError::SecondHeader { index });
            }
            // MSH-1 is the separator itself: insert it so numbering follows the standard.
            fields.insert(1, sep.to_string());
        }
        segments.push(Segment { fields, index });
    }
    Ok(Message {
        delimiters,
        segments,
    })
}

fn is_segment_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 3
        && b[0].is_ascii_uppercase()
        && b.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// Read MSH-1 and MSH-2 from the start of the message (which begins with `MSH`).
fn read_delimiters(bytes: &[u8]) -> Result<Delimiters, ParseError> {
    let bad = |field: u8, reason: &str| ParseError::Delimiters {
        field,
        reason: reason.to_string(),
    };
    let Some(&field) = bytes.get(3) else {
        return Err(bad(1, "missing field separator"));
    };
    if !is_delimiter(field) {
        return Err(bad(
            1,
            &format!("{:?} cannot be a field separator", char::from(field)),
        ));
    }
    let enc: Vec<u8> = bytes[4..]
        .iter()
        .copied()
        .take_while(|&b| b != field && b != b'\r' && b != b'\n')
        .collect();
    if enc.len() < 2 {
        return Err(bad(
            2,
            "encoding characters need at least a component and a repetition separator",
        ));
    }
    if enc.len() > 5 {
        return Err(bad(2, "more than five encoding characters"));
    }
    if let Some(&b) = enc.iter().find(|&&b| !is_delimiter(b)) {
        return Err(bad(
            2,
            &format!("{:?} cannot be an encoding character", char::from(b)),
        ));
    }
    let mut all = enc.clone();
    all.push(field);
    all.sort_unstable();
    all.dedup();
    if all.len() != enc.len() + 1 {
        return Err(bad(2, "the delimiters are not all different"));
    }
    Ok(Delimiters {
        field,
        component: enc[0],
        repetition: enc[1],
        escape: enc.get(2).copied(),
        subcomponent: enc.get(3).copied(),
        truncation: enc.get(4).copied(),
    })
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_punctuation()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "MSH|^~\\&|APP|FAC|RCV|RFAC|20240102030405||ADT^A01^ADT_A01|CTRL1|P|2.5.1\rEVN|A01\rPID|1||123^^^HOSP&1.2.3&ISO^MR~456^^^SSA^SS||DOE^JOHN^Q||19800101|M\rZPI|custom|x\\F\\y\r";

    #[test]
    fn parses_structure() {
        let m = parse(MSG).unwrap();
        assert_eq!(m.segments().len(), 4);
        assert_eq!(m.msh().raw(1), "|");
        assert_eq!(m.msh().raw(2), "^~\\&");
        assert_eq!(m.msh().raw(3), "APP");
        assert_eq!(m.message_type().to_string(), "ADT^A01^ADT_A01");
        assert_eq!(m.control_id(), "CTRL1");
        assert_eq!(m.version(), "2.5.1");
        let pid = m.segment("PID").unwrap();
        let f = m.field(pid, 3);
        let reps: Vec<_> = f.repetitions().collect();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].text(1), "123");
        assert_eq!(reps[0].component(4).sub(2), "1.2.3");
        assert_eq!(reps[1].text(5), "SS");
        let z = m.segment("ZPI").unwrap();
        assert_eq!(m.field(z, 2).first().text(1), "x|y");
        assert_eq!(m.to_er7(), MSG);
    }

    #[test]
    fn accepts_lf_and_crlf() {
        for sep in ["\n", "\r\n", "\r\r"] {
            let text = MSG.replace('\r', sep);
            let m = parse(&text).unwrap();
            assert_eq!(m.segments().len(), 4, "{sep:?}");
        }
    }

    #[test]
    fn custom_delimiters() {
        let m = parse("MSH#*@!$#A#B\rPID#1##a*b@c*d$e").unwrap();
        let pid = m.segment("PID").unwrap();
        let f = m.field(pid, 3);
        let reps: Vec<_> = f.repetitions().collect();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].text(2), "b");
        assert_eq!(reps[1].component(2).sub(2), "e");
    }

    #[test]
    fn escapes() {
        let d = Delimiters::default();
        assert_eq!(d.unescape(r"a\F\b\S\c\T\d\R\e\E\f"), "a|b^c&d~e\\f");
        assert_eq!(d.unescape(r"line1\.br\line2"), "line1\nline2");
        assert_eq!(d.unescape(r"\X4142\"), "AB");
        assert_eq!(d.unescape(r"\XC3A9\"), "é");
        assert_eq!(d.unescape(r"\XE9\"), "é");
        assert_eq!(d.unescape(r"\H\bold\N\"), "bold");
        assert_eq!(d.unescape(r"odd \Q\ kept"), r"odd \Q\ kept");
        assert_eq!(d.unescape(r"unterminated \F"), r"unterminated \F");
        assert_eq!(d.unescape(r"\.sp 2\x"), "\n\nx");
        assert_eq!(d.unescape(r"\.in+4\x"), "x");
        let text = "a|b^c&d~e\\f\ng";
        assert_eq!(d.unescape(&d.escape(text)), text);
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(parse("  \r\n"), Err(ParseError::Empty));
        assert!(matches!(parse("PID|1"), Err(ParseError::NotMsh { .. })));
        assert_eq!(
            parse("MSH|^|").unwrap_err().to_string(),
            "MSH-2: encoding characters need at least a component and a repetition separator"
        );
        assert!(parse("MSHa^~\\&").is_err());
        assert!(parse("MSH|^^\\&").is_err());
        assert_eq!(
            parse("MSH|^~\\&|A\rpid|1").unwrap_err().to_string(),
            "segment 2: \"pid\" is not a valid segment ID (three upper-case letters or digits)"
        );
        assert!(matches!(
            parse("MSH|^~\\&|A\rMSH|^~\\&|B"),
            Err(ParseError::SecondHeader { index: 2 })
        ));
    }

    #[test]
    fn out_of_range_access_is_empty() {
        let m = parse("MSH|^~\\&").unwrap();
        let msh = m.msh();
        assert_eq!(msh.raw(0), "");
        assert_eq!(msh.raw(99), "");
        let f = m.field(msh, 42);
        assert!(f.is_empty());
        assert_eq!(f.first().text(0), "");
        assert_eq!(f.first().component(7).sub(0), "");
        assert_eq!(m.message_type(), MessageType::default());
    }
}
