//! The compliance suite every device source passes (the GUIDE's component model): given
//! a way to start the source in front of a sink and to publish to it, check that
//! 1. every payload reaches the sink unchanged, malformed ones included (the sink
//!    dead-letters them — a source never drops or judges content);
//! 2. a payload is acknowledged to its sender only after the sink accepted it;
//! 3. a payload the sink refused is delivered again (by the source or, after an error
//!    answer, by the sender), so nothing acknowledged is ever lost.

use crate::{Sink, SinkError};
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A sink that records payloads and can be told to refuse the next ones.
#[derive(Default)]
pub struct RecordingSink {
    pub received: Mutex<Vec<(Vec<u8>, String)>>,
    refuse: AtomicUsize,
}

impl RecordingSink {
    /// Refuse the next `n` deliveries.
    pub fn refuse_next(&self, n: usize) {
        self.refuse.store(n, Ordering::SeqCst);
    }
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .expect("sink")
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn deliver(&self, payload: &[u8], source: &str) -> Result<(), SinkError> {
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SinkError("refused by the test".into()));
        }
        self.received
            .lock()
            .expect("sink")
            .push((payload.to_vec(), source.to_string()));
        Ok(())
    }
}

/// How the suite drives a source.
#[async_trait]
pub trait SourceHarness: Send + Sync {
    /// Publish one payload; `true` when the source acknowledged it to the sender (HTTP:
    /// a 2xx answer; MQTT: the publish was sent — the broker holds it until acked).
    async fn publish(&self, payload: &[u8]) -> bool;
    /// Whether the sender is told about a refusal (HTTP) rather than the source retrying
    /// on its own (MQTT).
    fn sender_retries(&self) -> bool;
}

async fn wait_for(sink: &RecordingSink, n: usize) -> bool {
    for _ in 0..200 {
        if sink.payloads().len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Run the suite. `sink` is the one the source under test delivers to.
pub async fn run(source: &dyn SourceHarness, sink: Arc<RecordingSink>) {
    let messages: Vec<Vec<u8>> = vec![
        br#"{"deviceId":"d1","heartRate":72}"#.to_vec(),
        br#"[{"deviceId":"d1","heartRate":73},{"deviceId":"d2","heartRate":60}]"#.to_vec(),
        b"not json at all".to_vec(),
    ];
    for m in &messages {
        assert!(
            source.publish(m).await,
            "an accepted payload is acknowledged"
        );
    }
    assert!(
        wait_for(&sink, messages.len()).await,
        "every payload reaches the sink"
    );
    let got = sink.payloads();
    for m in &messages {
        assert!(
            got.contains(m),
            "delivered unchanged: {}",
            String::from_utf8_lossy(m)
        );
    }
    // a refusal: the payload comes again
    sink.refuse_next(1);
    let retry = br#"{"deviceId":"d3","heartRate":99}"#.to_vec();
    let acked = source.publish(&retry).await;
    if source.sender_retries() {
        assert!(
            !acked,
            "a refused payload is not acknowledged to its sender"
        );
        assert!(source.publish(&retry).await, "the resend is accepted");
    }
    assert!(
        wait_for(&sink, messages.len() + 1).await,
        "the refused payload is delivered again"
    );
    assert!(sink.payloads().contains(&retry));
}
