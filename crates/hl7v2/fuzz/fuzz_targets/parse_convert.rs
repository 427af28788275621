//! Fuzz the parser, the converter, the ACK builder and the MLLP decoder:
//! `cargo +nightly fuzz run parse_convert fuzz/corpus/parse` (from `crates/hl7v2`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use salus_hl7v2::{ack, ack_unparsed, convert, parse, Outcome};

fuzz_target!(|data: &[u8]| {
    let text = salus_hl7v2::mllp::decode_text(data);
    match parse(&text) {
        Ok(m) => {
            let _ = m.to_er7();
            match convert(&m) {
                Ok(c) => {
                    let _ = ack(&m, &Outcome::accept_with_warnings(&c.warnings));
                }
                Err(e) => {
                    let _ = ack(&m, &Outcome::from_convert_error(&e));
                }
            }
        }
        Err(e) => {
            let _ = ack_unparsed(&e);
        }
    }
});
