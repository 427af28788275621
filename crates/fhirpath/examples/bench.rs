//! Rough evaluation timing: parse once, evaluate many times, print ns per evaluation.
//!
//! `cargo run --release -p salus-fhirpath --example bench [iterations] [filter]`
//! (no assertions; numbers depend on the machine).

use salus_fhirpath::{parse, Env};
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let patient: serde_json::Value = serde_json::from_str(
        r#"{
          "resourceType": "Patient", "id": "example", "active": true,
          "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
          "name": [
            {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"]},
            {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}
          ],
          "telecom": [{"use": "home"}, {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
          "gender": "male", "birthDate": "1974-12-25",
          "address": [{"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
          "managingOrganization": {"reference": "Organization/1"}
        }"#,
    )
    .expect("valid JSON");
    let filter = std::env::args().nth(2).unwrap_or_default();
    let env = Env::new();
    let cases = [
        "Patient.name.where(use='official').family",
        "Patient.name.given",
        "Patient.birthDate",
        "Patient.birthDate < @2000-01-01",
        "Patient.telecom.where(system = 'phone').value",
        "Patient.identifier.where(system = 'urn:oid:1.2.36.146.595.217.0.1').value.exists()",
        "Patient.managingOrganization.where(resolve() is Organization)",
        "Patient.name.select(given.first() + ' ' + family).join(', ')",
        "descendants().count()",
    ];
    println!("{iterations} evaluations each");
    for src in cases.iter().filter(|c| c.contains(filter.as_str())) {
        let expr = parse(src).expect("parses");
        // Warm up (builds the definition tables once).
        for _ in 0..1_000 {
            black_box(expr.evaluate(&patient, &env).map(|r| r.len()).unwrap_or(0));
        }
        let start = Instant::now();
        let mut total = 0usize;
        for _ in 0..iterations {
            total += black_box(expr.evaluate(black_box(&patient), &env))
                .map(|r| r.len())
                .unwrap_or(0);
        }
        let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
        println!("{ns:>9.0} ns/eval  ({} items)  {src}", total / iterations);
    }
    let start = Instant::now();
    for _ in 0..iterations / 10 {
        black_box(parse(black_box(cases[0])).is_ok());
    }
    let ns = start.elapsed().as_nanos() as f64 / (iterations / 10).max(1) as f64;
    println!("{ns:>9.0} ns/parse  {}", cases[0]);
}
