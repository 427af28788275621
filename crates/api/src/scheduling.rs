//! HTTP translation of the scheduling operations (`salus_service::scheduling`):
//! `Schedule/[id]/$set-availability`, `Appointment/$find`, `$hold`, `$book`,
//! `$waitlist`, `Appointment/[id]/$cancel`, `$reschedule`, `$set-status`,
//! `[base]/$worklist` and the iCalendar feeds `Patient|Practitioner|PractitionerRole/[id]/$ics`.
//!
//! Operation input is a FHIR `Parameters` resource (or, for GET, query parameters);
//! errors become OperationOutcomes through [`ApiError`]. With auth on, [`caller_may`]
//! decides per operation who may run it (docs/scheduling.md, "Who may do what").

use crate::error::ApiError;
use crate::negotiate::{header_value, json_response, read_json, response_format};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use salus_fhir::IssueCode;
use salus_scheduling::jiff::Timestamp;
use salus_service::response::etag;
use salus_service::salus_access::{Access, Principal};
use salus_service::scheduling::{BookRequest, FindQuery, OpContext, WaitlistRequest};
use salus_service::{parse_pairs, FhirError};
use salus_store::VersionRecord;
use serde_json::{json, Value};
use std::sync::Arc;

type ApiResult = Result<Response, ApiError>;
type Pairs = Vec<(String, String)>;

/// Staff who run schedules: the admin, clinician and care-manager roles, or a backend
/// service with a `system/` scope on Appointment.
fn is_staff(who: &Principal) -> bool {
    who.roles
        .iter()
        .any(|r| matches!(r.as_str(), "admin" | "clinician" | "care-manager"))
        || who.scopes.iter().any(|s| {
            s.context == salus_service::salus_access::Context::System && s.covers("Appointment")
        })
}

/// Who may run a scheduling operation (docs/scheduling.md, "Who may do what"). The
/// operations then run with the server's rights: a patient books a Slot they could not
/// write themselves. `action` names what is attempted, `subject` whose data it touches.
/// Without authentication (`who` is `None`) everything is allowed: the guard has already
/// refused anonymous requests when auth is on.
async fn caller_may(
    state: &AppState,
    who: Option<&Principal>,
    action: &str,
    subject: &str,
) -> Result<(), ApiError> {
    let Some(who) = who else {
        return Ok(());
    };
    let me = who.patient_context();
    let ok = is_staff(who)
        || match action {
            // a patient books, waitlists and holds for themself
            "book" => me.is_some_and(|p| subject.trim_start_matches("Patient/") == p),
            // and cancels or moves their own appointments
            "cancel" | "reschedule" => {
                let id = subject.trim_start_matches("Appointment/");
                me.is_some()
                    && state
                        .service
                        .scoped(Access::Caller(Arc::new(who.clone())))
                        .read("Appointment", id)
                        .await
                        .is_ok()
            }
            // and reads their own calendar
            "calendar" => me.is_some_and(|p| subject == format!("Patient/{p}")),
            _ => false,
        };
    if ok {
        Ok(())
    } else {
        Err(FhirError::Forbidden(format!(
            "{action} on {subject} is not permitted for this access token"
        ))
        .into())
    }
}

fn ctx(state: &AppState, headers: &HeaderMap) -> OpContext {
    OpContext::now(&crate::handlers::base_url(state, headers))
}

/// Query parameters plus, for a POST, the body's Parameters (an empty body is fine).
async fn inputs(
    state: &AppState,
    headers: &HeaderMap,
    q: &Option<String>,
    body: Option<Body>,
) -> Result<Pairs, ApiError> {
    let mut out: Pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    if let Some(body) = body {
        let bytes = crate::negotiate::read_bytes(body, state.config.max_body_bytes).await?;
        if !bytes.iter().all(u8::is_ascii_whitespace) {
            let mut h = headers.clone();
            h.remove(header::CONTENT_LENGTH);
            let v = read_json(&h, Body::from(bytes), state.config.max_body_bytes, false).await?;
            out.extend(crate::params::pairs(&v)?);
        }
    }
    Ok(out)
}

fn get<'a>(p: &'a Pairs, name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn required<'a>(p: &'a Pairs, name: &str) -> Result<&'a str, ApiError> {
    get(p, name).ok_or_else(|| {
        FhirError::invalid_at(
            IssueCode::Required,
            name,
            format!("the operation needs the '{name}' parameter"),
        )
        .into()
    })
}

fn instant(p: &Pairs, name: &str) -> Result<Option<Timestamp>, ApiError> {
    match get(p, name) {
        None => Ok(None),
        Some(s) => salus_scheduling::parse_instant(s)
            .or_else(|| {
                // a bare date means its start, in UTC
                s.parse::<salus_scheduling::jiff::civil::Date>()
                    .ok()
                    .and_then(|d| d.to_zoned(salus_scheduling::jiff::tz::TimeZone::UTC).ok())
                    .map(|z| z.timestamp())
            })
            .map(Some)
            .ok_or_else(|| {
                FhirError::invalid_at(
                    IssueCode::Value,
                    name,
                    format!("'{s}' is not an instant with a time zone (2026-03-30T09:00:00+02:00) or a date"),
                )
                .into()
            }),
    }
}

fn resource_response(
    status: StatusCode,
    r: &VersionRecord,
    base: &str,
    fmt: crate::negotiate::Format,
) -> Response {
    let body: Value =
        serde_json::from_str(r.body.as_deref().unwrap_or("{}")).unwrap_or(Value::Null);
    let mut resp = json_response(status, &body, fmt);
    let h = resp.headers_mut();
    h.insert(header::ETAG, header_value(&etag(r.version)));
    if status == StatusCode::CREATED {
        h.insert(
            header::LOCATION,
            header_value(&format!(
                "{base}/{}/{}/_history/{}",
                r.rtype, r.id, r.version
            )),
        );
    }
    resp
}

/// `POST Schedule/[id]/$set-availability` with the availability rules as JSON
/// (docs/scheduling.md): stores them and regenerates the schedule's free slots.
pub async fn set_availability(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p: Pairs = q.as_deref().map(parse_pairs).unwrap_or_default();
    let fmt = response_format(&headers, &p)?;
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "manage-schedule",
        &format!("Schedule/{id}"),
    )
    .await?;
    let rules = read_json(&headers, body, state.config.max_body_bytes, false).await?;
    let c = ctx(&state, &headers);
    let (report, _) = state
        .service
        .set_availability(&state.scheduling, &id, &rules, &c)
        .await?;
    let out = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "created", "valueInteger": report.created},
            {"name": "removed", "valueInteger": report.removed},
            {"name": "unchanged", "valueInteger": report.unchanged},
            {"name": "blocked", "valueInteger": report.blocked},
        ]
    });
    Ok(json_response(StatusCode::OK, &out, fmt))
}

async fn find(state: AppState, headers: HeaderMap, p: Pairs) -> ApiResult {
    let fmt = response_format(&headers, &p)?;
    let virtual_ = match get(&p, "virtual") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(o) => {
            return Err(FhirError::invalid_at(
                IssueCode::Value,
                "virtual",
                format!("'{o}' is not true or false"),
            )
            .into())
        }
    };
    let count = match get(&p, "_count") {
        None => 100,
        Some(c) => c.parse::<usize>().map_err(|_| {
            FhirError::invalid_at(IssueCode::Value, "_count", format!("'{c}' is not a number"))
        })?,
    };
    for (k, _) in &p {
        if !matches!(
            k.as_str(),
            "specialty"
                | "visit-type"
                | "language"
                | "virtual"
                | "schedule"
                | "start"
                | "end"
                | "_count"
                | "_format"
                | "_pretty"
        ) {
            return Err(FhirError::invalid_at(
                IssueCode::NotSupported,
                k.clone(),
                format!("$find does not know the parameter '{k}' (specialty, visit-type, language, virtual, schedule, start, end, _count)"),
            )
            .into());
        }
    }
    let q = FindQuery {
        specialty: get(&p, "specialty").map(str::to_string),
        visit_type: get(&p, "visit-type").map(str::to_string),
        language: get(&p, "language").map(str::to_string),
        is_virtual: virtual_,
        schedule: get(&p, "schedule").map(str::to_string),
        start: instant(&p, "start")?,
        end: instant(&p, "end")?,
        count,
    };
    let base = crate::handlers::base_url(&state, &headers);
    let slots = state
        .service
        .find_slots(&state.scheduling, &q, Timestamp::now())
        .await?;
    let entries: Vec<Value> = slots
        .into_iter()
        .map(|s| {
            json!({
                "fullUrl": format!("{base}/Slot/{}", s["id"].as_str().unwrap_or("")),
                "resource": s,
                "search": {"mode": "match"}
            })
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    });
    Ok(json_response(StatusCode::OK, &bundle, fmt))
}

/// `GET Appointment/$find?specialty=&visit-type=&language=&virtual=&start=&end=`.
pub async fn find_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, None).await?;
    find(state, headers, p).await
}

/// `POST Appointment/$find` with the same parameters in a Parameters resource.
pub async fn find_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    find(state, headers, p).await
}

/// `POST Appointment/$hold` (`slot`, `patient`, optional `minutes`): the held Slot.
pub async fn hold(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    let fmt = response_format(&headers, &p)?;
    let slot = required(&p, "slot")?;
    let slot_id = slot.strip_prefix("Slot/").unwrap_or(slot);
    let patient = required(&p, "patient")?;
    caller_may(&state, who.as_ref().map(|e| e.0.as_ref()), "book", patient).await?;
    let minutes = match get(&p, "minutes") {
        None => None,
        Some(m) => Some(m.parse::<i64>().map_err(|_| {
            FhirError::invalid_at(
                IssueCode::Value,
                "minutes",
                format!("'{m}' is not a whole number"),
            )
        })?),
    };
    let held = state
        .service
        .hold_slot(
            &state.scheduling,
            slot_id,
            patient,
            minutes,
            Timestamp::now(),
        )
        .await?;
    Ok(json_response(StatusCode::OK, &held, fmt))
}

/// `POST Appointment/$book` (`slot`, `patient`, optional `comment`): 201 with the
/// booked Appointment; 409 when the slot is taken or held for someone else.
pub async fn book(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    let fmt = response_format(&headers, &p)?;
    let req = BookRequest {
        slot: required(&p, "slot")?.to_string(),
        patient: required(&p, "patient")?.to_string(),
        comment: get(&p, "comment").map(str::to_string),
    };
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "book",
        &req.patient,
    )
    .await?;
    let c = ctx(&state, &headers);
    let rec = state.service.book(&state.scheduling, &req, &c).await?;
    Ok(resource_response(StatusCode::CREATED, &rec, &c.base, fmt))
}

/// `POST Appointment/$waitlist` (`patient`, `schedule`, optional `visit-type`,
/// `start`, `end`): 201 with the waitlist Task.
pub async fn waitlist(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    let fmt = response_format(&headers, &p)?;
    let req = WaitlistRequest {
        patient: required(&p, "patient")?.to_string(),
        schedule: required(&p, "schedule")?.to_string(),
        visit_type: get(&p, "visit-type").map(str::to_string),
        start: instant(&p, "start")?,
        end: instant(&p, "end")?,
    };
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "book",
        &req.patient,
    )
    .await?;
    let c = ctx(&state, &headers);
    let rec = state.service.join_waitlist(&req, &c).await?;
    Ok(resource_response(StatusCode::CREATED, &rec, &c.base, fmt))
}

/// `POST Appointment/[id]/$cancel` (optional `reason`).
pub async fn cancel(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    let fmt = response_format(&headers, &p)?;
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "cancel",
        &format!("Appointment/{id}"),
    )
    .await?;
    let c = ctx(&state, &headers);
    let rec = state
        .service
        .cancel(&state.scheduling, &id, get(&p, "reason"), &c)
        .await?;
    Ok(resource_response(StatusCode::OK, &rec, &c.base, fmt))
}

/// `POST Appointment/[id]/$reschedule` (`slot`: the new slot).
pub async fn reschedule(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    let fmt = response_format(&headers, &p)?;
    let slot = required(&p, "slot")?.to_string();
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "reschedule",
        &format!("Appointment/{id}"),
    )
    .await?;
    let c = ctx(&state, &headers);
    let rec = state
        .service
        .reschedule(&state.scheduling, &id, &slot, &c)
        .await?;
    Ok(resource_response(StatusCode::OK, &rec, &c.base, fmt))
}

/// `POST Appointment/[id]/$set-status` (`status`: arrived, fulfilled, noshow, cancelled).
pub async fn set_status(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, Some(body)).await?;
    let fmt = response_format(&headers, &p)?;
    let status = required(&p, "status")?.to_string();
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "visit-status",
        &format!("Appointment/{id}"),
    )
    .await?;
    let c = ctx(&state, &headers);
    let rec = state
        .service
        .set_visit_status(&state.scheduling, &id, &status, &c)
        .await?;
    Ok(resource_response(StatusCode::OK, &rec, &c.base, fmt))
}

/// `GET [base]/$worklist?careTeam=CareTeam/x&date=YYYY-MM-DD[&tz=Europe/Berlin]`.
pub async fn worklist(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let p = inputs(&state, &headers, &q, None).await?;
    let team = required(&p, "careTeam")?;
    caller_may(&state, who.as_ref().map(|e| e.0.as_ref()), "worklist", team).await?;
    let today;
    let date = match get(&p, "date") {
        Some(d) => d,
        None => {
            today = Timestamp::now().strftime("%Y-%m-%d").to_string();
            &today
        }
    };
    let out = state
        .service
        .worklist(team, date, get(&p, "tz"), Timestamp::now())
        .await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&out).unwrap_or_default(),
    )
        .into_response())
}

async fn ics(
    state: AppState,
    who: Option<Extension<Arc<Principal>>>,
    _headers: HeaderMap,
    rtype: &str,
    id: &str,
) -> ApiResult {
    caller_may(
        &state,
        who.as_ref().map(|e| e.0.as_ref()),
        "calendar",
        &format!("{rtype}/{id}"),
    )
    .await?;
    let text = state.service.ics_feed(rtype, id, Timestamp::now()).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/calendar; charset=utf-8"),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        text,
    )
        .into_response())
}

/// `GET Patient/[id]/$ics`.
pub async fn ics_patient(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ics(state, who, headers, "Patient", &id).await
}

/// `GET Practitioner/[id]/$ics`.
pub async fn ics_practitioner(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ics(state, who, headers, "Practitioner", &id).await
}

/// `GET PractitionerRole/[id]/$ics`.
pub async fn ics_role(
    State(state): State<AppState>,
    who: Option<Extension<Arc<Principal>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    ics(state, who, headers, "PractitionerRole", &id).await
}
