//! Remote-monitoring intake throughput and alert latency: D simulated devices (one MQTT
//! connection each) publish M messages of R heart-rate readings (one per second of
//! device time) with QoS 1 to a broker that a running `salus serve` subscribes to.
//! The server must be configured with the templates this bench writes (`--write-config
//! DIR` prints the paths) and `[devices.mqtt] topics = ["<prefix>/+/telemetry"]`.
//!
//! Prints stored measurements/s (first publish → the server's
//! `salus_device_measurements_total` reaching the total) and alert latency p50/p99: a few
//! devices publish one reading above the alert threshold at known instants, and the
//! latency is publish → the alert's `Flag` readable over the API (polled every 5 ms,
//! so each figure is an upper bound by up to that much).
//!
//! ```text
//! cargo build --release -p salus --example device_bench
//! target/release/examples/device_bench --write-config bench-out/devbench
//! target/release/salus serve --data-dir bench-out/devbench/data --config bench-out/devbench/salus.toml &
//! target/release/examples/device_bench http://127.0.0.1:8080 127.0.0.1:1883 1000 20 10
//! ```

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PREFIX: &str = "salus-bench";
const SYSTEM: &str = "urn:salus:devices:device-id";
const CONTENT: &str = r#"{"templateType": "CollectionContent", "template": [{"templateType": "JsonPathContent",
  "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
    "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
    "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}}]}"#;
const FHIR: &str = r#"{"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir",
  "template": {"typeName": "heartrate", "periodInterval": 60,
    "codes": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
    "value": {"valueName": "hr", "valueType": "SampledData", "defaultPeriod": 1000, "unit": "/min"}}}]}"#;
const RULES: &str = r#"{"rules": [{"id": "tachycardia", "type": "heartrate", "value": "hr", "severity": "high",
  "threshold": {"op": ">", "value": 150}}]}"#;

fn write_config(dir: &str) {
    let d = std::path::Path::new(dir);
    std::fs::create_dir_all(d).expect("config dir");
    for (f, text) in [
        ("content.json", CONTENT),
        ("fhir.json", FHIR),
        ("rules.json", RULES),
    ] {
        std::fs::write(d.join(f), text).expect("template");
    }
    let toml = format!(
        "[devices]\nmapping = {:?}\nfhir_mapping = {:?}\nrules = {:?}\n\
         [devices.mqtt]\nhost = \"127.0.0.1\"\nport = 1883\ntopics = [\"{PREFIX}/+/telemetry\"]\n\
         client_id = \"salus-bench\"\nconnections = 8\nmax_batch = 1000\n",
        d.join("content.json"),
        d.join("fhir.json"),
        d.join("rules.json"),
    );
    std::fs::write(d.join("salus.toml"), toml).expect("salus.toml");
    println!("{}", d.join("salus.toml").display());
}

async fn post(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    let r = http
        .post(url)
        .header("content-type", "application/fhir+json")
        .json(body)
        .send()
        .await
        .expect("server reachable");
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{url}: {status} {v}");
    v
}

async fn get(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .header("accept", "application/fhir+json")
        .send()
        .await
        .expect("server reachable")
        .text()
        .await
        .unwrap_or_default()
}

async fn stored_measurements(http: &reqwest::Client, base: &str) -> u64 {
    let text = get(http, &format!("{base}/metrics")).await;
    text.lines()
        .find_map(|l| l.strip_prefix("salus_device_measurements_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

async fn flags_for(http: &reqwest::Client, base: &str, patient: &str) -> u64 {
    let text = get(
        http,
        &format!("{base}/Flag?subject=Patient/{patient}&_summary=count"),
    )
    .await;
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["total"].as_u64())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--write-config") {
        write_config(args.get(2).map_or("devbench", String::as_str));
        return;
    }
    let base = args
        .get(1)
        .cloned()
        .unwrap_or("http://127.0.0.1:8080".into());
    let broker = args.get(2).cloned().unwrap_or("127.0.0.1:1883".into());
    let devices: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let messages: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(20);
    let readings: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(10);
    let (host, port) = broker.rsplit_once(':').expect("HOST:PORT");
    let port: u16 = port.parse().expect("port");
    let http = reqwest::Client::new();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // Patients and their Devices, 250 per transaction.
    let ids: Vec<(String, String)> = (0..devices)
        .map(|d| (format!("bp{run}-{d}"), format!("dev{run}-{d}")))
        .collect();
    for chunk in ids.chunks(250) {
        let mut entries = vec![];
        for (patient, device) in chunk {
            entries.push(
                json!({"resource": {"resourceType": "Patient", "id": patient,
                "name": [{"family": "Bench", "given": [patient]}]},
                "request": {"method": "PUT", "url": format!("Patient/{patient}")}}),
            );
            entries.push(json!({"resource": {"resourceType": "Device", "id": device,
                "identifier": [{"system": SYSTEM, "value": device}],
                "patient": {"reference": format!("Patient/{patient}")}},
                "request": {"method": "PUT", "url": format!("Device/{device}")}}));
        }
        post(
            &http,
            &base,
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    }
    let before = stored_measurements(&http, &base).await;
    let total = (devices * messages * readings) as u64;
    // Alerting devices: every 100th device, in its middle message.
    let alerting: Vec<usize> = (0..devices).step_by(100).collect();
    println!(
        "{devices} devices × {messages} messages × {readings} readings = {total} measurements; {} alerting",
        alerting.len()
    );

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (d, (_, device)) in ids.iter().enumerate() {
        let (host, device) = (host.to_string(), device.clone());
        let alert_tx = alert_tx.clone();
        let alerts = alerting.contains(&d);
        tasks.spawn(async move {
            let mut opts = MqttOptions::new(format!("sim-{device}"), host, port);
            opts.set_keep_alive(Duration::from_secs(60));
            let (client, mut events) = AsyncClient::new(opts, 64);
            let poller = tokio::spawn(async move {
                loop {
                    match events.poll().await {
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            });
            let topic = format!("{PREFIX}/{device}/telemetry");
            for m in 0..messages {
                let alert_now = alerts && m == messages / 2;
                let batch: Vec<Value> = (0..readings)
                    .map(|r| {
                        let second = m * readings + r;
                        let hr = if alert_now && r == readings - 1 { 190 } else { 60 + (second % 40) };
                        json!({"deviceId": device, "heartRate": hr,
                               "endDate": format!("2026-03-01T08:{:02}:{:02}Z", (second / 60) % 60, second % 60)})
                    })
                    .collect();
                client
                    .publish(&topic, QoS::AtLeastOnce, false, serde_json::to_vec(&batch).unwrap())
                    .await
                    .expect("publish");
                if alert_now {
                    let _ = alert_tx.send((d, Instant::now()));
                }
                // A device sends about every 100 ms (10 readings of 1 Hz data per second
                // of wall time would be slower than real devices buffer; this is a load test).
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // let the last PUBACKs arrive
            tokio::time::sleep(Duration::from_millis(500)).await;
            poller.abort();
        });
    }
    drop(alert_tx);

    // Alert latency: poll each alerting patient's Flags after its alert message went out.
    let watcher = {
        let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
        tokio::spawn(async move {
            let mut latencies = vec![];
            let mut watching = vec![];
            while let Some((d, sent)) = alert_rx.recv().await {
                let (http, base, patient) = (http.clone(), base.clone(), ids[d].0.clone());
                watching.push(tokio::spawn(async move {
                    loop {
                        if flags_for(&http, &base, &patient).await > 0 {
                            return Some(sent.elapsed());
                        }
                        if sent.elapsed() > Duration::from_secs(60) {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }));
            }
            for w in watching {
                if let Ok(Some(l)) = w.await {
                    latencies.push(l);
                }
            }
            latencies
        })
    };
    while tasks.join_next().await.is_some() {}
    let published = start.elapsed();
    loop {
        let n = stored_measurements(&http, &base).await - before;
        if n >= total {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            println!("gave up: {n} of {total} measurements stored after 600 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = start.elapsed();
    let mut latencies = watcher.await.unwrap();
    latencies.sort();
    println!(
        "published in {:.2}s ({:.0} measurements/s offered); stored in {:.2}s: {:.0} measurements/s",
        published.as_secs_f64(),
        total as f64 / published.as_secs_f64(),
        stored.as_secs_f64(),
        total as f64 / stored.as_secs_f64()
    );
    println!(
        "alerts: {} of {} seen; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        alerting.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
