//! Remote patient monitoring wiring: the `[devices]` configuration, the sink that hands
//! device payloads to the service's pipeline, the MQTT source and the missing-data timer.

use anyhow::{Context, Result};
use async_trait::async_trait;
use salus_devices::identity::{IdentityMode, MappingConfig};
use salus_devices::{DevicePipeline, RuleEngine, RuleSet};
use salus_ingest::{Sink, SinkError};
use salus_service::{DeviceIngest, FhirService};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// `[devices]`: off unless `mapping` and `fhir_mapping` are set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Device mapping template (`CollectionContent`, the IoMT connector's format).
    pub mapping: Option<PathBuf>,
    /// FHIR destination mapping (`CollectionFhir`).
    pub fhir_mapping: Option<PathBuf>,
    /// Alert rules (JSON, see docs/devices.md).
    pub rules: Option<PathBuf>,
    /// `lookup` (Device → Patient through Device.patient, the default) or `create`.
    pub identity_mode: Option<IdentityMode>,
    /// `Device.identifier.system` of device ids in messages.
    pub device_identifier_system: Option<String>,
    /// Bearer tokens for `POST /devices/messages` (one per device or gateway).
    pub http_tokens: Vec<String>,
    /// Owner of alert Tasks and recipient of alert Communications (`CareTeam/…`).
    pub care_team: Option<String>,
    /// Seconds between missing-data rule checks.
    pub tick_seconds: u64,
    pub mqtt: Option<MqttSettings>,
}

/// `[devices.mqtt]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub topics: Vec<String>,
    pub client_id: String,
    /// Broker connections sharing the subscription (`$share/…`, MQTT shared
    /// subscriptions) when above 1: the broker keeps a limited number of unacknowledged
    /// messages in flight per connection (Mosquitto: 20), so more connections let more
    /// messages into one batch.
    pub connections: usize,
    /// Most messages stored in one transaction.
    pub max_batch: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        let d = salus_ingest::mqtt::MqttConfig::default();
        MqttSettings {
            host: d.host,
            port: d.port,
            topics: d.topics,
            client_id: d.client_id,
            connections: d.connections,
            max_batch: d.max_batch,
        }
    }
}

/// The device pipeline as a sink of sources.
pub struct ServiceSink {
    pub service: FhirService,
    pub ingest: Arc<DeviceIngest>,
}

#[async_trait]
impl Sink for ServiceSink {
    async fn deliver(&self, payload: &[u8], source: &str) -> Result<(), SinkError> {
        match self
            .service
            .ingest_device_payload(&self.ingest, payload, source)
            .await
        {
            Ok(report) => {
                tracing::debug!(
                    source,
                    measurements = report.measurements,
                    written = report.observations_written,
                    dead = report.dead_letters.len(),
                    "device payload stored"
                );
                Ok(())
            }
            Err(e) => Err(SinkError(e.to_string())),
        }
    }

    async fn deliver_batch(&self, batch: &[(&[u8], &str)]) -> Result<(), SinkError> {
        // Payloads that are not JSON objects or arrays go one by one (each becomes its own
        // dead letter); the messages of all the others are stored in one transaction.
        let mut messages: Vec<(serde_json::Value, &str)> = vec![];
        for (payload, source) in batch {
            match serde_json::from_slice::<serde_json::Value>(payload) {
                Ok(serde_json::Value::Array(items)) => {
                    messages.extend(items.into_iter().map(|m| (m, *source)))
                }
                Ok(v @ serde_json::Value::Object(_)) => messages.push((v, *source)),
                _ => self.deliver(payload, source).await?,
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let tagged: Vec<(&serde_json::Value, &str)> =
            messages.iter().map(|(m, s)| (m, *s)).collect();
        match self
            .service
            .ingest_device_batch(&self.ingest, &tagged)
            .await
        {
            Ok(report) => {
                tracing::debug!(
                    payloads = batch.len(),
                    measurements = report.measurements,
                    written = report.observations_written,
                    dead = report.dead_letters.len(),
                    "device batch stored"
                );
                Ok(())
            }
            Err(e) => Err(SinkError(e.to_string())),
        }
    }
}

/// Everything device ingestion needs at run time.
pub struct DeviceRuntime {
    pub ingest: Arc<DeviceIngest>,
    pub sink: Arc<ServiceSink>,
    pub tokens: Vec<String>,
    pub mqtt: Option<salus_ingest::mqtt::MqttSource>,
    pub tick: std::time::Duration,
}

impl DevicesConfig {
    pub fn enabled(&self) -> bool {
        self.mapping.is_some() || self.fhir_mapping.is_some()
    }

    /// Load the templates and rules (every problem named with its file).
    pub fn load(&self, service: &FhirService) -> Result<Option<DeviceRuntime>> {
        if !self.enabled() {
            return Ok(None);
        }
        let read = |p: &Option<PathBuf>, what: &str| -> Result<String> {
            let p = p
                .as_ref()
                .with_context(|| format!("[devices] needs {what} as well"))?;
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let content = read(&self.mapping, "mapping")?;
        let fhir = read(&self.fhir_mapping, "fhir_mapping")?;
        let mut mapping = MappingConfig::default();
        if let Some(m) = self.identity_mode {
            mapping.identity_mode = m;
        }
        if let Some(s) = &self.device_identifier_system {
            mapping.device_identifier_system = s.clone();
        }
        let pipeline = DevicePipeline::from_json(&content, &fhir, mapping)
            .map_err(|e| anyhow::anyhow!("[devices] templates: {e}"))?;
        let rules = match &self.rules {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?;
                let set = RuleSet::from_json_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                Some(RuleEngine::new(set).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
            }
            None => None,
        };
        let ingest = Arc::new(DeviceIngest::new(pipeline, rules, self.care_team.clone()));
        let mqtt = match &self.mqtt {
            Some(m) => Some(
                salus_ingest::mqtt::MqttSource::new(salus_ingest::mqtt::MqttConfig {
                    host: m.host.clone(),
                    port: m.port,
                    topics: m.topics.clone(),
                    client_id: m.client_id.clone(),
                    connections: m.connections,
                    max_batch: m.max_batch,
                    ..Default::default()
                })
                .map_err(|e| anyhow::anyhow!("[devices.mqtt]: {e}"))?,
            ),
            None => None,
        };
        Ok(Some(DeviceRuntime {
            sink: Arc::new(ServiceSink {
                service: service.clone(),
                ingest: ingest.clone(),
            }),
            ingest,
            tokens: self.http_tokens.clone(),
            mqtt,
            tick: std::time::Duration::from_secs(if self.tick_seconds == 0 {
                60
            } else {
                self.tick_seconds
            }),
        }))
    }
}
