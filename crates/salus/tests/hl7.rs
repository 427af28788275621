//! HL7 v2 end to end through the real binary: the sample feed over MLLP into
//! `salus serve --mllp-listen`, ACKs after commit, the results found through FHIR search
//! over HTTP, idempotent resending, atomic rejection; and the `salus convert` and
//! `salus hl7 send` commands.

mod process;

use process::{free_port, start_with, stop};
use salus_hl7v2::{AckCode, SUPPORTED};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SALUS_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    if dir.is_dir() {
        Some(dir)
    } else if std::env::var_os("SALUS_REQUIRE_SHARED").is_some() {
        panic!(
            "shared material required (SALUS_REQUIRE_SHARED) but {} is missing",
            dir.display()
        );
    } else {
        eprintln!("SKIPPED: shared material not found at {}", dir.display());
        None
    }
}

/// The sample messages of a supported type, in file-name order.
fn supported_feed(shared: &Path) -> Vec<(String, String)> {
    let dir = shared.join("data/hl7v2/messages");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .collect();
    files.sort();
    let mut feed = vec![];
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let text = salus_hl7v2::mllp::decode_text(&bytes).into_owned();
        let Ok(m) = salus_hl7v2::parse(&text) else {
            continue;
        };
        let mt = m.message_type();
        if SUPPORTED.contains(&format!("{}_{}", mt.code, mt.trigger).as_str()) {
            feed.push((f.file_name().unwrap().to_string_lossy().into_owned(), text));
        }
    }
    feed
}

/// Send one message, return MSA-1 and MSA-3.
async fn send(addr: &str, text: &str) -> (AckCode, String) {
    let ack = salus_hl7v2::mllp::send(addr, text).await.expect("an ACK");
    let m = salus_hl7v2::parse(&ack).expect("the ACK parses");
    salus_hl7v2::read_ack(&m).expect("an MSA segment")
}

struct Fhir {
    client: reqwest::Client,
    base: String,
}

impl Fhir {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    async fn total(&self, query: &str) -> u64 {
        let sep = if query.contains('?') { '&' } else { '?' };
        let b = self
            .get(&format!("{query}{sep}_total=accurate&_count=0"))
            .await;
        b["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("total of {query}: {b}"))
    }

    /// The one resource a search finds.
    async fn one(&self, query: &str) -> Value {
        let b = self.get(query).await;
        let entries = b["entry"].as_array().cloned().unwrap_or_default();
        assert_eq!(entries.len(), 1, "{query} finds one resource: {b}");
        entries[0]["resource"].clone()
    }

    /// The resources a search finds (first page).
    async fn all(&self, query: &str) -> Vec<Value> {
        let b = self.get(query).await;
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .collect()
    }

    /// Current resources of every type but Binary (the stored messages), from /metrics.
    async fn clinical_resources(&self) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with("salus_resources{") && !l.contains("\"Binary\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }
}

const BAD_BIRTH_DATE: &str =
    "MSH|^~\\&|TEST|HOSP|SALUS|HOSP|20240102030405+0100||ADT^A01^ADT_A01|BAD-1|P|2.5.1\r\
EVN|A01|20240102030405+0100\r\
PID|1||BAD-123^^^HOSP^MR||ROE^RICHARD||2024-13-99|M\r\
PV1|1|I|W^1^1||||||||||||||||V-BAD-1^^^HOSP^VN\r";

#[tokio::test]
async fn mllp_feed_end_to_end() {
    let Some(shared) = shared_dir() else {
        return;
    };
    let feed = supported_feed(&shared);
    assert!(
        feed.len() >= 50,
        "the sample feed has {} messages",
        feed.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let (port, mllp_port) = (free_port(), free_port());
    let mllp = format!("127.0.0.1:{mllp_port}");
    let child = start_with(
        &dir.path().join("data"),
        port,
        false,
        &["--mllp-listen", &mllp],
    );
    let fhir = Fhir {
        client: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{port}"),
    };

    // 1. The feed, every message acknowledged AA after commit.
    for (name, text) in &feed {
        let (code, msg) = send(&mllp, text).await;
        assert_eq!(code, AckCode::Accept, "{name}: {msg}");
    }
    eprintln!("sent {} messages of supported types: all AA", feed.len());

    // 2. What they wrote, through FHIR search over HTTP.
    // ADT-A01-01 (and other ADT/VXU samples): PID-3 PATID1234 of namespace test1.
    let adam = fhir
        .one("Patient?identifier=urn:salus:hl7v2:id:test1|PATID1234")
        .await;
    assert_eq!(adam["name"][0]["family"], "EVERYMAN");
    // PV1-19 visit number 40007716 (AccMng): one Encounter however many messages sent it.
    let enc = fhir
        .one("Encounter?identifier=urn:salus:hl7v2:id:AccMng|40007716")
        .await;
    assert_eq!(enc["identifier"][0]["value"], "40007716");
    // LAB-ORU-1: patient 10006579 (DUCK), CBC results with their values.
    let duck = fhir
        .one("Patient?identifier=urn:salus:hl7v2:id:1|10006579")
        .await;
    assert_eq!(duck["name"][0]["family"], "DUCK");
    let duck_id = duck["id"].as_str().unwrap();
    // LAB-ORU-1 carries the preliminary erythrocyte count (OBX-1 2), LAB-ORU-2 the
    // final one (OBX-1 3) of the same order: two results, each with its value.
    let rbc_query = format!("Observation?patient=Patient/{duck_id}&code=11273-0");
    let rbc = |obs: Vec<Value>| {
        let mut v: Vec<String> = obs
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["status"].as_str().unwrap(),
                    o["valueQuantity"]["value"]
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        rbc(fhir.all(&rbc_query).await),
        ["final 4.08", "preliminary 4.06"]
    );
    // The platelet count has the same OBX-1 in both: LAB-ORU-1's 221 (preliminary) was
    // updated in place by LAB-ORU-2's 220 (final).
    let platelets = fhir
        .one(&format!(
            "Observation?patient=Patient/{duck_id}&code=11125-2"
        ))
        .await;
    assert_eq!(platelets["valueQuantity"]["value"].to_string(), "220");
    assert_eq!(platelets["status"], "final");
    assert_eq!(platelets["meta"]["versionId"], "2");
    // ORU-R01-01: patient 14 (Finn, OID system); its specimen result OBX 1063-7 is a
    // reference pointer (RP), kept as valueString, identified by filler number 986.
    let finn = fhir
        .one("Patient?identifier=urn:oid:2.16.840.1.114222.4.3.3.5.1.2|14")
        .await;
    assert_eq!(finn["name"][0]["family"], "Finn");
    let finn_id = finn["id"].as_str().unwrap();
    let pointer = fhir
        .one(&format!(
            "Observation?patient=Patient/{finn_id}&code=1063-7"
        ))
        .await;
    assert_eq!(pointer["valueString"], "https://testurl.com");
    assert_eq!(pointer["identifier"][0]["value"], "986/1/1063-7/1");
    // Every message is kept for replay, tagged AA with its type and control id.
    assert_eq!(
        fhir.total("Binary?_tag=urn:salus:hl7v2:ack|AA").await,
        feed.len() as u64
    );
    // Several samples reuse control id MSG00001; each receipt is its own Binary.
    let stored = fhir
        .all("Binary?_tag=urn:salus:hl7v2:control-id|MSG00001&_tag=urn:salus:hl7v2:message-type|ADT_A01")
        .await;
    assert!(!stored.is_empty());
    for b in &stored {
        assert_eq!(b["contentType"], "x-application/hl7-v2+er7");
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD
            .decode(b["data"].as_str().unwrap())
            .unwrap();
        let text = String::from_utf8(data).unwrap();
        assert!(text.contains("ADT^A01") && text.contains("|MSG00001|"));
    }
    let patients = fhir.total("Patient").await;
    let observations = fhir.total("Observation").await;
    eprintln!(
        "after one pass: {patients} Patients, {} Encounters, {observations} Observations",
        fhir.total("Encounter").await
    );

    // 3. The feed again: still AA, no Patient duplicated.
    for (name, text) in &feed {
        let (code, msg) = send(&mllp, text).await;
        assert_eq!(code, AckCode::Accept, "resent {name}: {msg}");
    }
    assert_eq!(
        fhir.total("Patient").await,
        patients,
        "no Patient duplicated"
    );
    assert_eq!(
        rbc(fhir.all(&rbc_query).await),
        ["final 4.08", "preliminary 4.06"],
        "results update, not duplicate"
    );

    // 4. A malformed message: AE naming segment and field, nothing half-written, the
    // message itself kept (tagged AE) for fixing and resending.
    let before = fhir.clinical_resources().await;
    let (code, msg) = send(&mllp, BAD_BIRTH_DATE).await;
    assert_eq!(code, AckCode::Error, "{msg}");
    assert!(msg.contains("PID-7"), "{msg}");
    assert_eq!(
        fhir.clinical_resources().await,
        before,
        "nothing half-written"
    );
    assert_eq!(fhir.total("Patient?identifier=BAD-123").await, 0);
    assert_eq!(fhir.total("Binary?_tag=urn:salus:hl7v2:ack|AE").await, 1);
    // An unsupported type is refused (AR) and kept too.
    let (code, msg) = send(
        &mllp,
        &BAD_BIRTH_DATE.replace("ADT^A01^ADT_A01", "QRY^A19^QRY_A19"),
    )
    .await;
    assert_eq!(code, AckCode::Reject, "{msg}");
    assert!(msg.contains("unsupported message type"), "{msg}");

    // 5. Messages arriving together are committed together (group commit), each under
    // its own savepoint: one whose transaction is rejected (its PID-3 matches two
    // stored Patients) gets AE and leaves nothing, the others commit and get AA.
    for _ in 0..2 {
        let r = fhir
            .client
            .post(format!("{}/Patient", fhir.base))
            .header("content-type", "application/fhir+json")
            .body(r#"{"resourceType":"Patient","identifier":[{"system":"urn:salus:hl7v2:id:HOSP","value":"DUP-1"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let adt = |id: &str, mrn: &str, visit: &str| {
        format!(
            "MSH|^~\\&|GRP|HOSP|SALUS|HOSP|20240102030405+0100||ADT^A01^ADT_A01|{id}|P|2.5.1\r\
             PID|1||{mrn}^^^HOSP^MR||GROUP^TEST||19800101|F\r\
             PV1|1|I|W^1^1||||||||||||||||{visit}^^^HOSP^VN\r"
        )
    };
    let mut sends = vec![];
    for i in 0..16 {
        let text = if i == 7 {
            adt("GRP-DUP", "DUP-1", "V-DUP")
        } else {
            adt(&format!("GRP-{i}"), &format!("G-{i}"), &format!("V-G-{i}"))
        };
        let addr = mllp.clone();
        sends.push(tokio::spawn(async move { send(&addr, &text).await }));
    }
    for (i, s) in sends.into_iter().enumerate() {
        let (code, msg) = s.await.unwrap();
        if i == 7 {
            assert_eq!(code, AckCode::Error, "{msg}");
            assert!(
                msg.contains("conditional update") && msg.contains("DUP-1"),
                "{msg}"
            );
        } else {
            assert_eq!(code, AckCode::Accept, "GRP-{i}: {msg}");
        }
    }
    assert_eq!(
        fhir.total("Encounter?identifier=urn:salus:hl7v2:id:HOSP|V-DUP")
            .await,
        0
    );
    assert_eq!(fhir.total("Encounter?identifier=V-G-15").await, 1);
    assert_eq!(fhir.total("Patient?family=GROUP").await, 15);

    // 6. The counters.
    let metrics = fhir
        .client
        .get(format!("{}/metrics", fhir.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "salus_hl7_messages_total{{ack=\"AA\"}} {}",
            2 * feed.len() + 15
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("salus_hl7_messages_total{ack=\"AE\"} 2"),
        "{metrics}"
    );

    // 7. `salus hl7 send` against the running server: one file with two messages
    // separated by a blank line, LF line ends (as saved by an editor).
    let two = dir.path().join("two.hl7");
    let one_msg = |id: &str, mrn: &str| {
        format!(
            "MSH|^~\\&|CLI|HOSP|SALUS|HOSP|20240102030405+0100||ADT^A04^ADT_A01|{id}|P|2.5.1\n\
             PID|1||{mrn}^^^HOSP^MR||CLI^TEST||19800101|F\n"
        )
    };
    std::fs::write(
        &two,
        format!(
            "{}\n{}",
            one_msg("CLI-1", "CLI-100"),
            one_msg("CLI-2", "CLI-200")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["hl7", "send"])
        .arg(&two)
        .args(["--to", &mllp])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": AA").count(), 2, "{stdout}");
    assert_eq!(
        fhir.total("Patient?identifier=urn:salus:hl7v2:id:HOSP|CLI-200")
            .await,
        1
    );
    let bad = dir.path().join("bad.hl7");
    std::fs::write(&bad, BAD_BIRTH_DATE).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_salus"))
        .args(["hl7", "send"])
        .arg(&bad)
        .args(["--to", &mllp])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "an AE makes the command fail");
    assert!(
        stdout.contains("AE") && stdout.contains("PID-7"),
        "{stdout}"
    );

    stop(child);
}

#[test]
fn convert_prints_or_writes_bundles_and_names_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("feed.hl7");
    std::fs::write(
        &f,
        "MSH|^~\\&|LAB|H|EHR|H|20240102030405+0100||ORU^R01^ORU_R01|42|P|2.5.1\r\n\
         PID|1||123^^^H^MR||DOE^JANE||19800101|F\r\n\
         OBR|1||F1^LAB|2093-3^Cholesterol^LN|||20240102030000+0100\r\n\
         OBX|1|NM|2093-3^Cholesterol^LN||187|mg/dL^mg/dL^UCUM|<200|N|||F\r\n\
         MSH|^~\\&|ADT|H|EHR|H|20240102030405+0100||ADT^A01^ADT_A01|43|P|2.5.1\r\n\
         PID|1||124^^^H^MR||DOE^JOHN||19790101|M\r\n",
    )
    .unwrap();
    let salus = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_salus"))
            .args(args)
            .env_remove("SALUS_CONFIG")
            .output()
            .unwrap()
    };
    // to standard output: two Bundles
    let out = salus(&["convert".as_ref(), f.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let bundles: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .map(Result::unwrap)
        .collect();
    assert_eq!(bundles.len(), 2);
    assert!(bundles.iter().all(|b| b["type"] == "transaction"));
    assert!(
        text.contains("\"187\"") || text.contains(": 187"),
        "value kept"
    );
    // into a folder: one file per message
    let out_dir = dir.path().join("out");
    let out = salus(&[
        "convert".as_ref(),
        f.as_os_str(),
        "--out".as_ref(),
        out_dir.as_os_str(),
    ]);
    assert!(out.status.success());
    for n in ["feed-1.json", "feed-2.json"] {
        let b: Value = serde_json::from_slice(&std::fs::read(out_dir.join(n)).unwrap()).unwrap();
        assert_eq!(b["resourceType"], "Bundle", "{n}");
    }
    // an error names the file, the segment and the field; the exit status is non-zero
    let bad = dir.path().join("bad.hl7");
    std::fs::write(&bad, BAD_BIRTH_DATE).unwrap();
    let out = salus(&["convert".as_ref(), bad.as_os_str(), f.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.hl7") && err.contains("PID-7"), "{err}");
    let missing = dir.path().join("missing.hl7");
    let out = salus(&["convert".as_ref(), missing.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.hl7"));
}
