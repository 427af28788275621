//! The MQTT source against a real broker (Mosquitto on 127.0.0.1:1883 here and in CI;
//! `SALUS_TEST_MQTT=host:port` to use another): the compliance suite, and redelivery of
//! messages published while the source was down.

use async_trait::async_trait;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use salus_ingest::compliance::{self, RecordingSink, SourceHarness};
use salus_ingest::mqtt::{MqttConfig, MqttSource};
use std::sync::Arc;
use std::time::Duration;

fn broker() -> Option<(String, u16)> {
    let addr = std::env::var("SALUS_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if std::net::TcpStream::connect((host, port)).is_ok() {
        return Some((host.to_string(), port));
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!("no MQTT broker at {addr}, and CI requires one (SALUS_REQUIRE_SHARED)");
    }
    eprintln!("SKIPPED: no MQTT broker at {addr}; the MQTT source tests did not run");
    None
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

struct Publisher {
    client: AsyncClient,
    topic: String,
}

impl Publisher {
    fn new(host: &str, port: u16, topic: String) -> Self {
        let (client, mut events) =
            AsyncClient::new(MqttOptions::new(unique("pub"), host, port), 64);
        tokio::spawn(async move { while events.poll().await.is_ok() {} });
        Publisher { client, topic }
    }
}

#[async_trait]
impl SourceHarness for Publisher {
    async fn publish(&self, payload: &[u8]) -> bool {
        self.client
            .publish(
                self.topic.clone(),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .is_ok()
    }
    fn sender_retries(&self) -> bool {
        false
    }
}

fn config(host: &str, port: u16, topic: &str, client_id: &str) -> MqttConfig {
    MqttConfig {
        host: host.into(),
        port,
        topics: vec![topic.into()],
        client_id: client_id.into(),
        retry: Duration::from_millis(100),
        ..MqttConfig::default()
    }
}

#[tokio::test]
async fn mqtt_source_passes_the_compliance_suite() {
    let Some((host, port)) = broker() else { return };
    let topic = unique("salus-test/devices");
    let sink = Arc::new(RecordingSink::default());
    let source = MqttSource::new(config(&host, port, &topic, &unique("salus"))).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s = sink.clone();
    let task = tokio::spawn(source.run(s, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    let publisher = Publisher::new(&host, port, topic.clone());
    compliance::run(&publisher, sink.clone()).await;
    assert!(sink
        .received
        .lock()
        .unwrap()
        .iter()
        .all(|(_, src)| src == &format!("mqtt:{topic}")));
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn shared_subscription_over_several_connections_passes_the_compliance_suite() {
    let Some((host, port)) = broker() else { return };
    let topic = unique("salus-test/shared");
    let sink = Arc::new(RecordingSink::default());
    let source = MqttSource::new(MqttConfig {
        connections: 3,
        ..config(&host, port, &topic, &unique("salus-shared"))
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(source.run(sink.clone(), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await; // subscribed
    let publisher = Publisher::new(&host, port, topic.clone());
    compliance::run(&publisher, sink.clone()).await;
    let _ = stop.send(());
    task.await.unwrap();
}

/// A sink that takes a while per batch and records each batch's size.
#[derive(Default)]
struct SlowBatchSink {
    batches: std::sync::Mutex<Vec<Vec<Vec<u8>>>>,
}

#[async_trait]
impl salus_ingest::Sink for SlowBatchSink {
    async fn deliver(&self, payload: &[u8], source: &str) -> Result<(), salus_ingest::SinkError> {
        self.deliver_batch(&[(payload, source)]).await
    }
    async fn deliver_batch(&self, batch: &[(&[u8], &str)]) -> Result<(), salus_ingest::SinkError> {
        tokio::time::sleep(Duration::from_millis(40)).await;
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(|(p, _)| p.to_vec()).collect());
        Ok(())
    }
}

#[tokio::test]
async fn messages_arriving_during_a_store_go_into_one_batch_and_none_is_lost() {
    let Some((host, port)) = broker() else { return };
    let topic = unique("salus-test/batch");
    let sink = Arc::new(SlowBatchSink::default());
    let source = MqttSource::new(MqttConfig {
        connections: 2,
        ..config(&host, port, &topic, &unique("salus-batch"))
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(source.run(sink.clone(), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = Publisher::new(&host, port, topic.clone());
    for i in 0..200 {
        assert!(publisher.publish(format!("{{\"n\":{i}}}").as_bytes()).await);
    }
    let count = || -> usize { sink.batches.lock().unwrap().iter().map(Vec::len).sum() };
    for _ in 0..400 {
        if count() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    let batches = sink.batches.lock().unwrap().clone();
    let mut got: Vec<String> = batches
        .iter()
        .flatten()
        .map(|p| String::from_utf8(p.clone()).unwrap())
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 200, "every message stored");
    assert!(
        batches.len() < 200 && batches.iter().any(|b| b.len() > 1),
        "messages that wait for a store go in together: {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn messages_sent_while_the_source_is_down_arrive_after_a_restart() {
    let Some((host, port)) = broker() else { return };
    let topic = unique("salus-test/restart");
    let client_id = unique("salus-restart");
    let sink = Arc::new(RecordingSink::default());
    // first run: establishes the persistent session and subscription
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        MqttSource::new(config(&host, port, &topic, &client_id))
            .unwrap()
            .run(sink.clone(), async {
                let _ = stopped.await;
            }),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop.send(());
    task.await.unwrap();
    // published while down
    let publisher = Publisher::new(&host, port, topic.clone());
    for i in 0..5 {
        assert!(publisher.publish(format!("{{\"n\":{i}}}").as_bytes()).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.payloads().is_empty());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        MqttSource::new(config(&host, port, &topic, &client_id))
            .unwrap()
            .run(sink.clone(), async {
                let _ = stopped.await;
            }),
    );
    for _ in 0..100 {
        if sink.payloads().len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    let mut got: Vec<String> = sink
        .payloads()
        .into_iter()
        .map(|p| String::from_utf8(p).unwrap())
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5, "{got:?}");
}

/// A Mosquitto of this test's own on a free port, configured to hold back nothing:
/// unlimited messages in flight to a client and queued for it. `None` (said so) when
/// no `mosquitto` binary is installed.
struct PrivateBroker {
    child: std::process::Child,
    port: u16,
    conf: std::path::PathBuf,
}

impl PrivateBroker {
    fn start() -> Option<Self> {
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/bin/mosquitto",
            "/usr/local/sbin/mosquitto",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let conf = std::env::temp_dir().join(format!("{}.conf", unique("salus-mosquitto")));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 0\nmax_queued_messages 0\n"
            ),
        )
        .ok()?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(PrivateBroker { child, port, conf });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.conf);
    }
}

/// A broker that does not limit the messages in flight (Mosquitto with
/// `max_inflight_messages 0`, and others by design) hands a source far more unacknowledged
/// messages than a batch holds. The source must keep taking and acknowledging them: it
/// once queued acknowledgements faster than its own connection sent them, blocked on the
/// full queue, and stopped reading for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_an_inflight_limit_never_stalls_the_source() {
    let Some(broker) = PrivateBroker::start() else {
        if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
            panic!("no mosquitto binary to start a private broker, and CI requires one");
        }
        eprintln!("SKIPPED: no mosquitto binary; the unlimited-inflight MQTT test did not run");
        return;
    };
    let topic = unique("salus-test/flood");
    let sink = Arc::new(SlowBatchSink::default());
    let source = MqttSource::new(MqttConfig {
        connections: 2,
        max_batch: 5,
        ..config("127.0.0.1", broker.port, &topic, &unique("salus-flood"))
    })
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(source.run(sink.clone(), async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publisher = Publisher::new("127.0.0.1", broker.port, topic.clone());
    const N: usize = 1000;
    for i in 0..N {
        assert!(publisher.publish(format!("{{\"n\":{i}}}").as_bytes()).await);
    }
    let count = || -> usize { sink.batches.lock().unwrap().iter().map(Vec::len).sum() };
    for _ in 0..1200 {
        if count() >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    let mut got: Vec<String> = sink
        .batches
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .map(|p| String::from_utf8(p.clone()).unwrap())
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), N, "every message stored, none stuck");
    drop(broker);
}

#[test]
fn bad_configuration_is_refused() {
    let mut c = MqttConfig::default();
    c.topics.clear();
    assert!(MqttSource::new(c).is_err());
    let c = MqttConfig {
        client_id: String::new(),
        ..MqttConfig::default()
    };
    assert!(MqttSource::new(c)
        .err()
        .unwrap()
        .to_string()
        .contains("client_id"));
    for (connections, max_batch, needle) in [
        (0, 10, "connections"),
        (65, 10, "connections"),
        (1, 0, "max_batch"),
    ] {
        let c = MqttConfig {
            connections,
            max_batch,
            ..MqttConfig::default()
        };
        assert!(MqttSource::new(c)
            .err()
            .unwrap()
            .to_string()
            .contains(needle));
    }
}
