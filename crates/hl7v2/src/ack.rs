//! Acknowledgements (HL7 v2 Chapter 2, 2.9 original acknowledgment mode; segments MSA
//! 2.14.8 and ERR 2.14.5, error codes from table 0357).

use crate::convert::ConvertError;
use crate::parser::{Delimiters, Message, ParseError};

/// MSA-1 acknowledgment code (table 0008, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// `AA`: accepted and committed.
    Accept,
    /// `AE`: the message was understood but could not be processed (bad content).
    Error,
    /// `AR`: rejected (unsupported type, unparseable, or the receiver is unavailable);
    /// the sender may retry unchanged later only for the last case.
    Reject,
}

impl AckCode {
    /// `AA`, `AE` or `AR`.
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::Accept => "AA",
            AckCode::Error => "AE",
            AckCode::Reject => "AR",
        }
    }

    /// Parse MSA-1 (enhanced-mode `CA/CE/CR` are read as their original-mode equivalent).
    pub fn parse(code: &str) -> Option<AckCode> {
        match code.trim() {
            "AA" | "CA" => Some(AckCode::Accept),
            "AE" | "CE" => Some(AckCode::Error),
            "AR" | "CR" => Some(AckCode::Reject),
            _ => None,
        }
    }
}

/// ERR-4 severity (table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSeverity {
    /// `E`
    Error,
    /// `W`
    Warning,
    /// `I`
    Information,
}

/// One ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// ERR-2: segment ID and field number, when known.
    pub location: Option<(String, usize)>,
    /// ERR-3: table 0357 code (`100` segment sequence error, `101` required field
    /// missing, `102` data type error, `103` table value not found, `200` unsupported
    /// message type, `207` application internal error).
    pub code: &'static str,
    /// ERR-4.
    pub severity: ErrorSeverity,
    /// ERR-8: the user message (our error text).
    pub message: String,
}

/// What a message handler reports; the ACK is built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-3 text message (optional).
    pub text: Option<String>,
    /// ERR segments.
    pub errors: Vec<AckError>,
}

fn table_0357_text(code: &str) -> &'static str {
    match code {
        "0" => "Message accepted",
        "100" => "Segment sequence error",
        "101" => "Required field missing",
        "102" => "Data type error",
        "103" => "Table value not found",
        "200" => "Unsupported message type",
        "201" => "Unsupported event code",
        "206" => "Application record locked",
        _ => "Application internal error",
    }
}

/// Split `PID-7` / `OBX-5 (segment 9)` / `MSH-2` into segment and field.
fn parse_location(location: &str) -> Option<(String, usize)> {
    let (seg, rest) = location.split_once('-')?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let field = digits.parse().ok()?;
    (seg.len() == 3).then(|| (seg.to_string(), field))
}

impl Outcome {
    /// `AA` without text.
    pub fn accept() -> Self {
        Outcome {
            code: AckCode::Accept,
            text: None,
            errors: Vec::new(),
        }
    }

    /// `AA` with warnings (ERR severity W), e.g. [`crate::Conversion::warnings`].
    pub fn accept_with_warnings(warnings: &[String]) -> Self {
        Outcome {
            code: AckCode::Accept,
            text: None,
            errors: warnings
                .iter()
                .map(|w| AckError {
                    location: parse_location(w),
                    code: "0",
                    severity: ErrorSeverity::Warning,
                    message: w.clone(),
                })
                .collect(),
        }
    }

    /// `AE` with an application error (table 0357 code 207).
    pub fn error(message: impl Into<String>) -> Self {
        Self::failure(AckCode::Error, "207", None, message.into())
    }

    /// `AR` with an application error: the receiver could not take the message (e.g.
    /// storage unavailable); the sender may resend it.
    pub fn reject(message: impl Into<String>) -> Self {
        Self::failure(AckCode::Reject, "207", None, message.into())
    }

    fn failure(
        code: AckCode,
        hl7: &'static str,
        location: Option<(String, usize)>,
        message: String,
    ) -> Self {
        Outcome {
            code,
            text: Some(message.clone()),
            errors: vec![AckError {
                location,
                code: hl7,
                severity: ErrorSeverity::Error,
                message,
            }],
        }
    }

    /// The ACK for a message that could not be converted: `AR` for an unsupported type
    /// (200) or an unparseable message, `AE` for bad content (100/101/102).
    pub fn from_convert_error(e: &ConvertError) -> Self {
        let msg = e.to_string();
        match e {
            ConvertError::Unsupported { .. } | ConvertError::TemplateMismatch { .. } => {
                Self::failure(AckCode::Reject, "200", Some(("MSH".into(), 9)), msg)
            }
            ConvertError::Parse(p) => Self::from_parse_error(p),
            ConvertError::InvalidValue { location, .. } => {
                Self::failure(AckCode::Error, "102", parse_location(location), msg)
            }
            ConvertError::MissingValue { location, .. } => {
                Self::failure(AckCode::Error, "101", parse_location(location), msg)
            }
            ConvertError::MissingSegment { segment, .. } => Self::failure(
                AckCode::Error,
                "100",
                Some(((*segment).to_string(), 0)),
                msg,
            ),
        }
    }

    /// `AR` for a message that does not parse.
    pub fn from_parse_error(e: &ParseError) -> Self {
        let location = match e {
            ParseError::Delimiters { field, .. } => Some(("MSH".to_string(), usize::from(*field))),
            _ => None,
        };
        Self::failure(AckCode::Reject, "100", location, e.to_string())
    }
}

fn now_ts() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Build the ACK for `original` (HL7 v2 Chapter 2, 2.9.2): MSH with sender and receiver
/// swapped, MSH-9 `ACK^<trigger>^ACK`, MSH-10 `ACK<original control id>`, MSA with the
/// original control ID, and one ERR per error. Segments end with CR.
pub fn ack(original: &Message, outcome: &Outcome) -> String {
    let d = *original.delimiters();
    let msh = original.msh();
    let raw = |n| msh.raw(n).to_string();
    let trigger = original.message_type().trigger;
    let control = original.control_id();
    let version = {
        let v = original.version();
        if v.is_empty() {
            "2.5".to_string()
        } else {
            original.field(msh, 12).raw().to_string()
        }
    };
    let processing = {
        let p = raw(11);
        if p.is_empty() {
            "P".to_string()
        } else {
            p
        }
    };
    build(
        &d,
        [raw(5), raw(6), raw(3), raw(4)],
        &trigger,
        &control,
        &processing,
        &version,
        outcome,
    )
}

/// An `AR` ACK for a text that is not a parseable message (MSA-2 empty: there is no
/// control ID to acknowledge), with the standard delimiters.
pub fn ack_unparsed(error: &ParseError) -> String {
    let d = Delimiters::default();
    build(
        &d,
        [String::new(), String::new(), String::new(), String::new()],
        "",
        "",
        "P",
        "2.5",
        &Outcome::from_parse_error(error),
    )
}

fn build(
    d: &Delimiters,
    parties: [String; 4],
    trigger: &str,
    control: &str,
    processing: &str,
    version: &str,
    outcome: &Outcome,
) -> String {
    let f = char::from(d.field).to_string();
    let c = char::from(d.component).to_string();
    let esc = |s: &str| d.escape(s);
    let mut out = String::new();
    let msg_type = if trigger.is_empty() {
        format!("ACK{c}{c}ACK")
    } else {
        format!("ACK{c}{}{c}ACK", esc(trigger))
    };
    let ack_control: String = format!("ACK{control}");
    let msh = [
        "MSH".to_string(),
        d.encoding_characters(),
        parties[0].clone(),
        parties[1].clone(),
        parties[2].clone(),
        parties[3].clone(),
        now_ts(),
        String::new(),
        msg_type,
        esc(&ack_control),
        processing.to_string(),
        version.to_string(),
    ];
    out.push_str(&msh.join(&f));
    out.push('\r');
    let mut msa = vec![
        "MSA".to_string(),
        outcome.code.as_str().to_string(),
        esc(control),
    ];
    if let Some(t) = &outcome.text {
        msa.push(esc(&truncate(t, 80)));
    }
    out.push_str(&msa.join(&f));
    out.push('\r');
    for e in &outcome.errors {
        let location = match &e.location {
            Some((seg, field)) if *field > 0 => format!("{seg}{c}1{c}{field}"),
            Some((seg, _)) => seg.clone(),
            None => String::new(),
        };
        let severity = match e.severity {
            ErrorSeverity::Error => "E",
            ErrorSeverity::Warning => "W",
            ErrorSeverity::Information => "I",
        };
        let err = [
            "ERR".to_string(),
            String::new(),
            location,
            format!("{}{c}{}{c}HL70357", e.code, esc(table_0357_text(e.code))),
            severity.to_string(),
            String::new(),
            String::new(),
            String::new(),
            esc(&truncate(&e.message, 250)),
        ];
        out.push_str(&err.join(&f));
        out.push('\r');
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Read MSA-1 and MSA-3 of an ACK.
pub fn read_ack(ack: &Message) -> Option<(AckCode, String)> {
    let msa = ack.segment("MSA")?;
    let code = AckCode::parse(&ack.field(msa, 1).first().text(1))?;
    Some((code, ack.field(msa, 3).first().whole_text().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse;

    const MSG: &str = "MSH|^~\\&|SND|SFAC|RCV|RFAC|20240101120000||ADT^A01^ADT_A01|C123|P|2.5.1\rPID|1||1^^^H^MR\r";

    #[test]
    fn accept_ack_swaps_parties() {
        let m = parse(MSG).unwrap();
        let a = ack(&m, &Outcome::accept());
        let p = parse(&a).unwrap();
        let msh = p.msh();
        assert_eq!(msh.raw(3), "RCV");
        assert_eq!(msh.raw(5), "SND");
        assert_eq!(p.message_type().to_string(), "ACK^A01^ACK");
        assert_eq!(p.control_id(), "ACKC123");
        assert_eq!(p.version(), "2.5.1");
        let msa = p.segment("MSA").unwrap();
        assert_eq!(msa.raw(1), "AA");
        assert_eq!(msa.raw(2), "C123");
        assert!(p.segment("ERR").is_none());
        assert_eq!(read_ack(&p), Some((AckCode::Accept, String::new())));
    }

    #[test]
    fn error_ack_names_segment_and_field() {
        let m = parse(MSG).unwrap();
        let e = ConvertError::InvalidValue {
            location: "PID-7".into(),
            value: "2024-13-01".into(),
            datatype: "TS",
        };
        let a = ack(&m, &Outcome::from_convert_error(&e));
        let p = parse(&a).unwrap();
        let err = p.segment("ERR").unwrap();
        assert_eq!(err.raw(2), "PID^1^7");
        assert_eq!(p.field(err, 3).first().text(1), "102");
        assert_eq!(err.raw(4), "E");
        assert_eq!(
            p.field(err, 8).first().whole_text(),
            "PID-7: \"2024-13-01\" is not a valid TS"
        );
        assert_eq!(read_ack(&p).unwrap().0, AckCode::Error);
        let u = ConvertError::Unsupported {
            message_type: "QRY^A19".into(),
        };
        let p = parse(&ack(&m, &Outcome::from_convert_error(&u))).unwrap();
        assert_eq!(read_ack(&p).unwrap().0, AckCode::Reject);
    }

    #[test]
    fn unparsed_ack() {
        let a = ack_unparsed(&ParseError::Empty);
        let p = parse(&a).unwrap();
        assert_eq!(read_ack(&p).unwrap().0, AckCode::Reject);
    }

    #[test]
    fn special_characters_are_escaped() {
        let m = parse(MSG).unwrap();
        let a = ack(&m, &Outcome::error("a|b^c&d~e\\f"));
        let p = parse(&a).unwrap();
        assert_eq!(read_ack(&p).unwrap().1, "a|b^c&d~e\\f");
    }
}
