//! MLLP over a real TCP socket on 127.0.0.1: one ACK per message, sent after the handler
//! returns; rejects for unparseable input; graceful shutdown.

mod common;
use common::SEEDS;
use salus_hl7v2::mllp::{send, send_with_timeout};
use salus_hl7v2::{convert, parse, read_ack, serve, AckCode, Message, MessageHandler, Outcome};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Converts each message and "commits" it after a delay, counting commits.
struct Handler {
    committed: AtomicUsize,
    started: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl MessageHandler for Handler {
    async fn handle(&self, _raw: &str, message: &Message) -> Outcome {
        self.started.notify_one();
        match convert(message) {
            Ok(c) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                self.committed.fetch_add(1, Ordering::SeqCst);
                Outcome::accept_with_warnings(&c.warnings)
            }
            Err(e) => Outcome::from_convert_error(&e),
        }
    }
}

async fn start() -> (
    std::net::SocketAddr,
    Arc<Handler>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(Handler {
        committed: AtomicUsize::new(0),
        started: tokio::sync::Notify::new(),
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let h: Arc<dyn MessageHandler> = handler.clone();
    let server = tokio::spawn(serve(listener, h, async {
        let _ = rx.await;
    }));
    (addr, handler, tx, server)
}

#[tokio::test]
async fn ack_after_commit_over_tcp() {
    let (addr, handler, stop, server) = start().await;
    let ack = send(addr, SEEDS[0]).await.unwrap();
    // The handler committed before the ACK was sent.
    assert_eq!(handler.committed.load(Ordering::SeqCst), 1);
    let m = parse(&ack).unwrap();
    assert_eq!(read_ack(&m).unwrap().0, AckCode::Accept);
    assert_eq!(m.segment("MSA").unwrap().raw(2), "C1");

    // A message with an error: AE naming the field.
    let bad = SEEDS[0].replace("19800229", "2024-13-01");
    let ack = send(addr, &bad).await.unwrap();
    let m = parse(&ack).unwrap();
    let (code, text) = read_ack(&m).unwrap();
    assert_eq!(code, AckCode::Error);
    assert_eq!(text, "PID-7: \"2024-13-01\" is not a valid TS");
    assert_eq!(m.segment("ERR").unwrap().raw(2), "PID^1^7");

    // Not HL7 at all: AR.
    let ack = send(addr, "hello").await.unwrap();
    assert_eq!(read_ack(&parse(&ack).unwrap()).unwrap().0, AckCode::Reject);
    assert_eq!(handler.committed.load(Ordering::SeqCst), 1);

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn one_ack_per_message_in_order_on_one_connection() {
    let (addr, handler, stop, server) = start().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Three frames written at once, the middle one split across writes.
    let mut bytes = Vec::new();
    for s in [SEEDS[1], SEEDS[4], SEEDS[6]] {
        bytes.push(0x0b);
        bytes.extend_from_slice(s.as_bytes());
        bytes.extend_from_slice(&[0x1c, 0x0d]);
    }
    let mid = bytes.len() / 2;
    stream.write_all(&bytes[..mid]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    stream.write_all(&bytes[mid..]).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while got.iter().filter(|&&b| b == 0x1c).count() < 3 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("ACKs in time")
            .unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8(got).unwrap();
    let acks: Vec<&str> = text
        .split(['\u{0b}', '\u{1c}'])
        .filter(|s| s.starts_with("MSH"))
        .collect();
    assert_eq!(acks.len(), 3);
    let controls: Vec<String> = acks
        .iter()
        .map(|a| parse(a).unwrap().segment("MSA").unwrap().raw(2).to_string())
        .collect();
    assert_eq!(controls, ["C2", "C4", "C6"]);
    assert_eq!(handler.committed.load(Ordering::SeqCst), 3);
    drop(stream);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_finishes_the_message_in_progress() {
    let (addr, handler, stop, server) = start().await;
    let client = tokio::spawn(async move { send(addr, SEEDS[2]).await });
    // Once the handler is busy with the message (it sleeps 20 ms), stop the server.
    handler.started.notified().await;
    stop.send(()).unwrap();
    let ack = client.await.unwrap().unwrap();
    assert_eq!(read_ack(&parse(&ack).unwrap()).unwrap().0, AckCode::Accept);
    assert_eq!(handler.committed.load(Ordering::SeqCst), 1);
    server.await.unwrap().unwrap();
    // The listener is closed now.
    assert!(
        send_with_timeout(addr, SEEDS[2], Duration::from_millis(500))
            .await
            .is_err()
    );
}
