//! SIP over UDP and TCP: the sockets, the connection table, and sending to a peer.
//!
//! Every received message goes to `Core::on_message` with the `Peer` it came from; answers go
//! back the same way (UDP: to the source address; TCP: on the same connection), which is what
//! lets clients behind NAT be reached.

use crate::core::Core;
use bytes::Bytes;
use sip::{StreamDecoder, StreamItem};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Where a message came from, or goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Udp(SocketAddr),
    /// A TCP connection (its id in this process) and the remote address.
    Tcp {
        conn: u64,
        addr: SocketAddr,
    },
}

impl Peer {
    /// `udp` or `tcp`, as stored in bindings.
    pub fn transport(&self) -> &'static str {
        match self {
            Peer::Udp(_) => "udp",
            Peer::Tcp { .. } => "tcp",
        }
    }

    /// The remote address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Peer::Udp(a) | Peer::Tcp { addr: a, .. } => *a,
        }
    }

    /// True for transports that do their own retransmission.
    pub fn reliable(&self) -> bool {
        matches!(self, Peer::Tcp { .. })
    }
}

/// A sending failure: the peer cannot be reached now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

struct Conn {
    tx: mpsc::Sender<Bytes>,
    addr: SocketAddr,
}

/// The server's SIP sockets and open connections.
pub struct Transports {
    udp: Option<Arc<UdpSocket>>,
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_conn: AtomicU64,
    /// Random id of this process, so a flow written by an earlier run is never mistaken for a
    /// live connection.
    boot: String,
    max_connections: usize,
}

/// The UDP flow of a client that asked to be reached at its source address.
pub const UDP_OUTBOUND: &str = "udp-outbound";

/// The server that holds the client a flow reaches, if the flow names one.
pub fn flow_server(flow: &str) -> Option<&str> {
    flow.split_once('/').map(|(server, _)| server)
}

/// Whether a UDP flow asks to be reached at the client's source address.
pub fn is_udp_outbound(flow: &str) -> bool {
    flow == UDP_OUTBOUND
        || flow
            .strip_suffix(UDP_OUTBOUND)
            .is_some_and(|s| s.ends_with('/'))
}

/// The UDP receive buffer asked for: some 4,000 requests of a burst.
const UDP_RECEIVE_BUFFER: usize = 8 << 20;
/// Bytes queued per connection before the writer applies back-pressure.
const CONN_QUEUE: usize = 1024;
/// Time to establish an outbound connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(900);

impl Transports {
    /// Binds the sockets named in the configuration.
    pub async fn bind(
        udp: Option<SocketAddr>,
        tcp: Option<SocketAddr>,
        max_connections: usize,
    ) -> std::io::Result<(Transports, Option<TcpListener>)> {
        let udp_socket = match udp {
            Some(a) => {
                let sock = UdpSocket::bind(a).await?;
                widen_receive_buffer(&sock);
                Some(Arc::new(sock))
            }
            None => None,
        };
        let listener = match tcp {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let udp_addr = match &udp_socket {
            Some(s) => Some(s.local_addr()?),
            None => None,
        };
        let tcp_addr = match &listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let transports = Transports {
            udp: udp_socket,
            udp_addr,
            tcp_addr,
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            boot: crate::core::random_hex(6),
            max_connections,
        };
        Ok((transports, listener))
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Our address for a transport, as written in Via and Contact.
    pub fn local_addr(&self, transport: &str) -> Option<SocketAddr> {
        match transport {
            "tcp" => self.tcp_addr.or(self.udp_addr),
            _ => self.udp_addr.or(self.tcp_addr),
        }
    }

    /// The flow stored with a binding or subscription made over this peer. It starts with
    /// the name of the server that holds the client (its connection, or the socket its
    /// datagrams reach), so any server of a pool can deliver to it through that one: TCP
    /// `server/boot/connection`; UDP `server/udp-outbound` when the client asked to be
    /// reached at its source address (RFC 5626), else `server/udp` (reach the contact
    /// address). Flows written before pools (`""`, `udp-outbound`) name no server.
    pub fn flow_of(&self, server: &str, peer: &Peer, outbound: bool) -> String {
        match peer {
            Peer::Udp(_) if outbound => format!("{server}/{UDP_OUTBOUND}"),
            Peer::Udp(_) => format!("{server}/udp"),
            Peer::Tcp { conn, .. } => format!("{server}/{}/{conn}", self.boot),
        }
    }

    /// The live connection a flow names, if it was made by this process and is still open.
    pub fn peer_of_flow(&self, server: &str, flow: &str) -> Option<Peer> {
        let rest = flow.strip_prefix(server)?.strip_prefix('/')?;
        let (boot, conn) = rest.split_once('/')?;
        if boot != self.boot {
            return None;
        }
        let conn: u64 = conn.parse().ok()?;
        let conns = self.conns.lock().ok()?;
        conns.get(&conn).map(|c| Peer::Tcp { conn, addr: c.addr })
    }

    /// Open TCP connections.
    pub fn connections(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Sends bytes to a peer.
    pub async fn send(&self, peer: &Peer, bytes: Bytes) -> Result<(), Unreachable> {
        match peer {
            Peer::Udp(addr) => {
                let Some(sock) = &self.udp else {
                    return Err(Unreachable("this server has no UDP transport".into()));
                };
                sock.send_to(&bytes, addr)
                    .await
                    .map(|_| ())
                    .map_err(|e| Unreachable(format!("UDP send to {addr}: {e}")))
            }
            Peer::Tcp { conn, addr } => {
                let tx = {
                    let conns = self
                        .conns
                        .lock()
                        .map_err(|_| Unreachable("connection table poisoned".into()))?;
                    conns.get(conn).map(|c| c.tx.clone())
                };
                match tx {
                    Some(tx) => tx
                        .send(bytes)
                        .await
                        .map_err(|_| Unreachable(format!("connection to {addr} closed"))),
                    None => Err(Unreachable(format!("connection to {addr} closed"))),
                }
            }
        }
    }

    fn register_conn(&self, addr: SocketAddr, tx: mpsc::Sender<Bytes>) -> Option<u64> {
        let mut conns = self.conns.lock().ok()?;
        if conns.len() >= self.max_connections {
            return None;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        conns.insert(id, Conn { tx, addr });
        Some(id)
    }

    fn unregister_conn(&self, id: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&id);
        }
    }
}

/// Asks for a UDP receive buffer of [`UDP_RECEIVE_BUFFER`] bytes. Under load, requests arrive
/// in bursts while the runtime is busy elsewhere; the default (about 200 KiB, some 100
/// datagrams) overflows, and each dropped request costs the client a 500 ms retransmission.
/// The kernel caps the size at `net.core.rmem_max`; the size granted is logged.
fn widen_receive_buffer(sock: &UdpSocket) {
    let s = socket2::SockRef::from(sock);
    if let Err(e) = s.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::warn!(error = %e, "could not widen the UDP receive buffer");
    }
    match s.recv_buffer_size() {
        Ok(n) if n < UDP_RECEIVE_BUFFER => tracing::info!(
            granted = n,
            asked = UDP_RECEIVE_BUFFER,
            "UDP receive buffer capped by net.core.rmem_max"
        ),
        _ => {}
    }
}

/// Receives one datagram without blocking, with the time the kernel received it (when the
/// socket has `SO_TIMESTAMPNS` on): how long it waited in the socket's queue is part of the
/// delay overload control looks at.
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    control: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SystemTime>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg};
    use std::os::fd::AsRawFd;
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(control),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let from = msg.address.as_ref().and_then(|a| {
        a.as_sockaddr_in()
            .map(|s| SocketAddr::V4((*s).into()))
            .or_else(|| a.as_sockaddr_in6().map(|s| SocketAddr::V6((*s).into())))
    });
    let Some(from) = from else {
        return Err(std::io::Error::other("a datagram without a source address"));
    };
    let stamp = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => {
                let secs = u64::try_from(ts.tv_sec()).ok()?;
                let nanos = u32::try_from(ts.tv_nsec()).ok()?;
                Some(UNIX_EPOCH + Duration::new(secs, nanos))
            }
            _ => None,
        })
    });
    Ok((msg.bytes, from, stamp))
}

/// Receives datagrams until the socket fails.
pub async fn run_udp(core: Arc<Core>) {
    let Some(sock) = core.transports.udp.clone() else {
        return;
    };
    let stamped = nix::sys::socket::setsockopt(
        sock.as_ref(),
        nix::sys::socket::sockopt::ReceiveTimestampns,
        &true,
    );
    if let Err(e) = stamped {
        tracing::warn!(error = %e, "no receive timestamps on the UDP socket: overload control sees only the delay after reading");
    }
    let mut buf = vec![0u8; 65_536];
    let mut control = nix::cmsg_space!(nix::sys::time::TimeSpec);
    loop {
        let received = sock
            .async_io(tokio::io::Interest::READABLE, || {
                recv_stamped(&sock, &mut buf, &mut control)
            })
            .await;
        match received {
            Ok((n, from, stamp)) => {
                core.metrics.datagrams.fetch_add(1, Ordering::Relaxed);
                let arrived = stamp.unwrap_or_else(SystemTime::now);
                core.on_bytes(&buf[..n], Peer::Udp(from), arrived);
            }
            Err(e) => {
                // ICMP port-unreachable from an earlier send surfaces here on Linux; keep going.
                tracing::debug!(error = %e, "UDP receive error");
            }
        }
    }
}

/// Accepts TCP connections until the listener fails.
pub async fn run_tcp_listener(core: Arc<Core>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if core.pool.as_ref().is_some_and(|p| p.is_draining()) {
                    // A draining server takes no new clients; the client tries its next one.
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                spawn_connection(core.clone(), stream, addr);
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens an outbound TCP connection (to a client whose connection is gone).
pub async fn connect(core: &Arc<Core>, addr: SocketAddr) -> Result<Peer, Unreachable> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Unreachable(format!("TCP connect to {addr} timed out")))?
        .map_err(|e| Unreachable(format!("TCP connect to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    spawn_connection(core.clone(), stream, addr)
        .ok_or_else(|| Unreachable("too many connections".into()))
}

fn spawn_connection(core: Arc<Core>, stream: TcpStream, addr: SocketAddr) -> Option<Peer> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CONN_QUEUE);
    let Some(id) = core.transports.register_conn(addr, tx.clone()) else {
        tracing::warn!(%addr, "refusing TCP connection: connection limit reached");
        return None;
    };
    let peer = Peer::Tcp { conn: id, addr };
    let (mut reader, mut writer) = stream.into_split();
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let reader_peer = peer.clone();
    tokio::spawn(async move {
        let mut decoder = StreamDecoder::new(core.config.limits);
        let mut buf = vec![0u8; 16 * 1024];
        'conn: loop {
            let n = match tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            };
            decoder.extend(&buf[..n]);
            loop {
                match decoder.next_item() {
                    Ok(Some(StreamItem::Ping)) => {
                        let _ = tx.send(Bytes::from_static(b"\r\n")).await;
                    }
                    Ok(Some(StreamItem::Message(parsed))) => {
                        core.on_parsed(parsed, reader_peer.clone(), SystemTime::now())
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(peer = %reader_peer.addr(), error = %e.0, "closing TCP connection: unframeable stream");
                        core.metrics.parse_errors.fetch_add(1, Ordering::Relaxed);
                        break 'conn;
                    }
                }
            }
        }
        core.transports.unregister_conn(id);
    });
    Some(peer)
}
