//! A small SIP user agent over real sockets, for tests: it builds requests, answers digest
//! challenges, retransmits over UDP, and receives requests sent to it.

use bytes::Bytes;
use sip::header::{NameAddr, Via};
use sip::{Limits, Message, Method, Request, Response, StreamDecoder, StreamItem};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = getrandom::fill(&mut b);
    hex::encode(b)
}

enum Socket {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        decoder: StreamDecoder,
    },
}

/// A user agent: one user, one socket.
pub struct Ua {
    pub user: String,
    pub password: String,
    pub domain: String,
    pub server: SocketAddr,
    socket: Socket,
    pub local: SocketAddr,
    cseq: u32,
    /// Messages received while waiting for something else.
    backlog: Vec<Message>,
    /// The Call-ID used for REGISTER, so refreshes follow RFC 3261 §10.2.4.
    pub register_call_id: String,
}

impl Ua {
    /// A UA on a fresh UDP socket of 127.0.0.1.
    pub fn udp(server: SocketAddr, user: &str, password: &str, domain: &str) -> Ua {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let local = sock.local_addr().expect("local addr");
        Ua::new(Socket::Udp(sock), local, server, user, password, domain)
    }

    /// A UA on a TCP connection to the server.
    pub fn tcp(server: SocketAddr, user: &str, password: &str, domain: &str) -> Ua {
        let stream = TcpStream::connect(server).expect("connect tcp");
        stream.set_nodelay(true).expect("nodelay");
        let local = stream.local_addr().expect("local addr");
        Ua::new(
            Socket::Tcp {
                stream,
                decoder: StreamDecoder::new(Limits::default()),
            },
            local,
            server,
            user,
            password,
            domain,
        )
    }

    fn new(
        socket: Socket,
        local: SocketAddr,
        server: SocketAddr,
        user: &str,
        password: &str,
        domain: &str,
    ) -> Ua {
        Ua {
            user: user.into(),
            password: password.into(),
            domain: domain.into(),
            server,
            socket,
            local,
            cseq: 0,
            backlog: Vec::new(),
            register_call_id: format!("{}@test", random_hex(8)),
        }
    }

    /// `udp` or `tcp`.
    pub fn transport(&self) -> &'static str {
        match self.socket {
            Socket::Udp(_) => "udp",
            Socket::Tcp { .. } => "tcp",
        }
    }

    /// This UA's AOR.
    pub fn aor(&self) -> String {
        format!("sip:{}@{}", self.user, self.domain)
    }

    /// This UA's contact URI.
    pub fn contact(&self) -> String {
        format!(
            "sip:{}@{};transport={}",
            self.user,
            self.local,
            self.transport()
        )
    }

    /// Sends raw bytes to the server.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.socket {
            Socket::Udp(s) => {
                s.send_to(bytes, self.server).expect("send udp");
            }
            Socket::Tcp { stream, .. } => stream.write_all(bytes).expect("send tcp"),
        }
    }

    /// Receives the next message within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Option<Message> {
        if !self.backlog.is_empty() {
            return Some(self.backlog.remove(0));
        }
        self.recv_wire(timeout)
    }

    fn recv_wire(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            match &mut self.socket {
                Socket::Udp(s) => {
                    s.set_read_timeout(Some(left)).ok()?;
                    let (n, _) = s.recv_from(&mut buf).ok()?;
                    if let Ok(m) = sip::parse_message(&buf[..n], &Limits::default()) {
                        return Some(m);
                    }
                }
                Socket::Tcp { stream, decoder } => {
                    if let Ok(Some(StreamItem::Message(Ok(m)))) = decoder.next_item() {
                        return Some(m);
                    }
                    stream.set_read_timeout(Some(left)).ok()?;
                    let n = stream.read(&mut buf).ok()?;
                    if n == 0 {
                        return None;
                    }
                    decoder.extend(&buf[..n]);
                }
            }
        }
    }

    fn via(&self) -> String {
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{};rport",
            self.transport().to_uppercase(),
            self.local,
            random_hex(8)
        )
    }

    /// A request with the mandatory headers; From is this user with a fresh tag.
    pub fn build(&mut self, method: Method, uri: &str, to: &str, call_id: &str) -> Request {
        self.cseq += 1;
        let mut r = Request::new(method.clone(), uri);
        r.headers.push("Via", self.via());
        r.headers.push("Max-Forwards", "70");
        r.headers
            .push("From", format!("<{}>;tag={}", self.aor(), random_hex(4)));
        r.headers.push("To", format!("<{to}>"));
        r.headers.push("Call-ID", call_id);
        r.headers.push("CSeq", format!("{} {}", self.cseq, method));
        r
    }

    /// Sends a request and waits for its final response, answering one digest challenge and
    /// retransmitting over UDP. Requests received meanwhile are kept for `expect_request`.
    pub fn request(&mut self, req: Request) -> Response {
        let method = req.method.clone();
        self.request_within(req, Duration::from_secs(32))
            .unwrap_or_else(|| panic!("no final response to {method} within 32 s"))
    }

    /// [`Ua::request`], giving up (`None`) when a transaction gets no final response within
    /// `limit`.
    pub fn request_within(&mut self, mut req: Request, limit: Duration) -> Option<Response> {
        let mut challenged = false;
        loop {
            let resp = self.transact_within(&req, limit)?;
            if (resp.status == 401 || resp.status == 407) && !challenged {
                challenged = true;
                let (challenge_header, auth_header) = if resp.status == 401 {
                    ("WWW-Authenticate", "Authorization")
                } else {
                    ("Proxy-Authenticate", "Proxy-Authorization")
                };
                let challenge = resp
                    .headers
                    .get(challenge_header)
                    .expect("challenge")
                    .to_string();
                let auth = sip::digest::authorization(
                    &challenge,
                    &self.user,
                    &self.password,
                    req.method.as_str(),
                    &req.uri,
                    &random_hex(6),
                    1,
                )
                .expect("answer challenge");
                req.headers.set(auth_header, auth);
                self.cseq += 1;
                let method = req.method.clone();
                req.headers.set("CSeq", format!("{} {}", self.cseq, method));
                req.headers.remove_first("Via");
                req.headers.push_front("Via", self.via());
                continue;
            }
            return Some(resp);
        }
    }

    /// Sends a request and waits for its final response (no authentication).
    pub fn transact(&mut self, req: &Request) -> Response {
        self.transact_within(req, Duration::from_secs(32))
            .unwrap_or_else(|| panic!("no final response to {} within 32 s", req.method))
    }

    /// [`Ua::transact`], giving up (`None`) after `limit`.
    pub fn transact_within(&mut self, req: &Request, limit: Duration) -> Option<Response> {
        let bytes = req.to_bytes();
        let branch = Via::parse(req.headers.get("Via").expect("via"))
            .expect("our via")
            .branch()
            .map(str::to_string);
        self.send_raw(&bytes);
        let deadline = Instant::now() + limit;
        let mut interval = Duration::from_millis(500);
        let mut next_retransmit = Instant::now() + interval;
        loop {
            let wait = next_retransmit
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            match self.recv_wire(wait) {
                Some(Message::Response(r)) => {
                    let matches = r
                        .headers
                        .get("Via")
                        .and_then(|v| Via::parse(v).ok())
                        .map(|v| v.branch().map(str::to_string) == branch)
                        .unwrap_or(false);
                    if matches && r.status >= 200 {
                        return Some(r);
                    }
                }
                Some(m @ Message::Request(_)) => self.backlog.push(m),
                None => {}
            }
            if Instant::now() >= deadline {
                return None;
            }
            if self.transport() == "udp" && Instant::now() >= next_retransmit {
                self.send_raw(&bytes);
                interval = (interval * 2).min(Duration::from_secs(4));
                next_retransmit = Instant::now() + interval;
            }
        }
    }

    /// Registers this UA's contact for `expires` seconds.
    pub fn register(&mut self, expires: u32) -> Response {
        let contact = format!("<{}>", self.contact());
        self.register_with(&contact, expires)
    }

    /// Registers with a given Contact header value.
    pub fn register_with(&mut self, contact: &str, expires: u32) -> Response {
        let r = self.register_request(contact, expires);
        self.request(r)
    }

    /// Registers this UA's contact, giving up (`None`) after `limit` without an answer.
    pub fn try_register(&mut self, expires: u32, limit: Duration) -> Option<Response> {
        let contact = format!("<{}>", self.contact());
        let r = self.register_request(&contact, expires);
        self.request_within(r, limit)
    }

    fn register_request(&mut self, contact: &str, expires: u32) -> Request {
        let aor = self.aor();
        let call_id = self.register_call_id.clone();
        let mut r = self.build(
            Method::Register,
            &format!("sip:{}", self.domain),
            &aor,
            &call_id,
        );
        r.headers
            .set("From", format!("<{aor}>;tag={}", random_hex(4)));
        if !contact.is_empty() {
            r.headers.push("Contact", contact);
        }
        r.headers.push("Expires", expires.to_string());
        r
    }

    /// Sends an instant message to `to_user`.
    pub fn message(&mut self, to_user: &str, text: &str) -> Response {
        let to = format!("sip:{to_user}@{}", self.domain);
        let mut r = self.build(
            Method::Message,
            &to,
            &to,
            &format!("{}@test", random_hex(8)),
        );
        r.headers.push("Content-Type", "text/plain");
        r.body = Bytes::from(text.to_string());
        self.request(r)
    }

    /// Publishes a PIDF document with a note; `etag` refreshes or modifies an earlier one.
    pub fn publish(&mut self, note: Option<&str>, etag: Option<&str>, expires: u32) -> Response {
        let r = self.publish_request(note, etag, expires);
        self.request(r)
    }

    /// Publishes a new document, giving up (`None`) after `limit` without an answer.
    pub fn try_publish(
        &mut self,
        note: Option<&str>,
        expires: u32,
        limit: Duration,
    ) -> Option<Response> {
        let r = self.publish_request(note, None, expires);
        self.request_within(r, limit)
    }

    fn publish_request(&mut self, note: Option<&str>, etag: Option<&str>, expires: u32) -> Request {
        let aor = self.aor();
        let mut r = self.build(
            Method::Publish,
            &aor,
            &aor,
            &format!("{}@test", random_hex(8)),
        );
        r.headers.push("Event", "presence");
        r.headers.push("Expires", expires.to_string());
        if let Some(e) = etag {
            r.headers.push("SIP-If-Match", e);
        }
        if let Some(note) = note {
            r.headers.push("Content-Type", "application/pidf+xml");
            r.body = Bytes::from(pidf(&aor, note));
        }
        r
    }

    /// Subscribes to `user`'s presence. Returns the 200 (its To tag names the dialog).
    pub fn subscribe(
        &mut self,
        user: &str,
        call_id: &str,
        to_tag: Option<&str>,
        expires: u32,
    ) -> Response {
        let contact = self.contact();
        let r = self.subscribe_request(user, call_id, to_tag, &contact, expires);
        self.request(r)
    }

    /// Subscribes to `user`'s presence with NOTIFYs sent to `contact`, giving up (`None`)
    /// after `limit` without an answer.
    pub fn try_subscribe(
        &mut self,
        user: &str,
        call_id: &str,
        contact: &str,
        expires: u32,
        limit: Duration,
    ) -> Option<Response> {
        let r = self.subscribe_request(user, call_id, None, contact, expires);
        self.request_within(r, limit)
    }

    fn subscribe_request(
        &mut self,
        user: &str,
        call_id: &str,
        to_tag: Option<&str>,
        contact: &str,
        expires: u32,
    ) -> Request {
        let target = format!("sip:{user}@{}", self.domain);
        let mut r = self.build(Method::Subscribe, &target, &target, call_id);
        r.headers
            .set("From", format!("<{}>;tag=watcher-{}", self.aor(), call_id));
        if let Some(t) = to_tag {
            r.headers.set("To", format!("<{target}>;tag={t}"));
        }
        r.headers.push("Contact", format!("<{contact}>"));
        r.headers.push("Event", "presence");
        r.headers.push("Accept", "application/pidf+xml");
        r.headers.push("Expires", expires.to_string());
        r
    }

    /// Waits for a request of `method` (answering nothing), up to `timeout`.
    pub fn expect_request(&mut self, method: Method, timeout: Duration) -> Option<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self
                .backlog
                .iter()
                .position(|m| matches!(m, Message::Request(r) if r.method == method))
                && let Message::Request(r) = self.backlog.remove(pos)
            {
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.recv_wire(left) {
                Some(m) => self.backlog.push(m),
                None => return None,
            }
        }
    }

    /// Answers a received request.
    pub fn respond(&mut self, req: &Request, status: u16) {
        let resp = req.response(status, Some(&random_hex(4)));
        self.send_raw(&resp.to_bytes());
    }
}

/// A PIDF document with one tuple carrying a note.
pub fn pidf(entity: &str, note: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{entity}\">\n<tuple id=\"t1\"><status><basic>open</basic></status><note>{note}</note></tuple>\n</presence>\n"
    )
}

/// The To tag of a response.
pub fn to_tag(resp: &Response) -> Option<String> {
    NameAddr::parse(resp.headers.get("To")?)
        .ok()?
        .tag()
        .map(str::to_string)
}
