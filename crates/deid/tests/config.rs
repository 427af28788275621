//! Configuration parsing: the original tool's format is accepted as is, and bad
//! configurations fail up front with errors that say what is wrong and where.

use salus_deid::{Config, ConfigError, DateShiftScope, Method, ProcessingErrorMode, RangeType};

fn err(text: &str) -> ConfigError {
    Config::from_json(text).expect_err("should be rejected")
}

#[test]
fn original_tool_style_configuration_parses() {
    let cfg = Config::from_json(
        r#"{
          "fhirVersion": "R4",
          "processingError": "raise",
          "fhirPathRules": [
            {"path": "nodesByType('Extension')", "method": "redact"},
            {"path": "Organization.identifier", "method": "keep"},
            {"path": "nodesByType('Address').country", "method": "keep"},
            {"path": "Resource.id", "method": "cryptoHash"},
            {"path": "nodesByType('Reference').reference", "method": "cryptoHash"},
            {"path": "Group.name", "method": "redact"},
            {"path": "Observation.value", "method": "perturb", "span": 1, "rangeType": "proportional", "roundTo": 2},
            {"path": "Patient.address.state", "method": "substitute", "replaceWith": "WA"},
            {"path": "Condition.onset", "method": "generalize",
             "cases": {"$this >= @2010-01-01 and $this < @2015-01-01": "@2010-01-01"}, "otherValues": "redact"},
            {"path": "nodesByType('date')", "method": "dateShift"},
            {"path": "nodesByName('div')", "method": "scrub"},
            {"path": "Patient.name.family", "method": "encrypt"}
          ],
          "parameters": {
            "dateShiftKey": "a", "dateShiftScope": "file", "dateShiftFixedOffsetInDays": 5,
            "cryptoHashKey": "b", "encryptKey": "0123456789abcdef",
            "enablePartialAgesForRedact": true, "enablePartialDatesForRedact": true,
            "enablePartialZipCodesForRedact": true,
            "restrictedZipCodeTabulationAreas": ["036", "059"]
          }
        }"#,
    )
    .unwrap();
    assert_eq!(cfg.rules.len(), 12);
    assert_eq!(cfg.processing_error, ProcessingErrorMode::Raise);
    assert_eq!(cfg.parameters.date_shift_scope, DateShiftScope::File);
    assert_eq!(cfg.parameters.date_shift_fixed_offset_in_days, Some(5));
    assert!(matches!(
        cfg.rules[6].method,
        Method::Perturb {
            range_type: RangeType::Proportional,
            round_to: 2,
            ..
        }
    ));
    // Secrets stay out of debug output.
    let dbg = format!("{:?}", cfg.parameters);
    assert!(!dbg.contains("0123456789abcdef") && dbg.contains("<set>"));
}

#[test]
fn the_shipped_safe_harbor_configuration_parses() {
    let cfg = Config::safe_harbor();
    assert!(cfg.rules.len() > 20);
    assert!(cfg.parameters.enable_partial_dates_for_redact);
    assert!(cfg
        .parameters
        .restricted_zip_code_tabulation_areas
        .contains(&"036".to_string()));
}

#[test]
fn defaults_and_methods_are_case_insensitive() {
    let cfg =
        Config::from_json(r#"{"fhirPathRules": [{"path": "Patient.id", "method": "CRYPTOHASH"}]}"#)
            .unwrap();
    assert_eq!(cfg.fhir_version, "R4");
    assert_eq!(cfg.parameters.date_shift_scope, DateShiftScope::Resource);
    assert!(!cfg.parameters.enable_partial_dates_for_redact);
    assert!(cfg.parameters.enable_free_text_scrubbing);
    assert!(Config::from_json("{}").unwrap().rules.is_empty());
    let skip = Config::from_json(r#"{"processingError": "skip"}"#).unwrap();
    assert_eq!(skip.processing_error, ProcessingErrorMode::Skip);
}

#[test]
fn bad_configurations_are_rejected_clearly() {
    let cases: Vec<(&str, &str)> = vec![
        ("not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (r#"{"fhirVersion": "Stu3"}"#, "only R4"),
        (r#"{"processingError": "keep"}"#, "'raise' or 'skip'"),
        (r#"{"fhirPathRules": {}}"#, "fhirPathRules"),
        (
            r#"{"fhirPathRules": [{"method": "redact"}]}"#,
            "rule 0: missing `path`",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.id"}]}"#,
            "rule 0: missing `method`",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.id", "method": "shred"}]}"#,
            "unknown method 'shred'",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.id", "method": "keep"}, {"path": "Patient.name", "method": "substitute"}]}"#,
            "rule 1: missing `replaceWith`",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.name.where(", "method": "redact"}]}"#,
            "invalid FHIRPath",
        ),
        (
            r#"{"fhirPathRules": [{"path": "nodesByType('date') | nodesByType('dateTime')", "method": "redact"}]}"#,
            "only once, at the start",
        ),
        (
            r#"{"fhirPathRules": [{"path": "nodesByType('')", "method": "redact"}]}"#,
            "non-empty name",
        ),
        (
            r#"{"fhirPathRules": [{"path": "nodesByType('Address') foo", "method": "redact"}]}"#,
            "unexpected",
        ),
        (
            r#"{"fhirPathRules": [{"path": "HumanName.nodesByType('Address')", "method": "redact"}]}"#,
            "not a resource type",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.name", "method": "encrypt"}]}"#,
            "needs a 16, 24 or 32 byte encryptKey",
        ),
        (
            r#"{"parameters": {"encryptKey": "short"}}"#,
            "16, 24 or 32 bytes",
        ),
        (
            r#"{"parameters": {"dateShiftScope": "galaxy"}}"#,
            "'resource', 'file' or 'folder'",
        ),
        (
            r#"{"parameters": {"dateshiftkey": "x"}}"#,
            "unknown parameter 'dateshiftkey'",
        ),
        (
            r#"{"parameters": {"enablePartialDatesForRedact": "maybe"}}"#,
            "true or false",
        ),
        (
            r#"{"parameters": {"dateShiftFixedOffsetInDays": 1.5}}"#,
            "integer number of days",
        ),
        (
            r#"{"parameters": {"restrictedZipCodeTabulationAreas": ["12"]}}"#,
            "3-digit",
        ),
        (
            r#"{"parameters": {"cryptoHashKey": 5}}"#,
            "expected a string",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Observation.value", "method": "perturb"}]}"#,
            "missing `span`",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Observation.value", "method": "perturb", "span": -1}]}"#,
            "non-negative",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Observation.value", "method": "perturb", "span": 1, "rangeType": "wide"}]}"#,
            "rangeType",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Observation.value", "method": "perturb", "span": 1, "roundTo": 40}]}"#,
            "roundTo",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.birthDate", "method": "generalize"}]}"#,
            "missing `cases`",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.birthDate", "method": "generalize", "cases": {"$this >": "'x'"}}]}"#,
            "case condition",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.birthDate", "method": "generalize", "cases": {"true": "'unclosed"}}]}"#,
            "string literals need quotes",
        ),
        (
            r#"{"fhirPathRules": [{"path": "Patient.birthDate", "method": "generalize", "cases": {"true": "1"}, "otherValues": "drop"}]}"#,
            "otherValues",
        ),
    ];
    for (text, expected) in cases {
        let e = err(text).to_string();
        assert!(
            e.contains(expected),
            "{text}: got `{e}`, expected `{expected}`"
        );
    }
}
