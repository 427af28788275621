//! Salus device-data pipeline core, for remote patient monitoring: device mapping templates →
//! normalized measurements → FHIR Observations, and alert rules over the measurements.
//!
//! What it owns:
//! - [`content`]: device mapping templates in the open-source IoMT FHIR connector / Azure
//!   MedTech format (`CollectionContent` of `JsonPathContent`, `IotJsonPathContent`,
//!   `IotCentralJsonPathContent`, `CalculatedContent`), loaded with every problem reported by
//!   location, and [`ContentTemplates::normalize`], which turns a device message into
//!   [`Measurement`]s;
//! - [`jsonpath`] and [`expression`]: the connector's JSONPath dialect (Json.NET) and JMESPath
//!   with the connector's extra functions;
//! - [`fhir`]: FHIR destination mapping (`CollectionFhir` of `CodeValueFhir`), grouping into
//!   Observations (per measurement, hourly, daily, or per correlation id), SampledData, and
//!   [`merge`] of late samples into a stored Observation;
//! - [`identity`]: identity resolution (Lookup: Device → Patient; Create: conditional creates)
//!   and the FHIR transaction [`identity::Plan`] with deterministic Observation identifiers, so
//!   re-processing a message is idempotent;
//! - [`rules`]: alert rules (threshold, sustained threshold, trend, missing data) with episodes,
//!   serializable state, and the Flag / Task / Communication of an alert.
//!
//! What it must not touch: storage and HTTP. Nothing here reads or writes the FHIR store,
//! opens sockets or spawns tasks: lookups come in through [`identity::DeviceDirectory`], and
//! what must be written goes out as data (bundle entries, resources) for the caller (the
//! `POST /devices/messages` handler, the MQTT source) to send through the one FHIR write path.
//! No function panics on any input; errors are values that say where and what.
//!
//! Typical use, per message:
//! ```
//! use salus_devices::{identity::{DeviceRecord, MappingConfig}, DevicePipeline};
//! use serde_json::json;
//!
//! let content = r#"{"templateType": "CollectionContent", "template": [{"templateType": "JsonPathContent",
//!   "template": {"typeName": "heartrate", "typeMatchExpression": "$..[?(@heartRate)]",
//!     "deviceIdExpression": "$.deviceId", "timestampExpression": "$.endDate",
//!     "values": [{"valueName": "hr", "valueExpression": "$.heartRate", "required": true}]}}]}"#;
//! let fhir = r#"{"templateType": "CollectionFhir", "template": [{"templateType": "CodeValueFhir",
//!   "template": {"typeName": "heartrate", "periodInterval": 60,
//!     "codes": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
//!     "value": {"valueName": "hr", "valueType": "SampledData", "defaultPeriod": 60000, "unit": "/min"}}}]}"#;
//! let pipeline = DevicePipeline::from_json(content, fhir, MappingConfig::default()).unwrap();
//!
//! let normalized = pipeline.normalize(&json!({"deviceId": "band-1", "endDate": "2024-01-01T10:15:00Z", "heartRate": 72}));
//! assert!(normalized.errors.is_empty());
//! let directory = |_: &salus_devices::fhir::Identifier| Some(DeviceRecord {
//!     device_reference: "Device/1".into(), patient_reference: Some("Patient/7".into()) });
//! let plan = pipeline.plan(&normalized.measurements, &directory);
//! // For each planned Observation, the caller looks up `o.search_url()` in its store and
//! // passes what it found (None here) to `o.resource`, which merges.
//! let resources: Vec<_> = plan.observations.iter().map(|o| o.resource(None).unwrap()).collect();
//! let bundle = plan.transaction(resources);
//! assert_eq!(bundle["entry"][0]["request"]["method"], "PUT");
//! ```

pub mod content;
pub mod error;
pub mod expression;
pub mod fhir;
pub mod identity;
pub mod jsonpath;
pub mod rules;

pub use content::{ContentTemplates, Measurement, Normalized};
pub use error::{MappingError, NormalizeError, TemplateError};
pub use fhir::{merge, FhirTemplates};
pub use identity::{DeviceDirectory, MappingConfig, Plan};
pub use rules::{alert_resources, Alert, AlertContext, EngineState, RuleEngine, RuleSet};

use serde_json::Value;

/// A device mapping, a FHIR mapping and the identity configuration, loaded together.
#[derive(Debug, Clone)]
pub struct DevicePipeline {
    /// Device mapping.
    pub content: ContentTemplates,
    /// FHIR destination mapping.
    pub fhir: FhirTemplates,
    /// Identity mode and identifier systems.
    pub config: MappingConfig,
}

impl DevicePipeline {
    /// Loads both mappings from JSON text; the error lists every problem of the first
    /// mapping that has any.
    pub fn from_json(
        content: &str,
        fhir: &str,
        config: MappingConfig,
    ) -> Result<DevicePipeline, TemplateError> {
        Ok(DevicePipeline {
            content: ContentTemplates::from_json_str(content)?,
            fhir: FhirTemplates::from_json_str(fhir)?,
            config,
        })
    }

    /// Device message → measurements (and per-match errors).
    pub fn normalize(&self, message: &Value) -> Normalized {
        self.content.normalize(message)
    }

    /// Measurements → the Observations and identity entries to write.
    pub fn plan(&self, measurements: &[Measurement], directory: &dyn DeviceDirectory) -> Plan {
        identity::plan(&self.fhir, &self.config, measurements, directory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        send_sync::<DevicePipeline>();
        send_sync::<ContentTemplates>();
        send_sync::<FhirTemplates>();
        send_sync::<RuleEngine>();
        send_sync::<Plan>();
        send_sync::<TemplateError>();
    }

    #[test]
    fn pipeline_reports_the_failing_mapping() {
        let fhir = r#"{"templateType": "CollectionFhir", "template": []}"#;
        let e = DevicePipeline::from_json("{", fhir, MappingConfig::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("template is not valid JSON"),
            "{e}"
        );
        let content = r#"{"templateType": "CollectionContent", "template": []}"#;
        let e = DevicePipeline::from_json(content, content, MappingConfig::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported templateType 'CollectionContent'"),
            "{e}"
        );
        let p = DevicePipeline::from_json(content, fhir, MappingConfig::default()).unwrap();
        assert!(p
            .normalize(&serde_json::json!({"x": 1}))
            .measurements
            .is_empty());
    }
}
