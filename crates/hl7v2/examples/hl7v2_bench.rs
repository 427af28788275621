//! Parse + convert throughput on made-up messages (single thread):
//!
//!     cargo run --release -p salus-hl7v2 --example hl7v2_bench [-- SECONDS]
//!
//! Prints messages per second for parsing alone and for parse + convert (Bundle built as
//! JSON), per message kind and overall. The end-to-end MLLP path (socket, FHIR
//! transaction, commit) is measured separately by the server's benchmarks.

use std::time::{Duration, Instant};

const MESSAGES: &[(&str, &str)] = &[
    ("ADT^A01", "MSH|^~\\&|ADT|HOSP|EHR|HOSP|20240102030405+0100||ADT^A01^ADT_A01|C1|P|2.5.1\rEVN|A01|20240102030405\rPID|1||MRN1^^^HOSP&1.2.3&ISO^MR~999^^^SSA^SS||DOE^JANE^Q^JR^DR^^L||19800229|F|||1 MAIN ST^APT 2^TOWN^ST^12345^USA^H||^PRN^PH^^1^555^1234567|^WPN^PH^^^555^7654321|en^English^ISO639|M\rNK1|1|DOE^JOHN|SPO^Spouse^HL70063||^PRN^PH^^^555^1112222\rPV1|1|I|WARD^101^A^HOSP||||123^SMITH^ANNA^^^DR|||MED||||1|||456^JONES^BOB|IP|V100^^^HOSP^VN|||||||||||||||||||||||||20240102030000+0100\rAL1|1|DA|70618^Penicillin^RXNORM|SV|hives\rDG1|1||I10^Hypertension^I10|Hypertension|20240101|F\r"),
    ("ORU^R01", "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240102030405+0000||ORU^R01^ORU_R01|C2|P|2.5.1\rPID|1||MRN2^^^HOSP^MR||ROE^RICHARD||19700101|M\rORC|RE|P1^EHR|F1^LAB\rOBR|1|P1^EHR|F1^LAB|24331-1^Lipid panel^LN|||20240102010000|||||||||789^LAB^LINDA||||||20240102020000|||F\rOBX|1|NM|2093-3^Cholesterol^LN||187|mg/dL^mg/dL^UCUM|<200|N|||F\rOBX|2|NM|2571-8^Triglyceride^LN||150|mg/dL^mg/dL^UCUM|<150|H|||F\rOBX|3|NM|2085-9^HDL^LN||40|mg/dL^mg/dL^UCUM|>40|N|||F\rOBX|4|NM|13457-7^LDL^LN||117|mg/dL^mg/dL^UCUM|<130|N|||F\r"),
    ("VXU^V04", "MSH|^~\\&|IIS|HOSP|EHR|HOSP|20240102030405-0500||VXU^V04^VXU_V04|C6|P|2.5.1\rPID|1||MRN5^^^HOSP^MR||KOE^KIM||20200101|M\rORC|RE||IMM1^IIS\rRXA|0|1|20240102|20240102|08^HepB^CVX|0.5|mL^mL^UCUM||00^New^NIP001|654^NURSE^NORA|||||LOT1|20250101|MSD^Merck^MVX|||CP|A\rRXR|C28161^IM^NCIT|LD^Left deltoid^HL70163\r"),
];

fn rate(label: &str, text: &str, secs: f64, convert: bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut sink = 0usize;
    while Instant::now() < deadline {
        for _ in 0..100 {
            let m = salus_hl7v2::parse(text).expect("bench message parses");
            if convert {
                let c = salus_hl7v2::convert(&m).expect("bench message converts");
                sink += c.bundle["entry"].as_array().map_or(0, Vec::len);
            } else {
                sink += m.segments().len();
            }
            n += 1;
        }
    }
    let per_sec = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{label:<8} {:<16} {per_sec:>12.0} msg/s  ({} bytes/msg, checksum {sink})",
        if convert { "parse+convert" } else { "parse" },
        text.len()
    );
    per_sec
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let mut total = 0.0;
    for (label, text) in MESSAGES {
        rate(label, text, secs / 2.0, false);
        total += 1.0 / rate(label, text, secs, true);
    }
    println!(
        "mixed    parse+convert    {:>12.0} msg/s (harmonic mean)",
        MESSAGES.len() as f64 / total
    );
}
