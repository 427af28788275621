//! HL7 v2 tables mapped to FHIR codes, after the v2-to-FHIR IG vocabulary maps
//! (<https://build.fhir.org/ig/HL7/v2-to-fhir/terminology_maps.html>). Each function
//! is total: an unknown v2 code maps to `None` and the caller keeps the v2 coding.

use crate::convert::ConvertOptions;

/// Table 0001 (administrative sex) → `AdministrativeGender` (IG ConceptMap
/// "table-hl70001-to-administrative-gender": A and N → other).
pub fn gender(v2: &str) -> Option<&'static str> {
    Some(match v2.trim().to_ascii_uppercase().as_str() {
        "M" => "male",
        "F" => "female",
        "O" | "A" | "N" => "other",
        "U" => "unknown",
        _ => return None,
    })
}

/// Table 0004 (patient class) → v3 ActCode encounter class (IG ConceptMap
/// "table-hl70004-to-v3-ActCode"); `None` for N (not applicable) and unknown codes.
pub fn encounter_class(v2: &str) -> Option<(&'static str, &'static str)> {
    Some(match v2.trim().to_ascii_uppercase().as_str() {
        "E" => ("EMER", "emergency"),
        "I" => ("IMP", "inpatient encounter"),
        "O" => ("AMB", "ambulatory"),
        "P" => ("PRENC", "pre-admission"),
        "R" => ("AMB", "ambulatory"),
        "B" => ("IMP", "inpatient encounter"),
        "C" => ("AMB", "ambulatory"),
        _ => return None,
    })
}

/// Table 0200 (name type) → `HumanName.use`.
pub fn name_use(v2: &str) -> Option<&'static str> {
    Some(match v2.trim().to_ascii_uppercase().as_str() {
        "L" | "C" | "R" => "official",
        "D" | "A" | "T" => "usual",
        "M" => "maiden",
        "N" => "nickname",
        "S" => "anonymous",
        "B" | "BAD" => "old",
        "TEMP" => "temp",
        _ => return None,
    })
}

/// Table 0190 (address type) → (`Address.use`, `Address.type`).
pub fn address_use(v2: &str) -> (Option<&'static str>, Option<&'static str>) {
    match v2.trim().to_ascii_uppercase().as_str() {
        "H" | "P" => (Some("home"), None),
        "B" | "O" => (Some("work"), None),
        "C" => (Some("temp"), None),
        "BA" => (Some("old"), None),
        "M" => (None, Some("postal")),
        "SH" => (None, Some("physical")),
        _ => (None, None),
    }
}

/// Table 0201 (telecommunication use code) → `ContactPoint.use`.
pub fn telecom_use(v2: &str) -> Option<&'static str> {
    Some(match v2 {
        "PRN" | "ORN" | "VHN" => "home",
        "WPN" => "work",
        "PRS" => "mobile",
        _ => return None,
    })
}

/// Table 0002 (marital status) → v3 MaritalStatus code.
pub fn marital_status(v2: &str) -> Option<(&'static str, &'static str)> {
    Some(match v2.trim().to_ascii_uppercase().as_str() {
        "A" | "E" => ("L", "Legally Separated"),
        "D" => ("D", "Divorced"),
        "M" => ("M", "Married"),
        "S" => ("S", "Never Married"),
        "W" => ("W", "Widowed"),
        "C" | "G" | "P" | "R" => ("T", "Domestic partner"),
        "N" => ("A", "Annulled"),
        "I" => ("I", "Interlocutory"),
        "B" => ("U", "unmarried"),
        _ => return None,
    })
}

/// Table 0085 (observation result status, OBX-11) → `Observation.status`
/// (IG ConceptMap "table-hl70085-to-observation-status").
pub fn observation_status(v2: &str) -> &'static str {
    match v2.trim().to_ascii_uppercase().as_str() {
        "C" => "corrected",
        "D" | "W" => "entered-in-error",
        "F" | "U" => "final",
        "I" | "O" => "registered",
        "P" | "R" | "S" => "preliminary",
        "X" | "N" => "cancelled",
        "A" => "amended",
        _ => "unknown",
    }
}

/// Table 0123 (result status, OBR-25) → `DiagnosticReport.status`.
pub fn report_status(v2: &str) -> &'static str {
    match v2.trim().to_ascii_uppercase().as_str() {
        "O" | "I" | "S" => "registered",
        "P" => "preliminary",
        "A" | "R" => "partial",
        "C" | "M" => "corrected",
        "F" => "final",
        "X" => "cancelled",
        "Y" | "Z" => "unknown",
        _ => "unknown",
    }
}

/// ORC-5 (table 0038, order status) and ORC-1 (table 0119, order control) →
/// `ServiceRequest.status`.
pub fn order_status(orc5: &str, orc1: &str) -> &'static str {
    match orc5.trim().to_ascii_uppercase().as_str() {
        "A" | "IP" | "SC" => return "active",
        "CA" | "DC" | "RP" => return "revoked",
        "CM" => return "completed",
        "HD" => return "on-hold",
        "ER" => return "entered-in-error",
        _ => {}
    }
    match orc1.trim().to_ascii_uppercase().as_str() {
        "NW" | "XO" | "RO" | "SC" | "RL" | "OK" | "SN" | "PA" | "CH" | "RE" => "active",
        "CA" | "OC" | "DC" | "OD" | "CR" | "DR" => "revoked",
        "HD" | "OH" => "on-hold",
        _ => "unknown",
    }
}

/// SCH-25 (table 0278, filler status) → `Appointment.status`.
pub fn appointment_status(v2: &str) -> Option<&'static str> {
    Some(match v2.trim().to_ascii_lowercase().as_str() {
        "booked" | "started" | "confirmed" => "booked",
        "pending" | "waitlist" | "overbook" => "pending",
        "cancelled" | "deleted" | "blocked" => "cancelled",
        "complete" => "fulfilled",
        "noshow" => "noshow",
        "dc" => "cancelled",
        _ => return None,
    })
}

/// Table 0127 (allergen type, AL1-2) → `AllergyIntolerance.category`.
pub fn allergy_category(v2: &str) -> Option<&'static str> {
    Some(match v2.trim().to_ascii_uppercase().as_str() {
        "DA" | "MA" => "medication",
        "FA" => "food",
        "EA" | "AA" | "PA" | "LA" => "environment",
        "MC" => "biologic",
        _ => return None,
    })
}

/// Table 0128 (allergy severity, AL1-4) → `AllergyIntolerance.criticality`.
pub fn allergy_criticality(v2: &str) -> Option<&'static str> {
    Some(match v2.trim().to_ascii_uppercase().as_str() {
        "SV" => "high",
        "MO" | "MI" => "low",
        "U" => "unable-to-assess",
        _ => return None,
    })
}

/// Table 0078 (interpretation codes) → v3 ObservationInterpretation (same codes for the
/// common flags).
pub fn interpretation(v2: &str) -> Option<&'static str> {
    Some(match v2.trim() {
        "L" => "L",
        "H" => "H",
        "LL" => "LL",
        "HH" => "HH",
        "N" => "N",
        "A" => "A",
        "AA" => "AA",
        "<" => "<",
        ">" => ">",
        "S" => "S",
        "R" => "R",
        "I" => "I",
        "U" => "U",
        "D" => "D",
        "B" => "B",
        "W" => "W",
        "POS" => "POS",
        "NEG" => "NEG",
        "IND" => "IND",
        "DET" => "DET",
        "ND" => "ND",
        _ => return None,
    })
}

/// Display of common table 0203 identifier types.
pub fn identifier_type_display(code: &str) -> Option<&'static str> {
    Some(match code {
        "MR" => "Medical record number",
        "PI" => "Patient internal identifier",
        "PT" => "Patient external identifier",
        "SS" => "Social Security number",
        "DL" => "Driver's license number",
        "VN" => "Visit number",
        "AN" => "Account number",
        "PLAC" => "Placer Identifier",
        "FILL" => "Filler Identifier",
        "NI" => "National unique individual identifier",
        "NPI" => "National provider identifier",
        "PRN" => "Provider number",
        _ => return None,
    })
}

/// Table 0396 (coding system) name → FHIR system URI. Local or unknown names become
/// `<code_system_base><name>` ([`ConvertOptions::code_system_base`]).
pub fn coding_system(name: &str, opts: &ConvertOptions) -> Option<String> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let upper = name.to_ascii_uppercase();
    let known = match upper.as_str() {
        "LN" | "LOINC" => "http://loinc.org",
        "SCT" | "SNOMEDCT" | "SNM" | "SCT2" | "SNOMED" | "SNOMED-CT" => "http://snomed.info/sct",
        "I10" | "ICD10" | "ICD-10" => "http://hl7.org/fhir/sid/icd-10",
        "I10C" | "ICD10CM" | "ICD-10-CM" => "http://hl7.org/fhir/sid/icd-10-cm",
        "I9" | "I9C" | "I9CM" | "I9M" | "ICD9" | "ICD9CM" => "http://hl7.org/fhir/sid/icd-9-cm",
        "CVX" => "http://hl7.org/fhir/sid/cvx",
        "MVX" => "http://hl7.org/fhir/sid/mvx",
        "UCUM" => "http://unitsofmeasure.org",
        "RXNORM" | "RXN" => "http://www.nlm.nih.gov/research/umls/rxnorm",
        "NDC" => "http://hl7.org/fhir/sid/ndc",
        "CPT" | "C4" | "CPT4" => "http://www.ama-assn.org/go/cpt",
        "NCIT" => "http://ncimeta.nci.nih.gov",
        "DCM" => "http://dicom.nema.org/resources/ontology/DCM",
        "NUCC" => "http://nucc.org/provider-taxonomy",
        "ISO3166_1" | "ISO3166-1" => "urn:iso:std:iso:3166",
        "ISO639" | "ISO+" => return None,
        _ => {
            if let Some(num) = upper.strip_prefix("HL7") {
                if num.len() == 4 && num.bytes().all(|b| b.is_ascii_digit()) {
                    return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{num}"));
                }
            }
            return Some(format!(
                "{}{}",
                opts.code_system_base,
                crate::convert::uri_segment(name)
            ));
        }
    };
    Some(known.to_string())
}

/// UCUM-ness of a unit's coding system (OBX-6.3).
pub fn is_ucum(system_name: &str) -> bool {
    matches!(
        system_name.trim().to_ascii_uppercase().as_str(),
        "UCUM" | "ISO+" | "ANSI+" | "ISO"
    )
}
