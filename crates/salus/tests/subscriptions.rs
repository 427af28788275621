//! Subscriptions end to end with the real binary: a device fleet publishes to Mosquitto →
//! Observations are searchable → an alert rule fires → a rest-hook receiver in this test
//! and a websocket client both get the `device-alert` notification (with the Flag).
//! Needs an MQTT broker at 127.0.0.1:1883 (`SALUS_TEST_MQTT=host:port` for another);
//! required where `SALUS_REQUIRE_SHARED` is set (CI).

mod process;

use futures::{SinkExt, StreamExt};
use process::{free_port, start_with, stop};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
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
const FILTER: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
const CONTENT_EXT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
const TOPIC: &str = "https://salus.dev/fhir/SubscriptionTopic/device-alert";

fn broker() -> Option<(String, u16)> {
    process::mqtt_broker("the subscription end-to-end test")
}

fn notification_type(v: &Value) -> String {
    v["entry"][0]["resource"]["parameter"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["name"] == "type"))
        .and_then(|x| x["valueCode"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_alert_reaches_a_rest_hook_and_a_websocket() {
    let Some((host, mqtt_port)) = broker() else {
        return;
    };
    // the rest-hook receiver
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let g = got.clone();
    let hook = axum::Router::new().fallback(axum::routing::post(move |body: String| {
        let g = g.clone();
        async move {
            g.lock()
                .unwrap()
                .push(serde_json::from_str(&body).unwrap_or(Value::Null));
            axum::http::StatusCode::OK
        }
    }));
    let hl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/alerts", hl.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(hl, hook).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("salus-subs-e2e/{suffix}/telemetry");
    for (f, text) in [
        ("content.json", CONTENT),
        ("fhir.json", FHIR),
        ("rules.json", RULES),
    ] {
        std::fs::write(d.join(f), text).unwrap();
    }
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    std::fs::write(
        d.join("salus.toml"),
        format!(
            "base_url = {base:?}\n[devices]\nmapping = {:?}\nfhir_mapping = {:?}\nrules = {:?}\n\
             [devices.mqtt]\nhost = {host:?}\nport = {mqtt_port}\ntopics = [{topic:?}]\nclient_id = \"salus-subs-{suffix}\"\n\
             [subscriptions]\npoll_interval_ms = 200\n",
            d.join("content.json"),
            d.join("fhir.json"),
            d.join("rules.json"),
        ),
    )
    .unwrap();
    let config = d.join("salus.toml");
    let server = start_with(
        &d.join("data"),
        port,
        false,
        &["--config", config.to_str().unwrap()],
    );
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http
            .post(format!("{base}/{path}"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, p) = post(
        "Patient",
        json!({"resourceType": "Patient", "name": [{"family": "Wearer"}]}),
    )
    .await;
    let patient = p["id"].as_str().unwrap().to_string();
    let (s, _) = post(
        "Device",
        json!({"resourceType": "Device",
        "identifier": [{"system": "urn:salus:devices:device-id", "value": "band-9"}],
        "patient": {"reference": format!("Patient/{patient}")}}),
    )
    .await;
    assert_eq!(s, 201);

    let filters = json!({"extension": [
        {"url": FILTER, "valueString": format!("Flag?patient=Patient/{patient}")},
        {"url": FILTER, "valueString": format!("Communication?patient=Patient/{patient}")}]});
    let (s, rest) = post(
        "Subscription",
        json!({"resourceType": "Subscription", "status": "requested",
        "reason": "alerts", "criteria": TOPIC, "_criteria": filters,
        "channel": {"type": "rest-hook", "endpoint": hook_url, "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": CONTENT_EXT, "valueCode": "full-resource"}]}}}),
    )
    .await;
    assert_eq!(s, 201, "{rest}");
    let (s, ws_sub) = post(
        "Subscription",
        json!({"resourceType": "Subscription", "status": "requested",
        "reason": "alerts", "criteria": TOPIC, "_criteria": filters,
        "channel": {"type": "websocket", "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": CONTENT_EXT, "valueCode": "id-only"}]}}}),
    )
    .await;
    assert_eq!(s, 201, "{ws_sub}");
    let wid = ws_sub["id"].as_str().unwrap();
    let tok: Value = http
        .get(format!("{base}/Subscription/{wid}/$get-ws-binding-token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let param = |n: &str| {
        tok["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .unwrap()
            .clone()
    };
    let token = param("token")["valueString"].as_str().unwrap().to_string();
    let ws_url = param("websocket-url")["valueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        format!("bind-with-token {token}").into(),
    ))
    .await
    .unwrap();
    let hs = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        notification_type(&serde_json::from_str(hs.to_text().unwrap()).unwrap()),
        "handshake"
    );
    // the rest-hook handshake arrives before any event
    for _ in 0..200 {
        if got
            .lock()
            .unwrap()
            .iter()
            .any(|b| notification_type(b) == "handshake")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got
        .lock()
        .unwrap()
        .iter()
        .any(|b| notification_type(b) == "handshake"));

    // the fleet: normal readings, then a high heart rate
    let (mqtt, mut events) = AsyncClient::new(
        MqttOptions::new(format!("fleet-{suffix}"), &host, mqtt_port),
        64,
    );
    tokio::spawn(async move { while events.poll().await.is_ok() {} });
    for (m, hr) in [(0u32, 72u32), (1, 75), (2, 140)] {
        let reading = json!({"deviceId": "band-9", "endDate": format!("2026-04-01T09:{m:02}:00Z"), "heartRate": hr});
        mqtt.publish(topic.clone(), QoS::AtLeastOnce, false, reading.to_string())
            .await
            .unwrap();
    }

    // Observations are searchable
    let mut found = false;
    for _ in 0..200 {
        let b: Value = http
            .get(format!(
                "{base}/Observation?patient={patient}&code=8867-4&_total=accurate"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if b["total"].as_u64() == Some(1) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the Observation is searchable");

    // the websocket client gets the alert
    let mut ws_types = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ws_types.iter().any(|(t, _): &(String, String)| t == "Flag") {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a websocket notification")
            .unwrap()
            .unwrap();
        let b: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        assert_eq!(notification_type(&b), "event-notification");
        for e in b["entry"].as_array().unwrap().iter().skip(1) {
            let url = e["fullUrl"].as_str().unwrap();
            let rtype = url.rsplit('/').nth(1).unwrap().to_string();
            ws_types.push((rtype, url.to_string()));
        }
    }
    // the rest-hook receiver gets the Flag itself (full-resource) and the Communication
    let mut flag = Value::Null;
    for _ in 0..400 {
        let all = got.lock().unwrap().clone();
        let resources: Vec<Value> = all
            .iter()
            .filter(|b| notification_type(b) == "event-notification")
            .flat_map(|b| {
                b["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .skip(1)
                    .map(|e| e["resource"].clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        if let (Some(f), true) = (
            resources.iter().find(|r| r["resourceType"] == "Flag"),
            resources
                .iter()
                .any(|r| r["resourceType"] == "Communication"),
        ) {
            flag = f.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        flag["status"], "active",
        "the rest-hook got the active Flag"
    );
    assert_eq!(flag["subject"]["reference"], format!("Patient/{patient}"));
    let status: Value = http
        .get(format!(
            "{base}/Subscription/{}/$status",
            rest["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let p = status["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        p.iter()
            .any(|x| x["name"] == "status" && x["valueCode"] == "active"),
        "{status}"
    );
    stop(server);
}
