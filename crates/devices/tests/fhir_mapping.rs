//! Compliance: the connector's FHIR mapping templates produce Observations (and transaction
//! Bundles) that pass the Salus validator, with the SampledData, grouping and identifier
//! conventions documented in docs/devices.md.

mod common;

use common::{devices_dir, input, json, read};
use salus_devices::fhir::{CodeValueFhir, ValueKind};
use salus_devices::identity::{plan, DeviceRecord, IdentityMode, MappingConfig, NoDevices};
use salus_devices::{ContentTemplates, FhirTemplates, Measurement};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use time::macros::datetime;

fn errors(resource: &Value) -> Vec<String> {
    salus_fhir::validate::validate_resource(resource)
        .into_iter()
        .filter(|i| i.is_error())
        .map(|i| format!("{i:?}"))
        .collect()
}

fn fhir(dir: &Path, file: &str) -> FhirTemplates {
    FhirTemplates::from_json_str(&read(dir, file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn create_mode() -> MappingConfig {
    MappingConfig {
        identity_mode: IdentityMode::Create,
        ..MappingConfig::default()
    }
}

/// Two measurements per template, 90 s apart, with every value the template maps.
fn synthetic(t: &CodeValueFhir) -> Vec<Measurement> {
    let mut props = BTreeMap::new();
    for v in t.value.iter().chain(t.components.iter().map(|c| &c.value)) {
        let text = match v.kind {
            ValueKind::String => "sensor detached",
            ValueKind::CodeableConcept { .. } => "true",
            _ => "42.5",
        };
        props.insert(v.value_name.clone(), text.to_string());
    }
    [
        datetime!(2024-04-01 09:10:00 UTC),
        datetime!(2024-04-01 09:11:30 UTC),
    ]
    .into_iter()
    .map(|at| Measurement {
        type_name: t.type_name.clone(),
        occurrence_time: at,
        device_id: "device-a".into(),
        patient_id: Some("patient-a".into()),
        encounter_id: Some("enc-a".into()),
        correlation_id: None,
        properties: props.clone(),
    })
    .collect()
}

#[test]
fn every_fhir_template_produces_valid_observations() {
    let Some(dir) = devices_dir("every_fhir_template_produces_valid_observations") else {
        return;
    };
    let files = [
        "test-input/data_CodeValueFhirTemplate_CodeableConceptAndStringComponent.json",
        "test-input/data_CodeValueFhirTemplate_CodeableConceptData.json",
        "test-input/data_CodeValueFhirTemplate_Components.json",
        "test-input/data_CodeValueFhirTemplate_Quantity.json",
        "test-input/data_CodeValueFhirTemplate_SampledData.json",
        "test-input/data_CodeValueFhirTemplate_String.json",
        "test-input/data_CollectionFhirTemplateValid.json",
        "templates/basic/fhirmapping.json",
        "templates/healthkitOnFhir/fhirmapping.json",
        "templates/sandbox/fhirmapping.json",
    ];
    let (mut observations, mut bundles) = (0, 0);
    for file in files {
        let templates = fhir(&dir, file);
        let ms: Vec<Measurement> = templates.templates().iter().flat_map(synthetic).collect();
        let p = plan(&templates, &create_mode(), &ms, &NoDevices);
        assert!(p.errors.is_empty(), "{file}: {:?}", p.errors);
        let mut resources = Vec::new();
        for o in &p.observations {
            let r = o.resource(None).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(errors(&r), Vec::<String>::new(), "{file}: {r:#}");
            // A redelivery merges into the stored Observation and changes nothing.
            assert_eq!(
                o.resource(Some(&r)).unwrap(),
                r,
                "{file}: merge is not idempotent"
            );
            resources.push(r);
            observations += 1;
        }
        let bundle = p.transaction(resources);
        assert_eq!(errors(&bundle), Vec::<String>::new(), "{file}: bundle");
        bundles += 1;
    }
    println!("validator: {observations} Observations and {bundles} transaction Bundles valid");
    // 42 templates; the 11 with periodInterval 0 (or none) give one Observation per
    // measurement, so two each.
    assert_eq!(observations, 42 + 11);
}

#[test]
fn instance_and_hourly_grouping() {
    let Some(dir) = devices_dir("instance_and_hourly_grouping") else {
        return;
    };
    let t = fhir(&dir, "test-input/data_CollectionFhirTemplateValid.json");
    // deviceWorn is periodInterval 0: two measurements, two Observations.
    let worn = synthetic(t.get("deviceWorn").unwrap());
    let (groups, _) = t.group(&worn);
    assert_eq!(groups.len(), 2);
    // heartrate is hourly: one Observation holding both samples.
    let (groups, _) = t.group(&synthetic(t.get("heartrate").unwrap()));
    assert_eq!(groups.len(), 1);
    let p = plan(
        &t,
        &create_mode(),
        &synthetic(t.get("heartrate").unwrap()),
        &NoDevices,
    );
    let obs = p.observations[0].resource(None).unwrap();
    assert_eq!(obs["effectivePeriod"]["start"], "2024-04-01T09:00:00Z");
    assert_eq!(obs["effectivePeriod"]["end"], "2024-04-01T09:59:59.999Z");
    let data: Vec<&str> = obs["valueSampledData"]["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(data.len(), 3600);
    assert_eq!((data[600], data[690]), ("42.5", "42.5"));
    assert_eq!(data.iter().filter(|d| **d != "E").count(), 2);
    assert_eq!(obs["valueSampledData"]["origin"]["unit"], "count/min");
    assert_eq!(obs["code"]["coding"][0]["code"], "8867-4");
    assert_eq!(obs["code"]["text"], "heartrate");
    assert_eq!(obs["encounter"]["identifier"]["value"], "enc-a");
}

#[test]
fn documentation_blood_pressure_end_to_end() {
    let Some(dir) = devices_dir("documentation_blood_pressure_end_to_end") else {
        return;
    };
    let content = ContentTemplates::from_json_str(&read(
        &dir,
        &input("data_Documentation_CalculatedFunction_BloodPressure_Template.json"),
    ))
    .unwrap();
    let n = content.normalize(&json(
        &dir,
        &input("data_Documentation_CalculatedFunction_BloodPressure_Payload.json"),
    ));
    let t = fhir(&dir, &input("data_CodeValueFhirTemplate_Components.json"));
    let directory = |_: &salus_devices::fhir::Identifier| {
        Some(DeviceRecord {
            device_reference: "Device/bp-cuff".into(),
            patient_reference: Some("Patient/p-1".into()),
        })
    };
    let p = plan(&t, &MappingConfig::default(), &n.measurements, &directory);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    let obs = p.observations[0].resource(None).unwrap();
    assert_eq!(errors(&obs), Vec::<String>::new());
    assert_eq!(obs["subject"]["reference"], "Patient/p-1");
    assert_eq!(obs["device"]["reference"], "Device/bp-cuff");
    assert_eq!(obs["effectivePeriod"]["start"], "2019-02-01T22:00:00Z");
    // 22:46:01.875 is 2761.875 s into the hour: slot 552 of 720 at a 5 s period.
    let comp = |code: &str| {
        obs["component"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"]["coding"][0]["code"] == code)
            .unwrap()["valueSampledData"]
            .clone()
    };
    let dia: Vec<String> = comp("8867-4")["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let sys: Vec<String> = comp("8480-6")["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    assert_eq!(
        (dia.len(), dia[552].as_str(), sys[552].as_str()),
        (720, "87", "123")
    );
    assert_eq!(comp("8867-4")["period"], 5000);
    // Same message again: same identifier, merge yields the same Observation.
    let again = plan(&t, &MappingConfig::default(), &n.measurements, &directory);
    assert_eq!(
        again.observations[0].identifier,
        p.observations[0].identifier
    );
    assert_eq!(again.observations[0].resource(Some(&obs)).unwrap(), obs);
}

#[test]
fn iot_central_messages_to_sandbox_observations() {
    let Some(dir) = devices_dir("iot_central_messages_to_sandbox_observations") else {
        return;
    };
    let content =
        ContentTemplates::from_json_str(&read(&dir, "templates/sandbox/devicecontent.json"))
            .unwrap();
    let n = content.normalize(&json(
        &dir,
        &input("data_IotCentralPayloadExampleMultipleMessages.json"),
    ));
    let t = fhir(&dir, "templates/sandbox/fhirmapping.json");
    let p = plan(&t, &create_mode(), &n.measurements, &NoDevices);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    // 12 measurements, all in the 19:00 hour: device 1qsi9p8t5l2 has 5 types, 24bjobtcf8i 2.
    assert_eq!(p.observations.len(), 7);
    // Two patients (the sandbox uses the device id as patient id) and two devices.
    assert_eq!(p.identity_entries.len(), 4);
    let hr = p
        .observations
        .iter()
        .find(|o| o.group.template.type_name == "heartrate")
        .unwrap()
        .resource(None)
        .unwrap();
    let data: Vec<&str> = hr["valueSampledData"]["data"]
        .as_str()
        .unwrap()
        .split(' ')
        .collect();
    // 30 s period: 19:44:04.941 → slot 88 (69 bpm), 19:45:20.202 → slot 90 (75 bpm).
    assert_eq!(
        (data.len(), data[88], data[89], data[90]),
        (120, "69", "E", "75")
    );
    let resources: Vec<Value> = p
        .observations
        .iter()
        .map(|o| o.resource(None).unwrap())
        .collect();
    for r in &resources {
        assert_eq!(errors(r), Vec::<String>::new(), "{r:#}");
    }
    let bundle = p.transaction(resources);
    assert_eq!(errors(&bundle), Vec::<String>::new());
    assert_eq!(bundle["entry"].as_array().unwrap().len(), 11);
}

#[test]
fn healthkit_quantity_and_codeable_concept() {
    let Some(dir) = devices_dir("healthkit_quantity_and_codeable_concept") else {
        return;
    };
    let content = ContentTemplates::from_json_str(&read(
        &dir,
        "templates/healthkitOnFhir/devicecontent.json",
    ))
    .unwrap();
    let n = content.normalize(&serde_json::json!({"deviceId": "iphone-1", "endDate": "2024-02-02T07:00:00Z", "bodyMass": "81.40"}));
    let mut ms = n.measurements;
    ms[0].patient_id = Some("pat-9".into());
    let t = fhir(&dir, "templates/healthkitOnFhir/fhirmapping.json");
    let p = plan(&t, &create_mode(), &ms, &NoDevices);
    let obs = p.observations[0].resource(None).unwrap();
    assert_eq!(errors(&obs), Vec::<String>::new());
    assert_eq!(obs["effectiveDateTime"], "2024-02-02T07:00:00Z");
    assert_eq!(obs["valueQuantity"]["value"].to_string(), "81.40");
    assert_eq!(obs["valueQuantity"]["code"], "kg");
    assert_eq!(obs["code"]["coding"].as_array().unwrap().len(), 4);

    let t = fhir(
        &dir,
        &input("data_CodeValueFhirTemplate_CodeableConceptAndStringComponent.json"),
    );
    let m = Measurement {
        type_name: "alarmEvent".into(),
        occurrence_time: datetime!(2024-02-02 07:00:00 UTC),
        device_id: "pump-1".into(),
        patient_id: Some("pat-9".into()),
        encounter_id: None,
        correlation_id: None,
        properties: BTreeMap::from([
            ("alarm".into(), "1".into()),
            ("reason".into(), "occlusion".into()),
        ]),
    };
    let p = plan(&t, &create_mode(), &[m], &NoDevices);
    let obs = p.observations[0].resource(None).unwrap();
    assert_eq!(errors(&obs), Vec::<String>::new());
    assert_eq!(obs["valueCodeableConcept"]["text"], "Alarm!");
    assert_eq!(obs["component"][0]["valueString"], "occlusion");
}
