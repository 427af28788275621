//! Remote patient monitoring end to end with the real binary: a device fleet publishes to
//! Mosquitto and over HTTP → Observations are searchable → a rule fires (Flag, Task,
//! Communication); malformed payloads are dead-lettered; killing the server mid-stream
//! and restarting it loses and duplicates no measurement.
//! Needs an MQTT broker at 127.0.0.1:1883 (`SALUS_TEST_MQTT=host:port` for another);
//! required where `SALUS_REQUIRE_SHARED` is set (CI).

mod process;

use process::{free_port, start_with, stop};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use std::time::Duration;

const CONTENT: &str = r#"{"templateType": "CollectionContent", "template": [{"templateType": "JsonPathContent",
  "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
    "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
    "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}}]}"#;
const FHIR: &str = r#"{"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir",
  "template": {"typeName": "heartrate", "periodInterval": 60,
    "codes": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
    "value": {"valueName": "hr", "valueType": "SampledData", "defaultPeriod": 60000, "unit": "/min"}}}]}"#;
const RULES: &str = r#"{"rules": [{"id": "tachycardia", "type": "heartrate", "value": "hr", "severity": "high",
  "threshold": {"op": ">", "value": 120}}]}"#;

fn broker() -> Option<(String, u16)> {
    process::mqtt_broker("the device end-to-end test")
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.unwrap_or(Value::Null)
}

fn reading(device: &str, minute: u32, hr: u32) -> Value {
    json!({"deviceId": device, "endDate": format!("2026-04-01T09:{minute:02}:00Z"), "heartRate": hr})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_to_observations_alerts_and_restart_safety() {
    let Some((host, mqtt_port)) = broker() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("salus-e2e/{suffix}/telemetry");
    for (f, text) in [
        ("content.json", CONTENT),
        ("fhir.json", FHIR),
        ("rules.json", RULES),
    ] {
        std::fs::write(d.join(f), text).unwrap();
    }
    std::fs::write(
        d.join("salus.toml"),
        format!(
            "[devices]\nmapping = {:?}\nfhir_mapping = {:?}\nrules = {:?}\nhttp_tokens = [\"gateway-secret\"]\n\
             [devices.mqtt]\nhost = {host:?}\nport = {mqtt_port}\ntopics = [{topic:?}]\nclient_id = \"salus-e2e-{suffix}\"\n",
            d.join("content.json"),
            d.join("fhir.json"),
            d.join("rules.json"),
        ),
    )
    .unwrap();
    let config = d.join("salus.toml");
    let args = ["--config", config.to_str().unwrap()];
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let server = start_with(&d.join("data"), port, false, &args);
    let http = reqwest::Client::new();

    // a patient wearing band-7
    let p: Value = json_of(
        http.post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient","name":[{"family":"Wearer"}]}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let patient = p["id"].as_str().unwrap().to_string();
    let device = json!({"resourceType": "Device",
        "identifier": [{"system": "urn:salus:devices:device-id", "value": "band-7"}],
        "patient": {"reference": format!("Patient/{patient}")}});
    let r = http
        .post(format!("{base}/Device"))
        .header("content-type", "application/fhir+json")
        .body(device.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // HTTP source: a token is needed
    let batch = json!([reading("band-7", 0, 70), reading("band-7", 1, 71)]).to_string();
    let r = http
        .post(format!("{base}/devices/messages"))
        .body(batch.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .post(format!("{base}/devices/messages"))
        .bearer_auth("gateway-secret")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // MQTT source: readings, a malformed payload, a high heart rate
    let (mqtt, mut events) = AsyncClient::new(
        MqttOptions::new(format!("fleet-{suffix}"), &host, mqtt_port),
        64,
    );
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let publish = |payload: String| {
        let mqtt = mqtt.clone();
        let topic = topic.clone();
        async move {
            mqtt.publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap()
        }
    };
    for m in 2..10 {
        publish(reading("band-7", m, 72 + m).to_string()).await;
    }
    publish("{not json".to_string()).await;
    publish(reading("band-7", 10, 135).to_string()).await;

    let search = |q: String| {
        let http = http.clone();
        let base = base.clone();
        async move { json_of(http.get(format!("{base}/{q}")).send().await.unwrap()).await }
    };
    let wait_until = |q: String, want: u64| {
        let search = &search;
        async move {
            for _ in 0..100 {
                let b = search(format!("{q}&_total=accurate")).await;
                if b["total"].as_u64() == Some(want) {
                    return b;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "{q}: never {want}: {}",
                search(format!("{q}&_total=accurate")).await
            );
        }
    };
    wait_until(format!("Flag?patient={patient}"), 1).await;
    let obs = wait_until(format!("Observation?patient={patient}&code=8867-4"), 1).await;
    let data = obs["entry"][0]["resource"]["valueSampledData"]["data"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(data.contains("135") && data.contains("70"), "{data}");
    wait_until("Basic?code=device-dead-letter".to_string(), 1).await;
    assert!(
        search(format!("Task?patient={patient}&_total=accurate")).await["total"].as_u64()
            >= Some(1)
    );

    // kill -9 mid-stream; readings published meanwhile arrive after the restart
    let mut server = server;
    server.kill().unwrap();
    server.wait().unwrap();
    for m in 11..20 {
        publish(reading("band-7", m, 80 + m).to_string()).await;
    }
    let server = start_with(&d.join("data"), port, false, &args);
    let mut all = String::new();
    for _ in 0..100 {
        let b = search(format!(
            "Observation?patient={patient}&code=8867-4&_total=accurate"
        ))
        .await;
        assert_eq!(
            b["total"], 1,
            "one Observation for the hour, never a second"
        );
        all = b["entry"][0]["resource"]["valueSampledData"]["data"]
            .as_str()
            .unwrap()
            .to_string();
        if all.contains("99") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in 0..20u32 {
        let hr = match m {
            0 | 1 => 70 + m,
            2..=9 => 72 + m,
            10 => 135,
            _ => 80 + m,
        };
        assert!(
            all.contains(&hr.to_string()),
            "reading of minute {m} ({hr}) is stored: {all}"
        );
    }
    let flags = search(format!("Flag?patient={patient}&_total=accurate")).await;
    assert_eq!(flags["total"], 1, "no second alert");
    stop(server);
}
