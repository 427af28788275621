//! Remote-monitoring intake throughput and alert latency: D simulated devices (one MQTT
//! connection each) publish M messages of R heart-rate readings (one per second of
//! device time) with QoS 1 to a broker that a running `salus serve` subscribes to.
//! `scripts/bench-devices` runs it all (a private broker, the server, this client); by
//! hand, the server must use the configuration this bench writes (`--write-config DIR
//! BROKER` prints its path).
//!
//! Prints stored measurements/s (first publish → the server's
//! `salus_device_measurements_total` reaching the total) and alert latency p50/p99: every
//! tenth device publishes one reading above the alert threshold, at a different moment
//! for each, and the latency is that publish → the alert's notification arriving at a
//! rest-hook receiver in this process (a topic-based Subscription to the built-in
//! `device-alert` topic, created by this bench).
//!
//! Devices publish every INTERVAL_MS. With PHASE `spread` (the default) device `d` starts
//! `d / D` of an interval late, so publishes are spread evenly over each interval as a
//! real fleet's are; with `together` every device publishes at the same instant, a burst
//! of D messages per interval (the worst case).
//!
//! ```text
//! cargo build --release -p salus --example device_bench
//! target/release/examples/device_bench --write-config bench-out/devbench 127.0.0.1:1883
//! target/release/salus serve --data-dir bench-out/devbench/data --config bench-out/devbench/salus.toml &
//! target/release/examples/device_bench http://127.0.0.1:8080 127.0.0.1:1883 1000 20 10 1000 spread
//! ```

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PREFIX: &str = "salus-bench";
const SYSTEM: &str = "urn:salus:devices:device-id";
const TOPIC: &str = "https://salus.dev/fhir/SubscriptionTopic/device-alert";
const CONTENT_EXT: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
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

fn write_config(dir: &str, broker: &str) {
    let (host, port) = broker.rsplit_once(':').expect("BROKER is HOST:PORT");
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
         [devices.mqtt]\nhost = {host:?}\nport = {port}\ntopics = [\"{PREFIX}/+/telemetry\"]\n\
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One simulated device: connect, publish `messages` batches with QoS 1, and wait until
/// the broker has acknowledged every one (PUBACK), reconnecting as often as it takes.
/// Returns how many publishes were acknowledged.
#[allow(clippy::too_many_arguments)]
async fn device(
    d: usize,
    device: String,
    host: String,
    port: u16,
    messages: usize,
    readings: usize,
    interval: Duration,
    phase: Duration,
    alert_at: Option<usize>,
    alert_tx: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
) -> usize {
    let mut opts = MqttOptions::new(format!("sim-{device}"), host, port);
    opts.set_keep_alive(Duration::from_secs(60));
    // A clean session would drop unacknowledged publishes on a reconnect; a persistent
    // one resends them (MQTT 3.1.1 §4.4).
    opts.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(opts, messages + 8);
    let acked = Arc::new(AtomicUsize::new(0));
    let poller = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    let topic = format!("{PREFIX}/{device}/telemetry");
    tokio::time::sleep(phase).await;
    for m in 0..messages {
        let alert_now = alert_at == Some(m);
        let batch: Vec<Value> = (0..readings)
            .map(|r| {
                let second = m * readings + r;
                let hr = if alert_now && r == readings - 1 {
                    190
                } else {
                    60 + (second % 40)
                };
                json!({"deviceId": device, "heartRate": hr,
                       "endDate": format!("2026-03-01T{:02}:{:02}:{:02}Z",
                           8 + second / 3600, (second / 60) % 60, second % 60)})
            })
            .collect();
        client
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&batch).unwrap(),
            )
            .await
            .expect("publish");
        if alert_now {
            let _ = alert_tx.send((d, Instant::now()));
        }
        tokio::time::sleep(interval).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::Relaxed) < messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    poller.abort();
    acked.load(Ordering::Relaxed).min(messages)
}

/// The rest-hook receiver: the first moment an alert for each patient arrived.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> (String, Arrivals, Arc<AtomicUsize>) {
    let arrivals: Arrivals = Arc::default();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (a, h) = (arrivals.clone(), handshakes.clone());
    let app = axum::Router::new().fallback(axum::routing::post(move |body: String| {
        let (a, h) = (a.clone(), h.clone());
        async move {
            let at = Instant::now();
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            for e in v["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                match r["resourceType"].as_str() {
                    Some("Flag") | Some("Communication") => {
                        if let Some(p) = r["subject"]["reference"].as_str() {
                            let p = p.trim_start_matches("Patient/").to_string();
                            a.lock().unwrap().entry(p).or_insert(at);
                        }
                    }
                    Some("Parameters") if body.contains("handshake") => {
                        h.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            axum::http::StatusCode::OK
        }
    }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, arrivals, handshakes)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--write-config") {
        write_config(
            args.get(2).map_or("devbench", String::as_str),
            args.get(3).map_or("127.0.0.1:1883", String::as_str),
        );
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
    let interval = Duration::from_millis(args.get(6).and_then(|a| a.parse().ok()).unwrap_or(100));
    let spread = match args.get(7).map_or("spread", String::as_str) {
        "spread" => true,
        "together" => false,
        other => panic!("PHASE is spread or together, not {other:?}"),
    };
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

    // The alert notifications' receiver and its Subscription (full resources, no filter).
    let (hook, arrivals, handshakes) = receiver().await;
    let sub = post(
        &http,
        &format!("{base}/Subscription"),
        &json!({"resourceType": "Subscription", "status": "requested",
            "reason": "device bench alerts", "criteria": TOPIC,
            "channel": {"type": "rest-hook", "endpoint": hook, "payload": "application/fhir+json",
                "_payload": {"extension": [{"url": CONTENT_EXT, "valueCode": "full-resource"}]}}}),
    )
    .await;
    let hs = Instant::now();
    while handshakes.load(Ordering::Relaxed) == 0 && hs.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handshakes.load(Ordering::Relaxed) > 0,
        "no rest-hook handshake for {}",
        sub["id"]
    );

    let before = stored_measurements(&http, &base).await;
    let total = (devices * messages * readings) as u64;
    // Alerting devices: every tenth, each in a different message, spread over the run.
    let alert_at = |d: usize| {
        d.is_multiple_of(10)
            .then(|| 1 + (d / 10) % (messages.max(2) - 1))
    };
    let alerting = (0..devices).filter(|d| alert_at(*d).is_some()).count();
    println!(
        "{devices} devices × {messages} messages × {readings} readings = {total} measurements; {alerting} alerting; publishes {}",
        if spread { "spread over each interval" } else { "all at once each interval" }
    );

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (alert_tx, mut alert_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (d, (_, dev)) in ids.iter().enumerate() {
        tasks.spawn(device(
            d,
            dev.clone(),
            host.to_string(),
            port,
            messages,
            readings,
            interval,
            if spread {
                interval.mul_f64(d as f64 / devices as f64)
            } else {
                Duration::ZERO
            },
            alert_at(d),
            alert_tx.clone(),
        ));
    }
    drop(alert_tx);
    let mut acked = 0;
    while let Some(n) = tasks.join_next().await {
        acked += n.expect("device task");
    }
    let published = start.elapsed();
    if acked < devices * messages {
        println!(
            "the broker acknowledged only {acked} of {} publishes",
            devices * messages
        );
    }
    let offered = (acked * readings) as u64;
    let n = loop {
        let n = stored_measurements(&http, &base).await - before;
        if n >= offered || start.elapsed() > Duration::from_secs(600) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stored = start.elapsed();
    if n < offered {
        println!("gave up: {n} of {offered} measurements stored after 600 s");
    }
    let mut sent = HashMap::new();
    while let Ok((d, at)) = alert_rx.try_recv() {
        sent.insert(ids[d].0.clone(), at);
    }
    let wait = Instant::now();
    while arrivals.lock().unwrap().len() < sent.len() && wait.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrived = arrivals.lock().unwrap().clone();
    let flags = get(&http, &format!("{base}/Flag?_summary=count")).await;
    let flags = serde_json::from_str::<Value>(&flags).unwrap_or_default()["total"]
        .as_u64()
        .unwrap_or(0);
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter_map(|(p, at)| arrived.get(p).map(|got| got.saturating_duration_since(*at)))
        .collect();
    latencies.sort();
    println!(
        "published in {:.2}s ({:.0} measurements/s offered); stored {n} in {:.2}s: {:.0} measurements/s",
        published.as_secs_f64(),
        offered as f64 / published.as_secs_f64(),
        stored.as_secs_f64(),
        n as f64 / stored.as_secs_f64()
    );
    println!(
        "alerts: {flags} Flags stored, {} of {} notified; latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        sent.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}
