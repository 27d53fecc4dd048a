//! What a connection may do before it logs in (PROTOCOL.md §1): send frames of at most
//! `prelogin_frame_bytes` (refused from the frame's header, before its payload is buffered),
//! and be one of at most `max_prelogin_per_address` such connections from its client address.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use switchboard_sync::Lock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The error a [`FrameGuard`] fails a read with when a frame is over its limit.
#[derive(Debug, thiserror::Error)]
#[error("frame over the limit before login")]
pub struct FrameTooBig;

/// Tells whether a read error is the one [`FrameGuard`] raises.
pub fn is_frame_too_big(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<FrameTooBig>())
}

/// Where the parser is in the client's stream of WebSocket frames.
#[derive(Debug)]
enum Parse {
    /// Reading a frame header: the bytes so far.
    Header { bytes: [u8; 14], have: usize },
    /// Skipping the payload: bytes left.
    Payload(u64),
}

/// Wraps a connection's byte stream (past the HTTP upgrade) and follows its WebSocket frame
/// headers; while the shared limit is above zero, a message whose frames add up to more fails
/// the read as soon as the header saying so arrives. Setting the limit to zero (at login)
/// turns the check off; tungstenite's own `max_frame_bytes` applies from then on.
#[derive(Debug)]
pub struct FrameGuard<S> {
    inner: S,
    limit: Arc<AtomicUsize>,
    parse: Parse,
    message_bytes: u64,
    /// The last bytes of the HTTP upgrade request while it is read (`\r\n\r\n` ends it);
    /// `None` once every byte read is WebSocket framing.
    request_tail: Option<u32>,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` with `limit` (0: off), shared with whoever lifts it at login.
    pub fn new(inner: S, limit: Arc<AtomicUsize>) -> Self {
        Self {
            inner,
            limit,
            parse: Parse::Header {
                bytes: [0; 14],
                have: 0,
            },
            message_bytes: 0,
            request_tail: Some(0),
        }
    }

    /// Skips the HTTP request; returns the framed part of `data` (all of it once past it).
    fn past_request<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let Some(tail) = &mut self.request_tail else {
            return data;
        };
        for (index, byte) in data.iter().enumerate() {
            *tail = (*tail << 8) | u32::from(*byte);
            if *tail == u32::from_be_bytes(*b"\r\n\r\n") {
                self.request_tail = None;
                return &data[index + 1..];
            }
        }
        &[]
    }

    /// Follows `data`; false when a message went over the limit.
    fn follow(&mut self, mut data: &[u8]) -> bool {
        let limit = self.limit.load(Ordering::Relaxed) as u64;
        while !data.is_empty() {
            match &mut self.parse {
                Parse::Payload(left) => {
                    let step = (*left).min(data.len() as u64);
                    *left -= step;
                    data = &data[step as usize..];
                    if *left == 0 {
                        self.parse = Parse::Header {
                            bytes: [0; 14],
                            have: 0,
                        };
                    }
                }
                Parse::Header { bytes, have } => {
                    bytes[*have] = data[0];
                    *have += 1;
                    data = &data[1..];
                    let Some((opcode, length)) = header(&bytes[..*have]) else {
                        continue;
                    };
                    // Control frames (opcode 8 and up) sit between a message's fragments.
                    if opcode < 8 {
                        if opcode == 0 {
                            self.message_bytes = self.message_bytes.saturating_add(length);
                        } else {
                            self.message_bytes = length;
                        }
                        if limit > 0 && self.message_bytes > limit {
                            return false;
                        }
                    }
                    self.parse = if length == 0 {
                        Parse::Header {
                            bytes: [0; 14],
                            have: 0,
                        }
                    } else {
                        Parse::Payload(length)
                    };
                }
            }
        }
        true
    }
}

/// The opcode and payload length of a complete frame header, `None` while incomplete.
fn header(bytes: &[u8]) -> Option<(u8, u64)> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0f;
    let masked = bytes[1] & 0x80 != 0;
    let extended = match bytes[1] & 0x7f {
        126 => 2,
        127 => 8,
        short => {
            let needed = 2 + if masked { 4 } else { 0 };
            return (bytes.len() == needed).then_some((opcode, u64::from(short)));
        }
    };
    let needed = 2 + extended + if masked { 4 } else { 0 };
    if bytes.len() < needed {
        return None;
    }
    let length = bytes[2..2 + extended]
        .iter()
        .fold(0u64, |length, byte| (length << 8) | u64::from(*byte));
    Some((opcode, length))
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        // Only while the limit is on: a logged-in connection pays nothing but the load.
        if matches!(polled, Poll::Ready(Ok(()))) && this.limit.load(Ordering::Relaxed) > 0 {
            let framed = this.past_request(&buf.filled()[before..]);
            if !this.follow(framed) {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, FrameTooBig)));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What limits the per-address count: the address itself, or for IPv6 its /64 (one
/// customer's network; a client can pick any address inside it).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Connections waiting to log in, per client address.
#[derive(Debug, Default)]
pub struct PreloginCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PreloginCounts {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.locked()
    }

    /// Counts one more connection from `ip` waiting to log in, unless `max` already are
    /// (0: no limit); the slot gives it back when dropped.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PreloginSlot> {
        let key = address_key(ip);
        let mut counts = self.counts();
        let count = counts.entry(key).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(PreloginSlot {
            counts: Arc::clone(self),
            key,
        })
    }

    /// How many connections from `ip`'s address wait to log in.
    pub fn waiting(&self, ip: IpAddr) -> usize {
        self.counts().get(&address_key(ip)).copied().unwrap_or(0)
    }
}

/// One connection's place among those waiting to log in from its address.
#[derive(Debug)]
pub struct PreloginSlot {
    counts: Arc<PreloginCounts>,
    key: IpAddr,
}

impl Drop for PreloginSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.counts();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame header with `opcode` and a payload of `length`.
    fn frame_header(fin: bool, opcode: u8, length: u64) -> Vec<u8> {
        let mut bytes = vec![if fin { 0x80 } else { 0 } | opcode];
        match length {
            0..=125 => bytes.push(0x80 | length as u8),
            126..=65535 => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(length as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&length.to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes
    }

    fn guard(limit: usize) -> FrameGuard<tokio::io::Empty> {
        let mut guard = FrameGuard::new(tokio::io::empty(), Arc::new(AtomicUsize::new(limit)));
        assert!(
            guard
                .past_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .is_empty()
        );
        guard
    }

    #[test]
    fn frames_are_followed_byte_by_byte() {
        let mut guard = guard(100);
        let mut stream = frame_header(true, 1, 100);
        stream.extend(vec![b'x'; 100]);
        stream.extend(frame_header(true, 9, 4)); // a ping
        stream.extend(vec![b'p'; 4]);
        // Fed one byte at a time, as a slow client would send it.
        for byte in &stream {
            assert!(guard.follow(std::slice::from_ref(byte)));
        }
        assert!(!guard.follow(&frame_header(true, 1, 101)), "one byte over");
    }

    #[test]
    fn fragments_add_up_and_long_lengths_are_read() {
        let mut guard = guard(1000);
        let mut stream = frame_header(false, 1, 600);
        stream.extend(vec![b'x'; 600]);
        assert!(guard.follow(&stream));
        assert!(!guard.follow(&frame_header(true, 0, 600)), "1200 in all");
        let mut guard = self::guard(1 << 20);
        assert!(!guard.follow(&frame_header(true, 2, 1 << 40)));
        let mut off = self::guard(0);
        assert!(off.follow(&frame_header(true, 2, 1 << 40)), "no limit");
    }

    #[test]
    fn bytes_after_the_request_in_the_same_read_are_framed() {
        let mut guard = FrameGuard::new(tokio::io::empty(), Arc::new(AtomicUsize::new(10)));
        let mut read = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        read.extend(frame_header(true, 1, 11));
        let framed = guard.past_request(&read).to_vec();
        assert!(!guard.follow(&framed));
    }

    #[test]
    fn counts_per_address_and_per_ipv6_64() {
        let counts = Arc::new(PreloginCounts::default());
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let first = counts.try_enter(a, 2).expect("room");
        let _second = counts.try_enter(a, 2).expect("room");
        assert!(counts.try_enter(a, 2).is_none(), "full");
        assert!(
            counts
                .try_enter("10.0.0.2".parse().expect("ip"), 2)
                .is_some()
        );
        drop(first);
        assert!(counts.try_enter(a, 2).is_some(), "a slot came back");
        let v6: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let _x = counts.try_enter(v6, 1).expect("room");
        assert!(
            counts
                .try_enter("2001:db8:1:2:ffff::9".parse().expect("ip"), 1)
                .is_none(),
            "same /64"
        );
        assert!(
            counts
                .try_enter("2001:db8:1:3::1".parse().expect("ip"), 1)
                .is_some()
        );
    }
}
