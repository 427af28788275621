//! Deterministic robustness test: mutated, truncated and random inputs never make the
//! parser, the converter or the ACK builder panic, and every successful conversion is
//! JSON that serialises. (The cargo-fuzz target in `fuzz/` explores further.)

use salus_hl7v2::{ack, ack_unparsed, convert, parse, Outcome};

mod common;
use common::SEEDS;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to ER7: delimiters, escapes, terminators, digits, signs, framing.
const INTERESTING: &[u8] = b"|^~\\&#\r\n0123456789+-.XFSTRE HMSPOBXZ\"\x0b\x1c\x00\xff\xc3";

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            1 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            3 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            4 if !v.is_empty() => {
                // Duplicate a slice (repeats segments and fields).
                let a = rng.below(v.len());
                let b = (a + rng.below(64)).min(v.len());
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            5 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = (rng.next() & 0xff) as u8;
            }
            _ => {
                // Splice in part of another seed.
                let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
                let a = rng.below(other.len());
                let b = (a + rng.below(200)).min(other.len());
                let at = rng.below(v.len() + 1);
                v.splice(at..at, other[a..b].iter().copied());
            }
        }
    }
    v
}

fn exercise(bytes: &[u8]) {
    let text = salus_hl7v2::mllp::decode_text(bytes);
    match parse(&text) {
        Ok(m) => {
            let _ = m.to_er7();
            for seg in m.segments() {
                for n in 0..seg.field_count() + 2 {
                    for rep in m.field(seg, n).repetitions() {
                        let _ = rep.whole_text();
                        for c in 0..4 {
                            let _ = rep.component(c).sub(2);
                        }
                    }
                }
            }
            match convert(&m) {
                Ok(c) => {
                    let s = serde_json::to_string(&c.bundle).expect("bundle serialises");
                    assert!(s.contains("\"transaction\""));
                    let _ = ack(&m, &Outcome::accept_with_warnings(&c.warnings));
                }
                Err(e) => {
                    let a = ack(&m, &Outcome::from_convert_error(&e));
                    assert!(parse(&a).is_ok(), "an ACK must parse: {a:?}");
                }
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(parse(&ack_unparsed(&e)).is_ok());
        }
    }
    // The codec too.
    let mut codec = salus_hl7v2::MllpCodec::new(4096);
    let mut buf = bytes::BytesMut::from(bytes);
    use tokio_util::codec::Decoder;
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
}

#[test]
fn seeds_convert() {
    for (i, s) in SEEDS.iter().enumerate() {
        let m = parse(s).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        if i + 1 < SEEDS.len() {
            convert(&m).unwrap_or_else(|e| panic!("seed {i}: {e}"));
        }
    }
}

#[test]
fn mutated_messages_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut parsed = 0usize;
    let iterations = 20_000;
    for _ in 0..iterations {
        let seed = SEEDS[rng.below(SEEDS.len())].as_bytes();
        let input = mutate(&mut rng, seed);
        if std::str::from_utf8(&input).is_ok_and(|t| parse(t).is_ok()) {
            parsed += 1;
        }
        exercise(&input);
    }
    println!("{iterations} mutated inputs, {parsed} still parsed");
    assert!(
        parsed > iterations / 10,
        "mutations too destructive: {parsed}"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x0bad_cafe_f00d_beef);
    for _ in 0..5_000 {
        let len = rng.below(300);
        let mut v: Vec<u8> = (0..len)
            .map(|_| INTERESTING[rng.below(INTERESTING.len())])
            .collect();
        if rng.below(2) == 0 {
            let mut m = b"MSH|^~\\&|".to_vec();
            m.append(&mut v);
            v = m;
        }
        exercise(&v);
    }
}

#[test]
fn every_truncation_never_panics() {
    for s in SEEDS {
        let b = s.as_bytes();
        for n in 0..=b.len() {
            exercise(&b[..n]);
        }
    }
}
