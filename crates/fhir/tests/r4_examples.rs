//! Conformance: the validator against the official FHIR R4 examples and a bulk NDJSON sample.
//!
//! Reads `../shared/conformance/r4-examples/json/*.json` and
//! `../shared/data/bulk-10-patients/*.ndjson` relative to the workspace root; the
//! `SALUS_SHARED_DIR` environment variable overrides the shared folder. When a folder is
//! missing the test prints `SKIPPED` and passes (CI always has it).
//!
//! Every example must validate, except the allow-listed ones below, each of which has a real
//! defect per the specification; an allow-listed example that becomes valid fails the test
//! too, so the list never goes stale.

use salus_fhir::validate::validate_resource;
use salus_fhir::{Issue, IssueCode};
use serde_json::Value;
use std::path::PathBuf;

/// A real defect of an official example, and the text every error it causes must contain
/// (so a validator bug cannot hide behind an allow-listed file).
struct Defect {
    reason: &'static str,
    signature: &'static str,
}

/// The R4 build generated a Questionnaire per resource whose nested `display` items have no
/// `linkId`.
const NO_LINKID: Defect = Defect {
    reason: "generated Questionnaire: nested display items lack Questionnaire.item.linkId (1..1)",
    signature: "missing required element \"linkId\"",
};
const NO_BASE: Defect = Defect {
    reason: "SearchParameter for an extension without SearchParameter.base (1..*)",
    signature: "missing required element \"base\"",
};
const ID_TOO_LONG: Defect = Defect {
    reason: "SearchParameter.id has 67 characters; an id allows 1 to 64",
    signature: "invalid id value",
};
const NOT_A_RESOURCE: Defect = Defect {
    reason: "the package's build manifest, not a FHIR resource (no resourceType)",
    signature: "missing resourceType",
};

/// Official R4 examples with real defects: (file name, defect). Everything else must pass.
const KNOWN_DEFECTIVE: &[(&str, Defect)] = &[
    ("account-questionnaire.json", NO_LINKID),
    ("activitydefinition-questionnaire.json", NO_LINKID),
    ("actualgroup-questionnaire.json", NO_LINKID),
    ("adverseevent-questionnaire.json", NO_LINKID),
    ("allergyintolerance-questionnaire.json", NO_LINKID),
    ("appointment-questionnaire.json", NO_LINKID),
    ("appointmentresponse-questionnaire.json", NO_LINKID),
    ("auditevent-questionnaire.json", NO_LINKID),
    ("basic-questionnaire.json", NO_LINKID),
    ("binary-questionnaire.json", NO_LINKID),
    ("biologicallyderivedproduct-questionnaire.json", NO_LINKID),
    ("bmi-questionnaire.json", NO_LINKID),
    ("bodyheight-questionnaire.json", NO_LINKID),
    ("bodystructure-questionnaire.json", NO_LINKID),
    ("bodytemp-questionnaire.json", NO_LINKID),
    ("bodyweight-questionnaire.json", NO_LINKID),
    ("bp-questionnaire.json", NO_LINKID),
    ("bundle-questionnaire.json", NO_LINKID),
    ("capabilitystatement-questionnaire.json", NO_LINKID),
    ("careplan-questionnaire.json", NO_LINKID),
    ("careteam-questionnaire.json", NO_LINKID),
    ("catalog-questionnaire.json", NO_LINKID),
    ("catalogentry-questionnaire.json", NO_LINKID),
    ("cdshooksguidanceresponse-questionnaire.json", NO_LINKID),
    ("cdshooksrequestgroup-questionnaire.json", NO_LINKID),
    (
        "cdshooksserviceplandefinition-questionnaire.json",
        NO_LINKID,
    ),
    ("chargeitem-questionnaire.json", NO_LINKID),
    ("chargeitemdefinition-questionnaire.json", NO_LINKID),
    ("cholesterol-questionnaire.json", NO_LINKID),
    ("claim-questionnaire.json", NO_LINKID),
    ("claimresponse-questionnaire.json", NO_LINKID),
    ("clinicaldocument-questionnaire.json", NO_LINKID),
    ("clinicalimpression-questionnaire.json", NO_LINKID),
    ("codesystem-extensions-CodeSystem-author.json", NO_BASE),
    ("codesystem-extensions-CodeSystem-effective.json", NO_BASE),
    ("codesystem-extensions-CodeSystem-end.json", NO_BASE),
    ("codesystem-extensions-CodeSystem-keyword.json", NO_BASE),
    ("codesystem-extensions-CodeSystem-workflow.json", NO_BASE),
    ("codesystem-questionnaire.json", NO_LINKID),
    ("communication-questionnaire.json", NO_LINKID),
    ("communicationrequest-questionnaire.json", NO_LINKID),
    ("compartmentdefinition-questionnaire.json", NO_LINKID),
    ("composition-questionnaire.json", NO_LINKID),
    ("computableplandefinition-questionnaire.json", NO_LINKID),
    ("conceptmap-questionnaire.json", NO_LINKID),
    ("condition-questionnaire.json", NO_LINKID),
    ("consent-questionnaire.json", NO_LINKID),
    ("contract-questionnaire.json", NO_LINKID),
    ("coverage-questionnaire.json", NO_LINKID),
    ("coverageeligibilityrequest-questionnaire.json", NO_LINKID),
    ("coverageeligibilityresponse-questionnaire.json", NO_LINKID),
    ("cqf-questionnaire-questionnaire.json", NO_LINKID),
    ("cqllibrary-questionnaire.json", NO_LINKID),
    ("detectedissue-questionnaire.json", NO_LINKID),
    ("device-questionnaire.json", NO_LINKID),
    ("devicedefinition-questionnaire.json", NO_LINKID),
    ("devicemetric-questionnaire.json", NO_LINKID),
    ("devicemetricobservation-questionnaire.json", NO_LINKID),
    ("devicerequest-questionnaire.json", NO_LINKID),
    ("deviceusestatement-questionnaire.json", NO_LINKID),
    ("diagnosticreport-genetics-questionnaire.json", NO_LINKID),
    ("diagnosticreport-questionnaire.json", NO_LINKID),
    ("documentmanifest-questionnaire.json", NO_LINKID),
    ("documentreference-questionnaire.json", NO_LINKID),
    ("effectevidencesynthesis-questionnaire.json", NO_LINKID),
    ("elementdefinition-de-questionnaire.json", NO_LINKID),
    ("encounter-questionnaire.json", NO_LINKID),
    ("endpoint-questionnaire.json", NO_LINKID),
    ("enrollmentrequest-questionnaire.json", NO_LINKID),
    ("enrollmentresponse-questionnaire.json", NO_LINKID),
    ("episodeofcare-questionnaire.json", NO_LINKID),
    ("eventdefinition-questionnaire.json", NO_LINKID),
    ("evidence-questionnaire.json", NO_LINKID),
    ("evidencevariable-questionnaire.json", NO_LINKID),
    ("examplescenario-questionnaire.json", NO_LINKID),
    ("explanationofbenefit-questionnaire.json", NO_LINKID),
    ("familymemberhistory-genetic-questionnaire.json", NO_LINKID),
    ("familymemberhistory-questionnaire.json", NO_LINKID),
    ("flag-questionnaire.json", NO_LINKID),
    ("goal-questionnaire.json", NO_LINKID),
    ("graphdefinition-questionnaire.json", NO_LINKID),
    ("group-questionnaire.json", NO_LINKID),
    ("groupdefinition-questionnaire.json", NO_LINKID),
    ("guidanceresponse-questionnaire.json", NO_LINKID),
    ("hdlcholesterol-questionnaire.json", NO_LINKID),
    ("headcircum-questionnaire.json", NO_LINKID),
    ("healthcareservice-questionnaire.json", NO_LINKID),
    ("heartrate-questionnaire.json", NO_LINKID),
    ("hlaresult-questionnaire.json", NO_LINKID),
    ("imagingstudy-questionnaire.json", NO_LINKID),
    ("immunization-questionnaire.json", NO_LINKID),
    ("immunizationrecommendation-questionnaire.json", NO_LINKID),
    ("implementationguide-questionnaire.json", NO_LINKID),
    ("insuranceplan-questionnaire.json", NO_LINKID),
    ("invoice-questionnaire.json", NO_LINKID),
    ("ldlcholesterol-questionnaire.json", NO_LINKID),
    ("library-questionnaire.json", NO_LINKID),
    ("linkage-questionnaire.json", NO_LINKID),
    ("lipidprofile-questionnaire.json", NO_LINKID),
    ("list-questionnaire.json", NO_LINKID),
    ("location-questionnaire.json", NO_LINKID),
    ("measure-questionnaire.json", NO_LINKID),
    ("measurereport-questionnaire.json", NO_LINKID),
    ("media-questionnaire.json", NO_LINKID),
    ("medication-questionnaire.json", NO_LINKID),
    ("medicationadministration-questionnaire.json", NO_LINKID),
    ("medicationdispense-questionnaire.json", NO_LINKID),
    ("medicationknowledge-questionnaire.json", NO_LINKID),
    ("medicationrequest-questionnaire.json", NO_LINKID),
    ("medicationstatement-questionnaire.json", NO_LINKID),
    ("medicinalproduct-questionnaire.json", NO_LINKID),
    (
        "medicinalproductauthorization-questionnaire.json",
        NO_LINKID,
    ),
    (
        "medicinalproductcontraindication-questionnaire.json",
        NO_LINKID,
    ),
    ("medicinalproductindication-questionnaire.json", NO_LINKID),
    ("medicinalproductingredient-questionnaire.json", NO_LINKID),
    ("medicinalproductinteraction-questionnaire.json", NO_LINKID),
    ("medicinalproductmanufactured-questionnaire.json", NO_LINKID),
    ("medicinalproductpackaged-questionnaire.json", NO_LINKID),
    (
        "medicinalproductpharmaceutical-questionnaire.json",
        NO_LINKID,
    ),
    (
        "medicinalproductundesirableeffect-questionnaire.json",
        NO_LINKID,
    ),
    ("messagedefinition-questionnaire.json", NO_LINKID),
    ("messageheader-questionnaire.json", NO_LINKID),
    ("molecularsequence-questionnaire.json", NO_LINKID),
    ("namingsystem-questionnaire.json", NO_LINKID),
    ("nutritionorder-questionnaire.json", NO_LINKID),
    ("observation-genetics-questionnaire.json", NO_LINKID),
    ("observation-questionnaire.json", NO_LINKID),
    ("observationdefinition-questionnaire.json", NO_LINKID),
    ("operationdefinition-questionnaire.json", NO_LINKID),
    ("operationoutcome-questionnaire.json", NO_LINKID),
    ("organization-questionnaire.json", NO_LINKID),
    ("organizationaffiliation-questionnaire.json", NO_LINKID),
    ("oxygensat-questionnaire.json", NO_LINKID),
    ("package-min-ver.json", NOT_A_RESOURCE),
    ("parameters-questionnaire.json", NO_LINKID),
    ("patient-questionnaire.json", NO_LINKID),
    ("paymentnotice-questionnaire.json", NO_LINKID),
    ("paymentreconciliation-questionnaire.json", NO_LINKID),
    ("person-questionnaire.json", NO_LINKID),
    ("picoelement-questionnaire.json", NO_LINKID),
    ("plandefinition-questionnaire.json", NO_LINKID),
    ("practitioner-questionnaire.json", NO_LINKID),
    ("practitionerrole-questionnaire.json", NO_LINKID),
    ("procedure-questionnaire.json", NO_LINKID),
    ("provenance-questionnaire.json", NO_LINKID),
    ("provenance-relevant-history-questionnaire.json", NO_LINKID),
    ("questionnaire-questionnaire.json", NO_LINKID),
    (
        "questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json",
        ID_TOO_LONG,
    ),
    ("questionnaireresponse-questionnaire.json", NO_LINKID),
    ("relatedperson-questionnaire.json", NO_LINKID),
    ("requestgroup-questionnaire.json", NO_LINKID),
    ("researchdefinition-questionnaire.json", NO_LINKID),
    ("researchelementdefinition-questionnaire.json", NO_LINKID),
    ("researchstudy-questionnaire.json", NO_LINKID),
    ("researchsubject-questionnaire.json", NO_LINKID),
    ("resprate-questionnaire.json", NO_LINKID),
    ("riskassessment-questionnaire.json", NO_LINKID),
    ("riskevidencesynthesis-questionnaire.json", NO_LINKID),
    ("schedule-questionnaire.json", NO_LINKID),
    ("searchparameter-questionnaire.json", NO_LINKID),
    ("servicerequest-genetics-questionnaire.json", NO_LINKID),
    ("servicerequest-questionnaire.json", NO_LINKID),
    ("shareableactivitydefinition-questionnaire.json", NO_LINKID),
    ("shareablecodesystem-questionnaire.json", NO_LINKID),
    ("shareablelibrary-questionnaire.json", NO_LINKID),
    ("shareablemeasure-questionnaire.json", NO_LINKID),
    ("shareableplandefinition-questionnaire.json", NO_LINKID),
    ("shareablevalueset-questionnaire.json", NO_LINKID),
    ("slot-questionnaire.json", NO_LINKID),
    ("specimen-questionnaire.json", NO_LINKID),
    ("specimendefinition-questionnaire.json", NO_LINKID),
    ("structuredefinition-questionnaire.json", NO_LINKID),
    ("structuremap-questionnaire.json", NO_LINKID),
    ("subscription-questionnaire.json", NO_LINKID),
    ("substance-questionnaire.json", NO_LINKID),
    ("substancenucleicacid-questionnaire.json", NO_LINKID),
    ("substancepolymer-questionnaire.json", NO_LINKID),
    ("substanceprotein-questionnaire.json", NO_LINKID),
    (
        "substancereferenceinformation-questionnaire.json",
        NO_LINKID,
    ),
    ("substancesourcematerial-questionnaire.json", NO_LINKID),
    ("substancespecification-questionnaire.json", NO_LINKID),
    ("supplydelivery-questionnaire.json", NO_LINKID),
    ("supplyrequest-questionnaire.json", NO_LINKID),
    ("synthesis-questionnaire.json", NO_LINKID),
    ("task-questionnaire.json", NO_LINKID),
    ("terminologycapabilities-questionnaire.json", NO_LINKID),
    ("testreport-questionnaire.json", NO_LINKID),
    ("testscript-questionnaire.json", NO_LINKID),
    ("triglyceride-questionnaire.json", NO_LINKID),
    ("valueset-extensions-ValueSet-author.json", NO_BASE),
    ("valueset-extensions-ValueSet-effective.json", NO_BASE),
    ("valueset-extensions-ValueSet-end.json", NO_BASE),
    ("valueset-extensions-ValueSet-keyword.json", NO_BASE),
    ("valueset-extensions-ValueSet-workflow.json", NO_BASE),
    ("valueset-questionnaire.json", NO_LINKID),
    ("verificationresult-questionnaire.json", NO_LINKID),
    ("visionprescription-questionnaire.json", NO_LINKID),
    ("vitalsigns-questionnaire.json", NO_LINKID),
    ("vitalspanel-questionnaire.json", NO_LINKID),
];

fn shared_dir() -> PathBuf {
    match std::env::var_os("SALUS_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// A missing shared folder skips the test loudly — unless `SALUS_REQUIRE_SHARED` is set
/// (CI), where it fails.
fn skip(what: &str, dir: &std::path::Path) {
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "{what} {} is required (SALUS_REQUIRE_SHARED) but missing",
            dir.display()
        );
    }
    println!("SKIPPED: {what} {} not found", dir.display());
}

fn errors(resource: &Value) -> Vec<Issue> {
    validate_resource(resource)
        .into_iter()
        .filter(Issue::is_error)
        .collect()
}

/// The first few issues, one line.
fn describe(issues: &[Issue]) -> String {
    const SHOWN: usize = 3;
    let mut text = issues
        .iter()
        .take(SHOWN)
        .map(|i| {
            format!(
                "{} at {}: {}",
                i.code.as_str(),
                i.expression.as_deref().unwrap_or("-"),
                i.diagnostics
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    if issues.len() > SHOWN {
        text.push_str(&format!(" (and {} more)", issues.len() - SHOWN));
    }
    text
}

/// Why an example was rejected: every error, or the parse failure.
enum Rejection {
    Parse(String),
    Invalid(Vec<Issue>),
}

impl Rejection {
    fn describe(&self) -> String {
        match self {
            Rejection::Parse(e) => format!("JSON parse error: {e}"),
            Rejection::Invalid(issues) => describe(issues),
        }
    }

    /// Whether every error carries the defect's signature.
    fn matches(&self, defect: &Defect) -> bool {
        match self {
            Rejection::Parse(_) => false,
            Rejection::Invalid(issues) => issues
                .iter()
                .all(|i| i.diagnostics.contains(defect.signature)),
        }
    }
}

fn example_files() -> Option<Vec<PathBuf>> {
    let dir = shared_dir().join("conformance/r4-examples/json");
    if !dir.is_dir() {
        skip("R4 examples folder", &dir);
        return None;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read examples folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    Some(files)
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn official_r4_examples_validate() {
    let Some(files) = example_files() else {
        return;
    };
    let mut valid = 0;
    let mut rejected: Vec<(String, Rejection)> = Vec::new();
    let mut validating = std::time::Duration::ZERO;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("read example");
        let rejection = match serde_json::from_str::<Value>(&text) {
            Err(e) => Some(Rejection::Parse(e.to_string())),
            Ok(v) => {
                let start = std::time::Instant::now();
                let errs = errors(&v);
                validating += start.elapsed();
                (!errs.is_empty()).then_some(Rejection::Invalid(errs))
            }
        };
        match rejection {
            None => valid += 1,
            Some(r) => rejected.push((file_name(path), r)),
        }
    }
    println!(
        "R4 examples: {} files, {valid} valid, {} rejected ({} allow-listed as defective); \
         validation took {:?} ({:?} per file)",
        files.len(),
        rejected.len(),
        KNOWN_DEFECTIVE.len(),
        validating,
        validating / files.len().max(1) as u32
    );
    let mut failures = Vec::new();
    for (name, rejection) in &rejected {
        let reason = rejection.describe();
        match KNOWN_DEFECTIVE.iter().find(|(f, _)| f == name) {
            Some((_, defect)) if rejection.matches(defect) => {
                println!(
                    "rejected, known defect ({}): {name}: {reason}",
                    defect.reason
                )
            }
            Some((_, defect)) => {
                println!(
                    "REJECTED beyond its known defect ({}): {name}: {reason}",
                    defect.reason
                );
                failures.push(format!("{name} rejected beyond its known defect: {reason}"));
            }
            None => {
                println!("REJECTED: {name}: {reason}");
                failures.push(format!("{name} rejected: {reason}"));
            }
        }
    }
    for (file, defect) in KNOWN_DEFECTIVE {
        if !rejected.iter().any(|(n, _)| n == file) {
            failures.push(format!(
                "{file} is allow-listed ({}) but was not rejected",
                defect.reason
            ));
        }
    }
    assert!(files.len() > 2000, "expected the full example set");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The path (object keys and array indices) of the deepest object key in document order.
fn deepest_key(
    v: &Value,
    path: &mut Vec<Result<String, usize>>,
    best: &mut Vec<Result<String, usize>>,
) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                path.push(Ok(k.clone()));
                if path.len() >= best.len() && k != "resourceType" {
                    *best = path.clone();
                }
                deepest_key(child, path, best);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Err(i));
                deepest_key(child, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Guards against blind spots: in every valid example, renaming its deepest property
/// (the validator must reach it) makes the example invalid with a structure error.
#[test]
fn renamed_deepest_property_is_rejected_in_every_example() {
    let Some(files) = example_files() else {
        return;
    };
    let mut checked = 0;
    let mut missed = Vec::new();
    for path in &files {
        let name = file_name(path);
        if KNOWN_DEFECTIVE.iter().any(|(f, _)| *f == name) {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("read example");
        let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let mut best = Vec::new();
        deepest_key(&v, &mut Vec::new(), &mut best);
        let Some((Ok(last), parents)) = best.split_last().map(|(l, p)| (l.clone(), p)) else {
            continue;
        };
        let mut target = &mut v;
        for step in parents {
            target = match step {
                Ok(k) => &mut target[k.as_str()],
                Err(i) => &mut target[*i],
            };
        }
        let map = target.as_object_mut().expect("object");
        let value = map.shift_remove(&last).expect("key");
        let renamed = format!("{last}Zz");
        map.insert(renamed.clone(), value);
        checked += 1;
        let found = errors(&v);
        if !found
            .iter()
            .any(|i| i.code == IssueCode::Structure && i.diagnostics.contains(&renamed))
        {
            missed.push(format!(
                "{name}: renamed {last:?} not reported; got {}",
                describe(&found)
            ));
        }
    }
    println!(
        "mutated examples: {checked} checked, {} not rejected",
        missed.len()
    );
    for m in &missed {
        println!("MISSED: {m}");
    }
    assert!(missed.is_empty(), "{} mutations not caught", missed.len());
}

#[test]
fn bulk_ndjson_sample_validates() {
    let dir = shared_dir().join("data/bulk-10-patients");
    if !dir.is_dir() {
        skip("bulk NDJSON folder", &dir);
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read bulk folder")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "ndjson")
                && p.file_name().is_some_and(|n| n != "log.ndjson")
        })
        .collect();
    files.sort();
    let (mut lines, mut valid) = (0, 0);
    let mut validating = std::time::Duration::ZERO;
    let mut rejected = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).expect("read ndjson");
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            lines += 1;
            let reason = match serde_json::from_str::<Value>(line) {
                Err(e) => Some(format!("JSON parse error: {e}")),
                Ok(v) => {
                    let start = std::time::Instant::now();
                    let errs = errors(&v);
                    validating += start.elapsed();
                    (!errs.is_empty()).then(|| describe(&errs))
                }
            };
            match reason {
                None => valid += 1,
                Some(r) => rejected.push(format!("{name}:{}: {r}", i + 1)),
            }
        }
    }
    println!(
        "bulk NDJSON: {} files, {lines} resources, {valid} valid, {} rejected; \
         validation took {validating:?} ({:?} per resource)",
        files.len(),
        rejected.len(),
        validating / lines.max(1)
    );
    for r in &rejected {
        println!("REJECTED: {r}");
    }
    assert!(lines > 0, "expected resources in {}", dir.display());
    assert!(rejected.is_empty(), "{} resources rejected", rejected.len());
}
