//! Virtual-visit scheduling through the real router: availability → slots, `$find`,
//! `$hold`, `$book` (also under 100 concurrent bookers, in process and over a socket),
//! `$cancel`, `$reschedule`, the waitlist, visit status changes and follow-up, the
//! reminder outbox across a worker restart, the worklist and iCalendar feeds.

mod common;

use common::{app, App};
use salus_scheduling::channel::RecordingChannel;
use salus_scheduling::jiff::{SignedDuration, Timestamp};
use salus_scheduling::{ical, Channel, JitsiProvider};
use salus_service::scheduling::{
    BookRequest, OpContext, Scheduling, SchedulingConfig, EXT_HOLD, EXT_VIRTUAL_SERVICE,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

const SECRET: &[u8] = b"test-video-secret";

/// The app with a known video secret (so tests can verify tokens).
fn sched_app() -> App {
    let mut a = app();
    let s = Scheduling {
        config: SchedulingConfig::default(),
        video: Arc::new(JitsiProvider::new(
            "https://meet.example.org",
            SECRET,
            "salus",
            30,
        )),
    };
    let state = a.state.clone().with_scheduling(s);
    a.router = salus_api::router(state.clone());
    a.state = state;
    a
}

fn params(list: &[(&str, Value)]) -> Value {
    json!({
        "resourceType": "Parameters",
        "parameter": list.iter().map(|(name, v)| {
            let mut p = json!({"name": name});
            match v {
                Value::String(s) if s.contains('/') && !s.contains(':') => {
                    p["valueReference"] = json!({"reference": s})
                }
                Value::String(s) => p["valueString"] = json!(s),
                Value::Number(n) => p["valueInteger"] = json!(n),
                Value::Bool(b) => p["valueBoolean"] = json!(b),
                other => panic!("{other}"),
            }
            p
        }).collect::<Vec<_>>()
    })
}

/// A provider: Practitioner (speaking `lang`), PractitionerRole (`specialty`) and a
/// Schedule with availability every day 09:00–12:00 Berlin time for `visit_type`.
/// Returns (practitioner, role, schedule) references.
async fn provider(
    app: &App,
    specialty: &str,
    lang: &str,
    visit_type: &str,
    virtual_: bool,
) -> (String, String, String) {
    let pr = app
        .create(&json!({
            "resourceType": "Practitioner",
            "name": [{"family": format!("Doc-{specialty}"), "given": ["Ada"]}],
            "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": lang}]}]
        }))
        .await;
    let role = app
        .create(&json!({
            "resourceType": "PractitionerRole",
            "practitioner": {"reference": format!("Practitioner/{pr}")},
            "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": specialty}]}]
        }))
        .await;
    let sched = app
        .create(&json!({
            "resourceType": "Schedule",
            "active": true,
            "actor": [{"reference": format!("PractitionerRole/{role}")}]
        }))
        .await;
    let minutes = if virtual_ { 15 } else { 30 };
    let rules = json!({
        "timeZone": "Europe/Berlin",
        "horizonDays": 7,
        "visitTypes": [{"code": visit_type, "minutes": minutes, "bufferMinutes": 5, "virtual": virtual_}],
        "weekly": [{"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": "09:00", "end": "12:00", "visitType": visit_type}]
    });
    let r = app
        .post(&format!("/Schedule/{sched}/$set-availability"), &rules)
        .await
        .expect(200);
    assert!(
        r.json["parameter"][0]["valueInteger"].as_u64().unwrap() > 0,
        "{}",
        r.text
    );
    (
        format!("Practitioner/{pr}"),
        format!("PractitionerRole/{role}"),
        format!("Schedule/{sched}"),
    )
}

async fn patient(app: &App, name: &str) -> String {
    let id = app.create(&common::patient("urn:test", name)).await;
    format!("Patient/{id}")
}

/// Free slots of a schedule via `$find`, earliest first.
async fn free_slots(app: &App, schedule: &str) -> Vec<Value> {
    let r = app
        .get(&format!(
            "/Appointment/$find?schedule={schedule}&_count=500"
        ))
        .await
        .expect(200);
    r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

fn slot_ref(s: &Value) -> String {
    format!("Slot/{}", s["id"].as_str().unwrap())
}

async fn book(app: &App, slot: &str, patient: &str) -> common::Resp {
    app.post(
        "/Appointment/$book",
        &params(&[("slot", json!(slot)), ("patient", json!(patient))]),
    )
    .await
}

async fn read(app: &App, r: &str) -> Value {
    app.get(&format!("/{r}")).await.expect(200).json
}

#[tokio::test]
async fn availability_becomes_slots_and_new_rules_keep_booked_ones() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let slots = free_slots(&app, &sched).await;
    // 09:00–12:00 with 15 min + 5 min buffer: 9 a day; today's may be partly past
    assert!(
        slots.len() >= 6 * 9 && slots.len() <= 8 * 9,
        "{}",
        slots.len()
    );
    let s = &slots[0];
    assert_eq!(s["status"], "free");
    assert_eq!(s["serviceType"][0]["coding"][0]["code"], "video-15");
    assert_eq!(s["extension"][0]["valueBoolean"], true);
    // local wall-clock time with the zone's offset (+01:00 or +02:00 in Berlin)
    let start = s["start"].as_str().unwrap();
    assert!(
        start.ends_with("+01:00") || start.ends_with("+02:00"),
        "{start}"
    );
    let p = patient(&app, "p1").await;
    // book the last 09:00 slot: it must survive new rules that drop 09:00
    let nine: Vec<&Value> = slots
        .iter()
        .filter(|s| s["start"].as_str().unwrap().contains("T09:00:00"))
        .collect();
    let booked = nine.last().unwrap();
    book(&app, &slot_ref(booked), &p).await.expect(201);
    let later = json!({
        "timeZone": "Europe/Berlin",
        "horizonDays": 7,
        "visitTypes": [{"code": "video-15", "minutes": 15, "bufferMinutes": 5, "virtual": true}],
        "weekly": [{"days": ["mon","tue","wed","thu","fri","sat","sun"], "start": "10:00", "end": "12:00", "visitType": "video-15"}]
    });
    let id = sched.trim_start_matches("Schedule/");
    let r = app
        .post(&format!("/Schedule/{id}/$set-availability"), &later)
        .await
        .expect(200);
    let removed = r.json["parameter"][1]["valueInteger"].as_u64().unwrap();
    // three 09:xx slots on each of at least 6 days (today's may be past), less the booked one
    assert!(removed >= 3 * 6 - 1, "{}", r.text);
    let now_free = free_slots(&app, &sched).await;
    assert!(now_free
        .iter()
        .all(|s| !s["start"].as_str().unwrap().contains("T09:")));
    let kept = read(&app, &slot_ref(booked)).await;
    assert_eq!(kept["status"], "busy");
    // the rules are stored on the Schedule
    let schedule = read(&app, &sched).await;
    assert!(schedule["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .contains("10:00"));
    // the sweeper rolls the horizon forward: two days later, two more days of slots
    let before = app.count("Slot").await;
    let two_days = Timestamp::now()
        .checked_add(SignedDuration::from_hours(48))
        .unwrap();
    app.state
        .service
        .refresh_schedules(&app.state.scheduling, two_days)
        .await
        .unwrap();
    let after = app.count("Slot").await;
    // 10:00–12:00 is 6 slots a day; two new days at the end of the horizon
    assert!(after >= before + 6, "{before} → {after}");
    let now_free = free_slots(&app, &sched).await;
    // bad rules: a clear OperationOutcome naming the field, nothing changed
    let bad = json!({"timeZone": "Europe/Berln", "visitTypes": [{"code": "v", "minutes": 15, "virtual": true}]});
    let r = app
        .post(&format!("/Schedule/{id}/$set-availability"), &bad)
        .await
        .expect_outcome(400);
    assert_eq!(r.json["issue"][0]["expression"][0], "availability.timeZone");
    assert!(r.text.contains("Europe/Berln"));
    assert_eq!(free_slots(&app, &sched).await.len(), now_free.len());
    app.post("/Schedule/nope/$set-availability", &later)
        .await
        .expect_outcome(404);
}

#[tokio::test]
async fn find_filters_by_specialty_language_visit_type_and_mode() {
    let app = sched_app();
    let (_, _, cardio) = provider(&app, "cardiology", "de", "video-15", true).await;
    let (_, _, derma) = provider(&app, "dermatology", "en", "in-person-30", false).await;
    let schedules_of = |r: &common::Resp| -> HashSet<String> {
        r.json["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["resource"]["schedule"]["reference"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let one = |s: &str| HashSet::from([s.to_string()]);
    let r = app
        .get("/Appointment/$find?specialty=cardiology")
        .await
        .expect(200);
    assert_eq!(r.json["resourceType"], "Bundle");
    assert_eq!(schedules_of(&r), one(&cardio));
    let r = app.get("/Appointment/$find?language=en").await.expect(200);
    assert_eq!(schedules_of(&r), one(&derma));
    let r = app
        .get("/Appointment/$find?virtual=false")
        .await
        .expect(200);
    assert_eq!(schedules_of(&r), one(&derma));
    let r = app
        .get("/Appointment/$find?visit-type=video-15")
        .await
        .expect(200);
    assert_eq!(schedules_of(&r), one(&cardio));
    let r = app
        .get("/Appointment/$find?specialty=cardiology&language=en")
        .await
        .expect(200);
    assert_eq!(r.json["total"], 0);
    // a time window: only slots starting inside it, sorted
    let all = free_slots(&app, &cardio).await;
    let from = all[3]["start"].as_str().unwrap().replace('+', "%2B");
    let to = all[6]["start"].as_str().unwrap().replace('+', "%2B");
    let r = app
        .get(&format!(
            "/Appointment/$find?schedule={cardio}&start={from}&end={to}"
        ))
        .await
        .expect(200);
    let ids: Vec<&str> = r.json["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = all[3..6]
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, want);
    // POST with Parameters works the same
    let r = app
        .post(
            "/Appointment/$find",
            &params(&[("specialty", json!("dermatology"))]),
        )
        .await
        .expect(200);
    assert_eq!(schedules_of(&r), one(&derma));
    let r = app
        .get("/Appointment/$find?colour=red")
        .await
        .expect_outcome(400);
    assert!(r.text.contains("colour"));
    app.get("/Appointment/$find?virtual=maybe")
        .await
        .expect_outcome(400);
    app.get("/Appointment/$find?start=tomorrow")
        .await
        .expect_outcome(400);
    // the generic routes still answer next to the operation routes
    app.get("/Appointment?_summary=count").await.expect(200);
    app.get("/Appointment/unknown-id").await.expect_outcome(404);
}

#[tokio::test]
async fn hold_book_cancel_and_reschedule_with_their_failures() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let (p1, p2) = (patient(&app, "p1").await, patient(&app, "p2").await);
    let slots = free_slots(&app, &sched).await;
    let (a, b, c) = (
        slot_ref(&slots[0]),
        slot_ref(&slots[1]),
        slot_ref(&slots[2]),
    );

    // p1 holds A: p2 cannot hold or book it, p1 can book it
    let r = app
        .post(
            "/Appointment/$hold",
            &params(&[("slot", json!(a)), ("patient", json!(p1))]),
        )
        .await
        .expect(200);
    assert_eq!(r.json["status"], "busy-tentative");
    assert_eq!(r.json["extension"][1]["url"], EXT_HOLD);
    let r = app
        .post(
            "/Appointment/$hold",
            &params(&[("slot", json!(a)), ("patient", json!(p2))]),
        )
        .await
        .expect_outcome(409);
    assert!(r.text.contains("held for another patient"), "{}", r.text);
    let r = book(&app, &a, &p2).await.expect_outcome(409);
    assert!(r.text.contains("held for another patient"));
    assert!(!free_slots(&app, &sched)
        .await
        .iter()
        .any(|s| slot_ref(s) == a));
    let r = book(&app, &a, &p1).await.expect(201);
    let appt = r.json.clone();
    let appt_id = appt["id"].as_str().unwrap().to_string();
    assert_eq!(appt["status"], "booked");
    assert_eq!(appt["slot"][0]["reference"], a);
    assert_eq!(appt["start"], slots[0]["start"]);
    let actors: Vec<&str> = appt["participant"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["actor"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(actors[0], p1);
    assert!(actors.iter().any(|r| r.starts_with("Practitioner/")));
    assert!(actors.iter().any(|r| r.starts_with("PractitionerRole/")));
    assert!(r
        .header("location")
        .unwrap()
        .contains(&format!("/Appointment/{appt_id}/_history/1")));
    assert_eq!(read(&app, &a).await["status"], "busy");
    // a booked slot: another patient, or the same one again, gets 409
    let r = book(&app, &a, &p2).await.expect_outcome(409);
    assert!(r.text.contains("already booked"), "{}", r.text);
    book(&app, &a, &p1).await.expect_outcome(409);
    // bad input
    book(&app, "Slot/nope", &p1).await.expect_outcome(404);
    let r = book(&app, &b, "Patient/ghost").await.expect_outcome(400);
    assert!(r.text.contains("Patient/ghost does not exist"));
    let r = app
        .post("/Appointment/$book", &params(&[("slot", json!(b))]))
        .await
        .expect_outcome(400);
    assert!(r.text.contains("'patient'"));
    app.post("/Appointment/$book", &json!({"resourceType": "Patient"}))
        .await
        .expect_outcome(400);

    // p2 books B; rescheduling p1 into B conflicts and changes nothing
    book(&app, &b, &p2).await.expect(201);
    let r = app
        .post(
            &format!("/Appointment/{appt_id}/$reschedule"),
            &params(&[("slot", json!(b))]),
        )
        .await
        .expect_outcome(409);
    assert!(r.text.contains("already booked"));
    let unchanged = read(&app, &format!("Appointment/{appt_id}")).await;
    assert_eq!(unchanged["meta"]["versionId"], "1");
    assert_eq!(read(&app, &a).await["status"], "busy");
    // into C: A frees up, C becomes busy, same Appointment, new version
    let r = app
        .post(
            &format!("/Appointment/{appt_id}/$reschedule"),
            &params(&[("slot", json!(c))]),
        )
        .await
        .expect(200);
    assert_eq!(r.json["slot"][0]["reference"], c);
    assert_eq!(r.json["start"], slots[2]["start"]);
    assert_eq!(read(&app, &a).await["status"], "free");
    assert_eq!(read(&app, &c).await["status"], "busy");

    // cancel frees C; twice is a clear error
    let r = app
        .post(
            &format!("/Appointment/{appt_id}/$cancel"),
            &params(&[("reason", json!("feeling better"))]),
        )
        .await
        .expect(200);
    assert_eq!(r.json["status"], "cancelled");
    assert_eq!(r.json["cancelationReason"]["text"], "feeling better");
    assert_eq!(read(&app, &c).await["status"], "free");
    let r = app
        .post(
            &format!("/Appointment/{appt_id}/$cancel"),
            &json!({"resourceType": "Parameters"}),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("already cancelled"), "{}", r.text);
    assert_eq!(r.json["issue"][0]["code"], "business-rule");
    app.post(
        &format!("/Appointment/{appt_id}/$reschedule"),
        &params(&[("slot", json!(a))]),
    )
    .await
    .expect_outcome(400);
    app.post(
        "/Appointment/nope/$cancel",
        &json!({"resourceType": "Parameters"}),
    )
    .await
    .expect_outcome(404);
    // participants were told (cancel and reschedule notices in the outbox)
    let r = app
        .get(&format!("/Communication?based-on=Appointment/{appt_id}&category=https://salus.dev/fhir/CodeSystem/scheduling|notice"))
        .await
        .expect(200);
    let notices = r.json["entry"].as_array().map_or(0, |e| e.len());
    assert_eq!(notices, 2 * 3, "{}", r.text); // 2 notices × patient, role, practitioner
}

#[tokio::test]
async fn an_expired_hold_is_free_again() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let (p1, p2) = (patient(&app, "p1").await, patient(&app, "p2").await);
    let now = Timestamp::now();
    // a slot that has not begun at +6 min (run during opening hours, the first may have)
    let slot = free_slots(&app, &sched)
        .await
        .into_iter()
        .find(|s| {
            let st: Timestamp = s["start"].as_str().unwrap().parse().unwrap();
            st.duration_since(now) > SignedDuration::from_hours(1)
        })
        .expect("a slot an hour ahead");
    let sid = slot["id"].as_str().unwrap();
    let svc = &app.state.service;
    let s = &app.state.scheduling;
    svc.hold_slot(s, sid, &p1, Some(5), now).await.unwrap();
    let later = OpContext {
        now: now.checked_add(SignedDuration::from_mins(6)).unwrap(),
        base: "http://x".into(),
    };
    let req = BookRequest {
        slot: format!("Slot/{sid}"),
        patient: p2.clone(),
        comment: None,
    };
    // still held at +4 min
    let soon = OpContext {
        now: now.checked_add(SignedDuration::from_mins(4)).unwrap(),
        base: "http://x".into(),
    };
    let e = svc.book(s, &req, &soon).await.unwrap_err();
    assert!(e.to_string().contains("held for another patient"), "{e}");
    // expired at +6 min: findable and bookable by someone else
    let q = salus_service::scheduling::FindQuery {
        schedule: Some(sched.clone()),
        count: 500,
        ..Default::default()
    };
    let found = svc.find_slots(s, &q, later.now).await.unwrap();
    assert!(found.iter().any(|f| f["id"] == sid));
    // the other slots, for the checks below
    let others: Vec<&Value> = found.iter().filter(|f| f["id"] != sid).collect();
    let rec = svc.book(s, &req, &later).await.unwrap();
    assert!(rec.body.unwrap().contains(&p2));
    // holds are bounded by the configuration
    let r = app
        .post(
            "/Appointment/$hold",
            &params(&[
                ("slot", json!(slot_ref(others[0]))),
                ("patient", json!(p1)),
                ("minutes", json!(600)),
            ]),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("minutes"));
    // a slot that has started cannot be held
    let far = now
        .checked_add(SignedDuration::from_hours(24 * 30))
        .unwrap();
    let e = svc
        .hold_slot(s, others[2]["id"].as_str().unwrap(), &p1, Some(5), far)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("in the past"), "{e}");
    // the sweeper tidies expired holds up
    let other = &others[1];
    svc.hold_slot(s, other["id"].as_str().unwrap(), &p1, Some(1), now)
        .await
        .unwrap();
    svc.refresh_schedules(s, later.now).await.unwrap();
    let tidy = read(&app, &slot_ref(other)).await;
    assert_eq!(tidy["status"], "free");
    assert!(tidy
        .get("extension")
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["url"] != EXT_HOLD));
}

/// 100 patients book the same slot at once: exactly one Appointment, 99 clear 409s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_bookers_one_wins() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let slot = slot_ref(&free_slots(&app, &sched).await[0]);
    let mut patients = Vec::new();
    for i in 0..100 {
        patients.push(patient(&app, &format!("c{i}")).await);
    }
    let app = Arc::new(app);
    let tasks: Vec<_> = patients
        .iter()
        .map(|p| {
            let (app, slot, p) = (app.clone(), slot.clone(), p.clone());
            tokio::spawn(async move {
                let r = book(&app, &slot, &p).await;
                (r.status.as_u16(), r.json)
            })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => won += 1,
            409 => {
                common::assert_outcome(&body);
                let d = body["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(
                    d.contains("already booked") || d.contains("just taken"),
                    "{d}"
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(app.count("Appointment").await, 1);
    assert_eq!(read(&app, &slot).await["status"], "busy");
}

/// The same race over a real socket (a server on 127.0.0.1, 100 connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_bookers_over_a_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let slot = slot_ref(&free_slots(&app, &sched).await[1]);
    let mut patients = Vec::new();
    for i in 0..100 {
        patients.push(patient(&app, &format!("s{i}")).await);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let tasks: Vec<_> = patients
        .iter()
        .map(|p| {
            let body = serde_json::to_string(&params(&[("slot", json!(slot)), ("patient", json!(p))])).unwrap();
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let req = format!(
                    "POST /Appointment/$book HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        let out = t.await.unwrap();
        let code: u16 = out.split(' ').nth(1).unwrap().parse().unwrap();
        if code == 409 {
            assert!(out.contains("OperationOutcome"), "{out}");
        }
        codes.push(code);
    }
    server.abort();
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 99, "{codes:?}");
    assert_eq!(app.count("Appointment").await, 1);
}

#[tokio::test]
async fn video_visits_get_signed_links_and_status_rules() {
    let app = sched_app();
    let (pr, role, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let p = patient(&app, "p1").await;
    let slot = free_slots(&app, &sched).await.remove(0);
    let appt = book(&app, &slot_ref(&slot), &p).await.expect(201).json;
    let id = appt["id"].as_str().unwrap();
    let vs = appt["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == EXT_VIRTUAL_SERVICE)
        .expect("virtual service extension");
    let part = |name: &str| -> Vec<&Value> {
        vs["extension"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["url"] == name)
            .collect()
    };
    let address = part("addressUrl")[0]["valueUrl"].as_str().unwrap();
    assert!(
        address.starts_with("https://meet.example.org/salus-"),
        "{address}"
    );
    assert_eq!(part("channelType")[0]["valueCoding"]["code"], "jitsi");
    let links = part("participantLink");
    assert_eq!(links.len(), 3); // patient, role, practitioner
    let provider = JitsiProvider::new("https://meet.example.org", SECRET, "salus", 30);
    let start: Timestamp = slot["start"].as_str().unwrap().parse().unwrap();
    for (who, link) in [(&p, links[0]), (&role, links[1]), (&pr, links[2])] {
        assert_eq!(
            link["extension"][0]["valueReference"]["reference"],
            who.as_str()
        );
        let url = link["extension"][1]["valueUrl"].as_str().unwrap();
        assert!(url.starts_with(address));
        let token = url.split("?jwt=").nth(1).unwrap();
        let claims = provider.verify(token, start).unwrap();
        assert_eq!(&claims.sub, who);
        // valid until the end of the visit + 30 minutes
        let end: Timestamp = slot["end"].as_str().unwrap().parse().unwrap();
        assert_eq!(claims.exp, end.as_second() + 1800);
    }
    let status = |s: &str| params(&[("status", json!(s))]);
    let url = format!("/Appointment/{id}/$set-status");
    let r = app
        .post(&url, &status("fulfilled"))
        .await
        .expect_outcome(400);
    assert!(r.text.contains("booked to fulfilled"), "{}", r.text);
    app.post(&url, &status("done")).await.expect_outcome(400);
    assert_eq!(
        app.post(&url, &status("arrived")).await.expect(200).json["status"],
        "arrived"
    );
    app.post(&url, &status("noshow")).await.expect_outcome(400);
    assert_eq!(
        app.post(&url, &status("fulfilled")).await.expect(200).json["status"],
        "fulfilled"
    );
    let r = app
        .post(&url, &status("cancelled"))
        .await
        .expect_outcome(400);
    assert!(r.text.contains("fulfilled"));
    // follow-up: a Task with a booking link and a CarePlan activity
    let r = app
        .get(&format!("/Task?focus=Appointment/{id}"))
        .await
        .expect(200);
    let task = &r.json["entry"][0]["resource"];
    assert_eq!(task["code"]["coding"][0]["code"], "follow-up");
    assert_eq!(task["for"]["reference"], p.as_str());
    let link = task["input"][0]["valueUrl"].as_str().unwrap();
    assert!(
        link.contains("/Appointment/$find?schedule=Schedule/"),
        "{link}"
    );
    let r = app.get(&format!("/CarePlan?subject={p}")).await.expect(200);
    let plan = &r.json["entry"][0]["resource"];
    assert_eq!(plan["activity"][0]["detail"]["kind"], "Appointment");
    assert_eq!(plan["status"], "active");
}

#[tokio::test]
async fn a_freed_slot_is_offered_to_the_waitlist() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let (p1, p2, p3) = (
        patient(&app, "p1").await,
        patient(&app, "p2").await,
        patient(&app, "p3").await,
    );
    let slot = slot_ref(&free_slots(&app, &sched).await[0]);
    let appt = book(&app, &slot, &p1).await.expect(201).json;
    let task = app
        .post(
            "/Appointment/$waitlist",
            &params(&[
                ("patient", json!(p2)),
                ("schedule", json!(sched)),
                ("visit-type", json!("video-15")),
            ]),
        )
        .await
        .expect(201)
        .json;
    assert_eq!(task["status"], "requested");
    app.post(
        "/Appointment/$waitlist",
        &params(&[("patient", json!(p3)), ("schedule", json!("Schedule/none"))]),
    )
    .await
    .expect_outcome(400);
    let aid = appt["id"].as_str().unwrap();
    app.post(
        &format!("/Appointment/{aid}/$cancel"),
        &json!({"resourceType": "Parameters"}),
    )
    .await
    .expect(200);
    // held for p2, who was told
    let s = read(&app, &slot).await;
    assert_eq!(s["status"], "busy-tentative");
    let tid = task["id"].as_str().unwrap();
    let t = read(&app, &format!("Task/{tid}")).await;
    assert_eq!(t["status"], "in-progress");
    assert_eq!(t["output"][0]["valueReference"]["reference"], slot.as_str());
    let r = app
        .get(&format!("/Communication?recipient={p2}"))
        .await
        .expect(200);
    assert!(r.text.contains("A slot opened"), "{}", r.text);
    // p3 cannot take it; p2 can, which closes the waitlist entry
    book(&app, &slot, &p3).await.expect_outcome(409);
    book(&app, &slot, &p2).await.expect(201);
    assert_eq!(
        read(&app, &format!("Task/{tid}")).await["status"],
        "completed"
    );
}

/// Reminders go out exactly once although a worker stops mid-way and a new one takes
/// over, and two workers running at once never send one twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_a_worker_restart() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let slots = free_slots(&app, &sched).await;
    // slots at least a day ahead get both reminders (24 h and 1 h)
    let now = Timestamp::now();
    let far: Vec<&Value> = slots
        .iter()
        .filter(|s| {
            let st: Timestamp = s["start"].as_str().unwrap().parse().unwrap();
            st.duration_since(now) > SignedDuration::from_hours(25)
        })
        .take(3)
        .collect();
    assert_eq!(far.len(), 3);
    for (i, s) in far.iter().enumerate() {
        let p = patient(&app, &format!("r{i}")).await;
        book(&app, &slot_ref(s), &p).await.expect(201);
    }
    let svc = &app.state.service;
    let cfg = &app.state.scheduling;
    // nothing is due yet
    let rec = Arc::new(RecordingChannel::new("portal"));
    let channels: Vec<Arc<dyn Channel>> = vec![rec.clone()];
    let r = svc
        .process_outbox(cfg, &channels, "w0", now, 100)
        .await
        .unwrap();
    assert_eq!(r.sent, 0);
    // once all are due: worker A sends 2, then claims one and dies before sending it
    let due = far
        .iter()
        .map(|s| s["start"].as_str().unwrap().parse::<Timestamp>().unwrap())
        .max()
        .unwrap();
    let r = svc
        .process_outbox(cfg, &channels, "worker-a", due, 2)
        .await
        .unwrap();
    assert_eq!(r.sent, 2);
    let orphan = svc
        .claim_due_messages(cfg, "worker-a", due, 1)
        .await
        .unwrap();
    assert_eq!(orphan.len(), 1);
    // worker B starts: the orphan's lease still runs, the other three go out
    let r = svc
        .process_outbox(cfg, &channels, "worker-b", due, 100)
        .await
        .unwrap();
    assert_eq!(r.sent, 3);
    // after the lease: B takes the orphan over; A's late completion is refused
    let after = due.checked_add(SignedDuration::from_secs(121)).unwrap();
    let r = svc
        .process_outbox(cfg, &channels, "worker-b", after, 100)
        .await
        .unwrap();
    assert_eq!(r.sent, 1);
    assert!(svc.complete_message(&orphan[0], after).await.is_err());
    let sent = rec.sent();
    let keys: HashSet<&str> = sent.iter().map(|m| m.idempotency_key.as_str()).collect();
    assert_eq!(sent.len(), 6);
    assert_eq!(keys.len(), 6, "a reminder went out twice: {sent:?}");
    assert!(sent
        .iter()
        .all(|m| m.recipient.starts_with("Patient/") && m.body.contains("Reminder")));
    let r = app
        .get("/Communication?status=completed&_summary=count")
        .await
        .expect(200);
    assert_eq!(r.json["total"], 6);
    let r = svc
        .process_outbox(cfg, &channels, "worker-c", after, 100)
        .await
        .unwrap();
    assert_eq!(r.sent, 0);

    // two workers at once on fresh reminders: each message once
    let more: Vec<&Value> = slots
        .iter()
        .filter(|s| {
            let st: Timestamp = s["start"].as_str().unwrap().parse().unwrap();
            st.duration_since(now) > SignedDuration::from_hours(25)
        })
        .skip(3)
        .take(4)
        .collect();
    for (i, s) in more.iter().enumerate() {
        let p = patient(&app, &format!("m{i}")).await;
        book(&app, &slot_ref(s), &p).await.expect(201);
    }
    let due2 = more
        .iter()
        .map(|s| s["start"].as_str().unwrap().parse::<Timestamp>().unwrap())
        .max()
        .unwrap();
    let rec2 = Arc::new(RecordingChannel::new("portal"));
    let ch2: Vec<Arc<dyn Channel>> = vec![rec2.clone()];
    let (a, b) = tokio::join!(
        svc.process_outbox(cfg, &ch2, "x", due2, 100),
        svc.process_outbox(cfg, &ch2, "y", due2, 100)
    );
    assert_eq!(a.unwrap().sent + b.unwrap().sent, 8);
    let keys2: HashSet<String> = rec2.sent().into_iter().map(|m| m.idempotency_key).collect();
    assert_eq!(rec2.sent().len(), 8);
    assert_eq!(keys2.len(), 8);
}

#[tokio::test]
async fn the_worklist_shows_the_care_teams_day() {
    let app = sched_app();
    let (pr, role, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let team = app
        .create(&json!({
            "resourceType": "CareTeam",
            "status": "active",
            "participant": [{"member": {"reference": role}}, {"member": {"reference": pr}}]
        }))
        .await;
    let team_ref = format!("CareTeam/{team}");
    let slots = free_slots(&app, &sched).await;
    // the last day of the horizon is a whole day (today's slots may be partly past)
    let day = &slots.last().unwrap()["start"].as_str().unwrap()[..10];
    let same_day: Vec<&Value> = slots
        .iter()
        .filter(|s| s["start"].as_str().unwrap().starts_with(day))
        .collect();
    assert!(same_day.len() >= 3, "{day}");
    let mut ids = Vec::new();
    for (i, s) in same_day.iter().take(3).enumerate() {
        let p = patient(&app, &format!("w{i}")).await;
        ids.push(
            book(&app, &slot_ref(s), &p).await.expect(201).json["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let status = |s: &str| params(&[("status", json!(s))]);
    app.post(
        &format!("/Appointment/{}/$set-status", ids[0]),
        &status("noshow"),
    )
    .await
    .expect(200);
    app.post(
        &format!("/Appointment/{}/$set-status", ids[1]),
        &status("arrived"),
    )
    .await
    .expect(200);
    app.post(
        &format!("/Appointment/{}/$set-status", ids[1]),
        &status("fulfilled"),
    )
    .await
    .expect(200);
    app.post(
        &format!("/Appointment/{}/$cancel", ids[2]),
        &json!({"resourceType": "Parameters"}),
    )
    .await
    .expect(200);
    // an overdue task of the team
    app.create(&json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "description": "call back",
        "owner": {"reference": team_ref},
        "restriction": {"period": {"end": "2020-01-01T00:00:00Z"}}
    }))
    .await;
    let r = app
        .get(&format!(
            "/$worklist?careTeam={team_ref}&date={day}&tz=Europe/Berlin"
        ))
        .await
        .expect(200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let w = &r.json;
    assert_eq!(w["visits"].as_array().unwrap().len(), 1, "{}", r.text);
    assert_eq!(w["visits"][0]["id"], ids[1].as_str());
    assert_eq!(w["noShows"].as_array().unwrap().len(), 1);
    assert_eq!(w["noShows"][0]["id"], ids[0].as_str());
    assert_eq!(w["pendingFollowUps"].as_array().unwrap().len(), 1);
    assert_eq!(
        w["pendingFollowUps"][0]["owner"]["reference"],
        team_ref.as_str()
    );
    assert_eq!(w["overdueTasks"].as_array().unwrap().len(), 1);
    assert_eq!(w["overdueTasks"][0]["description"], "call back");
    // another day is empty; bad input is explained
    let r = app
        .get(&format!("/$worklist?careTeam={team_ref}&date=2020-01-01"))
        .await
        .expect(200);
    assert_eq!(r.json["visits"].as_array().unwrap().len(), 0);
    app.get("/$worklist?date=2020-01-01")
        .await
        .expect_outcome(400);
    app.get(&format!("/$worklist?careTeam={team_ref}&date=01/02/2020"))
        .await
        .expect_outcome(400);
    app.get("/$worklist?careTeam=CareTeam/none")
        .await
        .expect_outcome(404);
}

#[tokio::test]
async fn ical_feeds_parse_back() {
    let app = sched_app();
    let (pr, role, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let p = patient(&app, "p1").await;
    let slots = free_slots(&app, &sched).await;
    let a1 = book(&app, &slot_ref(&slots[0]), &p).await.expect(201).json;
    let a2 = book(&app, &slot_ref(&slots[1]), &p).await.expect(201).json;
    let id2 = a2["id"].as_str().unwrap();
    app.post(
        &format!("/Appointment/{id2}/$cancel"),
        &json!({"resourceType": "Parameters"}),
    )
    .await
    .expect(200);
    let r = app.get(&format!("/{p}/$ics")).await.expect(200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/calendar"));
    let events = ical::parse_events(&r.text).expect("a valid iCalendar feed");
    assert_eq!(events.len(), 2);
    let e1 = events
        .iter()
        .find(|e| {
            ical::value(e, "UID")
                == Some(&format!("Appointment-{}@salus", a1["id"].as_str().unwrap()))
        })
        .unwrap();
    let start: Timestamp = slots[0]["start"].as_str().unwrap().parse().unwrap();
    assert_eq!(ical::value(e1, "DTSTART"), Some(ical::utc(start).as_str()));
    assert!(ical::value(e1, "DTSTAMP").unwrap().ends_with('Z'));
    assert_eq!(ical::value(e1, "STATUS"), Some("CONFIRMED"));
    assert!(ical::value(e1, "SUMMARY").unwrap().contains("Video visit"));
    let url = ical::value(e1, "URL").unwrap();
    let token = url.split("?jwt=").nth(1).unwrap();
    let claims = JitsiProvider::new("https://meet.example.org", SECRET, "salus", 30)
        .verify(token, start)
        .unwrap();
    assert_eq!(
        claims.sub, p,
        "the patient's feed carries the patient's own link"
    );
    let e2 = events
        .iter()
        .find(|e| ical::value(e, "UID").unwrap().contains(id2))
        .unwrap();
    assert_eq!(ical::value(e2, "STATUS"), Some("CANCELLED"));
    for feed in [format!("/{pr}/$ics"), format!("/{role}/$ics")] {
        let r = app.get(&feed).await.expect(200);
        let events = ical::parse_events(&r.text).unwrap();
        assert_eq!(events.len(), 2, "{feed}");
        let mine = events
            .iter()
            .find(|e| ical::value(e, "STATUS") == Some("CONFIRMED"))
            .unwrap();
        let url = ical::value(mine, "URL").unwrap();
        let token = url.split("?jwt=").nth(1).unwrap();
        let who = JitsiProvider::new("https://meet.example.org", SECRET, "salus", 30)
            .verify(token, start)
            .unwrap()
            .sub;
        assert!(feed.contains(&who), "{feed} has {who}'s link");
    }
    app.get("/Patient/none/$ics").await.expect_outcome(404);
}

/// Two application instances on one database (two server processes): 50 bookers on
/// each race for the same slot; exactly one wins across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_on_one_database_never_double_book() {
    let app = sched_app();
    let (_, _, sched) = provider(&app, "cardiology", "de", "video-15", true).await;
    let slot = slot_ref(&free_slots(&app, &sched).await[2]);
    let mut patients = Vec::new();
    for i in 0..100 {
        patients.push(patient(&app, &format!("t{i}")).await);
    }
    let other = salus_api::router(app.twin().with_scheduling(Scheduling {
        config: SchedulingConfig::default(),
        video: Arc::new(JitsiProvider::new(
            "https://meet.example.org",
            SECRET,
            "salus",
            30,
        )),
    }));
    let routers = [app.router.clone(), other];
    let tasks: Vec<_> = patients
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let router = routers[i % 2].clone();
            let body = serde_json::to_vec(&params(&[("slot", json!(slot)), ("patient", json!(p))]))
                .unwrap();
            tokio::spawn(async move {
                use tower::ServiceExt;
                let req = axum::http::Request::post("/Appointment/$book")
                    .header("content-type", "application/fhir+json")
                    .body(axum::body::Body::from(body))
                    .unwrap();
                router.oneshot(req).await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 201).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 99, "{codes:?}");
    assert_eq!(app.count("Appointment").await, 1);
}

#[tokio::test]
async fn the_capability_statement_lists_the_operations() {
    let app = sched_app();
    let r = app.get("/metadata").await.expect(200);
    let rest = &r.json["rest"][0];
    let ops = |t: &str| -> Vec<String> {
        rest["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"] == t)
            .unwrap()["operation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ops("Appointment").contains(&"book".to_string()));
    assert!(ops("Schedule").contains(&"set-availability".to_string()));
    assert!(ops("Patient").contains(&"ics".to_string()));
    assert_eq!(ops("Observation"), ["validate"]);
    let system: Vec<&str> = rest["operation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(system.contains(&"worklist"), "{system:?}");
    // analytics is not configured here: its operations are not offered
    assert!(!system.contains(&"sql"), "{system:?}");
    assert!(!ops("Measure").contains(&"evaluate-measure".to_string()));
}

/// With auth on, a patient books, cancels and reads the calendar only for themself;
/// publishing availability and the worklist are for staff; staff book for anyone.
#[tokio::test]
async fn with_auth_patients_act_only_for_themselves() {
    use salus_service::salus_access::{Principal, StaticTokens};
    let mut app = sched_app();
    let (_, _, sched) = provider(&app, "394579002", "en", "video-15", true).await;
    let pa = patient(&app, "a").await;
    let pb = patient(&app, "b").await;
    let slots = free_slots(&app, &sched).await;
    let (s1, s2) = (slot_ref(&slots[0]), slot_ref(&slots[1]));
    let id = |p: &str| p.trim_start_matches("Patient/").to_string();
    let tokens = StaticTokens::new()
        .with(
            "tok-a",
            Principal::new("a", "patient/*.rs")
                .unwrap()
                .with_patient(id(&pa)),
        )
        .with(
            "tok-b",
            Principal::new("b", "patient/*.rs")
                .unwrap()
                .with_patient(id(&pb)),
        )
        .with(
            "tok-cm",
            Principal::new("cm", "user/*.cruds")
                .unwrap()
                .with_roles(&["care-manager"]),
        );
    app.router = salus_api::router(app.state.clone().with_auth(Arc::new(tokens)));
    let call = |token: &'static str, method: &'static str, uri: String, body: Option<Value>| {
        let app = &app;
        async move {
            let h = format!("Bearer {token}");
            app.req(
                method,
                &uri,
                &[("authorization", h.as_str())],
                body.as_ref(),
            )
            .await
        }
    };
    let book =
        |slot: &str, patient: &str| params(&[("slot", json!(slot)), ("patient", json!(patient))]);
    call(
        "tok-a",
        "POST",
        "/Appointment/$book".into(),
        Some(book(&s1, &pb)),
    )
    .await
    .expect_outcome(403);
    let r = call(
        "tok-a",
        "POST",
        "/Appointment/$book".into(),
        Some(book(&s1, &pa)),
    )
    .await
    .expect(201);
    let appt = r.json["id"].as_str().unwrap().to_string();
    call(
        "tok-b",
        "POST",
        format!("/Appointment/{appt}/$cancel"),
        Some(params(&[])),
    )
    .await
    .expect_outcome(403);
    call("tok-a", "GET", format!("/{pa}/$ics"), None)
        .await
        .expect(200);
    call("tok-b", "GET", format!("/{pa}/$ics"), None)
        .await
        .expect_outcome(403);
    let rules = json!({"timeZone": "UTC", "visitTypes": [{"code": "v", "minutes": 15}],
        "weekly": [{"days": ["mon"], "start": "09:00", "end": "10:00", "visitType": "v"}]});
    call(
        "tok-a",
        "POST",
        format!("/{sched}/$set-availability"),
        Some(rules),
    )
    .await
    .expect_outcome(403);
    call(
        "tok-a",
        "GET",
        "/$worklist?careTeam=CareTeam/x".into(),
        None,
    )
    .await
    .expect_outcome(403);
    call(
        "tok-cm",
        "POST",
        "/Appointment/$book".into(),
        Some(book(&s2, &pb)),
    )
    .await
    .expect(201);
    call(
        "tok-a",
        "POST",
        format!("/Appointment/{appt}/$cancel"),
        Some(params(&[])),
    )
    .await
    .expect(200);
}
