//! What both ends of a connection share: the handshake and the writer task.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::faults;
use crate::secret::ClusterSecret;
use crate::wire::{
    self, FrameReader, Hello, MAC_LEN, NONCE_LEN, PROTOCOL_VERSION, Role, WireError,
};

/// Frames a writer sends in one batch before it flushes, so a steady stream of frames still
/// goes out promptly.
const MAX_BATCH_FRAMES: usize = 64;
/// The writer's buffer: small frames queued together leave in one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Who this end is, as the handshake needs it.
pub(crate) struct Identity<'a> {
    pub secret: &'a ClusterSecret,
    pub cluster: &'a str,
    pub node: &'a str,
    pub max_frame_bytes: u32,
}

/// The other end, as the handshake established it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Its node name, vouched for by its proof.
    pub name: String,
    /// The largest frame it accepts.
    pub max_frame_bytes: u32,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("peer closed the connection during the handshake")]
    Closed,
    #[error("peer speaks protocol version {theirs}, we speak {PROTOCOL_VERSION}")]
    Version { theirs: u16 },
    #[error("peer is in cluster {theirs:?}")]
    Cluster { theirs: String },
    #[error("peer's proof of the cluster secret is wrong")]
    Auth,
    #[error("peer {0:?} is blocked by fault injection")]
    Blocked(String),
}

/// Runs the handshake on a fresh connection: send our hello, read theirs, check version and
/// cluster, send our proof, read and verify theirs. Both sides write before they read, so
/// the exchange takes one round trip after connect plus one.
pub(crate) async fn handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    role: Role,
    me: &Identity<'_>,
) -> Result<Peer, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce)
        .map_err(|e| WireError::Io(std::io::Error::other(format!("no randomness: {e}"))))?;
    let own = Hello {
        cluster: me.cluster.to_string(),
        node: me.node.to_string(),
        nonce,
        max_frame_bytes: me.max_frame_bytes,
    };
    send(writer, &wire::encode_hello(PROTOCOL_VERSION, &own)?).await?;

    let payload = reader.next_frame().await?.ok_or(HandshakeError::Closed)?;
    let (version, rest) = wire::split_hello(&payload)?;
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { theirs: version });
    }
    let peer = wire::decode_hello(rest)?;
    if peer.cluster != own.cluster {
        return Err(HandshakeError::Cluster {
            theirs: peer.cluster,
        });
    }
    if faults::is_blocked(&peer.node) {
        return Err(HandshakeError::Blocked(peer.node));
    }
    // Our own nonce coming back is a reflection attempt (or a broken random source).
    if peer.nonce == own.nonce {
        return Err(HandshakeError::Auth);
    }

    send(
        writer,
        &wire::proof(me.secret.as_bytes(), role, &own, &peer),
    )
    .await?;
    let got = reader.next_frame().await?.ok_or(HandshakeError::Closed)?;
    let peer_role = match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    if got.len() != MAC_LEN
        || !wire::verify_proof(me.secret.as_bytes(), peer_role, &own, &peer, &got)
    {
        return Err(HandshakeError::Auth);
    }
    Ok(Peer {
        name: peer.node,
        max_frame_bytes: peer.max_frame_bytes,
    })
}

/// Sends one handshake frame in one write.
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, payload: &[u8]) -> Result<(), WireError> {
    let mut frame = Vec::with_capacity(wire::LEN_PREFIX + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// A frame waiting for the writer task: an encoded header and a body.
pub(crate) struct Out {
    pub header: Vec<u8>,
    pub body: Bytes,
}

/// The writer task: sends queued frames, batching whatever is queued into few writes, and,
/// when `ping` is set, a `Ping` at that interval. Returns when the queue closes (every sender
/// gone) or on a write error.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    w: W,
    mut rx: mpsc::Receiver<Out>,
    ping: Option<Duration>,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(WRITE_BUFFER_BYTES, w);
    let ping_header = wire::encode_header(&wire::Header::Ping)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Without keepalive the timer is parked far away and never fires.
    let period = ping.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break };
                wire::write_frame(&mut w, &out.header, &out.body).await?;
                let mut batch = 1;
                while batch < MAX_BATCH_FRAMES {
                    let Ok(out) = rx.try_recv() else { break };
                    wire::write_frame(&mut w, &out.header, &out.body).await?;
                    batch += 1;
                }
                w.flush().await?;
            }
            _ = ticker.tick(), if ping.is_some() => {
                wire::write_frame(&mut w, &ping_header, &[]).await?;
                w.flush().await?;
            }
        }
    }
    w.flush().await?;
    w.shutdown().await
}
