//! MQTT source: subscribes to topics with QoS 1 in a persistent session and acknowledges
//! each message (PUBACK) only after the sink has stored it. A message the sink could not
//! take is left unacknowledged and the session is reconnected, so the broker sends it
//! again (MQTT 3.1.1 §4.4: unacknowledged QoS 1 messages are resent on reconnect).
//!
//! Throughput: messages that arrive while a batch is being stored wait and go into the
//! next one, so a busy fleet costs one transaction per batch, not one per message, and a
//! quiet one adds no delay. A broker keeps only a few unacknowledged messages in flight
//! per connection (Mosquitto's `max_inflight_messages`, 20 by default), which caps a
//! batch; with `connections` above 1 the source opens that many sessions on one shared
//! subscription (`$share/<client_id>/<topic>`), and the broker spreads the messages over
//! them. A connection itself holds at most `max_batch` unacknowledged messages and stops
//! reading until the sink has taken them, so a broker without such a limit cannot flood
//! it. PUBACKs go out per connection in the order the messages came (§4.6).

use crate::{Sink, SourceError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// `[devices.mqtt]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Topic filters (`devices/+/telemetry`).
    pub topics: Vec<String>,
    /// Client id of the persistent session: keep it stable across restarts, or messages
    /// sent while the server was down are not redelivered. With several connections,
    /// connection `i` is `<client_id>-<i>` and the share group is `<client_id>`.
    pub client_id: String,
    pub keep_alive: Duration,
    /// Pause before reconnecting after a failure.
    pub retry: Duration,
    /// Broker connections on one shared subscription (1: a plain subscription).
    pub connections: usize,
    /// Most messages handed to the sink as one batch.
    pub max_batch: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            topics: vec!["devices/#".into()],
            client_id: "salus-devices".into(),
            keep_alive: Duration::from_secs(30),
            retry: Duration::from_millis(500),
            connections: 1,
            max_batch: 500,
        }
    }
}

impl MqttConfig {
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.host.trim().is_empty() {
            return Err(SourceError::Config("mqtt host is empty".into()));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(SourceError::Config(
                "mqtt needs at least one non-empty topic".into(),
            ));
        }
        if self.client_id.trim().is_empty() || self.client_id.len() > 120 {
            return Err(SourceError::Config(
                "mqtt client_id must be 1 to 120 characters".into(),
            ));
        }
        if self.connections > 1 && self.client_id.contains(['/', '+', '#']) {
            return Err(SourceError::Config(
                "mqtt client_id names the share group when connections > 1: no '/', '+' or '#'"
                    .into(),
            ));
        }
        if !(1..=64).contains(&self.connections) {
            return Err(SourceError::Config(
                "mqtt connections must be 1 to 64".into(),
            ));
        }
        if !(1..=10_000).contains(&self.max_batch) {
            return Err(SourceError::Config(
                "mqtt max_batch must be 1 to 10000".into(),
            ));
        }
        Ok(())
    }
}

/// A received message on its way to the sink, and where to report whether it was stored.
struct Pending {
    payload: Vec<u8>,
    source: String,
    done: mpsc::UnboundedSender<bool>,
}

/// The MQTT source.
pub struct MqttSource {
    config: MqttConfig,
}

impl MqttSource {
    pub fn new(config: MqttConfig) -> Result<Self, SourceError> {
        config.validate()?;
        Ok(MqttSource { config })
    }

    /// Receive until `shutdown` completes. Connection failures are retried (logged), so
    /// this returns only at shutdown. Messages not yet stored then stay unacknowledged
    /// and are delivered again after a restart.
    pub async fn run(self, sink: Arc<dyn Sink>, shutdown: impl Future<Output = ()>) {
        let c = &self.config;
        let (queue, received) = mpsc::channel::<Pending>(c.max_batch * 2);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(batches(received, sink, c.max_batch));
        for i in 0..c.connections {
            let config = c.clone();
            let queue = queue.clone();
            tasks.spawn(async move {
                loop {
                    if let Err(e) = session(&config, i, &queue).await {
                        tracing::warn!(error = %e, connection = i, "mqtt source: reconnecting");
                    }
                    tokio::time::sleep(config.retry).await;
                }
            });
        }
        drop(queue);
        shutdown.await;
        tasks.shutdown().await;
    }
}

/// Hand what has arrived to the sink, a batch at a time, and report each message's fate
/// to its connection.
async fn batches(mut received: mpsc::Receiver<Pending>, sink: Arc<dyn Sink>, max: usize) {
    while let Some(first) = received.recv().await {
        let mut batch = vec![first];
        while batch.len() < max {
            match received.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let items: Vec<(&[u8], &str)> = batch
            .iter()
            .map(|p| (p.payload.as_slice(), p.source.as_str()))
            .collect();
        let stored = match sink.deliver_batch(&items).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, messages = batch.len(), "mqtt source: the sink refused a batch");
                false
            }
        };
        for p in batch {
            // A closed channel: that connection is gone; the broker resends its messages.
            let _ = p.done.send(stored);
        }
    }
}

/// One connection: subscribe, pass messages on, acknowledge the stored ones in order;
/// returns on a connection failure or a refused message.
async fn session(
    c: &MqttConfig,
    index: usize,
    queue: &mpsc::Sender<Pending>,
) -> Result<(), SourceError> {
    let shared = c.connections > 1;
    let client_id = if shared {
        format!("{}-{index}", c.client_id)
    } else {
        c.client_id.clone()
    };
    let mut opts = MqttOptions::new(client_id, c.host.clone(), c.port);
    opts.set_keep_alive(c.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
    let max_waiting = c.max_batch;
    let (client, mut events) = AsyncClient::new(opts, c.max_batch + 64);
    for t in &c.topics {
        let filter = if shared {
            format!("$share/{}/{t}", c.client_id)
        } else {
            t.clone()
        };
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .map_err(|e| SourceError::Connection(e.to_string()))?;
    }
    let (done, mut outcomes) = mpsc::unbounded_channel::<bool>();
    // Received, handed to the sink, not yet acknowledged: at most `max_batch` of them, so
    // a broker that does not limit the messages in flight cannot flood this connection.
    let mut waiting: VecDeque<Publish> = VecDeque::new();
    // Stored, acknowledgement not yet handed to the event loop because its request queue
    // was full. Acknowledgements are never awaited: only this task drives the event loop
    // that empties that queue, so waiting for room there would stop the connection for
    // good. They go out in order as the loop makes room (§4.6).
    let mut unacked: VecDeque<Publish> = VecDeque::new();
    loop {
        while let Some(p) = unacked.front() {
            if client.try_ack(p).is_err() {
                break;
            }
            unacked.pop_front();
        }
        tokio::select! {
            // Outcomes come in the order the messages were queued: one per message.
            Some(stored) = outcomes.recv(), if !waiting.is_empty() => {
                let p = waiting.pop_front().expect("a message per outcome");
                if !stored {
                    // not acknowledged: reconnect so the broker sends it again
                    return Err(SourceError::Connection(format!(
                        "sink refused a message from {}",
                        p.topic
                    )));
                }
                if !unacked.is_empty() || client.try_ack(&p).is_err() {
                    unacked.push_back(p);
                }
            }
            // Driven while acknowledgements are pending too, since it is what sends them.
            event = events.poll(), if waiting.len() < max_waiting || !unacked.is_empty() => {
                let event = event.map_err(|e| SourceError::Connection(e.to_string()))?;
                let Event::Incoming(Packet::Publish(p)) = event else {
                    continue;
                };
                let pending = Pending {
                    payload: p.payload.to_vec(),
                    source: format!("mqtt:{}", p.topic),
                    done: done.clone(),
                };
                waiting.push_back(p);
                queue
                    .send(pending)
                    .await
                    .map_err(|_| SourceError::Connection("the source is shutting down".into()))?;
            }
        }
    }
}
