//! Compliance: every template in the connector's test inputs and sample templates loads or is
//! rejected as it should be, with messages that name the problem.

mod common;

use common::{devices_dir, input, read};
use salus_devices::{ContentTemplates, FhirTemplates};

/// Valid device mappings and how many templates each holds.
const VALID_CONTENT: &[(&str, usize)] = &[
    (
        "test-input/data_CalculatedFunctionContentTemplateValid.json",
        1,
    ),
    (
        "test-input/data_CalculatedFunctionContentTemplateValidExpressionObject.json",
        1,
    ),
    (
        "test-input/data_CalculatedFunctionContentTemplateValidOptional.json",
        1,
    ),
    (
        "test-input/data_CollectionContentTemplateEmptyWithType.json",
        0,
    ),
    (
        "test-input/data_CollectionContentTemplateHrAndSteps.json",
        2,
    ),
    (
        "test-input/data_CollectionContentTemplateHrAndStepsJmesPath.json",
        2,
    ),
    ("test-input/data_CollectionContentTemplateMixed.json", 17),
    (
        "test-input/data_CollectionContentTemplateMultipleIotCentralJsonPath.json",
        3,
    ),
    // Despite its name this file is a CollectionContent document (a device mapping).
    ("test-input/data_CollectionFhirTemplateMixed.json", 17),
    (
        "test-input/data_Documentation_CalculatedFunction_BloodPressure_Template.json",
        1,
    ),
    (
        "test-input/data_Documentation_CalculatedFunction_HeartRate_Template.json",
        1,
    ),
    (
        "test-input/data_Documentation_CalculatedFunction_MultipleMatches_Template.json",
        1,
    ),
    (
        "test-input/data_Documentation_CalculatedFunction_MultipleMeasurements_Template.json",
        2,
    ),
    (
        "test-input/data_Documentation_CalculatedFunction_TransformData_Template.json",
        2,
    ),
    (
        "test-input/data_IotCentralJsonPathContentTemplateValid.json",
        1,
    ),
    (
        "test-input/data_IotCentralJsonPathContentTemplateValidWithOptional.json",
        1,
    ),
    ("test-input/data_IotJsonPathContentTemplateValid.json", 1),
    (
        "test-input/data_IotJsonPathContentTemplateValidWithOptional.json",
        1,
    ),
    ("test-input/data_JsonPathContentTemplateValid.json", 1),
    (
        "test-input/data_JsonPathContentTemplateValidWithOptional.json",
        1,
    ),
    ("templates/basic/devicecontent.json", 6),
    ("templates/healthkitOnFhir/devicecontent.json", 17),
    ("templates/sandbox/devicecontent.json", 7),
    ("templates/sandbox/legacy/devicecontent.json", 7),
];

/// Invalid device mappings and a problem each must report (all of them, for several).
const INVALID_CONTENT: &[(&str, &[&str])] = &[
    (
        "data_CalculatedFunctionContentTemplateValidInvalidAndMissingMembers.json",
        &[
            "template (CalculatedContent 'heartrate'): unknown member 'typeMatchExpressionFake'",
            "template (CalculatedContent 'heartrate'): unknown member 'deviceIdExpressionFake'",
            "template (CalculatedContent 'heartrate'): missing required 'typeMatchExpression'",
            "template (CalculatedContent 'heartrate'): missing required 'deviceIdExpression'",
        ],
    ),
    (
        "data_CollectionContentTemplateEmpty.json",
        &["template: unsupported templateType '' (expected CollectionContent or one of JsonPathContent, IotJsonPathContent, IotCentralJsonPathContent, CalculatedContent)"],
    ),
    (
        "data_CollectionContentTemplateInvalid.json",
        &[
            "template[0] (JsonPathContent 'heartrate'): missing required 'deviceIdExpression'",
            "template[0] (JsonPathContent 'heartrate'): missing required 'timestampExpression'",
            "template[1] (IotJsonPathContent 'bootTime'): missing required 'typeMatchExpression'",
        ],
    ),
    (
        "data_CollectionContentTemplateMixedValidity.json",
        &["template[2] (IotJsonPathContent 'bootTime'): missing required 'typeMatchExpression'"],
    ),
    (
        "data_CollectionContentTemplateMultipleMocks.json",
        &["template[0]: unsupported templateType 'mockA'", "template[1]: unsupported templateType 'mockB'"],
    ),
    (
        "data_InvalidCollectionContentTemplateWithNoTemplateArray.json",
        &["template: CollectionContent 'template' must be an array of templates"],
    ),
    ("data_InvalidTemplateType.json", &["template: unsupported templateType 'templateType'"]),
    ("data_InvalidJson.txt", &["template is not valid JSON: expected value at line 3 column 1"]),
    (
        "data_IotCentralJsonPathContentTemplateInvalidMissingTypeMetadata.json",
        &[
            "template (IotCentralJsonPathContent): missing required 'typeName'",
            "template (IotCentralJsonPathContent): missing required 'typeMatchExpression'",
        ],
    ),
    (
        "data_IotCentralJsonPathContentTemplateInvalidMissingValueField.json",
        &["template (IotCentralJsonPathContent 'heartrate'): values[0]: missing required 'valueName'"],
    ),
    (
        "data_IotJsonPathContentTemplateInvalidMissingTypeMetadata.json",
        &[
            "template (IotJsonPathContent): missing required 'typeName'",
            "template (IotJsonPathContent): missing required 'typeMatchExpression'",
        ],
    ),
    (
        "data_IotJsonPathContentTemplateInvalidMissingValueField.json",
        &["template (IotJsonPathContent 'heartrate'): values[0]: missing required 'valueName'"],
    ),
    (
        "data_JsonPathContentTemplateInvalidMissingExpression.json",
        &[
            "template (JsonPathContent 'heartrate'): missing required 'deviceIdExpression'",
            "template (JsonPathContent 'heartrate'): missing required 'timestampExpression'",
        ],
    ),
];

const VALID_FHIR: &[(&str, usize)] = &[
    (
        "test-input/data_CodeValueFhirTemplate_CodeableConceptAndStringComponent.json",
        1,
    ),
    (
        "test-input/data_CodeValueFhirTemplate_CodeableConceptData.json",
        1,
    ),
    ("test-input/data_CodeValueFhirTemplate_Components.json", 1),
    ("test-input/data_CodeValueFhirTemplate_Quantity.json", 1),
    ("test-input/data_CodeValueFhirTemplate_SampledData.json", 1),
    ("test-input/data_CodeValueFhirTemplate_String.json", 1),
    (
        "test-input/data_CollectionFhirTemplateEmptyWithType.json",
        0,
    ),
    ("test-input/data_CollectionFhirTemplateValid.json", 6),
    ("templates/basic/fhirmapping.json", 6),
    ("templates/healthkitOnFhir/fhirmapping.json", 17),
    ("templates/sandbox/fhirmapping.json", 7),
];

const INVALID_FHIR: &[(&str, &[&str])] = &[
    (
        "data_CodeValueFhirTemplateInvalid_MissingCodeField.json",
        &["template (CodeValueFhir 'hr'): missing required 'codes'"],
    ),
    ("data_CodeValueFhirTemplateInvalid_MissingFields.json", &["template (CodeValueFhir): missing required 'typeName'"]),
    (
        "data_CollectionFhirTemplateInvalid.json",
        &[
            "template[0] (CodeValueFhir): missing required 'typeName'",
            "template[1] (CodeValueFhir 'steps'): value: missing required 'valueName'",
            "template[1] (CodeValueFhir 'steps'): value: missing required 'valueType' (SampledData, Quantity, CodeableConcept or String)",
            "template[2] (CodeValueFhir): 'typeName' must not be blank",
            "template[2] (CodeValueFhir): value: SampledData needs 'defaultPeriod', a positive number of milliseconds",
            "template[3] (CodeValueFhir 'steps'): codes[0]: missing required 'code'",
        ],
    ),
    ("data_CollectionFhirTemplateMixedValidity.json", &["template[1] (CodeValueFhir): missing required 'typeName'"]),
    (
        "data_CollectionFhirTemplateMultipleMocks.json",
        &[
            "template[0]: unsupported templateType 'mockA' (expected CodeValueFhir)",
            "template[1]: unsupported templateType 'mockB' (expected CodeValueFhir)",
        ],
    ),
    (
        "data_CollectionFhirTemplateEmpty.json",
        &["template: unsupported templateType '' (expected CollectionFhir or CodeValueFhir)"],
    ),
    (
        "data_InvalidCollectionFhirTemplateWithNoTemplateArray.json",
        &["template: CollectionFhir 'template' must be an array of templates"],
    ),
    (
        "data_CollectionFhirTemplateMixed.json",
        &["template: unsupported templateType 'CollectionContent' (expected CollectionFhir or CodeValueFhir)"],
    ),
];

/// Payload and sample-data files (not templates), exercised in `normalize.rs`.
const PAYLOADS: &[&str] = &[
    "data_Documentation_CalculatedFunction_BloodPressure_Payload.json",
    "data_Documentation_CalculatedFunction_HeartRate_Payload.json",
    "data_Documentation_CalculatedFunction_MultipleMatches_Payload.json",
    "data_Documentation_CalculatedFunction_MultipleMeasurements_FromArray_Payload.json",
    "data_Documentation_CalculatedFunction_MultipleMeasurements_Payload.json",
    "data_Documentation_CalculatedFunction_TransformData_Payload.json",
    "data_IotCentralPayloadExample.json",
    "data_IotCentralPayloadExampleMultipleMessages.json",
    "data_IotHubPayloadExample.json",
    "data_IotHubPayloadExampleMissingCreateTime.json",
    "data_IotHubPayloadMultiValueExample.json",
    "deviceData_BloodPressure.json",
    "deviceData_HeartRate.json",
    "deviceData_OxygenSaturation.json",
    "deviceData_Projection.json",
];

fn check_problems(file: &str, err: &salus_devices::TemplateError, expected: &[&str]) {
    let problems = err.problems();
    for want in expected {
        assert!(
            problems.iter().any(|p| p.starts_with(want)),
            "{file}: expected a problem starting {want:?}, got {problems:#?}"
        );
    }
}

#[test]
fn valid_device_mappings_load() {
    let Some(dir) = devices_dir("valid_device_mappings_load") else {
        return;
    };
    let mut templates = 0;
    for (file, count) in VALID_CONTENT {
        let t = ContentTemplates::from_json_str(&read(&dir, file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(t.len(), *count, "{file}");
        templates += t.len();
    }
    println!(
        "device mappings loaded: {} files, {templates} templates",
        VALID_CONTENT.len()
    );
}

#[test]
fn invalid_device_mappings_are_rejected_with_named_problems() {
    let Some(dir) = devices_dir("invalid_device_mappings_are_rejected_with_named_problems") else {
        return;
    };
    for (file, expected) in INVALID_CONTENT {
        let err = ContentTemplates::from_json_str(&read(&dir, &input(file))).expect_err(file);
        check_problems(file, &err, expected);
    }
    println!("device mappings rejected: {}", INVALID_CONTENT.len());
}

#[test]
fn valid_fhir_mappings_load() {
    let Some(dir) = devices_dir("valid_fhir_mappings_load") else {
        return;
    };
    let mut templates = 0;
    for (file, count) in VALID_FHIR {
        let t = FhirTemplates::from_json_str(&read(&dir, file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(t.len(), *count, "{file}");
        templates += t.len();
    }
    println!(
        "FHIR mappings loaded: {} files, {templates} templates",
        VALID_FHIR.len()
    );
}

#[test]
fn invalid_fhir_mappings_are_rejected_with_named_problems() {
    let Some(dir) = devices_dir("invalid_fhir_mappings_are_rejected_with_named_problems") else {
        return;
    };
    for (file, expected) in INVALID_FHIR {
        let err = FhirTemplates::from_json_str(&read(&dir, &input(file))).expect_err(file);
        check_problems(file, &err, expected);
    }
    println!("FHIR mappings rejected: {}", INVALID_FHIR.len());
}

#[test]
fn each_kind_of_mapping_is_rejected_by_the_other_loader() {
    let Some(dir) = devices_dir("each_kind_of_mapping_is_rejected_by_the_other_loader") else {
        return;
    };
    let e = ContentTemplates::from_json_str(&read(&dir, "templates/basic/fhirmapping.json"))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("template: unsupported templateType 'CollectionFhir'"),
        "{e}"
    );
    let e = FhirTemplates::from_json_str(&read(&dir, "templates/basic/devicecontent.json"))
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("template: unsupported templateType 'CollectionContent'"),
        "{e}"
    );
}

/// Every file of the test inputs is accounted for above, so a new one cannot go unnoticed.
#[test]
fn every_test_input_is_classified() {
    let Some(dir) = devices_dir("every_test_input_is_classified") else {
        return;
    };
    let mut known: Vec<String> = VALID_CONTENT
        .iter()
        .chain(VALID_FHIR)
        .filter_map(|(f, _)| f.strip_prefix("test-input/").map(String::from))
        .collect();
    known.extend(INVALID_CONTENT.iter().map(|(f, _)| f.to_string()));
    known.extend(INVALID_FHIR.iter().map(|(f, _)| f.to_string()));
    known.extend(PAYLOADS.iter().map(|f| f.to_string()));
    let mut files: Vec<String> = std::fs::read_dir(dir.join("test-input"))
        .expect("test-input")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.sort();
    let missing: Vec<&String> = files.iter().filter(|f| !known.contains(f)).collect();
    assert!(missing.is_empty(), "unclassified test inputs: {missing:?}");
    println!(
        "test inputs: {} files = {} valid device mappings + {} invalid, {} valid FHIR mappings + {} invalid, {} payloads",
        files.len(),
        VALID_CONTENT.iter().filter(|(f, _)| f.starts_with("test-input/")).count(),
        INVALID_CONTENT.len(),
        VALID_FHIR.iter().filter(|(f, _)| f.starts_with("test-input/")).count(),
        INVALID_FHIR.len(),
        PAYLOADS.len()
    );
}
