//! HL7 v2 for Salus: ER7 parsing, MLLP transport and conversion of v2 messages into
//! FHIR R4 transaction Bundles.
//!
//! **Owns**: the ER7 parser ([`parse`], [`Message`]), the mapping of v2 messages to FHIR
//! ([`convert`], [`convert_text`], [`convert_for_template`] → [`Conversion`]), ACK
//! construction ([`ack()`], [`Outcome`]) and the MLLP codec, server and client
//! ([`mllp::serve`], [`mllp::send`]).
//!
//! **Must not touch**: storage, the FHIR service, HTTP or configuration. Conversion
//! produces a Bundle (JSON) and the caller runs it through `FhirService::process_bundle`
//! as one transaction; the MLLP server calls a [`MessageHandler`] supplied by the binary
//! and only builds and sends the ACK. Nothing here writes to a database or logs patient
//! data.
//!
//! ## Why our own parser
//! The `hl7-parser` crate (Apache-2.0, 0.3) was judged from its documentation and API: it
//! parses the structure well, but needs a separate entry point for LF-separated segments,
//! builds on `nom` 7 (not otherwise in our dependency tree), reports errors by position
//! rather than by segment and field, converts timestamps only into chrono/time/jiff
//! values (we need v2 precision → FHIR precision), and its README disclaims correctness;
//! none of the v2-to-FHIR data-type work is there. What we need
//! — MSH-declared delimiters, escapes, segment terminators CR/LF/CRLF, errors naming the
//! segment and field, and a never-panic guarantee we can fuzz ourselves — is a few
//! hundred lines ([`parser`]), so the crate keeps no parser dependency.
//!
//! ## Quick use
//! ```
//! let msg = "MSH|^~\\&|LAB|H|EHR|H|20240102030405+0100||ORU^R01^ORU_R01|42|P|2.5.1\r\
//!            PID|1||123^^^H&1.2.3&ISO^MR||DOE^JANE||19800101|F\r\
//!            OBR|1||F1^LAB|2093-3^Cholesterol^LN|||20240102030000+0100|||||||||||||||20240102040000+0100|||F\r\
//!            OBX|1|NM|2093-3^Cholesterol^LN||187|mg/dL^mg/dL^UCUM|<200|N|||F\r";
//! let conv = salus_hl7v2::convert_text(msg).unwrap();
//! assert_eq!(conv.control_id, "42");
//! assert_eq!(conv.bundle["type"], "transaction");
//! let m = salus_hl7v2::parse(msg).unwrap();
//! let ack = salus_hl7v2::ack(&m, &salus_hl7v2::Outcome::accept());
//! assert!(ack.contains("MSA|AA|42"));
//! ```

pub mod ack;
pub mod convert;
mod datatypes;
pub mod mllp;
pub mod parser;
pub mod tables;

pub use ack::{ack, ack_unparsed, read_ack, AckCode, AckError, ErrorSeverity, Outcome};
pub use convert::{
    convert, convert_for_template, convert_text, convert_with, relink_references, Conversion,
    ConvertError, ConvertOptions, FollowUp, RELINK_TYPES, SUPPORTED,
};
pub use mllp::{serve, MessageHandler, MllpCodec, MllpError};
pub use parser::{parse, Delimiters, Message, MessageType, ParseError, Segment};
