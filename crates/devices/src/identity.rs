//! Identity resolution and the FHIR transaction a batch of measurements turns into.
//!
//! Two modes, as in the connector:
//! - [`IdentityMode::Lookup`]: the device must already exist as a FHIR `Device` (found by
//!   identifier) whose `Device.patient` names the patient. The caller answers lookups through
//!   [`DeviceDirectory`]; an unknown device, or one without a patient, is an error.
//! - [`IdentityMode::Create`]: the message names the patient; the plan holds conditional
//!   creates (`ifNoneExist` on identifier) of the `Patient` and the `Device` (linked to the
//!   patient), and Observations reference them by their transaction `fullUrl`s.
//!
//! Nothing here touches storage: [`Plan`] is data the caller acts on. For each
//! [`PlannedObservation`] the caller reads the stored Observation with
//! [`PlannedObservation::search_url`] (if any), builds the resource with
//! [`PlannedObservation::resource`] (which merges), and sends [`Plan::transaction`].

use crate::content::Measurement;
use crate::error::MappingError;
use crate::fhir::{merge, stable_hash, FhirTemplates, Identifier, ObservationGroup, Subject};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// How a device message's patient is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// Device → Patient through `Device.patient`; devices are registered beforehand.
    #[default]
    Lookup,
    /// Patient and Device are created from the message's ids when missing.
    Create,
}

/// Identifier systems and the identity mode (part of the server's device configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MappingConfig {
    /// Lookup or Create.
    pub identity_mode: IdentityMode,
    /// `Device.identifier.system` under which device ids from messages are registered.
    pub device_identifier_system: String,
    /// `Patient.identifier.system` for patient ids from messages (Create mode).
    pub patient_identifier_system: String,
    /// `Encounter.identifier.system` for encounter ids from messages (logical references).
    pub encounter_identifier_system: String,
    /// `Observation.identifier.system` of the deterministic group identifiers.
    pub observation_identifier_system: String,
}

impl Default for MappingConfig {
    fn default() -> Self {
        MappingConfig {
            identity_mode: IdentityMode::Lookup,
            device_identifier_system: "urn:salus:devices:device-id".into(),
            patient_identifier_system: "urn:salus:devices:patient-id".into(),
            encounter_identifier_system: "urn:salus:devices:encounter-id".into(),
            observation_identifier_system: "urn:salus:devices:observation".into(),
        }
    }
}

/// A registered Device as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// `Device/{id}`.
    pub device_reference: String,
    /// `Device.patient.reference` (`Patient/{id}`), if linked.
    pub patient_reference: Option<String>,
}

/// Device lookup, supplied by the caller (the server answers it from its store).
pub trait DeviceDirectory {
    /// The Device with identifier `system|value`, if one exists.
    fn find_device(&self, identifier: &Identifier) -> Option<DeviceRecord>;
}

/// A directory that knows no device (Create mode needs none).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDevices;

impl DeviceDirectory for NoDevices {
    fn find_device(&self, _: &Identifier) -> Option<DeviceRecord> {
        None
    }
}

impl<F: Fn(&Identifier) -> Option<DeviceRecord>> DeviceDirectory for F {
    fn find_device(&self, identifier: &Identifier) -> Option<DeviceRecord> {
        self(identifier)
    }
}

/// One Observation to write.
#[derive(Debug, Clone)]
pub struct PlannedObservation {
    /// The measurements and their template.
    pub group: ObservationGroup,
    /// `Observation.identifier` (deterministic).
    pub identifier: Identifier,
    /// Patient and device references.
    pub subject: Subject,
    /// Encounter identifier (a logical reference), when the messages carry one.
    pub encounter: Option<Identifier>,
}

impl PlannedObservation {
    /// `Observation?identifier=system|value`: read the stored Observation with it, and the
    /// transaction writes with it (conditional update).
    pub fn search_url(&self) -> String {
        self.identifier.search_url("Observation")
    }

    /// The Observation to write: `existing` (the stored one found by [`Self::search_url`])
    /// merged with the new measurements, or a new one.
    pub fn resource(&self, existing: Option<&Value>) -> Result<Value, MappingError> {
        match existing {
            Some(e) => merge(e, &self.group),
            None => {
                self.group
                    .to_observation(&self.identifier, &self.subject, self.encounter.as_ref())
            }
        }
    }

    /// The transaction entry: a conditional update on the identifier.
    pub fn entry(&self, resource: Value) -> Value {
        json!({
            "resource": resource,
            "request": {"method": "PUT", "url": self.search_url()},
        })
    }
}

/// What a batch of measurements turns into.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Conditional creates of Patients and Devices (Create mode), as transaction entries.
    pub identity_entries: Vec<Value>,
    /// Observations to write.
    pub observations: Vec<PlannedObservation>,
    /// Measurements that cannot be written, and why.
    pub errors: Vec<MappingError>,
}

impl Plan {
    /// A FHIR `transaction` Bundle: the identity entries, then one conditional update per
    /// Observation (`resources` in the order of [`Plan::observations`]).
    pub fn transaction(&self, resources: Vec<Value>) -> Value {
        let mut entries = self.identity_entries.clone();
        for (p, r) in self.observations.iter().zip(resources) {
            entries.push(p.entry(r));
        }
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    }
}

/// A `urn:uuid:` derived from a name, so that the same patient or device gets the same
/// transaction-local fullUrl in every batch.
fn urn_uuid(kind: &str, system: &str, value: &str) -> String {
    let h = stable_hash(&[kind, system, value]);
    // Shape as an RFC 4122 name-based UUID: version nibble 5, variant 10.
    let mut b: Vec<char> = h.chars().collect();
    b[12] = '5';
    b[16] = match b[16] {
        '0' | '4' | '8' | 'c' => '8',
        '1' | '5' | '9' | 'd' => '9',
        '2' | '6' | 'a' | 'e' => 'a',
        _ => 'b',
    };
    let s: String = b.into_iter().collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// Normalized measurements → a [`Plan`], using the FHIR mapping and identity mode.
pub fn plan(
    templates: &FhirTemplates,
    config: &MappingConfig,
    measurements: &[Measurement],
    directory: &dyn DeviceDirectory,
) -> Plan {
    let (groups, mut errors) = templates.group(measurements);
    let mut out = Plan::default();
    let mut created: BTreeSet<String> = BTreeSet::new();
    for group in groups {
        let device_identifier = Identifier {
            system: config.device_identifier_system.clone(),
            value: group.device_id.clone(),
        };
        let subject = match config.identity_mode {
            IdentityMode::Lookup => match directory.find_device(&device_identifier) {
                None => {
                    errors.push(MappingError::Identity {
                        device_id: group.device_id.clone(),
                        message: "no Device with this identifier (Lookup mode: register the device first)".into(),
                    });
                    continue;
                }
                Some(DeviceRecord {
                    patient_reference: None,
                    device_reference,
                }) => {
                    errors.push(MappingError::Identity {
                        device_id: group.device_id.clone(),
                        message: format!("{device_reference} has no patient (Device.patient)"),
                    });
                    continue;
                }
                Some(DeviceRecord {
                    patient_reference: Some(patient),
                    device_reference,
                }) => Subject {
                    patient,
                    device: device_reference,
                },
            },
            IdentityMode::Create => {
                let Some(patient_id) = group.patient_id().map(str::to_string) else {
                    errors.push(MappingError::Identity {
                        device_id: group.device_id.clone(),
                        message: "the messages carry no patient id (Create mode needs patientIdExpression)".into(),
                    });
                    continue;
                };
                let patient_identifier = Identifier {
                    system: config.patient_identifier_system.clone(),
                    value: patient_id,
                };
                let patient_url = urn_uuid(
                    "Patient",
                    &patient_identifier.system,
                    &patient_identifier.value,
                );
                let device_url = urn_uuid(
                    "Device",
                    &device_identifier.system,
                    &device_identifier.value,
                );
                if created.insert(patient_url.clone()) {
                    out.identity_entries.push(json!({
                        "fullUrl": patient_url,
                        "resource": {"resourceType": "Patient", "identifier": [patient_identifier.to_json()]},
                        "request": {"method": "POST", "url": "Patient",
                                    "ifNoneExist": patient_identifier.search_url("Patient").trim_start_matches("Patient?")},
                    }));
                }
                if created.insert(device_url.clone()) {
                    out.identity_entries.push(json!({
                        "fullUrl": device_url,
                        "resource": {"resourceType": "Device", "identifier": [device_identifier.to_json()],
                                     "patient": {"reference": patient_url}},
                        "request": {"method": "POST", "url": "Device",
                                    "ifNoneExist": device_identifier.search_url("Device").trim_start_matches("Device?")},
                    }));
                }
                Subject {
                    patient: patient_url,
                    device: device_url,
                }
            }
        };
        let encounter = group.encounter_id().map(|e| Identifier {
            system: config.encounter_identifier_system.clone(),
            value: e.to_string(),
        });
        out.observations.push(PlannedObservation {
            identifier: Identifier {
                system: config.observation_identifier_system.clone(),
                value: group.identifier_value(),
            },
            group,
            subject,
            encounter,
        });
    }
    out.errors = errors;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn templates() -> FhirTemplates {
        FhirTemplates::from_value(&json!({"templateType": "CodeValueFhir", "template": {"typeName": "hr", "periodInterval": 0,
            "codes": [{"code": "8867-4", "system": "http://loinc.org"}],
            "value": {"valueName": "hr", "valueType": "Quantity", "unit": "/min"}}}))
        .unwrap()
    }

    fn measurement(device: &str, patient: Option<&str>) -> Measurement {
        Measurement {
            type_name: "hr".into(),
            occurrence_time: datetime!(2024-01-01 00:00:00 UTC),
            device_id: device.into(),
            patient_id: patient.map(String::from),
            encounter_id: Some("enc-9".into()),
            correlation_id: None,
            properties: std::collections::BTreeMap::from([("hr".into(), "64".into())]),
        }
    }

    #[test]
    fn lookup_mode() {
        let dir = |id: &Identifier| match id.value.as_str() {
            "known" => Some(DeviceRecord {
                device_reference: "Device/1".into(),
                patient_reference: Some("Patient/7".into()),
            }),
            "orphan" => Some(DeviceRecord {
                device_reference: "Device/2".into(),
                patient_reference: None,
            }),
            _ => None,
        };
        let ms = [
            measurement("known", None),
            measurement("orphan", None),
            measurement("stranger", None),
        ];
        let p = plan(&templates(), &MappingConfig::default(), &ms, &dir);
        assert!(p.identity_entries.is_empty());
        assert_eq!(p.observations.len(), 1);
        assert_eq!(p.observations[0].subject.patient, "Patient/7");
        assert_eq!(p.errors.len(), 2);
        assert!(p
            .errors
            .iter()
            .any(|e| e.to_string() == "device 'orphan': Device/2 has no patient (Device.patient)"));
        let obs = p.observations[0].resource(None).unwrap();
        assert_eq!(obs["encounter"]["identifier"]["value"], "enc-9");
        let bundle = p.transaction(vec![obs]);
        assert_eq!(bundle["entry"][0]["request"]["method"], "PUT");
        assert!(bundle["entry"][0]["request"]["url"]
            .as_str()
            .unwrap()
            .starts_with("Observation?identifier=urn:salus:devices:observation|"));
    }

    #[test]
    fn create_mode() {
        let config = MappingConfig {
            identity_mode: IdentityMode::Create,
            ..MappingConfig::default()
        };
        let ms = [
            measurement("d1", Some("p1")),
            measurement("d2", Some("p1")),
            measurement("d3", None),
        ];
        let p = plan(&templates(), &config, &ms, &NoDevices);
        // One Patient, two Devices; d3 has no patient id.
        assert_eq!(p.identity_entries.len(), 3);
        assert_eq!(p.errors.len(), 1);
        let patient = &p.identity_entries[0];
        assert_eq!(
            patient["request"]["ifNoneExist"],
            "identifier=urn:salus:devices:patient-id|p1"
        );
        assert_eq!(
            p.identity_entries[1]["resource"]["patient"]["reference"],
            patient["fullUrl"]
        );
        assert_eq!(
            p.observations[0].subject.patient,
            patient["fullUrl"].as_str().unwrap()
        );
        let url = patient["fullUrl"].as_str().unwrap();
        assert_eq!(url.len(), "urn:uuid:".len() + 36);
        assert_eq!(&url[23..24], "5");
        // Same input, same plan.
        let again = plan(&templates(), &config, &ms, &NoDevices);
        assert_eq!(again.identity_entries, p.identity_entries);
    }
}
