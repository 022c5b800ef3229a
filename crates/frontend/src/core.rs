//! The front end's shared state and the request path: bytes → parse → transaction layer →
//! the handler of the method → store → response, plus outgoing requests (forwarded MESSAGEs,
//! NOTIFYs) through client transactions.

use crate::metrics::Metrics;
use crate::transport::{self, Peer, Transports, Unreachable};
use sip::digest::Nonces;
use sip::header::Via;
use sip::transaction::{
    ClientAction, ClientEvent, ClientTransactions, ServerEvent, ServerTransactions, TxKey,
};
use sip::{Message, Method, ParseError, Request, Response};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::Store;
use tokio::sync::oneshot;

/// What a front-end server needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// This server's name in the topology (it prefixes connection flows).
    pub server_name: String,
    /// The SIP domain (and digest realm) of all users.
    pub domain: String,
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    /// Expiry limits, digest algorithms, contact limits.
    pub sip: topology::SipSettings,
    pub limits: sip::Limits,
    /// Most server transactions alive at once; beyond it requests get 503. A completed UDP
    /// transaction lives 32 s (timer J) holding its response (about 0.6 KiB), so the default
    /// allows some 15,000 requests/s for about 600 MiB at most.
    pub max_transactions: usize,
    /// Most TCP connections at once.
    pub max_tcp_connections: usize,
    /// Most nonces remembered for replay protection.
    pub max_nonces: usize,
}

impl Config {
    /// Defaults for everything but the identity and addresses.
    pub fn new(
        server_name: &str,
        domain: &str,
        sip_udp: Option<SocketAddr>,
        sip_tcp: Option<SocketAddr>,
    ) -> Config {
        Config {
            server_name: server_name.to_string(),
            domain: domain.to_string(),
            sip_udp,
            sip_tcp,
            sip: topology::SipSettings::default(),
            limits: sip::Limits::default(),
            max_transactions: 1_000_000,
            max_tcp_connections: 10_000,
            max_nonces: 1_000_000,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch (expiry times are stored in this clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `n` random bytes as hex: tags, branches, Call-IDs (RFC 3261 §19.3 asks for cryptographic
/// randomness). From the thread's ChaCha generator, seeded and reseeded by the OS: a
/// `getrandom` system call per tag cost about 1.5% of a server's CPU under MESSAGE load.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// A random number below `n` (`n` > 0; a little biased, fine for spreading retries).
fn random_below(n: u8) -> u8 {
    let mut b = [0u8; 1];
    rand::fill(&mut b[..]);
    b[0] % n.max(1)
}

/// The front end's shared state.
pub struct Core {
    pub config: Config,
    /// The pool's store: users and their credentials (and, outside a pool of several
    /// servers, their registrations, presence and subscriptions too).
    pub store: Store,
    /// The pool this server serves in, when its users live in routing groups.
    pub pool: Option<Arc<crate::pool::PoolMember>>,
    pub transports: Transports,
    pub metrics: Metrics,
    server_txs: Mutex<ServerTransactions<Peer>>,
    client_txs: Mutex<ClientTransactions<Peer>>,
    /// Waiters for the final response of our client transactions.
    pending: Mutex<HashMap<TxKey, oneshot::Sender<Response>>>,
    pub(crate) nonces: Mutex<Nonces>,
    started: Instant,
    /// Requests being handled now (a graceful stop waits for them).
    pub(crate) inflight: std::sync::atomic::AtomicUsize,
    /// New requests admitted and not yet answered (overload control's count).
    pending_requests: std::sync::atomic::AtomicUsize,
}

/// A request admitted by overload control; dropping it frees its place.
struct Admitted<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a request we sent ended without a final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// No final response within 64*T1.
    Timeout,
    /// The peer could not be reached.
    Unreachable(String),
}

impl Core {
    pub(crate) fn new(
        config: Config,
        store: Store,
        pool: Option<Arc<crate::pool::PoolMember>>,
        transports: Transports,
    ) -> Core {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            tracing::error!("the operating system's random number generator failed");
            std::process::abort();
        }
        let nonces = Nonces::new(
            key,
            &config.domain,
            u64::from(config.sip.nonce_ttl_s) * 1000,
            config.max_nonces,
        );
        Core {
            server_txs: Mutex::new(ServerTransactions::new(config.max_transactions)),
            client_txs: Mutex::new(ClientTransactions::new()),
            pending: Mutex::new(HashMap::new()),
            nonces: Mutex::new(nonces),
            metrics: Metrics::default(),
            started: Instant::now(),
            inflight: std::sync::atomic::AtomicUsize::new(0),
            pending_requests: std::sync::atomic::AtomicUsize::new(0),
            config,
            store,
            pool,
            transports,
        }
    }

    /// The store holding `aor`'s registrations, presence publications and the subscriptions
    /// to it: its routing group in a pool, else the pool's store.
    pub fn data(&self, aor: &str) -> &Store {
        match &self.pool {
            Some(p) => p.store_of(aor),
            None => &self.store,
        }
    }

    /// Sends `req` (without a Via of ours) to a client's contact over the route it
    /// registered with, through the server of the pool that holds the client when that is
    /// another one, and waits for the final response (returned without our Via).
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        route: &store::Route,
        contact: &str,
        req: Request,
    ) -> Result<Response, SendFailure> {
        if let (Some(pool), Some(server)) = (&self.pool, transport::flow_server(&route.flow))
            && server != self.config.server_name
        {
            let relayed = pool
                .relay(
                    server,
                    crate::pool::DeliverRequest {
                        route: route.clone(),
                        contact: contact.to_string(),
                        request: req.to_bytes().to_vec(),
                    },
                )
                .await;
            match relayed {
                // The holding server is gone: a datagram can still be sent from here, and a
                // client that listens on its contact can still be connected to.
                Err(SendFailure::Unreachable(why)) => {
                    tracing::debug!(%server, %why, "delivering from here instead");
                }
                other => return other,
            }
        }
        self.deliver_here(route, contact, req).await
    }

    /// Delivers from this server.
    pub(crate) async fn deliver_here(
        self: &Arc<Self>,
        route: &store::Route,
        contact: &str,
        mut req: Request,
    ) -> Result<Response, SendFailure> {
        let peer = self
            .resolve(route, contact)
            .await
            .map_err(|e| SendFailure::Unreachable(e.0))?;
        let (via, branch) = self.new_via(peer.transport());
        req.headers.push_front("Via", via.to_wire());
        if req.method == Method::Notify && req.headers.get("Contact").is_none() {
            // In-dialog requests (a SUBSCRIBE refresh) come back to the server that sent it.
            req.headers
                .push("Contact", self.contact_uri(peer.transport()));
        }
        let mut resp = self.send_request(&req, &branch, &peer).await?;
        resp.headers.remove_first("Via");
        Ok(resp)
    }

    /// Monotonic milliseconds since start (transaction timers, nonces).
    pub fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A datagram arrived (the kernel received it at `arrived`).
    pub(crate) fn on_bytes(self: &Arc<Self>, bytes: &[u8], peer: Peer, arrived: SystemTime) {
        let parsed = sip::parse_message(bytes, &self.config.limits);
        self.on_parsed(parsed, peer, arrived);
    }

    /// A message was framed (datagram or stream).
    pub(crate) fn on_parsed(
        self: &Arc<Self>,
        parsed: Result<Message, ParseError>,
        peer: Peer,
        arrived: SystemTime,
    ) {
        match parsed {
            Ok(Message::Request(req)) => {
                let core = self.clone();
                tokio::spawn(async move { core.on_request(req, peer, arrived).await });
            }
            Ok(Message::Response(resp)) => self.on_response(resp),
            Err(err) => {
                self.metrics.parse_errors.fetch_add(1, Ordering::Relaxed);
                match err.partial {
                    // Enough of a request to answer: say what is wrong.
                    Some(partial)
                        if partial.method != Method::Ack
                            && partial.headers.get("Via").is_some() =>
                    {
                        let resp = partial
                            .response(err.status, Some(&random_hex(4)))
                            .with_reason(err.reason);
                        let core = self.clone();
                        tokio::spawn(async move { core.send_stateless(&peer, resp).await });
                    }
                    _ => {
                        tracing::debug!(peer = %peer.addr(), reason = %err.reason, "dropped an unparsable message")
                    }
                }
            }
        }
    }

    async fn on_request(self: Arc<Self>, req: Request, peer: Peer, arrived: SystemTime) {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let (method, call_id) = (
            req.method.clone(),
            req.headers.get("Call-ID").unwrap_or_default().to_string(),
        );
        self.handle_request(req, peer, arrived).await;
        let took = started.elapsed();
        if took > Duration::from_secs(2) {
            tracing::warn!(%method, %call_id, ?took, "slow request");
        }
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Overload control for a new request that arrived at `arrived`: admitted (holding a
    /// place among the pending requests until dropped), or refused with the reason. A server
    /// past its capacity answers the excess at once rather than let every request wait until
    /// clients retransmit and give up: the requests it admits still complete.
    fn admit(&self, req: &Request, arrived: SystemTime) -> Result<Admitted<'_>, String> {
        let sip = &self.config.sip;
        // A request with credentials answers a challenge already sent: finishing it is worth
        // more than starting a new one.
        let credentials = req.headers.get("Authorization").is_some()
            || req.headers.get("Proxy-Authorization").is_some();
        let patience = u64::from(sip.max_queue_delay_ms) * if credentials { 2 } else { 1 };
        let waited = SystemTime::now()
            .duration_since(arrived)
            .unwrap_or_default();
        if waited > Duration::from_millis(patience) {
            return Err(format!("queued {} ms", waited.as_millis()));
        }
        // New work (a request without credentials, which would be challenged and come back)
        // stops at half the limit, so the requests already under way can finish.
        let limit = sip.max_pending_requests as usize;
        let limit = if credentials {
            limit
        } else {
            limit.div_ceil(2)
        };
        let before = self.pending_requests.fetch_add(1, Ordering::SeqCst);
        let admitted = Admitted(&self.pending_requests);
        if before >= limit {
            return Err(format!("{before} requests pending"));
        }
        Ok(admitted)
    }

    async fn handle_request(self: &Arc<Self>, req: Request, peer: Peer, arrived: SystemTime) {
        self.metrics.count_request(&req.method);
        if let Err(rej) = sip::validate_request(&req) {
            if req.method != Method::Ack {
                let resp = req
                    .response(rej.status, Some(&random_hex(4)))
                    .with_reason(rej.reason);
                self.send_stateless(&peer, resp).await;
            }
            return;
        }
        let Some(key) = TxKey::for_request(&req) else {
            return;
        };
        let event = match self.server_txs.lock() {
            Ok(mut txs) => {
                txs.on_request(&key, &req, peer.clone(), peer.reliable(), self.mono_ms())
            }
            Err(_) => return,
        };
        match event {
            ServerEvent::New => {}
            ServerEvent::Absorbed { age_ms } => {
                self.metrics.retransmissions.fetch_add(1, Ordering::Relaxed);
                // The client is retransmitting while we work: a 100 Trying quiets it (and later
                // retransmissions get the 100 again until the final response), once RFC 4320
                // allows one.
                if trying_due(&req.method, peer.reliable(), age_ms) {
                    let trying = req.response(100, None);
                    self.respond(&key, &peer, trying).await;
                }
                return;
            }
            ServerEvent::Resend(bytes) => {
                self.metrics.retransmissions.fetch_add(1, Ordering::Relaxed);
                let _ = self.transports.send(&peer, bytes).await;
                return;
            }
            ServerEvent::Ack => return,
            ServerEvent::Overloaded => {
                self.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
                let resp = req
                    .response(503, Some(&random_hex(4)))
                    .with_header("Retry-After", "5");
                self.send_stateless(&peer, resp).await;
                return;
            }
        }
        let admitted = match self.admit(&req, arrived) {
            Ok(admitted) => admitted,
            Err(why) => {
                self.metrics.shed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(method = %req.method, %why, "overloaded: refused with 503");
                // Retried clients come back spread over a few seconds, not all at once.
                let resp = req
                    .response(503, Some(&random_hex(4)))
                    .with_header("Retry-After", (1 + random_below(5)).to_string());
                self.respond(&key, &peer, resp).await;
                return;
            }
        };
        let resp = crate::handlers::dispatch(self, &req, &peer).await;
        // The work is done once the answer is known: the place is free before the client
        // can see the answer and send its next request.
        drop(admitted);
        if let Some(resp) = resp {
            self.respond(&key, &peer, resp).await;
        }
    }

    /// Sends a response within its server transaction.
    pub(crate) async fn respond(&self, key: &TxKey, peer: &Peer, mut resp: Response) {
        resp.headers.push("Server", crate::SERVER_NAME);
        let bytes = resp.to_bytes();
        if let Ok(mut txs) = self.server_txs.lock() {
            if resp.status == 401 || resp.status == 407 {
                // Challenges are stateless (RFC 3261 §8.2.7): a retransmission just gets a new
                // one, and half the requests of a registering client keep no state 32 s long.
                txs.forget(key);
            } else {
                txs.on_response(key, resp.status, bytes.clone(), self.mono_ms());
            }
        }
        self.metrics.count_response(resp.status);
        if let Err(e) = self.transports.send(peer, bytes).await {
            tracing::debug!(error = %e.0, "response not sent");
        }
    }

    /// Sends a response outside any transaction (to a request we could not match).
    pub(crate) async fn send_stateless(&self, peer: &Peer, mut resp: Response) {
        resp.headers.push("Server", crate::SERVER_NAME);
        self.metrics.count_response(resp.status);
        let _ = self.transports.send(peer, resp.to_bytes()).await;
    }

    fn on_response(&self, resp: Response) {
        let Some(key) = TxKey::for_response(&resp) else {
            return;
        };
        let event = match self.client_txs.lock() {
            Ok(mut txs) => txs.on_response(&key, resp.status, self.mono_ms()),
            Err(_) => return,
        };
        if event == ClientEvent::Final {
            let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&key));
            if let Some(w) = waiter {
                let _ = w.send(resp);
            }
        }
    }

    /// Our Via for a request sent over `transport`, with a fresh branch.
    pub(crate) fn new_via(&self, transport: &str) -> (Via, String) {
        let branch = format!("z9hG4bK{}", random_hex(8));
        let addr = self.transports.local_addr(transport);
        let mut params = sip::header::Params::default();
        params.set("branch", Some(&branch));
        params.set("rport", None);
        let via = Via {
            transport: transport.to_ascii_uppercase(),
            host: addr
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|| self.config.domain.clone()),
            port: addr.map(|a| a.port()),
            params,
        };
        (via, branch)
    }

    /// Our Contact URI for a transport.
    pub(crate) fn contact_uri(&self, transport: &str) -> String {
        match self.transports.local_addr(transport) {
            Some(a) if transport == "tcp" => format!("<sip:{a};transport=tcp>"),
            Some(a) => format!("<sip:{a}>"),
            None => format!("<sip:{}>", self.config.domain),
        }
    }

    /// Sends a request (whose top Via is ours, with `branch`) in a client transaction and
    /// waits for its final response.
    pub(crate) async fn send_request(
        &self,
        req: &Request,
        branch: &str,
        peer: &Peer,
    ) -> Result<Response, SendFailure> {
        let key = TxKey::client(branch, &req.method);
        let bytes = req.to_bytes();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(key.clone(), tx);
        }
        if let Ok(mut txs) = self.client_txs.lock() {
            txs.start(
                key.clone(),
                peer.clone(),
                bytes.clone(),
                peer.reliable(),
                self.mono_ms(),
            );
        }
        if let Err(Unreachable(why)) = self.transports.send(peer, bytes).await {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&key);
            }
            return Err(SendFailure::Unreachable(why));
        }
        // The transaction's timer F ends it; the extra margin only guards against a lost wakeup.
        let limit = Duration::from_millis(64 * sip::transaction::T1_MS + 1_000);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            _ => {
                if let Ok(mut p) = self.pending.lock() {
                    p.remove(&key);
                }
                Err(SendFailure::Timeout)
            }
        }
    }

    /// Where to send to a client. TCP: its live connection, else a new connection to its
    /// contact. UDP: the contact's address (RFC 3261), or the source address of its request
    /// when the client asked for that (RFC 5626 outbound) or the contact has no IP address.
    pub(crate) async fn resolve(
        self: &Arc<Self>,
        route: &store::Route,
        contact: &str,
    ) -> Result<Peer, Unreachable> {
        let source = || -> Result<Peer, Unreachable> {
            route
                .source
                .parse()
                .map(Peer::Udp)
                .map_err(|_| Unreachable(format!("bad source address {}", route.source)))
        };
        match route.transport.as_str() {
            "tcp" => {
                if let Some(peer) = self
                    .transports
                    .peer_of_flow(&self.config.server_name, &route.flow)
                {
                    return Ok(peer);
                }
                let addr = contact_addr(contact)
                    .ok_or_else(|| Unreachable(format!("contact {contact} has no IP address")))?;
                transport::connect(self, addr).await
            }
            _ if crate::transport::is_udp_outbound(&route.flow) => source(),
            _ => match contact_addr(contact) {
                Some(addr) => Ok(Peer::Udp(addr)),
                None => source(),
            },
        }
    }

    /// Runs transaction timers: retransmissions and timeouts.
    pub(crate) async fn tick(&self) {
        let now = self.mono_ms();
        let resends = self
            .server_txs
            .lock()
            .map(|mut t| t.poll(now))
            .unwrap_or_default();
        let actions = self
            .client_txs
            .lock()
            .map(|mut t| t.poll(now))
            .unwrap_or_default();
        for (peer, bytes) in resends {
            let _ = self.transports.send(&peer, bytes).await;
        }
        for action in actions {
            match action {
                ClientAction::Retransmit(peer, bytes) => {
                    let _ = self.transports.send(&peer, bytes).await;
                }
                ClientAction::Timeout(key) => {
                    // Dropping the waiter's sender ends its wait with a timeout.
                    if let Ok(mut p) = self.pending.lock() {
                        p.remove(&key);
                    }
                }
            }
        }
    }

    /// Live server and client transactions.
    pub fn transactions(&self) -> (usize, usize) {
        let s = self.server_txs.lock().map(|t| t.len()).unwrap_or(0);
        let c = self.client_txs.lock().map(|t| t.len()).unwrap_or(0);
        (s, c)
    }
}

/// The IP address and port of a contact URI, when its host is an IP literal.
pub(crate) fn contact_addr(contact: &str) -> Option<SocketAddr> {
    let uri = sip::Uri::parse(contact).ok()?;
    let ip: std::net::IpAddr = uri.host.parse().ok()?;
    Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
}

/// Whether a retransmitted request still being worked on gets a `100 Trying`: only a
/// non-INVITE over UDP (INVITE has its own rules; reliable transports never
/// retransmit), and only once the client's Timer E has reached T2 (RFC 4320 §4.1: an earlier
/// 100 to a non-INVITE is forbidden — clients would stop retransmitting while the request is
/// merely slow, and some, such as SIPp scenarios, do not expect one at all).
pub(crate) fn trying_due(method: &Method, reliable: bool, age_ms: u64) -> bool {
    *method != Method::Invite && !reliable && age_ms >= sip::transaction::T2_MS
}

#[cfg(test)]
mod trying_tests {
    use super::trying_due;
    use sip::Method;

    #[test]
    fn a_slow_non_invite_gets_100_trying_only_after_t2() {
        assert!(!trying_due(&Method::Register, false, 500));
        assert!(!trying_due(&Method::Message, false, 3_999));
        assert!(trying_due(&Method::Register, false, 4_000));
        assert!(!trying_due(&Method::Register, true, 10_000));
        assert!(!trying_due(&Method::Invite, false, 10_000));
    }
}
