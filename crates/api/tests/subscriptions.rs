//! FHIR Subscriptions through the router, on SQLite and PostgreSQL: a rest-hook
//! receiver on a loopback port gets the handshake, then event notifications (Backport
//! IG R4 Bundles, full-resource payload); `$status` and `$events` answer; an endpoint
//! that fails puts the subscription in `error`; classic criteria subscriptions get a
//! ping; a websocket client bound with a token gets its notification; bad
//! Subscriptions are refused with an OperationOutcome.

mod common;

use axum::routing::any;
use common::{app_wired, App};
use futures::{SinkExt, StreamExt};
use salus_api::{ApiConfig, AppState};
use salus_service::Limits;
use salus_subscriptions::backport as b;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOPIC: &str = "https://salus.dev/fhir/SubscriptionTopic/patient-observation";

/// A recording rest-hook receiver: (method, path, body) of every request.
type Log = Arc<Mutex<Vec<(String, String, String)>>>;

async fn receiver(fail: bool) -> (String, Log) {
    let log: Log = Arc::default();
    let l = log.clone();
    let app = axum::Router::new().fallback(any(
        move |method: axum::http::Method, uri: axum::http::Uri, body: String| {
            let l = l.clone();
            async move {
                l.lock()
                    .unwrap()
                    .push((method.to_string(), uri.path().to_string(), body));
                if fail {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, log)
}

/// An app with a subscription engine that polls every 50 ms (no commit hook in tests).
fn sub_app(base: &str) -> (App, salus_subscriptions::Engine) {
    sub_app_with(base, None)
}

/// [`sub_app`] with authorization by these tokens (grants recorded and enforced).
fn sub_app_with(
    base: &str,
    auth: Option<salus_service::salus_access::StaticTokens>,
) -> (App, salus_subscriptions::Engine) {
    let engine_slot: Arc<Mutex<Option<salus_subscriptions::Engine>>> = Arc::default();
    let slot = engine_slot.clone();
    let base = base.to_string();
    let app = app_wired(
        Limits::default(),
        ApiConfig::default(),
        move |s: AppState| {
            let config = salus_subscriptions::EngineConfig {
                base_url: base,
                poll_interval: Duration::from_millis(50),
                max_failures: 3,
                require_grants: auth.is_some(),
                retry_base: Duration::from_millis(20),
                retry_max: Duration::from_millis(100),
                ..Default::default()
            };
            let engine = salus_subscriptions::Engine::new(
                s.service.clone(),
                salus_subscriptions::Topics::builtin(),
                config,
                Arc::new(tokio::sync::Notify::new()),
            );
            *slot.lock().unwrap() = Some(engine.clone());
            let s = match auth {
                Some(t) => s.with_auth(Arc::new(t)),
                None => s,
            };
            s.with_subscriptions(engine)
        },
    );
    let engine = engine_slot.lock().unwrap().take().unwrap();
    (app, engine)
}

fn topic_sub(endpoint: &str, filter: &str, content: &str) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "tests",
        "criteria": TOPIC,
        "_criteria": {"extension": [{"url": b::FILTER_CRITERIA, "valueString": filter}]},
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
            "header": ["X-Secret: s3"],
            "_payload": {"extension": [{"url": b::PAYLOAD_CONTENT, "valueCode": content}]}}})
}

fn obs(patient: &str, code: &str, hr: u32) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": hr, "unit": "/min"}})
}

async fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..400 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

fn notification_type(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["entry"][0]["resource"]["parameter"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["name"] == "type"))
        .and_then(|x| x["valueCode"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_hook_handshake_events_status_and_replay() {
    let (url, log) = receiver(false).await;
    let (app, engine) = sub_app("http://fhir.test");
    let stop = tokio::spawn(engine.clone().run(std::future::pending()));

    let s = app
        .post(
            "/Subscription",
            &topic_sub(
                &url,
                "Observation?code=http://loinc.org|8867-4&patient=Patient/p1",
                "full-resource",
            ),
        )
        .await
        .expect(201);
    let id = s.json["id"].as_str().unwrap().to_string();

    // handshake, then active
    let hs = wait_for("the handshake", || {
        log.lock()
            .unwrap()
            .iter()
            .find(|(_, _, b)| notification_type(b) == "handshake")
            .cloned()
    })
    .await;
    assert_eq!(hs.1, "/hook");
    for _ in 0..200 {
        if app.get(&format!("/Subscription/{id}")).await.json["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        app.get(&format!("/Subscription/{id}")).await.json["status"],
        "active"
    );

    // a matching Observation, one of another patient, one with another code
    let o = app
        .post("/Observation", &obs("p1", "8867-4", 135))
        .await
        .expect(201);
    app.post("/Observation", &obs("p2", "8867-4", 140))
        .await
        .expect(201);
    app.post("/Observation", &obs("p1", "29463-7", 80))
        .await
        .expect(201);
    let oid = o.json["id"].as_str().unwrap().to_string();
    let note = wait_for("the event notification", || {
        log.lock()
            .unwrap()
            .iter()
            .find(|(_, _, b)| notification_type(b) == "event-notification")
            .cloned()
    })
    .await;
    let bundle: Value = serde_json::from_str(&note.2).unwrap();
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["meta"]["profile"][0], b::NOTIFICATION_PROFILE);
    let status = &bundle["entry"][0]["resource"];
    assert_eq!(status["meta"]["profile"][0], b::STATUS_PROFILE);
    let params = status["parameter"].as_array().unwrap();
    let get = |n: &str| params.iter().find(|p| p["name"] == n).cloned().unwrap();
    assert_eq!(get("topic")["valueCanonical"], TOPIC);
    assert_eq!(get("events-since-subscription-start")["valueString"], "1");
    let ev = get("notification-event");
    assert_eq!(ev["part"][0]["valueString"], "1");
    assert_eq!(
        ev["part"][2]["valueReference"]["reference"],
        format!("http://fhir.test/Observation/{oid}/_history/1")
    );
    assert_eq!(
        bundle["entry"][1]["resource"]["id"],
        oid.as_str(),
        "full-resource"
    );
    assert_eq!(
        bundle["entry"][1]["resource"]["valueQuantity"]["value"],
        135
    );

    // an update notifies again (event 2); nothing for the non-matching ones
    let mut changed = app.get(&format!("/Observation/{oid}")).await.json;
    changed["valueQuantity"]["value"] = json!(150);
    app.put(&format!("/Observation/{oid}"), &changed)
        .await
        .expect(200);
    wait_for("event 2", || {
        let n = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, b)| notification_type(b) == "event-notification")
            .count();
        (n >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, b)| notification_type(b) == "event-notification")
        .map(|(_, _, b)| serde_json::from_str(b).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "only the matching changes notify");

    // $status and $events
    let st = app
        .get(&format!("/Subscription/{id}/$status"))
        .await
        .expect(200);
    assert_eq!(st.json["type"], "searchset");
    let p = st.json["entry"][0]["resource"]["parameter"]
        .as_array()
        .unwrap()
        .clone();
    assert!(p
        .iter()
        .any(|x| x["name"] == "type" && x["valueCode"] == "query-status"));
    assert!(p
        .iter()
        .any(|x| x["name"] == "events-since-subscription-start" && x["valueString"] == "2"));
    let replay = app
        .get(&format!(
            "/Subscription/{id}/$events?eventsSinceNumber=2&content=id-only"
        ))
        .await
        .expect(200);
    let entries = replay.json["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "status + event 2: {}", replay.text);
    assert!(entries[1].get("resource").is_none(), "id-only");
    assert_eq!(
        entries[1]["fullUrl"],
        format!("http://fhir.test/Observation/{oid}")
    );
    app.get(&format!("/Subscription/{id}/$events?eventsSinceNumber=x"))
        .await
        .expect_outcome(400);
    app.get("/Subscription/nope/$status")
        .await
        .expect_outcome(404);

    // the CapabilityStatement names the topics
    let cs = app.get("/metadata").await.json;
    let sub = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Subscription")
        .unwrap()
        .clone();
    assert!(sub["extension"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["url"] == b::TOPIC_CANONICAL && e["valueCanonical"] == TOPIC));
    stop.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_ends_in_error_and_bad_subscriptions_are_refused() {
    let (url, log) = receiver(true).await;
    let (app, engine) = sub_app("http://fhir.test");
    let stop = tokio::spawn(engine.clone().run(std::future::pending()));
    let s = app
        .post(
            "/Subscription",
            &topic_sub(&url, "Observation?code=8867-4", "id-only"),
        )
        .await
        .expect(201);
    let id = s.json["id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    for _ in 0..400 {
        last = app.get(&format!("/Subscription/{id}")).await.json;
        if last["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last["status"], "error", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("failed 3 times"),
        "{last}"
    );
    assert!(last["error"].as_str().unwrap().contains("500"), "{last}");
    assert_eq!(
        log.lock().unwrap().len(),
        3,
        "one handshake per attempt, no more after error"
    );
    assert!(log.lock().unwrap()[0].2.contains("handshake"));

    // refused at the door, with the element named
    let bad = |f: &dyn Fn(&mut Value)| {
        let mut v = topic_sub(&url, "Observation?code=8867-4", "id-only");
        f(&mut v);
        v
    };
    let r = app
        .post(
            "/Subscription",
            &bad(&|v| v["criteria"] = json!("https://example.org/unknown")),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("not a topic of this server"), "{}", r.text);
    let r = app
        .post(
            "/Subscription",
            &bad(&|v| v["channel"]["endpoint"] = json!("http://hooks.example.org/x")),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("https"), "{}", r.text);
    let r = app
        .post(
            "/Subscription",
            &bad(&|v| {
                v["_criteria"]["extension"][0]["valueString"] =
                    json!("Observation?value-quantity=gt1")
            }),
        )
        .await
        .expect_outcome(400);
    assert!(r.text.contains("does not allow filtering"), "{}", r.text);
    app.req(
        "PATCH",
        &format!("/Subscription/{id}"),
        &[("content-type", "application/json-patch+json")],
        Some(&json!([{"op": "replace", "path": "/status", "value": "requested"}])),
    )
    .await
    .expect_outcome(405);
    stop.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criteria_subscriptions_ping_and_websockets_receive() {
    // The websocket needs a real socket: serve the router on a loopback port.
    let (url, log) = receiver(false).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (app, engine) = sub_app(&format!("http://{addr}"));
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let stop = tokio::spawn(engine.clone().run(std::future::pending()));

    // R4 criteria, empty payload: a POST without body per notification
    let classic = json!({"resourceType": "Subscription", "status": "requested", "reason": "ping",
        "criteria": "Observation?code=http://loinc.org|8867-4",
        "channel": {"type": "rest-hook", "endpoint": url}});
    let c = app.post("/Subscription", &classic).await.expect(201);
    let cid = c.json["id"].as_str().unwrap().to_string();
    for _ in 0..200 {
        if app.get(&format!("/Subscription/{cid}")).await.json["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // R4 criteria with a payload: the resource is PUT to [endpoint]/[type]/[id]
    let mut full = classic.clone();
    full["channel"]["payload"] = json!("application/fhir+json");
    app.post("/Subscription", &full).await.expect(201);

    // a websocket subscription on the same topic
    let ws_sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "ws",
        "criteria": TOPIC,
        "_criteria": {"extension": [{"url": b::FILTER_CRITERIA, "valueString": "Observation?code=8867-4"}]},
        "channel": {"type": "websocket", "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": b::PAYLOAD_CONTENT, "valueCode": "id-only"}]}}});
    let w = app.post("/Subscription", &ws_sub).await.expect(201);
    let wid = w.json["id"].as_str().unwrap().to_string();
    let tok = app
        .get(&format!("/Subscription/{wid}/$get-ws-binding-token"))
        .await
        .expect(200);
    let params = tok.json["parameter"].as_array().unwrap();
    let token = params.iter().find(|p| p["name"] == "token").unwrap()["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    let ws_url = params
        .iter()
        .find(|p| p["name"] == "websocket-url")
        .unwrap()["valueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(ws_url, format!("ws://{addr}/$subscription-ws"));
    // a token for a rest-hook subscription is refused
    app.get(&format!("/Subscription/{cid}/$get-ws-binding-token"))
        .await
        .expect_outcome(400);

    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        format!("bind-with-token {token}").into(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(notification_type(first.to_text().unwrap()), "handshake");

    let o = app
        .post("/Observation", &obs("p9", "8867-4", 99))
        .await
        .expect(201);
    let oid = o.json["id"].as_str().unwrap().to_string();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let bundle: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
    assert_eq!(
        notification_type(msg.to_text().unwrap()),
        "event-notification"
    );
    assert_eq!(
        bundle["entry"][1]["fullUrl"],
        format!("http://{addr}/Observation/{oid}")
    );

    let ping = wait_for("the criteria ping", || {
        log.lock()
            .unwrap()
            .iter()
            .find(|(m, _, b)| m == "POST" && b.is_empty())
            .cloned()
    })
    .await;
    assert_eq!(ping.1, "/hook");
    let put = wait_for("the criteria PUT", || {
        log.lock()
            .unwrap()
            .iter()
            .find(|(m, _, _)| m == "PUT")
            .cloned()
    })
    .await;
    assert_eq!(put.1, format!("/hook/Observation/{oid}"));
    let body: Value = serde_json::from_str(&put.2).unwrap();
    assert_eq!(body["id"], oid.as_str());

    // a forged token is refused
    let (mut bad, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    bad.send(tokio_tungstenite::tungstenite::Message::Text(
        "bind-with-token abc.def".into(),
    ))
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), bad.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(m.to_text().unwrap().starts_with("error:"), "{m}");
    stop.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_carry_only_what_the_subscriber_may_read() {
    use salus_service::salus_access::{Principal, StaticTokens};
    let tokens = StaticTokens::new()
        .with(
            "tok-lab",
            Principal::new(
                "lab-watcher",
                "user/Subscription.cruds user/Observation.rs?category=laboratory",
            )
            .unwrap()
            .with_roles(&["clinician"]),
        )
        .with(
            "tok-admin",
            Principal::new("root", "user/*.cruds")
                .unwrap()
                .with_roles(&["admin"]),
        );
    let (url, log) = receiver(false).await;
    let (app, engine) = sub_app_with("http://fhir.test", Some(tokens));
    let stop = tokio::spawn(engine.clone().run(std::future::pending()));
    let lab = [("authorization", "Bearer tok-lab")];
    let admin = [("authorization", "Bearer tok-admin")];

    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "labs",
        "criteria": TOPIC,
        "channel": {"type": "rest-hook", "endpoint": url, "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": b::PAYLOAD_CONTENT, "valueCode": "full-resource"}]}}});
    let r = app
        .req("POST", "/Subscription", &lab, Some(&sub))
        .await
        .expect(201);
    let id = r.json["id"].as_str().unwrap().to_string();
    wait_for("the handshake", || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(_, _, b)| notification_type(b) == "handshake")
            .then_some(())
    })
    .await;
    for _ in 0..200 {
        let s = app
            .req("GET", &format!("/Subscription/{id}"), &admin, None)
            .await
            .json;
        if s["status"] == "active" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let with_category = |cat: &str, v: u32| {
        let mut o = obs("p1", "8867-4", v);
        o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": cat}]}]);
        o
    };
    app.req(
        "POST",
        "/Observation",
        &admin,
        Some(&with_category("vital-signs", 61)),
    )
    .await
    .expect(201);
    let made = app
        .req(
            "POST",
            "/Observation",
            &admin,
            Some(&with_category("laboratory", 62)),
        )
        .await
        .expect(201);
    let note = wait_for("the lab notification", || {
        log.lock()
            .unwrap()
            .iter()
            .find(|(_, _, b)| notification_type(b) == "event-notification")
            .cloned()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let notes = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, _, b)| notification_type(b) == "event-notification")
        .count();
    assert_eq!(
        notes, 1,
        "the vital-signs Observation is outside the subscriber's grant"
    );
    let bundle: Value = serde_json::from_str(&note.2).unwrap();
    assert_eq!(bundle["entry"][1]["resource"]["id"], made.json["id"]);

    // the bookkeeping is the server's own
    let forged = json!({"resourceType": "Binary", "id": "salus-sub-engine", "contentType": "application/json", "data": "e30="});
    app.req("PUT", "/Binary/salus-sub-engine", &admin, Some(&forged))
        .await
        .expect_outcome(403);

    // a Subscription stored without the REST check (a transaction) has no grant: error
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": sub, "request": {"method": "POST", "url": "Subscription"}}]});
    let r = app.req("POST", "/", &admin, Some(&tx)).await.expect(200);
    let loc = r.json["entry"][0]["response"]["location"]
        .as_str()
        .unwrap()
        .to_string();
    let sid = loc.split('/').nth(1).unwrap().to_string();
    let mut last = Value::Null;
    for _ in 0..200 {
        last = app
            .req("GET", &format!("/Subscription/{sid}"), &admin, None)
            .await
            .json;
        if last["status"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last["status"], "error", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("no access grant"),
        "{last}"
    );
    stop.abort();
}
