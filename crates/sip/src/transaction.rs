//! RFC 3261 §17 transactions, sans I/O: the caller feeds requests, responses and the time,
//! and sends what the tables return. Time is a monotonic millisecond count.
//!
//! Server side: non-INVITE transactions absorb retransmitted requests (or answer them with the
//! last response sent), and INVITE transactions retransmit their final (non-2xx) response until
//! the ACK arrives. Client side: non-INVITE transactions retransmit over unreliable transports
//! (timer E) and time out (timer F).

use crate::header::{CSeq, NameAddr, Via};
use crate::message::{Method, Request, Response};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// RTT estimate (RFC 3261 timer T1).
pub const T1_MS: u64 = 500;
/// Maximum retransmit interval for non-INVITE requests and INVITE responses.
pub const T2_MS: u64 = 4_000;
/// Maximum time a message stays in the network.
pub const T4_MS: u64 = 5_000;

/// Identifies a transaction (RFC 3261 §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxKey(String);

impl TxKey {
    /// The server transaction key of a request: branch, sent-by and method (ACK matches the
    /// INVITE). Requests without an RFC 3261 branch fall back to Call-ID, From tag, CSeq and the
    /// top Via (RFC 2543 matching). `None` when the request lacks what is needed.
    pub fn for_request(req: &Request) -> Option<TxKey> {
        let via_text = req.headers.get_all("Via").into_iter().next()?;
        let via = Via::parse(via_text).ok()?;
        let method = match req.method {
            Method::Ack => "INVITE",
            ref m => m.as_str(),
        };
        match via.branch() {
            // The magic cookie alone identifies nothing (RFC 4475 §3.2.1): fall back.
            Some(b) if b.len() > 7 && b.starts_with("z9hG4bK") => Some(TxKey(format!(
                "{b}|{}:{}|{method}",
                via.host,
                via.port.unwrap_or(0)
            ))),
            _ => {
                let call_id = req.headers.get("Call-ID")?;
                let cseq = CSeq::parse(req.headers.get("CSeq")?).ok()?;
                let from_tag = NameAddr::parse(req.headers.get("From")?)
                    .ok()?
                    .tag()
                    .unwrap_or("")
                    .to_string();
                Some(TxKey(format!(
                    "2543|{call_id}|{from_tag}|{}|{via_text}|{method}",
                    cseq.seq
                )))
            }
        }
    }

    /// The client transaction key of a response: top Via branch and CSeq method.
    pub fn for_response(resp: &Response) -> Option<TxKey> {
        let via = Via::parse(resp.headers.get_all("Via").into_iter().next()?).ok()?;
        let cseq = CSeq::parse(resp.headers.get("CSeq")?).ok()?;
        Some(TxKey::client(via.branch()?, &cseq.method))
    }

    /// The client transaction key for a branch we generated.
    pub fn client(branch: &str, method: &Method) -> TxKey {
        TxKey(format!("{branch}|{method}"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    /// Request received, nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent.
    Completed,
    /// INVITE only: the ACK arrived.
    Confirmed,
}

struct ServerTx<P> {
    state: ServerState,
    peer: P,
    reliable: bool,
    invite: bool,
    last_response: Option<Bytes>,
    /// When the transaction is forgotten.
    expires_at_ms: u64,
    /// INVITE, unreliable: next retransmission of the final response, and its interval.
    resend_at_ms: Option<u64>,
    resend_interval_ms: u64,
}

/// What to do with a request the transaction layer has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A new transaction: hand the request to the application.
    New,
    /// A retransmission while the application works on it. `age_ms` is how long ago the
    /// original arrived (a server may answer `100 Trying` to stop further retransmissions).
    Absorbed { age_ms: u64 },
    /// A retransmission after a response: send these bytes again.
    Resend(Bytes),
    /// The ACK of a final INVITE response: absorbed.
    Ack,
    /// The table is full: answer 503.
    Overloaded,
}

/// The server transaction table.
pub struct ServerTransactions<P> {
    map: HashMap<TxKey, (u64, ServerTx<P>)>,
    timers: BinaryHeap<Reverse<(u64, TxKey)>>,
    capacity: usize,
}

impl<P: Clone> ServerTransactions<P> {
    /// A table holding at most `capacity` transactions.
    pub fn new(capacity: usize) -> ServerTransactions<P> {
        ServerTransactions {
            map: HashMap::new(),
            timers: BinaryHeap::new(),
            capacity,
        }
    }

    /// Feeds a received request.
    pub fn on_request(
        &mut self,
        key: &TxKey,
        req: &Request,
        peer: P,
        reliable: bool,
        now_ms: u64,
    ) -> ServerEvent {
        if let Some((created, tx)) = self.map.get_mut(key) {
            if req.method == Method::Ack {
                if tx.invite && tx.state == ServerState::Completed {
                    tx.state = ServerState::Confirmed;
                    tx.resend_at_ms = None;
                    tx.expires_at_ms = now_ms + if tx.reliable { 0 } else { T4_MS };
                    self.timers.push(Reverse((tx.expires_at_ms, key.clone())));
                }
                return ServerEvent::Ack;
            }
            return match (&tx.state, &tx.last_response) {
                (ServerState::Trying, _) | (_, None) => ServerEvent::Absorbed {
                    age_ms: now_ms.saturating_sub(*created),
                },
                (ServerState::Confirmed, _) => ServerEvent::Absorbed {
                    age_ms: now_ms.saturating_sub(*created),
                },
                (_, Some(bytes)) => ServerEvent::Resend(bytes.clone()),
            };
        }
        if req.method == Method::Ack {
            // An ACK for a 2xx (end to end) or for a transaction we forgot: the application decides.
            return ServerEvent::New;
        }
        if self.map.len() >= self.capacity {
            return ServerEvent::Overloaded;
        }
        let invite = req.method == Method::Invite;
        // A transaction the application never answers is dropped after 64*T1 (timer F's span).
        let expires_at_ms = now_ms + 64 * T1_MS;
        self.timers.push(Reverse((expires_at_ms, key.clone())));
        self.map.insert(
            key.clone(),
            (
                now_ms,
                ServerTx {
                    state: ServerState::Trying,
                    peer,
                    reliable,
                    invite,
                    last_response: None,
                    expires_at_ms,
                    resend_at_ms: None,
                    resend_interval_ms: T1_MS,
                },
            ),
        );
        ServerEvent::New
    }

    /// Records a response the application sends in a transaction. Returns false when the
    /// transaction is unknown (already gone); the response should still be sent.
    pub fn on_response(&mut self, key: &TxKey, status: u16, bytes: Bytes, now_ms: u64) -> bool {
        let Some((_, tx)) = self.map.get_mut(key) else {
            return false;
        };
        if matches!(tx.state, ServerState::Completed | ServerState::Confirmed) {
            return true;
        }
        tx.last_response = Some(bytes);
        if status < 200 {
            tx.state = ServerState::Proceeding;
            return true;
        }
        tx.state = ServerState::Completed;
        if tx.invite {
            // Timer H bounds the wait for the ACK; timer G retransmits on UDP.
            tx.expires_at_ms = now_ms + 64 * T1_MS;
            if !tx.reliable {
                tx.resend_at_ms = Some(now_ms + T1_MS);
                tx.resend_interval_ms = T1_MS;
                self.timers.push(Reverse((now_ms + T1_MS, key.clone())));
            }
        } else {
            // Timer J: keep absorbing retransmissions on UDP.
            tx.expires_at_ms = now_ms + if tx.reliable { 0 } else { 64 * T1_MS };
        }
        self.timers.push(Reverse((tx.expires_at_ms, key.clone())));
        true
    }

    /// Forgets a transaction at once: for a response sent statelessly (a digest challenge,
    /// which a retransmitted request may simply get again, with a fresh nonce).
    pub fn forget(&mut self, key: &TxKey) {
        self.map.remove(key);
    }

    /// Runs the timers: returns responses to retransmit and forgets finished transactions.
    pub fn poll(&mut self, now_ms: u64) -> Vec<(P, Bytes)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            let Some((_, tx)) = self.map.get_mut(&key) else {
                continue;
            };
            if tx.expires_at_ms <= now_ms {
                self.map.remove(&key);
                continue;
            }
            if let (Some(resend), Some(bytes)) = (tx.resend_at_ms, &tx.last_response)
                && resend <= now_ms
            {
                out.push((tx.peer.clone(), bytes.clone()));
                tx.resend_interval_ms = (tx.resend_interval_ms * 2).min(T2_MS);
                let next = now_ms + tx.resend_interval_ms;
                tx.resend_at_ms = Some(next);
                self.timers.push(Reverse((next, key)));
            }
        }
        out
    }

    /// When `poll` next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a client transaction saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A provisional response: pass it up.
    Provisional,
    /// The first final response: pass it up; the transaction is complete.
    Final,
    /// A retransmitted response, or one for no transaction of ours: ignore it.
    Ignore,
}

/// What the client table asks the caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction<P> {
    /// Send the request again.
    Retransmit(P, Bytes),
    /// No final response within 64*T1: the request failed with 408.
    Timeout(TxKey),
}

struct ClientTx<P> {
    peer: P,
    request: Bytes,
    reliable: bool,
    completed: bool,
    provisional: bool,
    retransmit_at_ms: Option<u64>,
    interval_ms: u64,
    timeout_at_ms: u64,
}

/// The client (non-INVITE) transaction table.
pub struct ClientTransactions<P> {
    map: HashMap<TxKey, ClientTx<P>>,
    timers: BinaryHeap<Reverse<(u64, TxKey)>>,
}

impl<P: Clone> Default for ClientTransactions<P> {
    fn default() -> Self {
        ClientTransactions {
            map: HashMap::new(),
            timers: BinaryHeap::new(),
        }
    }
}

impl<P: Clone> ClientTransactions<P> {
    /// An empty table.
    pub fn new() -> ClientTransactions<P> {
        ClientTransactions::default()
    }

    /// Starts a transaction for a request the caller has just sent.
    pub fn start(&mut self, key: TxKey, peer: P, request: Bytes, reliable: bool, now_ms: u64) {
        let timeout_at_ms = now_ms + 64 * T1_MS;
        let retransmit_at_ms = if reliable { None } else { Some(now_ms + T1_MS) };
        if let Some(at) = retransmit_at_ms {
            self.timers.push(Reverse((at, key.clone())));
        }
        self.timers.push(Reverse((timeout_at_ms, key.clone())));
        self.map.insert(
            key,
            ClientTx {
                peer,
                request,
                reliable,
                completed: false,
                provisional: false,
                retransmit_at_ms,
                interval_ms: T1_MS,
                timeout_at_ms,
            },
        );
    }

    /// Feeds a received response.
    pub fn on_response(&mut self, key: &TxKey, status: u16, now_ms: u64) -> ClientEvent {
        let Some(tx) = self.map.get_mut(key) else {
            return ClientEvent::Ignore;
        };
        if tx.completed {
            return ClientEvent::Ignore;
        }
        if status < 200 {
            if !tx.provisional && !tx.reliable {
                tx.provisional = true;
                // In Proceeding, retransmit every T2.
                tx.interval_ms = T2_MS;
            }
            return ClientEvent::Provisional;
        }
        tx.completed = true;
        tx.retransmit_at_ms = None;
        // Timer K absorbs retransmitted responses on UDP.
        tx.timeout_at_ms = now_ms + if tx.reliable { 0 } else { T4_MS };
        self.timers.push(Reverse((tx.timeout_at_ms, key.clone())));
        ClientEvent::Final
    }

    /// Runs the timers.
    pub fn poll(&mut self, now_ms: u64) -> Vec<ClientAction<P>> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            let Some(tx) = self.map.get_mut(&key) else {
                continue;
            };
            if tx.timeout_at_ms <= now_ms {
                let completed = tx.completed;
                self.map.remove(&key);
                if !completed {
                    out.push(ClientAction::Timeout(key));
                }
                continue;
            }
            if let Some(at) = tx.retransmit_at_ms
                && at <= now_ms
            {
                out.push(ClientAction::Retransmit(
                    tx.peer.clone(),
                    tx.request.clone(),
                ));
                if !tx.provisional {
                    tx.interval_ms = (tx.interval_ms * 2).min(T2_MS);
                }
                let next = now_ms + tx.interval_ms;
                tx.retransmit_at_ms = Some(next);
                self.timers.push(Reverse((next, key)));
            }
        }
        out
    }

    /// When `poll` next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Limits, parse_message};

    fn request(method: &str, branch: &str) -> Request {
        let text = format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 {}\r\n\r\n",
            if method == "ACK" { "INVITE" } else { method }
        );
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(crate::Message::Request(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retransmissions_are_absorbed_then_answered_with_the_last_response() {
        let mut t = ServerTransactions::new(10);
        let req = request("MESSAGE", "z9hG4bK1");
        let key = TxKey::for_request(&req).unwrap();
        assert_eq!(t.on_request(&key, &req, "peer", false, 0), ServerEvent::New);
        assert_eq!(
            t.on_request(&key, &req, "peer", false, 500),
            ServerEvent::Absorbed { age_ms: 500 }
        );
        let ok = Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n");
        assert!(t.on_response(&key, 200, ok.clone(), 600));
        assert_eq!(
            t.on_request(&key, &req, "peer", false, 1_000),
            ServerEvent::Resend(ok)
        );
        // Timer J: forgotten after 64*T1 on UDP.
        t.poll(600 + 64 * T1_MS);
        assert!(t.is_empty());
        assert_eq!(
            t.on_request(&key, &req, "peer", false, 40_000),
            ServerEvent::New
        );
    }

    #[test]
    fn a_forgotten_transaction_starts_anew() {
        let mut t = ServerTransactions::new(10);
        let req = request("REGISTER", "z9hG4bKf");
        let key = TxKey::for_request(&req).unwrap();
        t.on_request(&key, &req, (), false, 0);
        t.forget(&key);
        assert!(t.is_empty());
        assert_eq!(t.on_request(&key, &req, (), false, 10), ServerEvent::New);
    }

    #[test]
    fn different_branches_are_different_transactions() {
        let mut t = ServerTransactions::new(10);
        let a = request("MESSAGE", "z9hG4bKa");
        let b = request("MESSAGE", "z9hG4bKb");
        assert_eq!(
            t.on_request(&TxKey::for_request(&a).unwrap(), &a, (), false, 0),
            ServerEvent::New
        );
        assert_eq!(
            t.on_request(&TxKey::for_request(&b).unwrap(), &b, (), false, 0),
            ServerEvent::New
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn full_table_reports_overload() {
        let mut t = ServerTransactions::new(1);
        let a = request("MESSAGE", "z9hG4bKa");
        let b = request("MESSAGE", "z9hG4bKb");
        t.on_request(&TxKey::for_request(&a).unwrap(), &a, (), false, 0);
        assert_eq!(
            t.on_request(&TxKey::for_request(&b).unwrap(), &b, (), false, 0),
            ServerEvent::Overloaded
        );
    }

    #[test]
    fn invite_final_response_is_retransmitted_until_ack() {
        let mut t = ServerTransactions::new(10);
        let inv = request("INVITE", "z9hG4bKi");
        let key = TxKey::for_request(&inv).unwrap();
        t.on_request(&key, &inv, "p", false, 0);
        t.on_response(&key, 501, Bytes::from_static(b"501"), 0);
        assert_eq!(t.poll(T1_MS).len(), 1);
        assert_eq!(t.poll(T1_MS + 2 * T1_MS).len(), 1, "timer G doubles");
        let ack = request("ACK", "z9hG4bKi");
        assert_eq!(TxKey::for_request(&ack).as_ref(), Some(&key));
        assert_eq!(
            t.on_request(&key, &ack, "p", false, 2_000),
            ServerEvent::Ack
        );
        assert!(t.poll(10_000).is_empty(), "no retransmission after ACK");
    }

    #[test]
    fn client_retransmits_with_backoff_and_times_out() {
        let mut c = ClientTransactions::new();
        let key = TxKey::client("z9hG4bKc", &Method::Message);
        c.start(key.clone(), "p", Bytes::from_static(b"MESSAGE"), false, 0);
        let mut sends = Vec::new();
        let mut timeout = None;
        let mut now = 0;
        while now <= 64 * T1_MS {
            now += 100;
            for a in c.poll(now) {
                match a {
                    ClientAction::Retransmit(..) => sends.push(now),
                    ClientAction::Timeout(k) => timeout = Some((now, k)),
                }
            }
        }
        assert_eq!(
            &sends[..4],
            &[500, 1_500, 3_500, 7_500],
            "E doubles from T1"
        );
        assert_eq!(sends[4] - sends[3], T2_MS, "capped at T2");
        assert_eq!(timeout, Some((64 * T1_MS, key)));
    }

    #[test]
    fn client_final_response_stops_retransmission_and_dedups() {
        let mut c = ClientTransactions::new();
        let key = TxKey::client("z9hG4bKd", &Method::Notify);
        c.start(key.clone(), (), Bytes::new(), false, 0);
        assert_eq!(c.on_response(&key, 200, 100), ClientEvent::Final);
        assert_eq!(c.on_response(&key, 200, 150), ClientEvent::Ignore);
        assert!(c.poll(60_000).is_empty());
        assert!(c.is_empty());
    }

    #[test]
    fn bare_magic_cookie_branch_falls_back_to_rfc2543_matching() {
        // RFC 4475 §3.2.1: "branch=z9hG4bK" identifies nothing; two different requests with it
        // are two transactions.
        let a = request("OPTIONS", "z9hG4bK");
        let mut b = a.clone();
        b.headers.set("Call-ID", "c2");
        let (ka, kb) = (
            TxKey::for_request(&a).unwrap(),
            TxKey::for_request(&b).unwrap(),
        );
        assert_ne!(ka, kb);
        assert_eq!(TxKey::for_request(&a.clone()).unwrap(), ka);
    }
}
