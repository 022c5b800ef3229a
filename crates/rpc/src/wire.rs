//! The wire format, sans I/O where it can be (the fuzz target for frames drives these
//! functions directly).
//!
//! A connection is a sequence of frames: a `u32` big-endian payload length, then the payload.
//! A length above the receiver's limit closes the connection; the limit is
//! [`HANDSHAKE_MAX_FRAME_BYTES`] until the handshake is over, then the receiver's configured
//! `max_frame_bytes`, which each side announces in its hello so a sender can refuse an
//! oversized message before it breaks the connection.
//!
//! The handshake is three frames each way, with no round trip wasted:
//! 1. hello: [`MAGIC`], the protocol version (`u16` big-endian), then the postcard encoding of
//!    [`Hello`]. The version comes first and in a fixed place so that any future version can
//!    still say which version it is.
//! 2. proof: exactly [`MAC_LEN`] bytes, see [`proof`].
//!
//! After the handshake each frame is the postcard encoding of a [`Header`], followed by the
//! message body as raw bytes up to the end of the frame, so a body is never copied or
//! re-encoded (it is a slice of the received frame). Any change to [`Header`] or [`Hello`]
//! bumps [`PROTOCOL_VERSION`].

use bytes::{Buf, Bytes, BytesMut};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::RemoteError;

/// The protocol version this build speaks; peers must speak the same one.
pub const PROTOCOL_VERSION: u16 = 1;
/// The first bytes of every hello: a connection that starts otherwise is not Tandem rpc.
pub const MAGIC: [u8; 4] = *b"TRPC";
/// The frame limit before the handshake completes: hellos and proofs are small, and an
/// unauthenticated peer must not make us buffer more than this.
pub const HANDSHAKE_MAX_FRAME_BYTES: u32 = 4096;
/// The default limit on a frame after the handshake.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 64 << 20;
/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a handshake proof (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Bytes of a frame's length prefix.
pub const LEN_PREFIX: usize = 4;
/// The most a reader asks the socket for at once, so that memory grows with the bytes that
/// actually arrived, never with the length a peer claims.
const READ_CHUNK: usize = 64 * 1024;
/// The least a reader makes room for, so that several small frames take one read.
const MIN_READ: usize = 8 * 1024;

/// Why bytes from a peer were not a valid frame or message. Every one of these closes the
/// connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A length prefix above the receiver's limit.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Claimed payload size.
        size: u32,
        /// The receiver's limit.
        limit: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({have} of {want} bytes)")]
    Truncated {
        /// Bytes received (prefix included).
        have: usize,
        /// Bytes the frame needed (prefix included); 4 when the prefix itself was cut.
        want: usize,
    },
    /// The hello did not start with [`MAGIC`].
    #[error("not a Tandem rpc hello (bad magic)")]
    BadMagic,
    /// A payload that does not decode (unknown variant, bad varint, short field, …).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which message was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// A socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    fn malformed(what: &'static str, detail: impl ToString) -> WireError {
        WireError::Malformed {
            what,
            detail: detail.to_string(),
        }
    }

    /// True when the peer sent bytes that are not the protocol (as opposed to a socket error).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, WireError::Io(_))
    }
}

/// Takes one complete frame payload off the front of `buf`, if `buf` holds one.
///
/// `Ok(None)` means more bytes are needed. Checks the claimed length against `max` before
/// anything is reserved for it.
pub fn split_frame(buf: &mut BytesMut, max: u32) -> Result<Option<Bytes>, WireError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size > max {
        return Err(WireError::TooLarge { size, limit: max });
    }
    let total = LEN_PREFIX + size as usize;
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(LEN_PREFIX);
    Ok(Some(buf.split_to(size as usize).freeze()))
}

/// How many more bytes the frame at the front of `buf` needs (at least 1), assuming its
/// length was already checked by [`split_frame`].
fn missing(buf: &BytesMut) -> usize {
    if buf.len() < LEN_PREFIX {
        return LEN_PREFIX - buf.len();
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    (LEN_PREFIX + size).saturating_sub(buf.len()).max(1)
}

/// Reads frames from a byte stream.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: u32,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that refuses frames above `max` bytes.
    pub fn new(inner: R, max: u32) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::new(),
            max,
        }
    }

    /// Changes the frame limit (raised once the handshake is over).
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    /// The next frame's payload; `Ok(None)` at a clean end of stream (between frames).
    ///
    /// Cancel-safe: the only await point is a read into the reader's own buffer, so it may be
    /// raced in `select!` without losing bytes.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, self.max)? {
                return Ok(Some(frame));
            }
            // Room for what this frame still needs, at most one chunk at a time (and at
            // least a little, so that small frames arriving together take one read).
            self.buf
                .reserve(missing(&self.buf).clamp(MIN_READ, READ_CHUNK));
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let have = self.buf.len();
                return Err(WireError::Truncated {
                    have,
                    want: have + missing(&self.buf),
                });
            }
        }
    }
}

/// Writes one frame: the length prefix, `header`, then `body`. Does not flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(header.len() + body.len())
        .map_err(|_| std::io::Error::other("frame longer than u32::MAX"))?;
    w.write_all(&len.to_be_bytes()).await?;
    w.write_all(header).await?;
    if !body.is_empty() {
        w.write_all(body).await?;
    }
    Ok(())
}

/// What each side says first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster this node belongs to; both sides must name the same one.
    pub cluster: String,
    /// This node's name (what the other side's handlers see as `peer`).
    pub node: String,
    /// Fresh random bytes for this connection's proofs.
    pub nonce: [u8; NONCE_LEN],
    /// The largest frame this side accepts after the handshake.
    pub max_frame_bytes: u32,
}

/// Encodes a hello frame payload for `version`.
pub fn encode_hello(version: u16, hello: &Hello) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(64 + hello.cluster.len() + hello.node.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    postcard::to_io(hello, &mut out).map_err(|e| WireError::malformed("hello", e))?;
    Ok(out)
}

/// Splits a hello payload into its version and the version-specific rest, checking the magic.
pub fn split_hello(payload: &[u8]) -> Result<(u16, &[u8]), WireError> {
    if payload.len() < MAGIC.len() + 2 || payload[..MAGIC.len()] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = u16::from_be_bytes([payload[4], payload[5]]);
    Ok((version, &payload[MAGIC.len() + 2..]))
}

/// Decodes the rest of a hello of [`PROTOCOL_VERSION`]. Trailing bytes are an error.
pub fn decode_hello(rest: &[u8]) -> Result<Hello, WireError> {
    let (hello, tail) =
        postcard::take_from_bytes::<Hello>(rest).map_err(|e| WireError::malformed("hello", e))?;
    if !tail.is_empty() {
        return Err(WireError::malformed("hello", "trailing bytes"));
    }
    Ok(hello)
}

/// Which end of a connection computes a proof; part of the MAC so that a proof can never be
/// reflected back to the side that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that connected.
    Client,
    /// The side that accepted.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Server => b"server",
        }
    }
}

/// The proof that `role` knows the cluster secret:
/// HMAC-SHA256(secret, "tandem-rpc" || role || own_nonce || peer_nonce || cluster || own_node
/// || peer_node), the names each prefixed by their `u32` big-endian length. Binding the
/// names means a proof made for one pair of nodes does not vouch for another.
pub fn proof(secret: &[u8], role: Role, own: &Hello, peer: &Hello) -> [u8; MAC_LEN] {
    let mut out = [0u8; MAC_LEN];
    // HMAC accepts keys of any length; this cannot fail, but no panic either way.
    if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        mac.update(b"tandem-rpc");
        mac.update(role.label());
        mac.update(&own.nonce);
        mac.update(&peer.nonce);
        for field in [&own.cluster, &own.node, &peer.node] {
            mac.update(&(field.len() as u32).to_be_bytes());
            mac.update(field.as_bytes());
        }
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    out
}

/// Checks the peer's proof in constant time.
pub fn verify_proof(secret: &[u8], peer_role: Role, own: &Hello, peer: &Hello, got: &[u8]) -> bool {
    let want = proof(secret, peer_role, peer, own);
    got.len() == MAC_LEN && bool::from(want.ct_eq(got))
}

/// A frame after the handshake, without its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Header<'a> {
    /// A call: the body is the request.
    Request {
        /// Chosen by the caller, unique among its calls in flight on this connection.
        id: u64,
        /// Which handler: exact name or under a registered prefix.
        service: &'a str,
        /// How long the caller will wait, from when it sent the request; the handler sees it
        /// as `Request::deadline`.
        timeout_ms: u32,
    },
    /// The answer to request `id`: the body is the result when `error` is `None`.
    Response {
        /// The request's id.
        id: u64,
        /// The handler's error, or `None` for success.
        error: Option<RemoteError>,
    },
    /// Keepalive from the client; answered with `Pong`.
    Ping,
    /// Answer to `Ping`.
    Pong,
}

/// Encodes a header.
pub fn encode_header(header: &Header<'_>) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(header).map_err(|e| WireError::malformed("header", e))
}

/// Splits a post-handshake frame payload into its header and body. Only requests and
/// successful responses may carry a body.
pub fn decode_frame(payload: &Bytes) -> Result<(Header<'_>, Bytes), WireError> {
    let (header, tail) = postcard::take_from_bytes::<Header<'_>>(payload)
        .map_err(|e| WireError::malformed("frame", e))?;
    let body = payload.slice(payload.len() - tail.len()..);
    let body_allowed = matches!(
        header,
        Header::Request { .. } | Header::Response { error: None, .. }
    );
    if !body_allowed && !body.is_empty() {
        return Err(WireError::malformed(
            "frame",
            "body on a message that has none",
        ));
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: &str, nonce: u8) -> Hello {
        Hello {
            cluster: "c".into(),
            node: node.into(),
            nonce: [nonce; NONCE_LEN],
            max_frame_bytes: 1024,
        }
    }

    // Proves: split_frame waits for whole frames, returns them in order, and refuses an
    // oversized length before buffering anything for it.
    #[test]
    fn split_frame_cases() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, b'a', b'b'][..]);
        assert!(matches!(split_frame(&mut buf, 10), Ok(None)));
        buf.extend_from_slice(&[b'c', 0, 0, 0, 0]);
        assert_eq!(
            split_frame(&mut buf, 10).ok().flatten().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            split_frame(&mut buf, 10).ok().flatten().as_deref(),
            Some(&b""[..])
        );
        assert!(matches!(split_frame(&mut buf, 10), Ok(None)));
        let mut big = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            split_frame(&mut big, 10),
            Err(WireError::TooLarge {
                size: u32::MAX,
                limit: 10
            })
        ));
    }

    // Proves: FrameReader reports a clean end between frames and Truncated inside one.
    #[tokio::test]
    async fn reader_end_and_truncation() {
        let data: &[u8] = &[0, 0, 0, 1, 7];
        let mut r = FrameReader::new(data, 16);
        assert_eq!(
            r.next_frame().await.ok().flatten().as_deref(),
            Some(&[7u8][..])
        );
        assert!(matches!(r.next_frame().await, Ok(None)));
        let data: &[u8] = &[0, 0, 0, 5, 1, 2];
        let mut r = FrameReader::new(data, 16);
        assert!(matches!(
            r.next_frame().await,
            Err(WireError::Truncated { have: 6, want: 9 })
        ));
        let data: &[u8] = &[0, 0];
        let mut r = FrameReader::new(data, 16);
        assert!(matches!(
            r.next_frame().await,
            Err(WireError::Truncated { have: 2, want: 4 })
        ));
    }

    // Proves: a length prefix within the limit but far larger than what arrives does not make
    // the reader reserve the claimed size: memory follows the bytes actually received.
    #[tokio::test]
    async fn reader_does_not_trust_claimed_length() {
        let mut data = (60u32 << 20).to_be_bytes().to_vec();
        data.extend_from_slice(&[0u8; 100]);
        let mut r = FrameReader::new(&data[..], DEFAULT_MAX_FRAME_BYTES);
        assert!(matches!(
            r.next_frame().await,
            Err(WireError::Truncated { have: 104, .. })
        ));
        assert!(
            r.buf.capacity() <= 2 * READ_CHUNK,
            "capacity {}",
            r.buf.capacity()
        );
    }

    // Proves: hello and headers round-trip, the version is readable without decoding the rest,
    // and garbage or unknown variants are errors, not panics.
    #[test]
    fn encode_decode() {
        let h = hello("a", 1);
        let payload = encode_hello(PROTOCOL_VERSION, &h).unwrap();
        let (v, rest) = split_hello(&payload).unwrap();
        assert_eq!(v, PROTOCOL_VERSION);
        assert_eq!(decode_hello(rest).unwrap(), h);
        assert!(matches!(
            split_hello(b"GET / HTTP/1.1"),
            Err(WireError::BadMagic)
        ));
        assert!(decode_hello(&rest[..rest.len() - 1]).is_err());

        let header = encode_header(&Header::Request {
            id: 7,
            service: "x/y",
            timeout_ms: 5,
        })
        .unwrap();
        let mut frame = header.clone();
        frame.extend_from_slice(b"body");
        let frame = Bytes::from(frame);
        let (h2, body) = decode_frame(&frame).unwrap();
        assert_eq!(
            h2,
            Header::Request {
                id: 7,
                service: "x/y",
                timeout_ms: 5
            }
        );
        assert_eq!(&body[..], b"body");

        // Variant index 200 does not exist.
        assert!(decode_frame(&Bytes::from_static(&[200, 1])).is_err());
        // A Ping with a body.
        let mut ping = encode_header(&Header::Ping).unwrap();
        ping.push(0);
        assert!(decode_frame(&Bytes::from(ping)).is_err());
        assert!(decode_frame(&Bytes::new()).is_err());
    }

    // Proves: a proof verifies only for the right secret, role, nonces and names.
    #[test]
    fn proofs() {
        let (c, s) = (hello("c", 1), hello("s", 2));
        let p = proof(b"secret-secret-16", Role::Client, &c, &s);
        assert!(verify_proof(b"secret-secret-16", Role::Client, &s, &c, &p));
        assert!(!verify_proof(b"other-secret-16!", Role::Client, &s, &c, &p));
        assert!(!verify_proof(b"secret-secret-16", Role::Server, &s, &c, &p));
        assert!(!verify_proof(b"secret-secret-16", Role::Client, &c, &s, &p));
        assert!(!verify_proof(
            b"secret-secret-16",
            Role::Client,
            &s,
            &c,
            &p[..31]
        ));
    }
}
