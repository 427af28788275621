//! Device-data sources for remote patient monitoring: components that receive device
//! messages from outside and hand each payload to a [`Sink`] (the service's device
//! pipeline), acknowledging it only once the sink has made it durable — at-least-once
//! delivery; the sink's writes are idempotent, so a redelivery changes nothing.
//!
//! Owns: the MQTT source ([`mqtt::MqttSource`], typed [`mqtt::MqttConfig`]) and the
//! [`compliance`] suite every source passes (the HTTP source, `POST /devices/messages`
//! in `salus-api`, runs it too).
//! Must not touch: FHIR, storage, templates — a payload is bytes until the sink reads it.

pub mod compliance;
#[cfg(feature = "mqtt")]
pub mod mqtt;

use async_trait::async_trait;

/// Why a sink could not take a payload. The source does not acknowledge it, so the
/// sender (or broker) delivers it again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where sources deliver payloads.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Process one payload (a JSON message or an array of them; anything else is the
    /// sink's to dead-letter). Return only once it is durable.
    async fn deliver(&self, payload: &[u8], source: &str) -> Result<(), SinkError>;

    /// Process several payloads (each with its source) as one unit of work, so a busy
    /// source pays for one commit per batch instead of one per message. Return only once
    /// all are durable; on an error none may be acknowledged (some may have been stored:
    /// they come again, and the sink's writes are idempotent). The default delivers them
    /// one by one.
    async fn deliver_batch(&self, batch: &[(&[u8], &str)]) -> Result<(), SinkError> {
        for (payload, source) in batch {
            self.deliver(payload, source).await?;
        }
        Ok(())
    }
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid source configuration: {0}")]
    Config(String),
    #[error("broker connection failed: {0}")]
    Connection(String),
}
