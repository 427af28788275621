//! `POST [base]/$convert-data`: convert an HL7 v2 message into a FHIR transaction Bundle
//! without storing anything. The request is the `Parameters` resource of the Azure FHIR
//! converter (`inputData`, `inputDataType`, `rootTemplate`, `templateCollectionReference`);
//! the mapping itself is `salus_hl7v2::convert_for_template` — this module only
//! translates HTTP.

use crate::error::ApiError;
use crate::negotiate::{json_response, read_json, response_format};
use crate::AppState;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use salus_fhir::{Issue, IssueCode};
use salus_hl7v2::ConvertError;
use salus_service::FhirError;
use serde_json::Value;

/// The input types this server converts (`inputDataType`).
pub const INPUT_TYPES: &[&str] = &["Hl7v2"];

/// What a `$convert-data` request asks for.
#[derive(Debug, Default)]
struct ConvertRequest {
    input: Option<String>,
    input_type: Option<String>,
    root_template: Option<String>,
}

/// The string value of a Parameters part (`valueString`, `valueCode`, …).
fn part_string(p: &Value) -> Option<String> {
    p.as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("value"))
        .and_then(|(_, v)| v.as_str())
        .map(str::to_string)
}

fn parse_request(body: &Value) -> Result<ConvertRequest, FhirError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::invalid_at(
            IssueCode::Invalid,
            "resourceType",
            "$convert-data takes a Parameters resource with inputData, inputDataType and rootTemplate",
        ));
    }
    let mut req = ConvertRequest::default();
    for p in body
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = p.get("name").and_then(Value::as_str).unwrap_or("");
        let slot = match name {
            "inputData" => &mut req.input,
            "inputDataType" => &mut req.input_type,
            "rootTemplate" => &mut req.root_template,
            // Templates are the Azure converter's Liquid files; our mapping is built in,
            // so a template collection has nothing to select.
            "templateCollectionReference" => continue,
            _ => continue,
        };
        *slot = Some(part_string(p).ok_or_else(|| {
            FhirError::invalid_at(
                IssueCode::Invalid,
                format!("Parameters.parameter('{name}')"),
                format!("the {name} parameter needs a valueString"),
            )
        })?);
    }
    Ok(req)
}

/// A conversion error as the client's fault: 400 with the segment and field in the text.
fn convert_error(e: &ConvertError) -> FhirError {
    match e {
        ConvertError::Unsupported { .. } | ConvertError::TemplateMismatch { .. } => {
            FhirError::NotSupported(e.to_string())
        }
        ConvertError::Parse(_)
        | ConvertError::InvalidValue { .. }
        | ConvertError::MissingSegment { .. }
        | ConvertError::MissingValue { .. } => FhirError::Invalid(vec![Issue::error(
            IssueCode::Invalid,
            format!("inputData: {e}"),
        )
        .at("Parameters.parameter('inputData')")]),
    }
}

pub async fn convert_data(
    state: &AppState,
    headers: &HeaderMap,
    pairs: &[(String, String)],
    body: Body,
) -> Result<Response, ApiError> {
    let fmt = response_format(headers, pairs)?;
    let value = read_json(headers, body, state.config.max_body_bytes, false).await?;
    let req = parse_request(&value)?;
    match req.input_type.as_deref() {
        Some(t) if INPUT_TYPES.iter().any(|s| s.eq_ignore_ascii_case(t)) => {}
        other => {
            return Err(FhirError::invalid_at(
                IssueCode::NotSupported,
                "Parameters.parameter('inputDataType')",
                format!(
                    "inputDataType {}: supported are {}",
                    other.map_or("is missing".to_string(), |t| format!(
                        "'{t}' is not supported"
                    )),
                    INPUT_TYPES.join(", ")
                ),
            )
            .into())
        }
    }
    let input = req.input.filter(|s| !s.trim().is_empty()).ok_or_else(|| {
        FhirError::invalid_at(
            IssueCode::Required,
            "Parameters.parameter('inputData')",
            "inputData (valueString: the HL7 v2 message) is required",
        )
    })?;
    let conv = match req
        .root_template
        .as_deref()
        .filter(|t| !t.trim().is_empty())
    {
        Some(t) => salus_hl7v2::convert_for_template(&input, t, &state.convert_options),
        None => salus_hl7v2::parse(&input)
            .map_err(ConvertError::from)
            .and_then(|m| salus_hl7v2::convert_with(&m, &state.convert_options)),
    }
    .map_err(|e| convert_error(&e))?;
    Ok(json_response(StatusCode::OK, &conv.bundle, fmt))
}
