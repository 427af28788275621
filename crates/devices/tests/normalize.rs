//! Compliance: the connector's documentation payload/template pairs and the IoT Hub / IoT
//! Central payload examples give the measurements their content says they should.

mod common;

use common::{devices_dir, input, json, read};
use salus_devices::{ContentTemplates, Measurement};
use serde_json::Value;
use std::path::Path;
use time::format_description::well_known::Rfc3339;

fn templates(dir: &Path, file: &str) -> ContentTemplates {
    ContentTemplates::from_json_str(&read(dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn run(dir: &Path, template: &str, payload: &str) -> Vec<Measurement> {
    let n = templates(dir, template).normalize(&json(dir, payload));
    assert!(
        n.errors.is_empty(),
        "{template} on {payload}: {:?}",
        n.errors
    );
    n.measurements
}

fn time(m: &Measurement) -> String {
    m.occurrence_time.format(&Rfc3339).unwrap()
}

/// (type, device, time, [(value name, value)])
type Row = (String, String, String, Vec<(String, String)>);

fn summary(ms: &[Measurement]) -> Vec<Row> {
    ms.iter()
        .map(|m| {
            (
                m.type_name.clone(),
                m.device_id.clone(),
                time(m),
                m.properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        })
        .collect()
}

fn row(t: &str, d: &str, at: &str, vals: &[(&str, &str)]) -> Row {
    (
        t.into(),
        d.into(),
        at.into(),
        vals.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn documentation_heart_rate() {
    let Some(dir) = devices_dir("documentation_heart_rate") else {
        return;
    };
    let ms = run(
        &dir,
        &input("data_Documentation_CalculatedFunction_HeartRate_Template.json"),
        &input("data_Documentation_CalculatedFunction_HeartRate_Payload.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![row(
            "heartrate",
            "device123",
            "2019-02-01T22:46:01.875Z",
            &[("hr", "78")]
        )]
    );
    assert_eq!(ms[0].patient_id, None);
}

#[test]
fn documentation_blood_pressure() {
    let Some(dir) = devices_dir("documentation_blood_pressure") else {
        return;
    };
    let ms = run(
        &dir,
        &input("data_Documentation_CalculatedFunction_BloodPressure_Template.json"),
        &input("data_Documentation_CalculatedFunction_BloodPressure_Payload.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![row(
            "bloodpressure",
            "device123",
            "2019-02-01T22:46:01.875Z",
            &[("diastolic", "87"), ("systolic", "123")]
        )]
    );
}

#[test]
fn documentation_multiple_matches_use_message_and_matched_token() {
    let Some(dir) = devices_dir("documentation_multiple_matches_use_message_and_matched_token")
    else {
        return;
    };
    let ms = run(
        &dir,
        &input("data_Documentation_CalculatedFunction_MultipleMatches_Template.json"),
        &input("data_Documentation_CalculatedFunction_MultipleMatches_Payload.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![
            row(
                "heartrate",
                "device123",
                "2021-07-13T17:29:01.061144Z",
                &[("diastolic", "80"), ("systolic", "120")]
            ),
            row(
                "heartrate",
                "device123",
                "2021-07-13T17:28:01.061122Z",
                &[("diastolic", "82"), ("systolic", "122")]
            ),
        ]
    );
}

#[test]
fn documentation_multiple_measurements() {
    let Some(dir) = devices_dir("documentation_multiple_measurements") else {
        return;
    };
    let template =
        input("data_Documentation_CalculatedFunction_MultipleMeasurements_Template.json");
    let ms = run(
        &dir,
        &template,
        &input("data_Documentation_CalculatedFunction_MultipleMeasurements_Payload.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![
            row(
                "heartrate",
                "device123",
                "2019-02-01T22:46:01.875Z",
                &[("hr", "78")]
            ),
            row(
                "stepcount",
                "device123",
                "2019-02-01T22:46:01.875Z",
                &[("steps", "2")]
            ),
        ]
    );
    let ms = run(
        &dir,
        &template,
        &input("data_Documentation_CalculatedFunction_MultipleMeasurements_FromArray_Payload.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![
            row(
                "heartrate",
                "device123",
                "2019-02-01T20:46:01.875Z",
                &[("hr", "78")]
            ),
            row(
                "heartrate",
                "device123",
                "2019-02-01T21:46:01.875Z",
                &[("hr", "81")]
            ),
            row(
                "heartrate",
                "device123",
                "2019-02-01T22:46:01.875Z",
                &[("hr", "72")]
            ),
        ]
    );
}

#[test]
fn documentation_transform_data_with_jmespath() {
    let Some(dir) = devices_dir("documentation_transform_data_with_jmespath") else {
        return;
    };
    let ms = run(
        &dir,
        &input("data_Documentation_CalculatedFunction_TransformData_Template.json"),
        &input("data_Documentation_CalculatedFunction_TransformData_Payload.json"),
    );
    assert_eq!(ms.len(), 2);
    // 78 inches × 0.0254 = 1.9812 m (JMESPath multiply), and 1.9304 m as sent.
    assert_eq!(ms[0].type_name, "heightInMeters");
    assert_eq!(time(&ms[0]), "2019-02-01T22:46:01.875Z");
    assert!(
        (ms[0].number("height").unwrap() - 1.9812).abs() < 1e-9,
        "{:?}",
        ms[0].value("height")
    );
    assert_eq!(time(&ms[1]), "2019-02-01T23:46:01.875Z");
    assert_eq!(ms[1].value("height"), Some("1.9304"));
}

#[test]
fn iot_hub_device_id_and_creation_time_from_metadata() {
    let Some(dir) = devices_dir("iot_hub_device_id_and_creation_time_from_metadata") else {
        return;
    };
    let template = input("data_IotJsonPathContentTemplateValid.json");
    let ms = run(&dir, &template, &input("data_IotHubPayloadExample.json"));
    assert_eq!(
        summary(&ms),
        vec![row(
            "heartrate",
            "ev-d795-1d04-55ae",
            "2019-01-30T22:45:02.6073744Z",
            &[("hr", "203")]
        )]
    );
    // Without iothub-creation-time-utc the enqueued time is used.
    let ms = run(
        &dir,
        &template,
        &input("data_IotHubPayloadExampleMissingCreateTime.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![row(
            "heartrate",
            "ev-d795-1d04-55ae",
            "2019-02-01T22:46:01.875Z",
            &[("hr", "203")]
        )]
    );
    // The optional patient expression ($.patient) finds nothing in this message.
    let ms = run(
        &dir,
        &input("data_IotJsonPathContentTemplateValidWithOptional.json"),
        &input("data_IotHubPayloadExample.json"),
    );
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].patient_id, None);
}

#[test]
fn iot_hub_multi_value_message() {
    let Some(dir) = devices_dir("iot_hub_multi_value_message") else {
        return;
    };
    // Our own mapping for this message: blood pressure and steps from one body.
    let t = ContentTemplates::from_value(&serde_json::json!({"templateType": "CollectionContent", "template": [
        {"templateType": "IotJsonPathContent", "template": {"typeName": "bloodpressure",
            "typeMatchExpression": "$..[?(@Body.systolic && @Body.diastolic)]",
            "patientIdExpression": "$.SystemProperties.iothub-connection-device-id",
            "values": [{"valueName": "systolic", "valueExpression": "$.Body.systolic", "required": true},
                       {"valueName": "diastolic", "valueExpression": "$.Body.diastolic", "required": true}]}},
        {"templateType": "IotJsonPathContent", "template": {"typeName": "steps",
            "typeMatchExpression": "$..[?(@Body.steps)]",
            "values": [{"valueName": "steps", "valueExpression": "$.Body.steps", "required": true}]}}
    ]}))
    .unwrap();
    let n = t.normalize(&json(
        &dir,
        &input("data_IotHubPayloadMultiValueExample.json"),
    ));
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    assert_eq!(
        summary(&n.measurements),
        vec![
            row(
                "bloodpressure",
                "ev-d795-1d04-55ae",
                "2019-01-30T22:45:02.6073744Z",
                &[("diastolic", "75"), ("systolic", "111")]
            ),
            row(
                "steps",
                "ev-d795-1d04-55ae",
                "2019-01-30T22:45:02.6073744Z",
                &[("steps", "30")]
            ),
        ]
    );
    assert_eq!(
        n.measurements[0].patient_id.as_deref(),
        Some("ev-d795-1d04-55ae")
    );
}

#[test]
fn iot_central_example_with_sandbox_mapping() {
    let Some(dir) = devices_dir("iot_central_example_with_sandbox_mapping") else {
        return;
    };
    let ms = run(
        &dir,
        "templates/sandbox/devicecontent.json",
        &input("data_IotCentralPayloadExample.json"),
    );
    assert_eq!(
        summary(&ms),
        vec![
            row(
                "respiratoryrate",
                "1vzb5ghlsg1",
                "2020-08-05T22:26:55.455Z",
                &[("respiratoryrate", "13")]
            ),
            row(
                "bloodpressure",
                "1vzb5ghlsg1",
                "2020-08-05T22:26:55.455Z",
                &[("diastolic", "7"), ("systolic", "71")]
            ),
        ]
    );
    assert!(ms
        .iter()
        .all(|m| m.patient_id.as_deref() == Some("1vzb5ghlsg1")));
}

#[test]
fn iot_central_multiple_messages() {
    let Some(dir) = devices_dir("iot_central_multiple_messages") else {
        return;
    };
    let payload = input("data_IotCentralPayloadExampleMultipleMessages.json");
    let ms = run(&dir, "templates/sandbox/devicecontent.json", &payload);
    assert_eq!(ms.len(), 12);
    let find = |ty: &str, at: &str| {
        ms.iter()
            .find(|m| m.type_name == ty && time(m) == at)
            .unwrap_or_else(|| panic!("{ty} at {at}"))
    };
    let hr = find("heartrate", "2021-06-08T19:45:20.202Z");
    assert_eq!(
        (hr.device_id.as_str(), hr.value("hr")),
        ("1qsi9p8t5l2", Some("75"))
    );
    assert_eq!(
        find("heartrate", "2021-06-08T19:44:04.941Z").value("hr"),
        Some("69")
    );
    assert_eq!(
        find("bodytemperature", "2021-06-08T19:45:20.202Z").value("temp"),
        Some("98.43639286275842")
    );
    let bp = find("bloodpressure", "2021-06-08T19:44:04.941Z");
    assert_eq!(
        (bp.value("systolic"), bp.value("diastolic")),
        (Some("43"), Some("34"))
    );
    let knee = find("kneebend", "2021-06-08T19:44:31.875Z");
    assert_eq!(
        (knee.device_id.as_str(), knee.value("kneebend")),
        ("24bjobtcf8i", Some("-19"))
    );
    assert_eq!(
        find("rangeofmotion", "2021-06-08T19:44:31.875Z").value("rangeofmotion"),
        Some("83")
    );
    let count = |ty: &str| ms.iter().filter(|m| m.type_name == ty).count();
    assert_eq!(
        [
            count("heartrate"),
            count("respiratoryrate"),
            count("hrv"),
            count("bodytemperature"),
            count("bloodpressure")
        ],
        [2, 2, 2, 2, 2]
    );

    let ms = run(
        &dir,
        &input("data_CollectionContentTemplateMultipleIotCentralJsonPath.json"),
        &payload,
    );
    assert_eq!(ms.len(), 6);
}

#[test]
fn iot_central_template_with_unresolvable_required_value_reports_it() {
    let Some(dir) = devices_dir("iot_central_template_with_unresolvable_required_value_reports_it")
    else {
        return;
    };
    let n = templates(
        &dir,
        &input("data_IotCentralJsonPathContentTemplateValid.json"),
    )
    .normalize(&json(&dir, &input("data_IotCentralPayloadExample.json")));
    assert!(n.measurements.is_empty());
    assert_eq!(n.errors.len(), 1);
    assert_eq!(
        n.errors[0].to_string(),
        "template (IotCentralJsonPathContent 'telemetry'), match 0: required value 'activity' ($.template.Activity) not found"
    );
}

#[test]
fn json_path_and_jmespath_hr_and_steps_agree() {
    let Some(dir) = devices_dir("json_path_and_jmespath_hr_and_steps_agree") else {
        return;
    };
    let message: Value = serde_json::json!({"heartrate": "88", "steps": 12, "device": "band-7", "date": "2024-05-01T06:30:00Z"});
    let a = templates(
        &dir,
        &input("data_CollectionContentTemplateHrAndSteps.json"),
    )
    .normalize(&message);
    let b = templates(
        &dir,
        &input("data_CollectionContentTemplateHrAndStepsJmesPath.json"),
    )
    .normalize(&message);
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "{:?} {:?}",
        a.errors,
        b.errors
    );
    assert_eq!(a.measurements, b.measurements);
    assert_eq!(
        summary(&a.measurements),
        vec![
            row(
                "heartrate",
                "band-7",
                "2024-05-01T06:30:00Z",
                &[("hr", "88")]
            ),
            row(
                "steps",
                "band-7",
                "2024-05-01T06:30:00Z",
                &[("steps", "12")]
            ),
        ]
    );
}

#[test]
fn sample_templates_basic_and_healthkit() {
    let Some(dir) = devices_dir("sample_templates_basic_and_healthkit") else {
        return;
    };
    let basic = templates(&dir, "templates/basic/devicecontent.json");
    let n = basic.normalize(&serde_json::json!([
        {"deviceid": "dev-1", "patientid": "pat-1", "measurementdatetime": "2024-02-02T08:15:00Z", "heartrate": 71},
        {"deviceid": "dev-1", "patientid": "pat-1", "measurementdatetime": "2024-02-02T08:16:00Z", "systolic": 130, "diastolic": 85},
        {"deviceid": "dev-1", "patientid": "pat-1", "measurementdatetime": "2024-02-02T08:17:00Z", "deviceWorn": true}
    ]));
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    assert_eq!(
        summary(&n.measurements),
        vec![
            row(
                "heartrate",
                "dev-1",
                "2024-02-02T08:15:00Z",
                &[("hr", "71")]
            ),
            row(
                "bloodpressure",
                "dev-1",
                "2024-02-02T08:16:00Z",
                &[("diastolic", "85"), ("systolic", "130")]
            ),
            row(
                "deviceWorn",
                "dev-1",
                "2024-02-02T08:17:00Z",
                &[("deviceWorn", "true")]
            ),
        ]
    );
    assert!(n
        .measurements
        .iter()
        .all(|m| m.patient_id.as_deref() == Some("pat-1")));

    let hk = templates(&dir, "templates/healthkitOnFhir/devicecontent.json");
    let n = hk.normalize(&serde_json::json!({"samples": [
        {"deviceId": "iphone-1", "endDate": "2024-02-02T07:00:00.000+02:00", "heartRate": "64"},
        {"deviceId": "iphone-1", "endDate": "2024-02-02T07:00:00Z", "bodyMass": 81.4}
    ]}));
    assert!(n.errors.is_empty(), "{:?}", n.errors);
    assert_eq!(
        summary(&n.measurements),
        vec![
            row(
                "heartrate",
                "iphone-1",
                "2024-02-02T05:00:00Z",
                &[("hr", "64")]
            ),
            row(
                "bodyMass",
                "iphone-1",
                "2024-02-02T07:00:00Z",
                &[("bodyMass", "81.4")]
            ),
        ]
    );
}

#[test]
fn device_data_samples_carry_every_identifier() {
    let Some(dir) = devices_dir("device_data_samples_carry_every_identifier") else {
        return;
    };
    // Our own mapping for the normalized-looking sample files.
    let t = ContentTemplates::from_value(&serde_json::json!({"templateType": "CollectionContent", "template": [
        {"templateType": "JsonPathContent", "template": {"typeName": "heartrate",
            "typeMatchExpression": "$..[?(@values.beatsPerMinute || @heartRate)]",
            "deviceIdExpression": "$.device", "timestampExpression": "$.time",
            "patientIdExpression": "$.patient", "encounterIdExpression": "$.encounter",
            "correlationIdExpression": "$.correlation",
            "values": [{"valueName": "hr", "valueExpression": "$.values.beatsPerMinute", "required": false},
                       {"valueName": "hr2", "valueExpression": "$.heartRate", "required": false}]}}
    ]}))
    .unwrap();
    let hr = t.normalize(&json(&dir, &input("deviceData_HeartRate.json")));
    assert_eq!(hr.measurements.len(), 1);
    let m = &hr.measurements[0];
    assert_eq!(
        (
            m.device_id.as_str(),
            m.patient_id.as_deref(),
            m.encounter_id.as_deref(),
            m.correlation_id.as_deref()
        ),
        (
            "TestDeviceId",
            Some("TestPatientId"),
            Some("TestEncounter"),
            Some("TestCorrelation")
        )
    );
    assert_eq!(
        (time(m), m.value("hr")),
        ("2022-07-01T12:00:00Z".to_string(), Some("66"))
    );
    let p = t.normalize(&json(&dir, &input("deviceData_Projection.json")));
    assert_eq!(p.measurements[0].value("hr2"), Some("66"));
    for f in [
        "deviceData_BloodPressure.json",
        "deviceData_OxygenSaturation.json",
    ] {
        assert!(
            t.normalize(&json(&dir, &input(f))).measurements.is_empty(),
            "{f}"
        );
    }
}
