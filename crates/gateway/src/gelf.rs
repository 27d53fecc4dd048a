//! `session log` as GELF 1.1 (PROTOCOL.md §7) over UDP (gzip, chunked) or TCP (NUL-terminated).
//!
//! Commands hand records to [`GelfSender`] without waiting; one task sends them, encoding each
//! (JSON, and gzip for UDP, in at most two passes) on the blocking pool.
//! A missing or unreachable log server never fails a command: records that cannot be sent
//! are counted and dropped.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::config::GelfTarget;

/// Largest UDP datagram sent, chunk header included (GELF's WAN-safe size).
pub const UDP_CHUNK_BYTES: usize = 1420;
/// Most chunks of one message (GELF limit).
pub const MAX_CHUNKS: usize = 128;
/// Header of a chunk: magic (2), message id (8), sequence number (1), count (1).
const CHUNK_HEADER_BYTES: usize = 12;
/// Longest a TCP connect or write to the log server may take.
const TCP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Records queued towards the log server before new ones are dropped.
const QUEUE: usize = 4096;
/// Most `meta` keys of one record sent as additional fields; the others are left out.
pub const MAX_ADDITIONAL_FIELDS: usize = 64;
/// Longest additional field name, in characters; longer keys are cut.
pub const MAX_FIELD_NAME_CHARS: usize = 128;

/// One `session log` call.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// `source`.
    pub host: String,
    /// `message`.
    pub short_message: String,
    /// `full_message`.
    pub full_message: Option<String>,
    /// Syslog level 0–7.
    pub level: u8,
    /// Seconds since the epoch.
    pub timestamp: f64,
    /// Client additional fields.
    pub meta: Map<String, Value>,
    /// The logging session's user.
    pub user: String,
    /// The logging session's id.
    pub session_id: String,
    /// The logging session's service.
    pub service: String,
}

fn additional_field_name(key: &str) -> String {
    let cleaned: String = key
        .chars()
        .take(MAX_FIELD_NAME_CHARS)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("_{cleaned}")
}

/// Builds the GELF object of a record; server fields win over client keys of the same name.
pub fn gelf_message(record: &LogRecord) -> Map<String, Value> {
    let mut message = Map::new();
    message.insert("version".into(), "1.1".into());
    message.insert("host".into(), record.host.clone().into());
    message.insert("short_message".into(), record.short_message.clone().into());
    if let Some(full) = &record.full_message {
        message.insert("full_message".into(), full.clone().into());
    }
    message.insert("level".into(), record.level.into());
    message.insert("timestamp".into(), record.timestamp.into());
    for (key, value) in record.meta.iter().take(MAX_ADDITIONAL_FIELDS) {
        let name = additional_field_name(key);
        if name == "_id" {
            continue;
        }
        let value = match value {
            Value::Number(_) => value.clone(),
            Value::String(text) => Value::String(text.clone()),
            other => Value::String(other.to_string()),
        };
        message.insert(name, value);
    }
    message.insert("_user".into(), record.user.clone().into());
    message.insert("_session_id".into(), record.session_id.clone().into());
    message.insert("_service".into(), record.service.clone().into());
    message
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2 + 64),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

/// Splits a gzip body into GELF chunks; `None` when it needs more than [`MAX_CHUNKS`].
fn chunks(compressed: &[u8], message_id: [u8; 8]) -> Option<Vec<Vec<u8>>> {
    let payload = UDP_CHUNK_BYTES - CHUNK_HEADER_BYTES;
    let count = compressed.len().div_ceil(payload);
    if count > MAX_CHUNKS {
        return None;
    }
    Some(
        compressed
            .chunks(payload)
            .enumerate()
            .map(|(sequence, data)| {
                let mut chunk = Vec::with_capacity(CHUNK_HEADER_BYTES + data.len());
                chunk.extend_from_slice(&[0x1e, 0x0f]);
                chunk.extend_from_slice(&message_id);
                chunk.push(sequence as u8);
                chunk.push(count as u8);
                chunk.extend_from_slice(data);
                chunk
            })
            .collect(),
    )
}

/// Encodes a message as UDP datagrams: plain JSON when it fits one datagram, else gzip, split
/// into GELF chunks. `Err` with the gzip size when it needs more than [`MAX_CHUNKS`] chunks.
fn udp_datagrams(message: &Map<String, Value>, message_id: [u8; 8]) -> Result<Vec<Vec<u8>>, usize> {
    let json = serde_json::to_vec(message).unwrap_or_default();
    if json.len() <= UDP_CHUNK_BYTES {
        return Ok(vec![json]);
    }
    let compressed = gzip(&json);
    if compressed.len() <= UDP_CHUNK_BYTES {
        return Ok(vec![compressed]);
    }
    chunks(&compressed, message_id).ok_or(compressed.len())
}

/// Encodes a record for UDP in at most two passes: as it is, or, when that needs more than
/// [`MAX_CHUNKS`] chunks, with `full_message` (else `short_message`) cut to what the first
/// pass's compression ratio says fits, with a margin. `None` when even that does not fit.
/// Costs a JSON encoding and a gzip per pass: call it off the async runtime.
pub fn udp_datagrams_fitting(record: &LogRecord, message_id: [u8; 8]) -> Option<Vec<Vec<u8>>> {
    let compressed_len = match udp_datagrams(&gelf_message(record), message_id) {
        Ok(datagrams) => return Some(datagrams),
        Err(compressed_len) => compressed_len,
    };
    let capacity = MAX_CHUNKS * (UDP_CHUNK_BYTES - CHUNK_HEADER_BYTES);
    let mut record = record.clone();
    let field = match &mut record.full_message {
        Some(full) if !full.is_empty() => full,
        _ => &mut record.short_message,
    };
    // The share of the message that fits, with a fifth to spare; the other fields stay.
    let keep = (field.len() as u128 * capacity as u128 * 4 / (compressed_len as u128 * 5)) as usize;
    let mut cut = keep.min(field.len());
    while !field.is_char_boundary(cut) {
        cut -= 1;
    }
    field.truncate(cut);
    udp_datagrams(&gelf_message(&record), message_id).ok()
}

/// A record as it goes on the wire.
enum Encoded {
    Datagrams(Vec<Vec<u8>>),
    Frame(Vec<u8>),
}

/// Encodes `record` for `target`; `None` when it cannot fit a UDP message.
fn encode(target: &GelfTarget, record: &LogRecord) -> Option<Encoded> {
    match target {
        GelfTarget::Udp(_) => {
            let mut message_id = [0u8; 8];
            message_id.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..8]);
            udp_datagrams_fitting(record, message_id).map(Encoded::Datagrams)
        }
        GelfTarget::Tcp(_) => {
            let mut frame = serde_json::to_vec(&gelf_message(record)).unwrap_or_default();
            frame.push(0);
            Some(Encoded::Frame(frame))
        }
    }
}

/// Hands records to the sending task.
#[derive(Debug, Clone)]
pub struct GelfSender {
    records_tx: Option<mpsc::Sender<LogRecord>>,
    dropped: Arc<AtomicU64>,
}

impl GelfSender {
    /// Starts the sending task for `target`; with `None`, records are dropped.
    pub fn start(target: Option<GelfTarget>) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let Some(target) = target else {
            return Self {
                records_tx: None,
                dropped,
            };
        };
        let (records_tx, records_rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(target, records_rx, Arc::clone(&dropped)));
        Self {
            records_tx: Some(records_tx),
            dropped,
        }
    }

    /// Queues a record without waiting.
    pub fn send(&self, record: LogRecord) {
        let Some(records_tx) = &self.records_tx else {
            tracing::debug!("no GELF server configured, log record dropped");
            return;
        };
        if records_tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns how many records could not be sent.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn send_loop(
    target: GelfTarget,
    mut records_rx: mpsc::Receiver<LogRecord>,
    dropped: Arc<AtomicU64>,
) {
    let target = Arc::new(target);
    let mut udp: Option<UdpSocket> = None;
    let mut tcp: Option<TcpStream> = None;
    while let Some(record) = records_rx.recv().await {
        // JSON and gzip of up to a 64 KiB record: on the blocking pool, not a runtime thread.
        let encoding_target = Arc::clone(&target);
        let encoded = tokio::task::spawn_blocking(move || encode(&encoding_target, &record)).await;
        let sent = match (encoded, target.as_ref()) {
            (Ok(Some(Encoded::Datagrams(datagrams))), GelfTarget::Udp(address)) => {
                send_udp(&mut udp, address, datagrams).await
            }
            (Ok(Some(Encoded::Frame(frame))), GelfTarget::Tcp(address)) => {
                send_tcp(&mut tcp, address, &frame).await
            }
            _ => Err(std::io::Error::other("message does not fit 128 chunks")),
        };
        if let Err(error) = sent {
            dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "GELF message not sent");
        }
    }
}

async fn send_udp(
    socket: &mut Option<UdpSocket>,
    address: &str,
    datagrams: Vec<Vec<u8>>,
) -> std::io::Result<()> {
    if socket.is_none() {
        let bind = if address.starts_with('[') {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let new_socket = UdpSocket::bind(bind).await?;
        new_socket.connect(address).await?;
        *socket = Some(new_socket);
    }
    let Some(socket_ref) = socket.as_ref() else {
        return Ok(());
    };
    for datagram in datagrams {
        if let Err(error) = socket_ref.send(&datagram).await {
            *socket = None;
            return Err(error);
        }
    }
    Ok(())
}

async fn send_tcp(
    stream: &mut Option<TcpStream>,
    address: &str,
    frame: &[u8],
) -> std::io::Result<()> {
    for _attempt in 0..2 {
        if stream.is_none() {
            let connected = tokio::time::timeout(TCP_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| std::io::Error::other("GELF TCP connect timed out"))??;
            *stream = Some(connected);
        }
        if let Some(connection) = stream.as_mut() {
            match tokio::time::timeout(TCP_TIMEOUT, connection.write_all(frame)).await {
                Ok(Ok(())) => return Ok(()),
                _ => *stream = None,
            }
        }
    }
    Err(std::io::Error::other("GELF TCP write failed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(full: Option<String>) -> LogRecord {
        LogRecord {
            host: "src".into(),
            short_message: "hello".into(),
            full_message: full,
            level: 3,
            timestamp: 1.5,
            meta: match json!({"n": 1, "s": "x", "b": true, "bad key": 1, "id": 7, "user": "spoof"})
            {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            user: "u".into(),
            session_id: "s".into(),
            service: "".into(),
        }
    }

    #[test]
    fn fields() {
        let message = gelf_message(&record(None));
        assert_eq!(message["_n"], json!(1));
        assert_eq!(message["_b"], json!("true"));
        assert_eq!(message["_bad_key"], json!(1));
        assert!(!message.contains_key("_id"));
        assert_eq!(message["_user"], json!("u"));
        assert_eq!(message["version"], json!("1.1"));
    }

    #[test]
    fn additional_fields_are_capped() {
        let mut many = record(None);
        many.meta = (0..200)
            .map(|n| (format!("{n:03}{}", "k".repeat(300)), json!(n)))
            .collect();
        let message = gelf_message(&many);
        let additional = message.keys().filter(|key| key.starts_with("_0")).count()
            + message.keys().filter(|key| key.starts_with("_1")).count();
        assert_eq!(additional, MAX_ADDITIONAL_FIELDS);
        assert!(
            message
                .keys()
                .all(|key| key.chars().count() <= MAX_FIELD_NAME_CHARS + 1)
        );
    }

    #[test]
    fn oversized_message_is_truncated_to_128_chunks() {
        // Incompressible text: pseudo-random letters.
        let mut seed = 7u64;
        let huge: String = (0..400_000)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                char::from(b'a' + ((seed >> 33) % 26) as u8)
            })
            .collect();
        let datagrams =
            udp_datagrams_fitting(&record(Some(huge)), [1; 8]).expect("fits after truncation");
        assert!(datagrams.len() > 1 && datagrams.len() <= MAX_CHUNKS);
        assert!(datagrams.iter().all(|d| d.len() <= UDP_CHUNK_BYTES));
    }
}
