//! The real `salus` binary: start, serve, shut down gracefully, keep every
//! acknowledged write.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(data: &std::path::Path, port: u16, demo: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_salus"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .env_remove("SALUS_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if demo {
        cmd.arg("--demo");
    }
    let mut child = cmd.spawn().expect("salus starts");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("ready at") {
            break;
        }
        assert!(Instant::now() < deadline, "server did not start");
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

fn stop(mut child: Child) {
    let pid = child.id() as i32;
    // SIGTERM, as an init system would send.
    let rc = unsafe_kill(pid);
    assert_eq!(rc, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unsafe_kill(pid: i32) -> i32 {
    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .map(|s| if s.success() { 0 } else { 1 })
        .unwrap_or(1)
}

#[tokio::test]
async fn serve_demo_then_restart_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let child = start(&data, port, true);
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let bundle: serde_json::Value = client
        .get(format!("{base}/Patient?_total=accurate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["total"], 25, "demo patients loaded");
    let mut ids = vec![];
    for i in 0..50 {
        let r = client
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(format!(
                r#"{{"resourceType":"Patient","name":[{{"family":"Ack{i}"}}]}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        ids.push(loc.split('/').rev().nth(2).unwrap().to_string());
    }
    stop(child);
    let child = start(&data, port, true);
    // a fresh client: the old one's pooled connections died with the first process
    let client = reqwest::Client::new();
    for id in &ids {
        let r = client
            .get(format!("{base}/Patient/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "acknowledged write {id} survived the restart"
        );
    }
    let bundle: serde_json::Value = client
        .get(format!("{base}/Patient?_total=accurate&_count=0"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["total"], 75, "demo data is not loaded twice");
    stop(child);
}

#[test]
fn bad_configuration_is_a_readable_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("salus.toml");
    std::fs::write(&f, "listen = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid configuration file"), "{err}");
}
