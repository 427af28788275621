//! MLLP (Minimal Lower Layer Protocol, HL7 v2 Transport Specification, release 2): each
//! message is framed as `0x0B <message> 0x1C 0x0D` on a TCP stream.
//!
//! [`MllpCodec`] is the `tokio_util` codec; [`serve`] accepts connections and answers each
//! message with exactly one ACK, written only after the [`MessageHandler`] returned (the
//! handler commits the FHIR writes first, so an `AA` means "stored"); [`send`] is the
//! client side for `salus hl7 send`.

use crate::ack::{ack, ack_unparsed, Outcome};
use crate::parser::{parse, Message};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_util::codec::{Decoder, Encoder, Framed};

/// Start block.
pub const START: u8 = 0x0B;
/// End block (followed by a carriage return).
pub const END: u8 = 0x1C;
const CR: u8 = 0x0D;

/// Largest message accepted by default (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Errors of the MLLP transport.
#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    /// Socket error.
    #[error("MLLP I/O error: {0}")]
    Io(#[from] io::Error),
    /// A frame larger than the limit.
    #[error("MLLP frame larger than {limit} bytes")]
    FrameTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The peer closed the connection before answering.
    #[error("the connection closed before an acknowledgement arrived")]
    Closed,
    /// No answer in time.
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
}

impl From<MllpError> for io::Error {
    fn from(e: MllpError) -> Self {
        match e {
            MllpError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// The MLLP framing codec: decodes frames into their payload bytes, encodes payloads
/// into frames. Bytes before a start block are discarded (MLLP release 2, 2.2: a
/// receiver ignores everything outside a block).
#[derive(Debug, Clone)]
pub struct MllpCodec {
    max_frame: usize,
}

impl Default for MllpCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl MllpCodec {
    /// A codec refusing frames longer than `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Self { max_frame }
    }
}

impl Decoder for MllpCodec {
    type Item = Bytes;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, MllpError> {
        // Discard anything before the start block.
        match src.iter().position(|&b| b == START) {
            Some(0) => {}
            Some(i) => src.advance(i),
            None => {
                src.clear();
                return Ok(None);
            }
        }
        // Look for END (then CR) after the start block.
        let Some(rel) = src[1..].iter().position(|&b| b == END) else {
            if src.len() > self.max_frame + 2 {
                return Err(MllpError::FrameTooLarge {
                    limit: self.max_frame,
                });
            }
            return Ok(None);
        };
        let end = 1 + rel;
        if end - 1 > self.max_frame {
            return Err(MllpError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        // END CR closes the frame; an END followed by anything else is tolerated as the
        // end of the frame; an END that is the last byte so far waits for the CR.
        let consumed = match src.get(end + 1) {
            None => return Ok(None),
            Some(&CR) => end + 2,
            Some(_) => end + 1,
        };
        let mut frame = src.split_to(consumed);
        frame.truncate(end);
        frame.advance(1);
        Ok(Some(frame.freeze()))
    }
}

impl<T: AsRef<[u8]>> Encoder<T> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), MllpError> {
        let data = item.as_ref();
        if data.len() > self.max_frame {
            return Err(MllpError::FrameTooLarge {
                limit: self.max_frame,
            });
        }
        dst.reserve(data.len() + 3);
        dst.put_u8(START);
        dst.put_slice(data);
        dst.put_u8(END);
        dst.put_u8(CR);
        Ok(())
    }
}

/// Decode a frame's bytes as text: UTF-8 when valid, else ISO 8859-1 (the v2 default
/// character set, MSH-18 empty, is ASCII; Latin-1 is the common legacy one).
pub fn decode_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// Processes one received message. The server calls it once per message, in order per
/// connection, and sends the ACK built from the returned [`Outcome`] only after it
/// returns: commit the FHIR writes before returning `AA`.
#[async_trait::async_trait]
pub trait MessageHandler: Send + Sync {
    /// `raw` is the message text as received; `message` its parse.
    async fn handle(&self, raw: &str, message: &Message) -> Outcome;
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest accepted message in bytes.
    pub max_frame: usize,
    /// Close a connection idle for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_frame: DEFAULT_MAX_FRAME,
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }
}

/// Accept MLLP connections on `listener` until `shutdown` completes, with default
/// [`ServeOptions`]. On shutdown it stops accepting, lets every connection finish the
/// message it is processing (handler and ACK), closes them and returns.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn MessageHandler>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, handler, shutdown, ServeOptions::default()).await
}

/// [`serve`] with explicit options.
pub async fn serve_with(
    listener: TcpListener,
    handler: Arc<dyn MessageHandler>,
    shutdown: impl Future<Output = ()>,
    options: ServeOptions,
) -> io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Per-connection errors (e.g. EMFILE, ECONNABORTED) must not end
                        // the server; back off briefly.
                        tracing::warn!(error = %e, "MLLP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let stop = stop_rx.clone();
                let opts = options.clone();
                tasks.spawn(async move {
                    if let Err(e) = connection(stream, handler, stop, opts).await {
                        tracing::info!(%peer, error = %e, "MLLP connection ended");
                    }
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn connection(
    stream: TcpStream,
    handler: Arc<dyn MessageHandler>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    opts: ServeOptions,
) -> Result<(), MllpError> {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, MllpCodec::new(opts.max_frame));
    loop {
        let next = async {
            match opts.idle_timeout {
                Some(t) => tokio::time::timeout(t, framed.next()).await.ok(),
                None => Some(framed.next().await),
            }
        };
        let frame = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return Ok(()),
            f = next => f,
        };
        let frame = match frame {
            None => return Ok(()),       // idle timeout
            Some(None) => return Ok(()), // peer closed
            Some(Some(Err(e))) => return Err(e),
            Some(Some(Ok(f))) => f,
        };
        let text = decode_text(&frame);
        let reply = match parse(&text) {
            Ok(message) => {
                let outcome = handler.handle(&text, &message).await;
                ack(&message, &outcome)
            }
            Err(e) => ack_unparsed(&e),
        };
        framed.send(reply.as_bytes()).await?;
    }
}

/// Send one message and wait (30 s at most) for its acknowledgement; returns the ACK text.
pub async fn send(addr: impl ToSocketAddrs, message: &str) -> Result<String, MllpError> {
    send_with_timeout(addr, message, Duration::from_secs(30)).await
}

/// [`send`] with an explicit timeout covering connect, write and the wait for the ACK.
pub async fn send_with_timeout(
    addr: impl ToSocketAddrs,
    message: &str,
    timeout: Duration,
) -> Result<String, MllpError> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, MllpCodec::default());
        // Segments travel separated by CR (the transport form), whatever the file used.
        let normalized = normalize_segments(message);
        framed.send(normalized.as_bytes()).await?;
        match framed.next().await {
            Some(Ok(frame)) => Ok(decode_text(&frame).into_owned()),
            Some(Err(e)) => Err(e),
            None => Err(MllpError::Closed),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| MllpError::Timeout(timeout))?
}

/// Segments separated by CR only (files often use LF or CRLF).
pub fn normalize_segments(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 1);
    for line in message.split(['\r', '\n']).filter(|l| !l.trim().is_empty()) {
        out.push_str(line);
        out.push('\r');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_round_trip_and_partial_frames() {
        let mut codec = MllpCodec::default();
        let mut buf = BytesMut::new();
        codec.encode("MSH|a", &mut buf).unwrap();
        codec.encode(b"MSH|b".as_slice(), &mut buf).unwrap();
        let mut all = BytesMut::from(&b"junk"[..]);
        all.extend_from_slice(&buf);
        // Feed byte by byte.
        let mut got = Vec::new();
        let mut input = BytesMut::new();
        for b in all.iter() {
            input.put_u8(*b);
            while let Some(f) = codec.decode(&mut input).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got,
            vec![Bytes::from_static(b"MSH|a"), Bytes::from_static(b"MSH|b")]
        );
    }

    #[test]
    fn codec_limits_size() {
        let mut codec = MllpCodec::new(4);
        let mut buf = BytesMut::from(&b"\x0babcdefgh"[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(MllpError::FrameTooLarge { .. })
        ));
        let mut out = BytesMut::new();
        assert!(codec.encode("abcdef", &mut out).is_err());
    }

    #[test]
    fn text_decoding() {
        assert_eq!(decode_text("é".as_bytes()), "é");
        assert_eq!(decode_text(&[0xE9]), "é");
        assert_eq!(normalize_segments("A\r\nB\n\nC"), "A\rB\rC\r");
    }
}
