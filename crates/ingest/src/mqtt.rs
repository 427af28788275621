//! MQTT source: subscribes to topics with QoS 1 in a persistent session and acknowledges
//! each message (PUBACK) only after the sink has stored it. A message the sink could not
//! take is left unacknowledged and the session is reconnected, so the broker sends it
//! again (MQTT 3.1.1 §4.4: unacknowledged QoS 1 messages are resent on reconnect).

use crate::{Sink, SourceError};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// `[devices.mqtt]` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Topic filters (`devices/+/telemetry`).
    pub topics: Vec<String>,
    /// Client id of the persistent session: keep it stable across restarts, or messages
    /// sent while the server was down are not redelivered.
    pub client_id: String,
    pub keep_alive: Duration,
    /// Pause before reconnecting after a failure.
    pub retry: Duration,
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
        if self.client_id.trim().is_empty() || self.client_id.len() > 128 {
            return Err(SourceError::Config(
                "mqtt client_id must be 1 to 128 characters".into(),
            ));
        }
        Ok(())
    }
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
    /// this returns only at shutdown.
    pub async fn run(self, sink: Arc<dyn Sink>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                r = self.session(sink.clone()) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "mqtt source: reconnecting");
                    }
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(self.config.retry) => {}
                    }
                }
            }
        }
    }

    /// One connection: subscribe, deliver, ack; returns on a connection or sink failure.
    async fn session(&self, sink: Arc<dyn Sink>) -> Result<(), SourceError> {
        let c = &self.config;
        let mut opts = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        opts.set_keep_alive(c.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut events) = AsyncClient::new(opts, 64);
        for t in &c.topics {
            client
                .subscribe(t.clone(), QoS::AtLeastOnce)
                .await
                .map_err(|e| SourceError::Connection(e.to_string()))?;
        }
        loop {
            let event = events
                .poll()
                .await
                .map_err(|e| SourceError::Connection(e.to_string()))?;
            let Event::Incoming(Packet::Publish(p)) = event else {
                continue;
            };
            let source = format!("mqtt:{}", p.topic);
            match sink.deliver(&p.payload, &source).await {
                Ok(()) => client
                    .ack(&p)
                    .await
                    .map_err(|e| SourceError::Connection(e.to_string()))?,
                Err(e) => {
                    // not acknowledged: reconnect so the broker sends it again
                    return Err(SourceError::Connection(format!(
                        "sink refused a message from {}: {e}",
                        p.topic
                    )));
                }
            }
        }
    }
}
