//! The client: one lazily opened, automatically reopened connection to one server, carrying
//! many calls at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::RpcError;
use crate::conn::{self, HandshakeError, Identity, Out, Peer};
use crate::faults;
use crate::secret::ClusterSecret;
use crate::wire::{self, FrameReader, HANDSHAKE_MAX_FRAME_BYTES, Header, PROTOCOL_VERSION, Role};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The secret every node of the cluster shares.
    pub secret: ClusterSecret,
    /// The cluster's name; a server of another cluster is refused.
    pub cluster: String,
    /// This node's name, which the server's handlers see as `peer`.
    pub node_name: String,
    /// Time allowed for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Largest response frame accepted; a larger one closes the connection.
    pub max_frame_bytes: u32,
    /// A ping goes out at this interval; a connection that hears nothing for three intervals
    /// is closed as dead.
    pub keepalive: Duration,
    /// Wait after the first failed connection attempt before the next; doubles with each
    /// further failure up to `reconnect_backoff_max`. Calls made meanwhile wait for the next
    /// attempt if their deadline allows it, else fail at once with the last error.
    pub reconnect_backoff_min: Duration,
    /// Longest wait between connection attempts.
    pub reconnect_backoff_max: Duration,
    /// Requests queued for the writer at most; callers wait (within their deadline) beyond.
    pub max_queued_requests: usize,
}

impl ClientConfig {
    /// Settings with the defaults: 64 MiB frames, 2 s connect timeout, 5 s keepalive,
    /// backoff from 20 ms to 500 ms, 1024 queued requests.
    pub fn new(
        secret: ClusterSecret,
        cluster: impl Into<String>,
        node_name: impl Into<String>,
    ) -> ClientConfig {
        ClientConfig {
            secret,
            cluster: cluster.into(),
            node_name: node_name.into(),
            connect_timeout: Duration::from_secs(2),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            keepalive: Duration::from_secs(5),
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_millis(500),
            max_queued_requests: 1024,
        }
    }
}

/// A snapshot of a client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that ended in `Timeout`.
    pub timeouts: u64,
    /// Connections established (handshake completed).
    pub connects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Established connections that were lost.
    pub disconnects: u64,
    /// Answers that came after their call had given up, and were discarded.
    pub late_responses: u64,
    /// Connections closed because the server sent bytes that are not the protocol.
    pub bad_frames: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    timeouts: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    disconnects: AtomicU64,
    late_responses: AtomicU64,
    bad_frames: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

type Reply = oneshot::Sender<Result<Bytes, RpcError>>;

/// Calls waiting for their answer on one connection.
struct Pending {
    /// Reply slot by request id. A call inserts its own and removes it if it gives up; the
    /// reader removes it when the answer comes; closing the connection drains it.
    calls: HashMap<u64, Reply>,
    /// False once the connection is closing: no call may wait on it any more.
    open: bool,
}

/// What a connection's task and the calls using it share.
struct ConnShared {
    pending: Mutex<Pending>,
    next_id: AtomicU64,
}

impl ConnShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Closes the connection to new calls and fails every waiting one.
    fn fail_all(&self, error: RpcError) {
        let drained: Vec<Reply> = {
            let mut p = self.lock();
            p.open = false;
            p.calls.drain().map(|(_, reply)| reply).collect()
        };
        for reply in drained {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// One established connection.
struct Conn {
    /// Distinguishes this connection from later ones in the client's state.
    serial: u64,
    peer: Peer,
    /// Requests for the writer.
    tx: mpsc::Sender<Out>,
    shared: Arc<ConnShared>,
    /// The task that reads, writes and pings.
    task: AbortHandle,
}

impl Conn {
    fn close(&self, error: RpcError) {
        self.task.abort();
        self.shared.fail_all(error);
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close(RpcError::Disconnected);
    }
}

/// The client's connection state.
#[derive(Default)]
struct State {
    /// The current connection, if one is up (it may have just died: check `is_open`).
    conn: Option<Arc<Conn>>,
    /// The server's node name, once a handshake told it (for `faults`).
    peer: Option<String>,
    /// Connection attempts failed in a row.
    failures: u32,
    /// No new attempt before this instant (set after a failure).
    retry_at: Option<Instant>,
    /// Why the last attempt failed.
    last_error: Option<RpcError>,
    /// Connection attempts finished so far: a call that waited while another caller's attempt
    /// failed takes that failure instead of waiting for yet another attempt.
    attempts: u64,
    /// Set by `close`; every later call fails with `Closed`.
    closed: bool,
}

struct ClientInner {
    addr: String,
    config: ClientConfig,
    state: Mutex<State>,
    /// Held while a connection attempt runs, so concurrent calls share one attempt.
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// Serial for the next connection.
    serials: AtomicU64,
    counters: Counters,
}

/// A client of one rpc server. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl RpcClient {
    /// A client of the server at `addr` (`host:port`). Connects on the first call.
    pub fn new(addr: impl Into<String>, config: ClientConfig) -> RpcClient {
        RpcClient {
            inner: Arc::new(ClientInner {
                addr: addr.into(),
                config,
                state: Mutex::new(State::default()),
                connecting: Arc::new(tokio::sync::Mutex::new(())),
                serials: AtomicU64::new(1),
                counters: Counters::default(),
            }),
        }
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The server's node name, once a handshake has told it.
    pub fn peer_name(&self) -> Option<String> {
        self.inner.state().peer.clone()
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.inner
            .state()
            .conn
            .as_ref()
            .is_some_and(|c| c.shared.is_open())
    }

    /// The counters now.
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            calls: get(&c.calls),
            timeouts: get(&c.timeouts),
            connects: get(&c.connects),
            connect_failures: get(&c.connect_failures),
            disconnects: get(&c.disconnects),
            late_responses: get(&c.late_responses),
            bad_frames: get(&c.bad_frames),
        }
    }

    /// Closes the connection; calls waiting on it fail with `Disconnected`, later calls with
    /// `Closed`.
    pub fn close(&self) {
        let conn = {
            let mut st = self.inner.state();
            st.closed = true;
            st.conn.take()
        };
        if let Some(conn) = conn {
            conn.close(RpcError::Disconnected);
        }
    }

    /// Calls `service` with `body` and waits at most `deadline` for the answer (connecting
    /// first if needed, within the same deadline).
    ///
    /// On `Timeout` or `Disconnected` the call may or may not have run on the server.
    pub async fn call(
        &self,
        service: &str,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, RpcError> {
        bump(&self.inner.counters.calls);
        let until = Instant::now() + deadline;
        let result =
            match tokio::time::timeout_at(until, self.call_inner(service, body, until)).await {
                Ok(result) => result,
                Err(_) => Err(RpcError::Timeout),
            };
        if result == Err(RpcError::Timeout) {
            bump(&self.inner.counters.timeouts);
        }
        result
    }

    async fn call_inner(
        &self,
        service: &str,
        body: Bytes,
        until: Instant,
    ) -> Result<Bytes, RpcError> {
        let conn = self.connection(until).await?;
        if faults::is_blocked(&conn.peer.name) {
            return Err(RpcError::Disconnected);
        }
        let id = conn.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let timeout_ms = until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(u128::from(u32::MAX)) as u32;
        let header = wire::encode_header(&Header::Request {
            id,
            service,
            timeout_ms,
        })
        .map_err(|e| RpcError::Connect(format!("encoding request: {e}")))?;
        let size = (header.len() + body.len()) as u64;
        if size > u64::from(conn.peer.max_frame_bytes) {
            return Err(RpcError::FrameTooLarge {
                size,
                limit: conn.peer.max_frame_bytes,
            });
        }

        let (reply, answer) = oneshot::channel();
        {
            let mut pending = conn.shared.lock();
            if !pending.open {
                return Err(RpcError::Disconnected);
            }
            pending.calls.insert(id, reply);
        }
        // From here on, giving up (deadline, caller dropped) must take our slot back out.
        let slot = Slot {
            shared: &conn.shared,
            id,
        };
        conn.tx
            .send(Out { header, body })
            .await
            .map_err(|_| RpcError::Disconnected)?;
        let result = answer.await.unwrap_or(Err(RpcError::Disconnected));
        drop(slot);
        result
    }

    /// The live connection, making one if needed (one attempt at a time, shared by every
    /// caller waiting for it: each call waits for one attempt at most — its own or another
    /// caller's — so calls to a dead server fail within one backoff, however many there are).
    async fn connection(&self, until: Instant) -> Result<Arc<Conn>, RpcError> {
        let mut seen: Option<u64> = None;
        loop {
            let wait = {
                let st = self.inner.state();
                if st.closed {
                    return Err(RpcError::Closed);
                }
                if let Some(conn) = st.conn.as_ref().filter(|c| c.shared.is_open()) {
                    return Ok(conn.clone());
                }
                match seen {
                    Some(s) if st.attempts > s => {
                        return Err(st.last_error.clone().unwrap_or(RpcError::Disconnected));
                    }
                    Some(_) => {}
                    None => seen = Some(st.attempts),
                }
                if st.peer.as_deref().is_some_and(faults::is_blocked) {
                    return Err(RpcError::Disconnected);
                }
                match st.retry_at {
                    Some(at) if at > Instant::now() => {
                        if at >= until {
                            return Err(st.last_error.clone().unwrap_or(RpcError::Disconnected));
                        }
                        Some(at)
                    }
                    _ => None,
                }
            };
            if let Some(at) = wait {
                tokio::time::sleep_until(at).await;
            }
            let guard = self.inner.connecting.clone().lock_owned().await;
            {
                // Another caller may have connected, or failed, while we waited for the lock.
                let st = self.inner.state();
                if st.closed {
                    return Err(RpcError::Closed);
                }
                if let Some(conn) = st.conn.as_ref().filter(|c| c.shared.is_open()) {
                    return Ok(conn.clone());
                }
                if seen.is_some_and(|s| st.attempts > s) {
                    return Err(st.last_error.clone().unwrap_or(RpcError::Disconnected));
                }
                if st.retry_at.is_some_and(|at| at > Instant::now()) {
                    continue;
                }
            }
            // The attempt runs in its own task so that a caller giving up does not abandon it
            // half way; the lock is released when it is done.
            let inner = self.inner.clone();
            let attempt = tokio::spawn(async move {
                let result = inner.connect().await;
                drop(guard);
                result
            });
            return attempt
                .await
                .unwrap_or_else(|e| Err(RpcError::Connect(format!("connection attempt: {e}"))));
        }
    }
}

/// A call's reply slot; dropping it (the call gave up) removes the slot, so the answer, if it
/// comes, is counted late and discarded.
struct Slot<'a> {
    shared: &'a ConnShared,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.shared.lock().calls.remove(&self.id);
    }
}

impl ClientInner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One connection attempt, recorded in the state either way.
    async fn connect(self: &Arc<Self>) -> Result<Arc<Conn>, RpcError> {
        let timeout = self.config.connect_timeout;
        let result = match tokio::time::timeout(timeout, self.establish()).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Connect(format!(
                "{}: no connection within {timeout:?}",
                self.addr
            ))),
        };
        let mut st = self.state();
        st.attempts += 1;
        match result {
            Ok(conn) => {
                bump(&self.counters.connects);
                st.failures = 0;
                st.retry_at = None;
                st.last_error = None;
                st.peer = Some(conn.peer.name.clone());
                let conn = Arc::new(conn);
                if st.closed {
                    conn.close(RpcError::Closed);
                    return Err(RpcError::Closed);
                }
                // Its task may already have ended (then `is_open` is false and the next call
                // reconnects); recording it anyway keeps one path.
                st.conn = Some(conn.clone());
                Ok(conn)
            }
            Err(error) => {
                bump(&self.counters.connect_failures);
                st.failures = st.failures.saturating_add(1);
                let doublings = st.failures.saturating_sub(1).min(16);
                let backoff = self
                    .config
                    .reconnect_backoff_min
                    .saturating_mul(1 << doublings)
                    .min(self.config.reconnect_backoff_max);
                st.retry_at = Some(Instant::now() + backoff);
                st.last_error = Some(error.clone());
                tracing::debug!(addr = %self.addr, %error, ?backoff, "rpc: connection attempt failed");
                Err(error)
            }
        }
    }

    /// TCP connect and handshake, then the connection's task.
    async fn establish(self: &Arc<Self>) -> Result<Conn, RpcError> {
        let addr = &self.addr;
        let stream = TcpStream::connect(addr.as_str())
            .await
            .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (r, mut w) = stream.into_split();
        let mut reader = FrameReader::new(r, HANDSHAKE_MAX_FRAME_BYTES);
        let me = Identity {
            secret: &self.config.secret,
            cluster: &self.config.cluster,
            node: &self.config.node_name,
            max_frame_bytes: self.config.max_frame_bytes,
        };
        let peer = conn::handshake(&mut reader, &mut w, Role::Client, &me)
            .await
            .map_err(|e| {
                tracing::warn!(%addr, reason = %e, "rpc: handshake failed");
                match e {
                    HandshakeError::Version { theirs } => RpcError::Version {
                        ours: PROTOCOL_VERSION,
                        theirs,
                    },
                    HandshakeError::Cluster { theirs } => RpcError::Cluster {
                        ours: self.config.cluster.clone(),
                        theirs,
                    },
                    HandshakeError::Auth => RpcError::Auth,
                    HandshakeError::Blocked(_) | HandshakeError::Closed => RpcError::Disconnected,
                    HandshakeError::Wire(wire::WireError::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                                | std::io::ErrorKind::UnexpectedEof
                        ) =>
                    {
                        RpcError::Disconnected
                    }
                    HandshakeError::Wire(e) => RpcError::Connect(format!("{addr}: {e}")),
                }
            })?;
        reader.set_max(self.config.max_frame_bytes);
        let (tx, rx) = mpsc::channel(self.config.max_queued_requests.max(1));
        let shared = Arc::new(ConnShared {
            pending: Mutex::new(Pending {
                calls: HashMap::new(),
                open: true,
            }),
            next_id: AtomicU64::new(1),
        });
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(run_connection(
            Cleanup {
                shared: shared.clone(),
                client: Arc::downgrade(self),
                serial,
            },
            reader,
            w,
            rx,
            peer.name.clone(),
            self.config.keepalive,
        ));
        Ok(Conn {
            serial,
            peer,
            tx,
            shared,
            task: task.abort_handle(),
        })
    }

    /// Forgets connection `serial` if it is still the current one.
    fn lost(&self, serial: u64) {
        let mut st = self.state();
        if st.conn.as_ref().is_some_and(|c| c.serial == serial) {
            st.conn = None;
        }
    }
}

/// On the way out of a connection task, however it ends: fail the waiting calls and forget
/// the connection, so the next call makes a new one.
struct Cleanup {
    shared: Arc<ConnShared>,
    client: Weak<ClientInner>,
    serial: u64,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.shared.fail_all(RpcError::Disconnected);
        if let Some(client) = self.client.upgrade() {
            bump(&client.counters.disconnects);
            client.lost(self.serial);
        }
    }
}

/// A connection's task: the reader, the writer (with keepalive pings) and the fault watch,
/// until the first of them ends.
async fn run_connection<R, W>(
    cleanup: Cleanup,
    mut reader: FrameReader<R>,
    writer: W,
    rx: mpsc::Receiver<Out>,
    peer: String,
    keepalive: Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let shared = cleanup.shared.clone();
    let client = cleanup.client.clone();
    let mut faults = faults::subscribe();
    let blocked = async {
        loop {
            if faults::is_blocked(&peer) {
                return;
            }
            if faults.changed().await.is_err() {
                return;
            }
        }
    };
    let reason = tokio::select! {
        r = conn::write_loop(writer, rx, Some(keepalive)) => match r {
            Ok(()) => "client dropped".to_string(),
            Err(e) => format!("write failed: {e}"),
        },
        reason = read_loop(&mut reader, &shared, &client, keepalive.saturating_mul(3)) => reason,
        _ = blocked => "peer blocked by fault injection".to_string(),
    };
    tracing::debug!(%peer, %reason, "rpc: connection closed");
}

/// Reads answers and hands each to its call. Returns why it stopped.
async fn read_loop<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    shared: &ConnShared,
    client: &Weak<ClientInner>,
    silence: Duration,
) -> String {
    let count_bad = || {
        if let Some(c) = client.upgrade() {
            bump(&c.counters.bad_frames);
        }
    };
    let quiet = tokio::time::sleep(silence);
    tokio::pin!(quiet);
    loop {
        let payload = tokio::select! {
            frame = reader.next_frame() => match frame {
                Ok(Some(p)) => p,
                Ok(None) => return "server closed the connection".into(),
                Err(e) => {
                    if e.is_bad_input() {
                        count_bad();
                        tracing::warn!(reason = %e, "rpc: bad frame from server; closing connection");
                    }
                    return format!("read failed: {e}");
                }
            },
            _ = &mut quiet => return format!("nothing heard for {silence:?}"),
        };
        quiet.as_mut().reset(Instant::now() + silence);
        let (header, body) = match wire::decode_frame(&payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                count_bad();
                tracing::warn!(reason = %e, "rpc: bad frame from server; closing connection");
                return format!("bad frame: {e}");
            }
        };
        match header {
            Header::Response { id, error } => {
                let reply = shared.lock().calls.remove(&id);
                let result = match error {
                    None => Ok(body),
                    Some(e) => Err(RpcError::Remote(e)),
                };
                match reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        if let Some(c) = client.upgrade() {
                            bump(&c.counters.late_responses);
                        }
                    }
                }
            }
            Header::Pong => {}
            Header::Request { .. } | Header::Ping => {
                count_bad();
                tracing::warn!("rpc: server sent a client message; closing connection");
                return "unexpected message from server".into();
            }
        }
    }
}
