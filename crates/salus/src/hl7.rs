//! HL7 v2 intake: the MLLP [`MessageHandler`] of `salus serve`, and the `salus convert`
//! and `salus hl7 send` commands.
//!
//! Every message goes through the FHIR service like any other write: it is converted
//! (`salus_hl7v2::convert_with`) into a transaction Bundle, which `process_bundle`
//! validates, indexes and commits as one transaction; only then is the ACK sent.
//!
//! **Replay and audit**: every received message is stored as a FHIR `Binary`
//! (`contentType` [`ER7_CONTENT_TYPE`], `data` the message text base64-encoded as UTF-8)
//! tagged in `meta.tag` with the message type ([`TAG_MESSAGE_TYPE`], code `ADT_A01`), the
//! control id MSH-10 ([`TAG_CONTROL_ID`]) and the ACK code sent ([`TAG_ACK`]: `AA`, `AE`
//! or `AR`), so `GET Binary?_tag=urn:salus:hl7v2:ack|AE` lists the messages to fix and
//! resend. A message that converts is stored *inside* its transaction (one commit; the
//! Provenance of the Bundle names the Binary as its source entity), so a Binary tagged
//! `AA` exists exactly when its resources were written. A message that fails to convert
//! or whose transaction is rejected is stored on its own, tagged `AE`/`AR`. When storage
//! itself fails nothing can be stored: the ACK is `AR` asking the sender to resend.
//!
//! Logs name the message type, control id and outcome, never message contents (PHI).

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use base64::Engine;
use salus_api::Hl7Metrics;
use salus_hl7v2::{
    convert_with, relink_references, AckCode, ConvertError, ConvertOptions, FollowUp, Message,
    MessageHandler, Outcome,
};
use salus_service::{parse_pairs, FhirError, FhirService, Return};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// `Binary.contentType` of a stored message (ER7, the pipe-and-hat encoding).
pub const ER7_CONTENT_TYPE: &str = "x-application/hl7-v2+er7";
/// `meta.tag` system whose code is the message type as `CODE_TRIGGER` (`ADT_A01`).
pub const TAG_MESSAGE_TYPE: &str = "urn:salus:hl7v2:message-type";
/// `meta.tag` system whose code is the control id (MSH-10).
pub const TAG_CONTROL_ID: &str = "urn:salus:hl7v2:control-id";
/// `meta.tag` system whose code is the acknowledgement code sent (`AA`, `AE`, `AR`).
pub const TAG_ACK: &str = "urn:salus:hl7v2:ack";

/// The MLLP message handler of `salus serve`.
pub struct Hl7Handler {
    service: FhirService,
    options: ConvertOptions,
    metrics: Arc<Hl7Metrics>,
}

impl Hl7Handler {
    pub fn new(service: FhirService, options: ConvertOptions, metrics: Arc<Hl7Metrics>) -> Self {
        Hl7Handler {
            service,
            options,
            metrics,
        }
    }
}

/// A FHIR `code` from free text (codes have no leading, trailing or double whitespace);
/// `None` when nothing is left.
fn code(s: &str) -> Option<String> {
    let c = s.split_whitespace().collect::<Vec<_>>().join(" ");
    (!c.is_empty()).then_some(c)
}

/// The `Binary` holding a received message, tagged as described in the module docs.
pub fn message_binary(raw: &str, message: &Message, ack: AckCode) -> Value {
    let mt = message.message_type();
    let mut tags = vec![];
    if let Some(c) = code(&format!("{}_{}", mt.code, mt.trigger)) {
        tags.push(json!({"system": TAG_MESSAGE_TYPE, "code": c, "display": mt.to_string()}));
    }
    if let Some(c) = code(&message.control_id()) {
        tags.push(json!({"system": TAG_CONTROL_ID, "code": c}));
    }
    tags.push(json!({"system": TAG_ACK, "code": ack.as_str()}));
    json!({
        "resourceType": "Binary",
        "meta": {"tag": tags},
        "contentType": ER7_CONTENT_TYPE,
        "data": base64::engine::general_purpose::STANDARD.encode(raw.as_bytes()),
    })
}

/// Whether a service error is the message's fault (AE: fix and resend) rather than the
/// server's (AR: resend unchanged later).
fn is_content_error(e: &FhirError) -> bool {
    match e {
        FhirError::Invalid(_)
        | FhirError::UnknownType(_)
        | FhirError::NotFound(_)
        | FhirError::Gone(_)
        | FhirError::PreconditionFailed(_)
        | FhirError::NotSupported(_)
        | FhirError::Unauthorized(_)
        | FhirError::Forbidden(_) => true,
        FhirError::Conflict(_) | FhirError::Busy(_) | FhirError::Internal(_) => false,
    }
}

/// A short, PHI-free name of an error for the log.
fn error_kind(e: &FhirError) -> &'static str {
    match e {
        FhirError::Invalid(_) => "invalid",
        FhirError::UnknownType(_) => "unknown-type",
        FhirError::NotFound(_) => "not-found",
        FhirError::Gone(_) => "gone",
        FhirError::PreconditionFailed(_) => "precondition-failed",
        FhirError::NotSupported(_) => "not-supported",
        FhirError::Conflict(_) => "conflict",
        FhirError::Busy(_) => "busy",
        FhirError::Unauthorized(_) => "unauthorized",
        FhirError::Forbidden(_) => "forbidden",
        FhirError::Internal(_) => "internal",
    }
}

/// Where a conversion error is (segment and field), without the offending value.
fn convert_error_location(e: &ConvertError) -> String {
    match e {
        ConvertError::Parse(_) => "parse".into(),
        ConvertError::Unsupported { .. } | ConvertError::TemplateMismatch { .. } => "MSH-9".into(),
        ConvertError::InvalidValue { location, .. }
        | ConvertError::MissingValue { location, .. } => location.clone(),
        ConvertError::MissingSegment { segment, .. } => (*segment).to_string(),
    }
}

const RESEND: &str = "the server could not store the message now; resend it later";

impl Hl7Handler {
    async fn process(&self, raw: &str, message: &Message) -> Outcome {
        let conv = match convert_with(message, &self.options) {
            Ok(c) => c,
            Err(e) => {
                let outcome = Outcome::from_convert_error(&e);
                tracing::warn!(
                    location = %convert_error_location(&e),
                    "HL7 v2 message not converted"
                );
                self.store_alone(raw, message, outcome.code).await;
                return outcome;
            }
        };
        let mut bundle = conv.bundle;
        let binary_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        if let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) {
            // The Provenance names the stored message as its source.
            for e in entries.iter_mut() {
                if e["resource"]["resourceType"] == "Provenance" {
                    if let Some(what) = e["resource"]["entity"][0]["what"].as_object_mut() {
                        what.insert("reference".into(), json!(binary_url));
                    }
                }
            }
            entries.push(json!({
                "fullUrl": binary_url,
                "resource": message_binary(raw, message, AckCode::Accept),
                "request": {"method": "POST", "url": "Binary"},
            }));
        }
        if let Err(e) = self
            .service
            .process_bundle(bundle, Return::Minimal, "")
            .await
        {
            return if is_content_error(&e) {
                tracing::warn!(error = error_kind(&e), "HL7 v2 transaction rejected");
                self.store_alone(raw, message, AckCode::Error).await;
                Outcome::error(e.to_string())
            } else {
                tracing::error!(error = error_kind(&e), "HL7 v2 transaction failed");
                if let FhirError::Internal(detail) = &e {
                    tracing::debug!(detail = %detail, "internal error");
                }
                Outcome::reject(RESEND)
            };
        }
        for f in &conv.follow_up {
            if let Err(e) = self.follow_up(f).await {
                // The merge committed; a resent A40 is idempotent and relinks again.
                tracing::error!(error = error_kind(&e), "A40 relinking failed");
                return Outcome::reject(
                    "the merge was stored but relinking the merged patient's resources failed; resend the message",
                );
            }
        }
        Outcome::accept_with_warnings(&conv.warnings)
    }

    /// Store a message that was not applied, tagged with the ACK code it got.
    async fn store_alone(&self, raw: &str, message: &Message, ack: AckCode) {
        let binary = message_binary(raw, message, ack);
        if let Err(e) = self.service.create("Binary", binary, None).await {
            tracing::error!(error = error_kind(&e), "cannot store the HL7 v2 message");
        }
    }

    /// The one Patient `criteria` (`Patient?identifier=…`) matches.
    async fn resolve(&self, reference: &str) -> salus_service::Result<Option<String>> {
        let (rtype, query) = reference.split_once('?').unwrap_or((reference, ""));
        let mut pairs = parse_pairs(query);
        pairs.push(("_count".into(), "2".into()));
        let found = self.service.search(rtype, &pairs, false).await?;
        Ok(match found.page.entries.as_slice() {
            [one] => Some(format!("{rtype}/{}", one.id)),
            _ => None,
        })
    }

    /// A40: point every resource of `resource_types` that references the merged patient
    /// at the survivor, in one transaction through the service.
    async fn follow_up(&self, f: &FollowUp) -> salus_service::Result<()> {
        let FollowUp::RelinkPatient {
            from,
            to,
            resource_types,
        } = f;
        let (Some(old), Some(new)) = (self.resolve(from).await?, self.resolve(to).await?) else {
            tracing::warn!("A40: merged or surviving patient not found once; nothing relinked");
            return Ok(());
        };
        if old == new {
            return Ok(());
        }
        let mut entries = vec![];
        for rtype in resource_types.iter() {
            let pairs = vec![
                ("patient".to_string(), old.clone()),
                (
                    "_count".to_string(),
                    self.service.limits().max_count.to_string(),
                ),
            ];
            let found = match self.service.search(rtype, &pairs, false).await {
                Ok(f) => f,
                // a type without a `patient` parameter has nothing to relink
                Err(FhirError::Invalid(_)) | Err(FhirError::NotSupported(_)) => continue,
                Err(e) => return Err(e),
            };
            for r in found.page.entries {
                let Some(body) = r.body.as_deref() else {
                    continue;
                };
                let mut v: Value =
                    serde_json::from_str(body).map_err(|e| FhirError::Internal(e.to_string()))?;
                if relink_references(&mut v, &old, &new) > 0 {
                    entries.push(json!({
                        "resource": v,
                        "request": {
                            "method": "PUT",
                            "url": format!("{rtype}/{}", r.id),
                            "ifMatch": format!("W/\"{}\"", r.version),
                        },
                    }));
                }
            }
        }
        let n = entries.len();
        if n > 0 {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            self.service
                .process_bundle(bundle, Return::Minimal, "")
                .await?;
        }
        tracing::info!(resources = n, "A40: relinked to the surviving patient");
        Ok(())
    }
}

#[async_trait]
impl MessageHandler for Hl7Handler {
    async fn handle(&self, raw: &str, message: &Message) -> Outcome {
        let start = Instant::now();
        let outcome = self.process(raw, message).await;
        let micros = start.elapsed().as_micros() as u64;
        self.metrics.record(outcome.code, micros);
        let mt = message.message_type();
        let control_id = message.control_id();
        let warnings = outcome.errors.len();
        match outcome.code {
            AckCode::Accept => tracing::info!(
                message_type = %mt,
                control_id = %control_id,
                ack = "AA",
                warnings,
                micros,
                "HL7 v2 message stored"
            ),
            code => tracing::warn!(
                message_type = %mt,
                control_id = %control_id,
                ack = code.as_str(),
                micros,
                "HL7 v2 message not applied"
            ),
        }
        outcome
    }
}

/// Split a file's text into messages: a message starts at a line beginning with `MSH`
/// or after a blank line. Segment separators may be CR, LF or CRLF.
pub fn split_messages(text: &str) -> Vec<String> {
    let text = text.trim_start_matches('\u{feff}');
    let mut out = vec![];
    let mut current = String::new();
    let flush = |current: &mut String, out: &mut Vec<String>| {
        if !current.trim().is_empty() {
            out.push(std::mem::take(current));
        }
        current.clear();
    };
    for line in text.replace("\r\n", "\n").split(['\r', '\n']) {
        // MLLP framing bytes left in a capture file are not part of the message.
        let line = line.trim_matches(|c| c == '\u{b}' || c == '\u{1c}');
        if line.trim().is_empty() {
            flush(&mut current, &mut out);
            continue;
        }
        if line.starts_with("MSH") {
            flush(&mut current, &mut out);
        }
        current.push_str(line);
        current.push('\r');
    }
    flush(&mut current, &mut out);
    out
}

fn read_messages(file: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let text = salus_hl7v2::mllp::decode_text(&bytes);
    let messages = split_messages(&text);
    if messages.is_empty() {
        bail!("{}: no HL7 v2 message in the file", file.display());
    }
    Ok(messages)
}

/// `salus convert FILE... [--out DIR]`: print each message's Bundle, or write one file
/// per message into `out`. Returns false when a message failed (each is reported).
pub fn convert_cli(
    files: &[PathBuf],
    out: Option<&Path>,
    options: &ConvertOptions,
) -> Result<bool> {
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut ok = true;
    let mut written = 0;
    for file in files {
        let messages = match read_messages(file) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e:#}");
                ok = false;
                continue;
            }
        };
        let several = messages.len() > 1;
        for (i, text) in messages.iter().enumerate() {
            let name = if several {
                format!("{} (message {})", file.display(), i + 1)
            } else {
                file.display().to_string()
            };
            let conv = salus_hl7v2::parse(text)
                .map_err(ConvertError::from)
                .and_then(|m| convert_with(&m, options));
            let conv = match conv {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {name}: {e}");
                    ok = false;
                    continue;
                }
            };
            for w in &conv.warnings {
                eprintln!("warning: {name}: {w}");
            }
            let json = serde_json::to_string_pretty(&conv.bundle)?;
            match out {
                None => println!("{json}"),
                Some(dir) => {
                    let stem = file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "message".into());
                    let target = if several {
                        dir.join(format!("{stem}-{}.json", i + 1))
                    } else {
                        dir.join(format!("{stem}.json"))
                    };
                    std::fs::write(&target, json + "\n")
                        .with_context(|| format!("cannot write {}", target.display()))?;
                    written += 1;
                }
            }
        }
    }
    if let Some(dir) = out {
        eprintln!("wrote {written} Bundle(s) to {}", dir.display());
    }
    Ok(ok)
}

/// `salus hl7 send FILE... --to HOST:PORT`: send every message over MLLP and print each
/// ACK's code and text. Returns false unless every ACK is `AA`.
pub async fn send_cli(files: &[PathBuf], to: &str) -> Result<bool> {
    let mut all_aa = true;
    let (mut sent, mut accepted) = (0, 0);
    for file in files {
        let messages = match read_messages(file) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e:#}");
                all_aa = false;
                continue;
            }
        };
        for (i, text) in messages.iter().enumerate() {
            let control = salus_hl7v2::parse(text)
                .map(|m| m.control_id())
                .unwrap_or_default();
            let name = format!("{}#{} {}", file.display(), i + 1, control);
            let ack = salus_hl7v2::mllp::send(to, text)
                .await
                .map_err(|e| anyhow!("{name}: cannot send to {to}: {e}"))?;
            sent += 1;
            let read = salus_hl7v2::parse(&ack)
                .ok()
                .and_then(|m| salus_hl7v2::read_ack(&m));
            match read {
                Some((code, msg)) => {
                    println!("{name}: {} {msg}", code.as_str());
                    if code == AckCode::Accept {
                        accepted += 1;
                    } else {
                        all_aa = false;
                    }
                }
                None => {
                    println!("{name}: the answer is not an ACK");
                    all_aa = false;
                }
            }
        }
    }
    eprintln!("{sent} message(s) sent, {accepted} accepted (AA)");
    Ok(all_aa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_split_into_messages() {
        let two = "MSH|^~\\&|A\nPID|1\n\nMSH|^~\\&|B\r\nPID|2\r\n";
        assert_eq!(
            split_messages(two),
            vec!["MSH|^~\\&|A\rPID|1\r", "MSH|^~\\&|B\rPID|2\r"]
        );
        let adjacent = "MSH|1\rPID|1\rMSH|2\rPID|2\r";
        assert_eq!(split_messages(adjacent).len(), 2);
        assert!(split_messages("\n\n").is_empty());
    }

    #[test]
    fn binary_carries_type_control_id_and_ack() {
        let raw = "MSH|^~\\&|S|F|R|F|20240101||ADT^A01^ADT_A01|C 1|P|2.5\rPID|1||1^^^H^MR\r";
        let m = salus_hl7v2::parse(raw).unwrap();
        let b = message_binary(raw, &m, AckCode::Error);
        assert_eq!(b["contentType"], ER7_CONTENT_TYPE);
        let tags = b["meta"]["tag"].as_array().unwrap();
        assert_eq!(tags[0]["code"], "ADT_A01");
        assert_eq!(tags[1]["code"], "C 1");
        assert_eq!(tags[2]["code"], "AE");
        let data = base64::engine::general_purpose::STANDARD
            .decode(b["data"].as_str().unwrap())
            .unwrap();
        assert_eq!(data, raw.as_bytes());
        let issues = salus_fhir::validate::validate_resource(&b);
        assert!(issues.is_empty(), "{issues:?}");
    }
}
