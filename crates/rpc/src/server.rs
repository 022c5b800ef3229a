//! The server: accepts connections, authenticates them, dispatches requests to handlers.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::RemoteError;
use crate::conn::{self, HandshakeError, Identity, Out, Peer};
use crate::faults;
use crate::secret::ClusterSecret;
use crate::wire::{self, FrameReader, HANDSHAKE_MAX_FRAME_BYTES, Header, Role};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A service handler: takes the request, answers with bytes or a [`RemoteError`].
pub type Handler = Arc<dyn Fn(Request) -> BoxFuture<Result<Bytes, RemoteError>> + Send + Sync>;

/// One call as a handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The service the caller named (under the handler's prefix, for a prefix handler).
    pub service: String,
    /// The request bytes.
    pub body: Bytes,
    /// The caller's node name, as its handshake proved it.
    pub peer: String,
    /// When the caller stops waiting; work finished later is wasted.
    pub deadline: Instant,
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The secret every node of the cluster shares.
    pub secret: ClusterSecret,
    /// The cluster's name; peers of another cluster are refused.
    pub cluster: String,
    /// This node's name, sent to peers.
    pub node_name: String,
    /// Largest frame accepted after the handshake; a larger length prefix closes the
    /// connection.
    pub max_frame_bytes: u32,
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Requests of one connection running at once; the connection is not read further
    /// while this many run.
    pub max_inflight_per_conn: usize,
    /// Time a new connection has to complete the handshake.
    pub handshake_timeout: Duration,
    /// A connection on which nothing arrives for this long is closed (clients ping well
    /// within it).
    pub idle_timeout: Duration,
}

impl ServerConfig {
    /// Settings with the defaults: 64 MiB frames, 1024 connections, 1024 requests in flight
    /// per connection, 5 s handshake timeout, 60 s idle timeout.
    pub fn new(
        secret: ClusterSecret,
        cluster: impl Into<String>,
        node_name: impl Into<String>,
    ) -> ServerConfig {
        ServerConfig {
            secret,
            cluster: cluster.into(),
            node_name: node_name.into(),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 1024,
            max_inflight_per_conn: 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A snapshot of a server's counters (all since bind, except `connections_open`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (before the handshake).
    pub connections_accepted: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections closed on accept because `max_connections` were open.
    pub connections_refused: u64,
    /// Connections that completed the handshake.
    pub connections_authenticated: u64,
    /// Requests received from authenticated peers.
    pub calls: u64,
    /// Requests made in this process to its own server ([`RpcServer::call_local`]).
    pub local_calls: u64,
    /// Requests for which no handler was registered.
    pub unknown_service: u64,
    /// Handshakes that failed the secret proof.
    pub auth_failures: u64,
    /// Handshakes from a peer of another protocol version.
    pub version_mismatches: u64,
    /// Handshakes that failed otherwise: timeout, other cluster, blocked peer, closed early.
    pub handshake_failures: u64,
    /// Connections closed for bytes that are not the protocol: garbage, oversized or
    /// truncated frames, unknown messages.
    pub bad_frames: u64,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    connections_refused: AtomicU64,
    connections_authenticated: AtomicU64,
    calls: AtomicU64,
    local_calls: AtomicU64,
    unknown_service: AtomicU64,
    auth_failures: AtomicU64,
    version_mismatches: AtomicU64,
    handshake_failures: AtomicU64,
    bad_frames: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the accept loop and connection tasks share.
struct Shared {
    config: ServerConfig,
    /// Handlers by exact service name, or by prefix for names ending in '/'. Changed by
    /// `handle`/`unhandle` at any time; read once per request.
    services: RwLock<HashMap<String, Handler>>,
    counters: Counters,
    /// Set to true to stop the accept loop and close every connection.
    shutdown: watch::Sender<bool>,
    /// Set to true by the accept loop when it has stopped (or was never started and the
    /// server shut down).
    stopped: watch::Sender<bool>,
}

impl Shared {
    /// The handler for `service`: an exact registration, else the longest registered prefix
    /// (a name ending in '/') that `service` starts with.
    fn lookup(&self, service: &str) -> Option<Handler> {
        let map = self.services.read().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(service) {
            return Some(h.clone());
        }
        service
            .rmatch_indices('/')
            .find_map(|(i, _)| map.get(&service[..=i]).cloned())
    }
}

struct ServerInner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// The bound listener until the accept loop takes it.
    listener: Mutex<Option<TcpListener>>,
}

impl Drop for ServerInner {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// An rpc server. Cheap to clone; when the last clone is dropped the server stops accepting
/// and closes every connection (calls in flight on them fail with `Disconnected`).
#[derive(Clone)]
pub struct RpcServer {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("node", &self.inner.shared.config.node_name)
            .field("addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl RpcServer {
    /// Binds the listening socket. Connections wait in the backlog until [`spawn`](Self::spawn)
    /// or [`run`](Self::run) starts accepting, so handlers can be registered first.
    pub async fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<RpcServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            services: RwLock::new(HashMap::new()),
            counters: Counters::default(),
            shutdown: watch::Sender::new(false),
            stopped: watch::Sender::new(false),
        });
        Ok(RpcServer {
            inner: Arc::new(ServerInner {
                shared,
                local_addr,
                listener: Mutex::new(Some(listener)),
            }),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This server's node name.
    pub fn node_name(&self) -> &str {
        &self.inner.shared.config.node_name
    }

    /// Registers `handler` for `service`, replacing any handler registered under the same
    /// name. A name ending in '/' is a prefix: it serves every service that starts with it
    /// and has no exact or longer-prefix handler. Takes effect for the next request.
    pub fn handle<F, Fut>(&self, service: impl Into<String>, handler: F)
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, RemoteError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        self.handle_boxed(service, handler);
    }

    /// [`handle`](Self::handle) for a handler already in its shared form.
    pub fn handle_boxed(&self, service: impl Into<String>, handler: Handler) {
        self.inner
            .shared
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.into(), handler);
    }

    /// Calls `service` on this server from inside its own process: what a call from a peer
    /// would do — same handler, a deadline of `timeout`, the handler running to its end on a
    /// task of its own even if the caller stops waiting, this node's name as the peer — without
    /// framing it, writing it to a socket and reading it back. A process asks its own server
    /// for much of what it asks others (the primary of a store or routing group is often
    /// itself), and on loopback that round trip cost more CPU than many handlers.
    pub async fn call_local(
        &self,
        service: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, crate::RpcError> {
        let shared = &self.inner.shared;
        if *shared.shutdown.borrow() {
            return Err(crate::RpcError::Disconnected);
        }
        bump(&shared.counters.local_calls);
        let Some(handler) = shared.lookup(service) else {
            bump(&shared.counters.unknown_service);
            return Err(crate::RpcError::Remote(no_such_service(
                service,
                &shared.config.node_name,
            )));
        };
        let request = Request {
            service: service.to_string(),
            body,
            peer: shared.config.node_name.clone(),
            deadline: Instant::now() + timeout,
        };
        let task = tokio::spawn(handler(request));
        match tokio::time::timeout(timeout, task).await {
            Err(_) => Err(crate::RpcError::Timeout),
            Ok(Err(e)) => Err(crate::RpcError::Remote(RemoteError::new(
                RemoteError::HANDLER_PANICKED,
                e.to_string(),
            ))),
            Ok(Ok(answer)) => answer.map_err(crate::RpcError::Remote),
        }
    }

    /// Removes the handler registered under exactly `service`; later requests for it get
    /// `no-such-service` (requests already running finish). Returns whether one was there.
    pub fn unhandle(&self, service: &str) -> bool {
        self.inner
            .shared
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(service)
            .is_some()
    }

    /// The counters now.
    pub fn stats(&self) -> ServerStats {
        let c = &self.inner.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            connections_accepted: get(&c.connections_accepted),
            connections_open: get(&c.connections_open),
            connections_refused: get(&c.connections_refused),
            connections_authenticated: get(&c.connections_authenticated),
            calls: get(&c.calls),
            local_calls: get(&c.local_calls),
            unknown_service: get(&c.unknown_service),
            auth_failures: get(&c.auth_failures),
            version_mismatches: get(&c.version_mismatches),
            handshake_failures: get(&c.handshake_failures),
            bad_frames: get(&c.bad_frames),
        }
    }

    /// Starts accepting in a background task. Does nothing if the server already accepts or
    /// has shut down.
    pub fn spawn(&self) {
        if let Some(listener) = self.take_listener() {
            tokio::spawn(accept_loop(self.inner.shared.clone(), listener));
        }
    }

    /// Accepts in the current task until [`shutdown`](Self::shutdown) (or the last handle is
    /// dropped). Dropping this future closes every connection. Returns at once if the server
    /// already accepts or has shut down.
    pub async fn run(&self) {
        if let Some(listener) = self.take_listener() {
            accept_loop(self.inner.shared.clone(), listener).await;
        }
    }

    /// Stops accepting, closes every connection, and returns once the listening socket is
    /// closed and the connections are gone.
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.shutdown.send_replace(true);
        if let Some(listener) = self.take_listener() {
            drop(listener);
            shared.stopped.send_replace(true);
        }
        until_true(shared.stopped.subscribe()).await;
    }

    fn take_listener(&self) -> Option<TcpListener> {
        self.inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// Returns once the watched flag is true (or its sender is gone).
async fn until_true(mut flag: watch::Receiver<bool>) {
    while !*flag.borrow_and_update() {
        if flag.changed().await.is_err() {
            return;
        }
    }
}

/// Marks the server stopped when the accept loop ends, however it ends.
struct StoppedOnDrop(Arc<Shared>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.send_replace(true);
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let _stopped = StoppedOnDrop(shared.clone());
    let listener = listener;
    let mut conns = JoinSet::new();
    let shutdown = shared.shutdown.subscribe();
    let counters = &shared.counters;
    loop {
        tokio::select! {
            _ = until_true(shutdown.clone()) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    bump(&counters.connections_accepted);
                    let open = counters.connections_open.load(Ordering::Relaxed);
                    if open >= shared.config.max_connections as u64 {
                        bump(&counters.connections_refused);
                        tracing::warn!(%remote, open, "rpc: refusing connection: too many open");
                        continue;
                    }
                    counters.connections_open.fetch_add(1, Ordering::Relaxed);
                    conns.spawn(serve(shared.clone(), stream, remote));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin on the error.
                    tracing::warn!(error = %e, "rpc: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Keeps `connections_open` right however a connection task ends.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection: handshake, then a dispatch loop and a writer, until either ends.
async fn serve(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let _open = OpenConnection(shared.clone());
    let config = &shared.config;
    let counters = &shared.counters;
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, HANDSHAKE_MAX_FRAME_BYTES);
    let me = Identity {
        secret: &config.secret,
        cluster: &config.cluster,
        node: &config.node_name,
        max_frame_bytes: config.max_frame_bytes,
    };
    let handshake = conn::handshake(&mut reader, &mut w, Role::Server, &me);
    let peer = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(peer)) => peer,
        Ok(Err(e)) => {
            let counter = match &e {
                HandshakeError::Auth => &counters.auth_failures,
                HandshakeError::Version { .. } => &counters.version_mismatches,
                HandshakeError::Wire(w) if w.is_bad_input() => &counters.bad_frames,
                _ => &counters.handshake_failures,
            };
            bump(counter);
            tracing::warn!(%remote, reason = %e, "rpc: handshake failed; closing connection");
            return;
        }
        Err(_) => {
            bump(&counters.handshake_failures);
            tracing::warn!(%remote, "rpc: handshake timed out; closing connection");
            return;
        }
    };
    bump(&counters.connections_authenticated);
    tracing::debug!(%remote, peer = %peer.name, "rpc: peer connected");
    reader.set_max(config.max_frame_bytes);

    let (tx, rx) = mpsc::channel(config.max_inflight_per_conn.max(1));
    let reason = tokio::select! {
        r = conn::write_loop(w, rx, None) => match r {
            Ok(()) => "writer finished".to_string(),
            Err(e) => format!("write failed: {e}"),
        },
        reason = dispatch(&shared, &mut reader, tx, &peer) => reason,
    };
    tracing::debug!(%remote, peer = %peer.name, %reason, "rpc: connection closed");
}

/// Reads requests and runs their handlers concurrently (at most `max_inflight_per_conn`),
/// queueing each answer for the writer. Returns why it stopped.
async fn dispatch<R>(
    shared: &Shared,
    reader: &mut FrameReader<R>,
    tx: mpsc::Sender<Out>,
    peer: &Peer,
) -> String
where
    R: tokio::io::AsyncRead + Unpin,
{
    let config = &shared.config;
    let counters = &shared.counters;
    let mut running: JoinSet<Result<Bytes, RemoteError>> = JoinSet::new();
    // Request id of each running handler task.
    let mut ids: HashMap<tokio::task::Id, u64> = HashMap::new();
    let mut faults = faults::subscribe();
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            frame = reader.next_frame(), if running.len() < config.max_inflight_per_conn => {
                let payload = match frame {
                    Ok(Some(p)) => p,
                    Ok(None) => return "peer closed the connection".into(),
                    Err(e) => {
                        if e.is_bad_input() {
                            bump(&counters.bad_frames);
                            tracing::warn!(peer = %peer.name, reason = %e, "rpc: bad frame; closing connection");
                        }
                        return format!("read failed: {e}");
                    }
                };
                idle.as_mut().reset(Instant::now() + config.idle_timeout);
                let (header, body) = match wire::decode_frame(&payload) {
                    Ok(decoded) => decoded,
                    Err(e) => {
                        bump(&counters.bad_frames);
                        tracing::warn!(peer = %peer.name, reason = %e, "rpc: bad frame; closing connection");
                        return format!("bad frame: {e}");
                    }
                };
                match header {
                    Header::Request { id, service, timeout_ms } => {
                        bump(&counters.calls);
                        let Some(handler) = shared.lookup(service) else {
                            bump(&counters.unknown_service);
                            let error = no_such_service(service, &config.node_name);
                            if send_response(&tx, peer, id, Err(error)).await.is_err() {
                                return "writer gone".into();
                            }
                            continue;
                        };
                        let request = Request {
                            service: service.to_string(),
                            body,
                            peer: peer.name.clone(),
                            deadline: Instant::now() + Duration::from_millis(timeout_ms.into()),
                        };
                        let task = running.spawn(handler(request));
                        ids.insert(task.id(), id);
                    }
                    Header::Ping => {
                        let pong = Out { header: encode(&Header::Pong), body: Bytes::new() };
                        if tx.send(pong).await.is_err() {
                            return "writer gone".into();
                        }
                    }
                    Header::Response { .. } | Header::Pong => {
                        bump(&counters.bad_frames);
                        tracing::warn!(peer = %peer.name, "rpc: client sent a server message; closing connection");
                        return "unexpected message from client".into();
                    }
                }
            }
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let (task, result) = match done {
                    Ok((task, result)) => (task, result),
                    Err(e) => {
                        tracing::error!(peer = %peer.name, error = %e, "rpc: handler failed");
                        (e.id(), Err(RemoteError::new(RemoteError::HANDLER_PANICKED, e.to_string())))
                    }
                };
                let Some(id) = ids.remove(&task) else { continue };
                if send_response(&tx, peer, id, result).await.is_err() {
                    return "writer gone".into();
                }
            }
            changed = faults.changed() => {
                if changed.is_err() || faults::is_blocked(&peer.name) {
                    return "peer blocked by fault injection".into();
                }
            }
            _ = &mut idle => return format!("nothing received for {:?}", config.idle_timeout),
        }
    }
}

/// The answer to a request for a service nobody handles here.
fn no_such_service(service: &str, node: &str) -> RemoteError {
    RemoteError::new(
        RemoteError::NO_SUCH_SERVICE,
        format!("no handler for service {service:?} on {node}"),
    )
}

fn encode(header: &Header<'_>) -> Vec<u8> {
    // Encoding our own headers into a Vec cannot fail; an empty header would be refused by
    // the peer, which is the right outcome if it ever did.
    wire::encode_header(header).unwrap_or_default()
}

async fn send_response(
    tx: &mpsc::Sender<Out>,
    peer: &Peer,
    id: u64,
    result: Result<Bytes, RemoteError>,
) -> Result<(), ()> {
    let (error, body) = match result {
        Ok(body) => (None, body),
        Err(e) => (Some(e), Bytes::new()),
    };
    let mut header = encode(&Header::Response { id, error });
    let mut body = body;
    let size = (header.len() + body.len()) as u64;
    if size > u64::from(peer.max_frame_bytes) {
        let error = RemoteError::new(
            RemoteError::RESPONSE_TOO_LARGE,
            format!(
                "answer of {size} bytes exceeds the caller's frame limit of {}",
                peer.max_frame_bytes
            ),
        );
        header = encode(&Header::Response {
            id,
            error: Some(error),
        });
        body = Bytes::new();
    }
    tx.send(Out { header, body }).await.map_err(|_| ())
}
