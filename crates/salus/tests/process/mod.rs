//! Running the real `salus` binary in tests: start `serve` on a free port, wait until
//! it is ready, stop it with SIGTERM as an init system would.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `salus serve` on `127.0.0.1:port` over `data` (with `--demo` when asked), once it
/// has logged that it is ready.
pub fn start(data: &Path, port: u16, demo: bool) -> Child {
    start_with(data, port, demo, &[])
}

/// [`start`] with extra `serve` arguments (e.g. `--mllp-listen 127.0.0.1:PORT`).
pub fn start_with(data: &Path, port: u16, demo: bool, extra: &[&str]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_salus"));
    cmd.arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env_remove("SALUS_CONFIG")
        .env_remove("SALUS_HL7_MLLP_LISTEN")
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

/// SIGTERM, then wait for a clean exit.
pub fn stop(mut child: Child) {
    let sent = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "SIGTERM sent");
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

/// The MQTT broker device tests publish to (`SALUS_TEST_MQTT=host:port`, else
/// 127.0.0.1:1883): `None`, said loudly, when there is none; a panic where CI requires one
/// (`SALUS_REQUIRE_SHARED`). `what` names the test that did not run.
pub fn mqtt_broker(what: &str) -> Option<(String, u16)> {
    let addr = std::env::var("SALUS_TEST_MQTT").unwrap_or_else(|_| "127.0.0.1:1883".into());
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if std::net::TcpStream::connect((host, port)).is_ok() {
        return Some((host.to_string(), port));
    }
    if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!("no MQTT broker at {addr}, and CI requires one");
    }
    eprintln!("SKIPPED: no MQTT broker at {addr}; {what} did not run");
    None
}
