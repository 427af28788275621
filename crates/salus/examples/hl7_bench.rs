//! HL7 v2 intake throughput: N made-up ADT^A01/A08 messages (distinct patients) sent
//! over K concurrent MLLP connections to a running `salus serve --mllp-listen`, each
//! connection waiting for the ACK (sent after commit) before its next message.
//! Prints messages/s and ACK latency p50/p99.
//!
//! ```text
//! cargo build --release -p salus --example hl7_bench
//! target/release/salus serve --data-dir /tmp/bench --mllp-listen 127.0.0.1:2575 &
//! target/release/examples/hl7_bench 127.0.0.1:2575 20000 4
//! ```

use futures::{SinkExt, StreamExt};
use salus_hl7v2::MllpCodec;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const FAMILY: &[&str] = &[
    "SMITH", "JONES", "GARCIA", "MILLER", "DAVIS", "LOPEZ", "WILSON",
];
const GIVEN: &[&str] = &["ANNA", "BEN", "CARLA", "DAVID", "EMMA", "FELIX", "GRETA"];

/// Message `i`: an admission (A01) for patient `i`, or every fourth one an update (A08)
/// of an earlier patient's visit.
fn message(run: u64, i: usize) -> String {
    let (event, patient) = if i % 4 == 3 {
        ("A08", i - 3)
    } else {
        ("A01", i)
    };
    let family = FAMILY[patient % FAMILY.len()];
    let given = GIVEN[(patient / FAMILY.len()) % GIVEN.len()];
    let year = 1940 + patient % 70;
    let month = 1 + patient % 12;
    let day = 1 + patient % 28;
    let gender = if patient % 2 == 0 { "F" } else { "M" };
    format!(
        "MSH|^~\\&|BENCH|HOSP|SALUS|HOSP|20240102030405+0100||ADT^{event}^ADT_A01|B{run}-{i}|P|2.5.1\r\
         EVN|{event}|20240102030405+0100\r\
         PID|1||R{run}P{patient}^^^HOSP^MR||{family}^{given}^Q||{year}{month:02}{day:02}|{gender}|||{patient} MAIN ST^^SPRINGFIELD^IL^62701^US||^PRN^PH^^^217^555{:04}\r\
         PV1|1|I|WARD{}^{}^1||||1234^WELBY^MARCUS^^^DR|||MED||||7|||||R{run}V{patient}^^^HOSP^VN|||||||||||||||||||||||||20240102030000+0100\r\
         OBX|1|NM|8867-4^Heart rate^LN||{}|/min^/min^UCUM|60-100|N|||F\r",
        patient % 10_000,
        patient % 9,
        patient % 40,
        60 + patient % 40,
    )
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:2575".into());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let k: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(4).max(1);
    // Distinct identifiers per run, so a second run against the same data dir admits
    // new patients instead of updating the first run's.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let messages: Vec<String> = (0..n).map(|i| message(run, i)).collect();
    let start = Instant::now();
    let mut tasks = vec![];
    for c in 0..k {
        // Connection c sends messages c, c+k, c+2k, … (an A08 follows its A01 on the
        // same connection whenever k divides 3; otherwise it may arrive first and admit).
        let mine: Vec<String> = messages.iter().skip(c).step_by(k).cloned().collect();
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.expect("connect");
            stream.set_nodelay(true).ok();
            let mut framed = Framed::new(stream, MllpCodec::default());
            let mut latencies = Vec::with_capacity(mine.len());
            let mut not_aa = 0usize;
            for m in mine {
                let t = Instant::now();
                framed.send(m.as_bytes()).await.expect("send");
                let ack = framed
                    .next()
                    .await
                    .expect("the server closed the connection")
                    .expect("an MLLP frame");
                latencies.push(t.elapsed());
                if !ack.windows(7).any(|w| w == b"\rMSA|AA") {
                    not_aa += 1;
                }
            }
            (latencies, not_aa)
        }));
    }
    let mut all: Vec<Duration> = vec![];
    let mut not_aa = 0;
    for t in tasks {
        let (l, e) = t.await.expect("connection task");
        all.extend(l);
        not_aa += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    println!(
        "{n} ADT messages over {k} MLLP connections in {secs:.2}s: {:.0} messages/s; \
         ACK latency p50 {:.2} ms, p99 {:.2} ms; {not_aa} not AA",
        n as f64 / secs,
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    if not_aa > 0 {
        std::process::exit(1);
    }
}
