//! The shared sample messages (`../shared/data/hl7v2/messages`): every one parses, every
//! one of a supported type converts into a Bundle the Salus validator accepts, and the
//! conversions are compared with the reference conversions in `expected/` (another
//! converter's output) on the essentials. Prints agreement per message type.
//!
//! The shared folder is found through `SALUS_SHARED_DIR`, else `<repo>/../shared`; when
//! absent the tests print `SKIPPED` and pass, unless `SALUS_REQUIRE_SHARED` is set.

use salus_hl7v2::mllp::decode_text;
use salus_hl7v2::{convert, parse, ConvertError, SUPPORTED};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn shared_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SALUS_SHARED_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    };
    let data = dir.join("data/hl7v2");
    if data.join("messages").is_dir() {
        return Some(data);
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "SALUS_REQUIRE_SHARED is set but {} was not found",
            data.display()
        );
    }
    println!(
        "SKIPPED: shared HL7 v2 samples not found at {}",
        data.display()
    );
    None
}

fn messages(data: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(data.join("messages"))
        .expect("messages folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .collect();
    paths.sort();
    for p in paths {
        let bytes = std::fs::read(&p).expect("read message");
        let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
        out.push((stem, decode_text(&bytes).into_owned()));
    }
    out
}

#[test]
fn all_samples_parse() {
    let Some(data) = shared_dir() else { return };
    let msgs = messages(&data);
    assert!(
        msgs.len() >= 100,
        "expected the sample set, found {}",
        msgs.len()
    );
    let mut failures = Vec::new();
    for (name, text) in &msgs {
        match parse(text) {
            Ok(m) => assert!(m.segments().len() >= 2, "{name}: only MSH"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!(
        "parsed {}/{} sample messages",
        msgs.len() - failures.len(),
        msgs.len()
    );
    assert!(
        failures.is_empty(),
        "parse failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn supported_samples_convert_to_valid_fhir() {
    let Some(data) = shared_dir() else { return };
    let msgs = messages(&data);
    let mut failures = Vec::new();
    let mut converted = 0;
    let mut unsupported = BTreeMap::<String, usize>::new();
    for (name, text) in &msgs {
        let m = parse(text).expect("parses");
        let mt = m.message_type();
        let key = format!("{}_{}", mt.code, mt.trigger);
        match convert(&m) {
            Ok(c) => {
                assert!(SUPPORTED.contains(&key.as_str()));
                converted += 1;
                let issues = salus_fhir::validate::validate_resource(&c.bundle);
                let errors: Vec<String> = issues
                    .iter()
                    .filter(|i| i.is_error())
                    .map(|i| format!("{:?} {}", i.expression, i.diagnostics))
                    .collect();
                if !errors.is_empty() {
                    failures.push(format!("{name} ({key}): {}", errors.join("; ")));
                }
            }
            Err(ConvertError::Unsupported { .. }) => {
                assert!(
                    !SUPPORTED.contains(&key.as_str()),
                    "{name}: {key} is supported"
                );
                *unsupported.entry(key).or_default() += 1;
            }
            Err(e) => failures.push(format!("{name} ({key}): {e}")),
        }
    }
    println!(
        "converted {converted} sample messages of supported types; unsupported types: {unsupported:?}"
    );
    assert!(converted >= 40, "only {converted} converted");
    assert!(
        failures.is_empty(),
        "conversion failures:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Semantic comparison with the reference conversions.

/// The resource types compared (the ones this converter aims to produce).
const COMPARED_TYPES: &[&str] = &[
    "Patient",
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "ServiceRequest",
    "Immunization",
    "Appointment",
    "DocumentReference",
    "AllergyIntolerance",
    "Condition",
];

fn resources(bundle: &Value) -> Vec<&Value> {
    bundle["entry"]
        .as_array()
        .map(|a| a.iter().map(|e| &e["resource"]).collect())
        .unwrap_or_default()
}

fn of_type<'a>(rs: &[&'a Value], t: &str) -> Vec<&'a Value> {
    rs.iter()
        .copied()
        .filter(|r| r["resourceType"] == t)
        .collect()
}

/// Seconds since the epoch (UTC) of a FHIR dateTime with time and zone; the date for
/// the others.
fn instant_key(s: &str) -> String {
    let parse = || -> Option<i64> {
        let (date, rest) = s.split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
        let (time, offset) = if let Some(t) = rest.strip_suffix('Z') {
            (t, 0)
        } else {
            let i = rest.rfind(['+', '-'])?;
            let (t, o) = rest.split_at(i);
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            (
                t,
                sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?),
            )
        };
        let mut t = time.split(':');
        let (h, mi) = (
            t.next()?.parse::<i64>().ok()?,
            t.next()?.parse::<i64>().ok()?,
        );
        let sec = t
            .next()
            .and_then(|x| x.split('.').next()?.parse::<i64>().ok())
            .unwrap_or(0);
        // Days from civil (Howard Hinnant's algorithm).
        let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * m2 + 2) / 5 + dd - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + h * 3600 + mi * 60 + sec - offset * 60)
    };
    match parse() {
        Some(n) => format!("@{n}"),
        None => s.to_string(),
    }
}

/// Normalised decimal text (`1.50` and `1.5` compare equal).
fn num_key(v: &Value) -> String {
    let s = v.to_string();
    match s.parse::<f64>() {
        Ok(f) => format!("{f}"),
        Err(_) => s,
    }
}

fn str_set(values: impl Iterator<Item = String>) -> BTreeSet<String> {
    values.collect()
}

fn identifier_values(p: &Value) -> BTreeSet<String> {
    str_set(
        p["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["value"].as_str().map(str::to_owned)),
    )
}

fn names(p: &Value) -> BTreeSet<String> {
    str_set(p["name"].as_array().into_iter().flatten().map(|n| {
        let given: Vec<&str> = n["given"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        // Family and first given name: the reference also appends XPN-15 (called-by) to
        // the given names, which the v2-to-FHIR XPN map does not.
        format!(
            "{}|{}",
            n["family"].as_str().unwrap_or(""),
            given.first().copied().unwrap_or("")
        )
    }))
}

fn first_code(cc: &Value) -> String {
    cc["coding"][0]["code"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| cc["text"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn obs_key(o: &Value) -> String {
    let code = first_code(&o["code"]);
    let value = if let Some(q) = o.get("valueQuantity") {
        format!(
            "{} {}",
            num_key(&q["value"]),
            q["unit"].as_str().or(q["code"].as_str()).unwrap_or("")
        )
    } else if let Some(s) = o.get("valueString") {
        s.as_str().unwrap_or("").trim().to_string()
    } else if let Some(cc) = o.get("valueCodeableConcept") {
        first_code(cc)
    } else if let Some(d) = o.get("valueDateTime") {
        instant_key(d.as_str().unwrap_or(""))
    } else if o.get("valueRange").is_some() || o.get("valueRatio").is_some() {
        "range/ratio".into()
    } else {
        String::new()
    };
    format!("{code} = {value}")
}

#[derive(Default)]
struct Tally {
    messages: usize,
    checks: usize,
    agree: usize,
    disagreements: Vec<String>,
}

impl Tally {
    fn check<T: PartialEq + std::fmt::Debug>(&mut self, msg: &str, what: &str, ours: T, theirs: T) {
        self.checks += 1;
        if ours == theirs {
            self.agree += 1;
        } else {
            self.disagreements.push(format!(
                "{msg}: {what}: ours {ours:?}, reference {theirs:?}"
            ));
        }
    }
}

fn expected_path(data: &Path, stem: &str) -> Option<PathBuf> {
    let dirs = std::fs::read_dir(data.join("expected")).ok()?;
    for d in dirs.flatten() {
        let p = d.path().join(format!("{stem}-expected.json"));
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

#[test]
fn agreement_with_reference_conversions() {
    let Some(data) = shared_dir() else { return };
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    for (stem, text) in messages(&data) {
        let Ok(m) = parse(&text) else { continue };
        let mt = m.message_type();
        let key = format!("{}_{}", mt.code, mt.trigger);
        let Ok(conv) = convert(&m) else { continue };
        let Some(path) = expected_path(&data, &stem) else {
            continue;
        };
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read expected"))
                .expect("expected JSON");
        let ours = resources(&conv.bundle);
        let theirs = resources(&reference);
        let t = tallies.entry(key).or_default();
        t.messages += 1;
        let types = |rs: &[&Value]| -> BTreeSet<String> {
            rs.iter()
                .filter_map(|r| r["resourceType"].as_str())
                .filter(|t| COMPARED_TYPES.contains(t))
                .map(str::to_owned)
                .collect()
        };
        t.check(&stem, "resource types", types(&ours), types(&theirs));
        let (op, tp) = (of_type(&ours, "Patient"), of_type(&theirs, "Patient"));
        if let (Some(o), Some(r)) = (op.first(), tp.first()) {
            // Our PID-3 identifiers must all be among the reference's (which also folds in
            // identifiers from other segments).
            let (oi, ri) = (identifier_values(o), identifier_values(r));
            t.check(
                &stem,
                "patient identifiers",
                oi.is_subset(&ri) && !oi.is_empty(),
                true,
            );
            // Our names (PID-5, PID-9) must all be among the reference's (which also adds
            // guarantor / insured names when they are the patient).
            let (on, rn) = (names(o), names(r));
            t.check(
                &stem,
                "patient names",
                on.is_subset(&rn) && !on.is_empty(),
                true,
            );
            t.check(&stem, "birthDate", o.get("birthDate"), r.get("birthDate"));
            t.check(&stem, "gender", o.get("gender"), r.get("gender"));
        }
        let (oe, te) = (of_type(&ours, "Encounter"), of_type(&theirs, "Encounter"));
        if let (Some(o), Some(r)) = (oe.first(), te.first()) {
            t.check(
                &stem,
                "encounter class",
                o["class"]["code"].clone(),
                r["class"]["code"].clone(),
            );
            let period = |e: &Value, k: &str| e["period"][k].as_str().map(instant_key);
            t.check(
                &stem,
                "encounter period.start",
                period(o, "start"),
                period(r, "start"),
            );
            t.check(
                &stem,
                "encounter period.end",
                period(o, "end"),
                period(r, "end"),
            );
            t.check(
                &stem,
                "encounter status",
                o["status"].clone(),
                r["status"].clone(),
            );
        }
        // Observations: every code we produce is among the reference's (which also makes
        // Observations of PDA, ACC and MDM document OBX), and for each shared code with
        // a value on both sides, value and unit agree.
        let obs = |rs: &[&Value]| -> BTreeMap<String, Vec<String>> {
            let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for o in of_type(rs, "Observation") {
                let key = obs_key(o);
                let (code, value) = key.split_once(" = ").unwrap_or((&key, ""));
                m.entry(code.to_string())
                    .or_default()
                    .push(value.trim().to_string());
            }
            m
        };
        let (oo, to) = (obs(&ours), obs(&theirs));
        if !oo.is_empty() {
            let codes: BTreeSet<&String> = oo.keys().collect();
            let missing: Vec<&&String> = codes.iter().filter(|c| !to.contains_key(**c)).collect();
            t.check(
                &stem,
                "observation codes not in the reference",
                missing,
                vec![],
            );
            for (code, ovals) in &oo {
                let Some(tvals) = to.get(code) else { continue };
                let (mut a, mut b): (Vec<&String>, Vec<&String>) = (
                    ovals.iter().filter(|v| !v.is_empty()).collect(),
                    tvals.iter().filter(|v| !v.is_empty()).collect(),
                );
                if a.is_empty() || b.is_empty() {
                    continue;
                }
                a.sort();
                b.sort();
                t.check(&stem, &format!("observation {code} value/unit"), a, b);
            }
        }
    }
    println!("\nAgreement with the reference conversions (essentials):");
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>7}",
        "type", "messages", "checks", "agree", "%"
    );
    let (mut all_checks, mut all_agree) = (0, 0);
    for (k, t) in &tallies {
        all_checks += t.checks;
        all_agree += t.agree;
        println!(
            "{:<10} {:>8} {:>8} {:>8} {:>6.1}%",
            k,
            t.messages,
            t.checks,
            t.agree,
            100.0 * t.agree as f64 / t.checks.max(1) as f64
        );
    }
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>6.1}%",
        "total",
        tallies.values().map(|t| t.messages).sum::<usize>(),
        all_checks,
        all_agree,
        100.0 * all_agree as f64 / all_checks.max(1) as f64
    );
    println!("\nDisagreements:");
    for t in tallies.values() {
        for d in &t.disagreements {
            println!("  {d}");
        }
    }
    assert!(all_checks > 100, "too few comparisons: {all_checks}");
}
