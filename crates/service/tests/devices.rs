//! Device messages through the service: Device → Patient lookup, idempotent Observations,
//! dead letters with the reason, alerts once per episode.

use salus_devices::identity::MappingConfig;
use salus_devices::{DevicePipeline, RuleEngine, RuleSet};
use salus_service::{DeviceIngest, FhirService, Limits, DEAD_LETTER_CODE, SALUS_CODES};
use salus_store::sqlite::{SqliteOptions, SqliteStore};
use serde_json::{json, Value};
use std::sync::Arc;

const CONTENT: &str = r#"{"templateType": "CollectionContent", "template": [{"templateType": "JsonPathContent",
  "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
    "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
    "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}}]}"#;
const FHIR: &str = r#"{"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir",
  "template": {"typeName": "heartrate", "periodInterval": 60,
    "codes": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
    "value": {"valueName": "hr", "valueType": "SampledData", "defaultPeriod": 60000, "unit": "/min"}}}]}"#;

fn service(dir: &std::path::Path) -> FhirService {
    let store = SqliteStore::open_dir(dir, SqliteOptions::default()).unwrap();
    FhirService::new(Arc::new(store), Limits::default())
}

fn ingest() -> DeviceIngest {
    let pipeline = DevicePipeline::from_json(CONTENT, FHIR, MappingConfig::default()).unwrap();
    let rules = RuleSet::from_json_str(
        r#"{"rules": [{"id": "tachycardia", "type": "heartrate", "value": "hr", "severity": "high",
            "threshold": {"op": ">", "value": 120}}]}"#,
    )
    .unwrap();
    DeviceIngest::new(pipeline, Some(RuleEngine::new(rules).unwrap()), None)
}

async fn count(svc: &FhirService, rtype: &str, query: &str) -> u64 {
    let mut pairs = salus_service::parse_pairs(query);
    pairs.push(("_total".into(), "accurate".into()));
    svc.search(rtype, &pairs, true)
        .await
        .unwrap()
        .page
        .total
        .unwrap()
}

fn reading(device: &str, minute: u32, hr: u32) -> Value {
    json!({"deviceId": device, "endDate": format!("2026-03-01T10:{minute:02}:00Z"), "heartRate": hr})
}

#[tokio::test]
async fn device_messages_become_idempotent_observations_dead_letters_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let ingest = ingest();
    let patient = svc
        .create(
            "Patient",
            json!({"resourceType": "Patient", "name": [{"family": "Monitored"}]}),
            None,
        )
        .await
        .unwrap()
        .record
        .id;
    svc.create(
        "Device",
        json!({"resourceType": "Device",
            "identifier": [{"system": "urn:salus:devices:device-id", "value": "band-1"}],
            "patient": {"reference": format!("Patient/{patient}")}}),
        None,
    )
    .await
    .unwrap();

    let batch = vec![reading("band-1", 1, 72), reading("band-1", 2, 75)];
    let r = svc
        .ingest_device_messages(&ingest, &batch, "http")
        .await
        .unwrap();
    assert_eq!(
        (r.messages, r.measurements, r.observations_written),
        (2, 2, 1),
        "{r:?}"
    );
    assert!(r.dead_letters.is_empty());
    assert_eq!(
        count(
            &svc,
            "Observation",
            &format!("patient={patient}&code=8867-4")
        )
        .await,
        1
    );

    // a redelivery changes nothing and creates nothing
    let r = svc
        .ingest_device_messages(&ingest, &batch, "http")
        .await
        .unwrap();
    assert_eq!(
        (r.observations_written, r.observations_unchanged),
        (0, 1),
        "{r:?}"
    );
    assert_eq!(count(&svc, "Observation", "code=8867-4").await, 1);
    let obs = svc
        .search("Observation", &[("code".into(), "8867-4".into())], true)
        .await
        .unwrap()
        .page
        .entries[0]
        .clone();
    assert_eq!(obs.version, 1, "not even a new version");

    // a late reading in the same hour merges into the same Observation
    let r = svc
        .ingest_device_messages(&ingest, &[reading("band-1", 30, 80)], "http")
        .await
        .unwrap();
    assert_eq!(r.observations_written, 1);
    assert_eq!(count(&svc, "Observation", "code=8867-4").await, 1);
    let body: Value = serde_json::from_str(
        svc.read("Observation", &obs.id)
            .await
            .unwrap()
            .body
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let data = body["valueSampledData"]["data"].as_str().unwrap();
    assert!(
        data.contains("72") && data.contains("75") && data.contains("80"),
        "{data}"
    );

    // unknown device, and a message no template matches: dead letters with the reason
    let r = svc
        .ingest_device_messages(
            &ingest,
            &[reading("stranger", 5, 70), json!({"temperature": 37})],
            "mqtt:devices/x",
        )
        .await
        .unwrap();
    assert_eq!(r.dead_letters.len(), 2, "{r:?}");
    let letters = svc
        .search(
            "Basic",
            &[("code".into(), format!("{SALUS_CODES}|{DEAD_LETTER_CODE}"))],
            true,
        )
        .await
        .unwrap();
    let texts: Vec<String> = letters
        .page
        .entries
        .iter()
        .map(|e| e.body.clone().unwrap())
        .collect();
    assert_eq!(texts.len(), 2);
    assert!(texts.iter().any(|t| t.contains("stranger")), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("no device mapping template")),
        "{texts:?}"
    );
    assert!(texts.iter().all(|t| t.contains("mqtt:devices/x")));

    // a high heart rate alerts once per episode
    let r = svc
        .ingest_device_messages(&ingest, &[reading("band-1", 40, 130)], "http")
        .await
        .unwrap();
    assert!(r.alert_resources >= 3, "Flag, Task, Communication: {r:?}");
    assert_eq!(count(&svc, "Flag", &format!("patient={patient}")).await, 1);
    let tasks = count(&svc, "Task", "").await;
    let r = svc
        .ingest_device_messages(&ingest, &[reading("band-1", 41, 140)], "http")
        .await
        .unwrap();
    assert_eq!(r.alert_resources, 0, "no alert storm: {r:?}");
    assert_eq!(count(&svc, "Task", "").await, tasks);

    // raw payloads: an array is several messages; junk is dead-lettered, not dropped
    let r = svc
        .ingest_device_payload(
            &ingest,
            br#"[{"deviceId":"band-1","endDate":"2026-03-01T11:00:00Z","heartRate":70}]"#,
            "http",
        )
        .await
        .unwrap();
    assert_eq!((r.messages, r.observations_written), (1, 1));
    let r = svc
        .ingest_device_payload(&ingest, b"\x00garbage", "http")
        .await
        .unwrap();
    assert_eq!(r.dead_letters.len(), 1);
    let letter = svc.read("Basic", &r.dead_letters[0]).await.unwrap();
    assert!(letter.body.unwrap().contains("not JSON"));
}

/// The statuses of every Flag, sorted.
async fn flags(svc: &FhirService) -> Vec<String> {
    let page = svc
        .search("Flag", &[("_count".into(), "100".into())], true)
        .await
        .unwrap()
        .page;
    let mut out: Vec<String> = page
        .entries
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e.body.as_deref().unwrap()).unwrap();
            v["status"].as_str().unwrap().to_string()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn alert_rule_state_survives_a_restart_and_erasure_forgets_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut patients = vec![];
    {
        let svc = service(dir.path());
        let ingest = ingest();
        for n in 0..3 {
            let patient = svc
                .create(
                    "Patient",
                    json!({"resourceType": "Patient", "name": [{"family": format!("Watched{n}")}]}),
                    None,
                )
                .await
                .unwrap()
                .record
                .id;
            svc.create(
                "Device",
                json!({"resourceType": "Device",
                    "identifier": [{"system": "urn:salus:devices:device-id", "value": format!("cuff-{n}")}],
                    "patient": {"reference": format!("Patient/{patient}")}}),
                None,
            )
            .await
            .unwrap();
            patients.push(patient);
        }
        // cuff-0 and cuff-1 start an episode; cuff-2 stays normal
        let batch = vec![
            reading("cuff-0", 1, 130),
            reading("cuff-1", 1, 140),
            reading("cuff-2", 1, 80),
        ];
        let r = svc
            .ingest_device_messages(&ingest, &batch, "http")
            .await
            .unwrap();
        assert!(r.alert_resources > 0, "{r:?}");
        assert_eq!(flags(&svc).await, ["active", "active"]);
    }

    // "restart": a new service and pipeline on the same data dir, state loaded from it
    let svc = service(dir.path());
    let ingest = ingest();
    assert_eq!(svc.load_device_rule_state(&ingest).await.unwrap(), 3);
    // the condition persists: no second alert for the open episodes
    let r = svc
        .ingest_device_messages(
            &ingest,
            &[reading("cuff-0", 2, 135), reading("cuff-1", 2, 150)],
            "http",
        )
        .await
        .unwrap();
    assert_eq!(
        r.alert_resources, 0,
        "no alert storm after a restart: {r:?}"
    );
    assert_eq!(flags(&svc).await, ["active", "active"]);
    // it clears: the stored episode is closed (its Flag inactive), not a new one opened
    svc.ingest_device_messages(&ingest, &[reading("cuff-0", 3, 70)], "http")
        .await
        .unwrap();
    assert_eq!(flags(&svc).await, ["active", "inactive"]);

    // erasure of a patient removes its rule state from memory and from the store
    assert!(svc
        .forget_device_rule_subject(&ingest, &patients[1])
        .await
        .unwrap());
    let svc = service(dir.path());
    let resumed = self::ingest();
    assert_eq!(svc.load_device_rule_state(&resumed).await.unwrap(), 2);
    let keys: Vec<(String, String)> = (0..salus_service::RULE_STATE_SHARDS)
        .map(|k| ("Binary".to_string(), salus_service::rule_state_id(k)))
        .collect();
    let stored = svc.store().read_many(&keys).await.unwrap();
    assert!(!stored.is_empty());
    for r in stored {
        use base64::Engine;
        let body: Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        let data = base64::engine::general_purpose::STANDARD
            .decode(body["data"].as_str().unwrap())
            .unwrap();
        let text = String::from_utf8(data).unwrap();
        assert!(!text.contains(&patients[1]), "erased patient in rule state");
        assert_eq!(r.version, 1, "rule state keeps no history");
    }
}

/// An episode that opens and closes within one batch (a reading over the threshold, then a
/// normal one) is one Flag with two versions, raised then cleared, not two Flags; and one
/// device's messages arriving in the wrong order still raise the alert.
#[tokio::test]
async fn an_episode_within_one_batch_is_one_flag_raised_then_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path());
    let ingest = ingest();
    for (p, d) in [("p-inbatch", "band-a"), ("p-reordered", "band-b")] {
        svc.update(
            "Patient",
            p,
            json!({"resourceType": "Patient", "id": p, "name": [{"family": "Quick"}]}),
            None,
        )
        .await
        .unwrap();
        svc.create(
            "Device",
            json!({"resourceType": "Device",
                "identifier": [{"system": "urn:salus:devices:device-id", "value": d}],
                "patient": {"reference": format!("Patient/{p}")}}),
            None,
        )
        .await
        .unwrap();
    }
    let batch = vec![
        reading("band-a", 1, 150),
        reading("band-a", 2, 70),
        // band-b: the newer normal reading first, the dangerous one late
        reading("band-b", 5, 70),
        reading("band-b", 4, 160),
    ];
    svc.ingest_device_messages(&ingest, &batch, "http")
        .await
        .unwrap();
    assert_eq!(count(&svc, "Flag", "patient=Patient/p-inbatch").await, 1);
    let page = svc
        .search(
            "Flag",
            &[("patient".into(), "Patient/p-inbatch".into())],
            true,
        )
        .await
        .unwrap()
        .page;
    let flag: Value = serde_json::from_str(page.entries[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(flag["status"], "inactive");
    assert_eq!(
        flag["meta"]["versionId"], "2",
        "raised, then cleared: {flag}"
    );
    assert_eq!(count(&svc, "Flag", "patient=Patient/p-reordered").await, 1);
    assert_eq!(
        count(&svc, "Communication", "patient=Patient/p-reordered").await,
        1
    );
}
