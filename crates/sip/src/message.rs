//! SIP messages: requests, responses, headers, and their serialization.
//!
//! Headers are kept as (canonical name, unfolded value) pairs in arrival order; typed views
//! (`Via`, `NameAddr`, `CSeq`, ...) are parsed on demand from these values by `header`.

use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::fmt;

/// A SIP method. Unknown methods are kept by name (extension methods are legal SIP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Register,
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Message,
    Subscribe,
    Notify,
    Publish,
    Info,
    Update,
    Refer,
    Prack,
    /// Any other token.
    Other(String),
}

impl Method {
    /// The method for a token as it appears on the wire (methods are case-sensitive).
    pub fn from_token(token: &str) -> Method {
        match token {
            "REGISTER" => Method::Register,
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "MESSAGE" => Method::Message,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "PUBLISH" => Method::Publish,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "REFER" => Method::Refer,
            "PRACK" => Method::Prack,
            other => Method::Other(other.to_string()),
        }
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Register => "REGISTER",
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Message => "MESSAGE",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Publish => "PUBLISH",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Refer => "REFER",
            Method::Prack => "PRACK",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header list in arrival order. Names are stored in their canonical long form
/// (`v` becomes `Via`), so lookups are by canonical name, case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(Cow<'static, str>, String)>,
}

/// Compact header forms (RFC 3261 §7.3.3 and later RFCs) and their long names.
const COMPACT: &[(&str, &str)] = &[
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("c", "Content-Type"),
    ("d", "Request-Disposition"),
    ("e", "Content-Encoding"),
    ("f", "From"),
    ("i", "Call-ID"),
    ("j", "Reject-Contact"),
    ("k", "Supported"),
    ("l", "Content-Length"),
    ("m", "Contact"),
    ("n", "Identity-Info"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("s", "Subject"),
    ("t", "To"),
    ("u", "Allow-Events"),
    ("v", "Via"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Well-known header names in their usual capitalization.
const KNOWN: &[&str] = &[
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Expires",
    "Min-Expires",
    "Content-Length",
    "Content-Type",
    "Event",
    "Allow",
    "Allow-Events",
    "Supported",
    "Require",
    "Unsupported",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Authentication-Info",
    "User-Agent",
    "Server",
    "Date",
    "Route",
    "Record-Route",
    "Subscription-State",
    "SIP-ETag",
    "SIP-If-Match",
    "Accept",
    "Warning",
];

/// The canonical spelling of a header name: compact forms expanded, well-known names in their
/// usual capitalization (without allocating), other names kept as given.
pub fn canonical_name(name: &str) -> Cow<'static, str> {
    if name.len() == 1 {
        for (short, long) in COMPACT {
            if name.eq_ignore_ascii_case(short) {
                return Cow::Borrowed(long);
            }
        }
    }
    for known in KNOWN {
        if name.eq_ignore_ascii_case(known) {
            return Cow::Borrowed(known);
        }
    }
    Cow::Owned(name.to_string())
}

impl Headers {
    /// An empty header list.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Appends a header; the name is canonicalized.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.entries.push((canonical_name(name), value.into()));
    }

    /// Appends a header whose name `canonical_name` already produced.
    pub fn push_canonical(&mut self, name: Cow<'static, str>, value: String) {
        self.entries.push((name, value));
    }

    /// Replaces every header of this name with one value (appended at the end if absent).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let canon = canonical_name(name);
        let value = value.into();
        if let Some(pos) = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&canon))
        {
            self.entries[pos].1 = value;
            let mut i = pos + 1;
            while i < self.entries.len() {
                if self.entries[i].0.eq_ignore_ascii_case(&canon) {
                    self.entries.remove(i);
                } else {
                    i += 1;
                }
            }
        } else {
            self.entries.push((canon, value));
        }
    }

    /// Inserts a header before every other header (used to push a Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.entries.insert(0, (canonical_name(name), value.into()));
    }

    /// Removes every header of this name.
    pub fn remove(&mut self, name: &str) {
        let canon = canonical_name(name);
        self.entries
            .retain(|(n, _)| !n.eq_ignore_ascii_case(&canon));
    }

    /// Removes the first header of this name, returning its value.
    pub fn remove_first(&mut self, name: &str) -> Option<String> {
        let canon = canonical_name(name);
        let pos = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&canon))?;
        Some(self.entries.remove(pos).1)
    }

    /// The first value of a header.
    pub fn get(&self, name: &str) -> Option<&str> {
        let canon = canonical_name(name);
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(&canon))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order, with comma-separated lists split into items.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        let canon = canonical_name(name);
        let mut out = Vec::new();
        for (n, v) in &self.entries {
            if n.eq_ignore_ascii_case(&canon) {
                out.extend(crate::header::split_list(v));
            }
        }
        out
    }

    /// Every raw header line value of this name (lists not split).
    pub fn get_lines(&self, name: &str) -> impl Iterator<Item = &str> {
        let canon = canonical_name(name);
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&canon))
            .map(|(_, v)| v.as_str())
    }

    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All (name, value) pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }
}

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The Request-URI as it appeared on the wire.
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// Either kind of SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        489 => "Bad Event",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        603 => "Decline",
        _ => "Unknown",
    }
}

fn write_headers(out: &mut BytesMut, headers: &Headers, body: &[u8]) {
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        out.put_slice(name.as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(body);
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, uri: impl Into<String>) -> Request {
        Request {
            method,
            uri: uri.into(),
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Serializes the request; Content-Length is always written from the body's length.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(self.uri.as_bytes());
        out.put_slice(b" SIP/2.0\r\n");
        write_headers(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// A response to this request that copies Via, From, To, Call-ID and CSeq
    /// (RFC 3261 §8.2.6.2). Adds `to_tag` to To when the To header has no tag yet.
    pub fn response(&self, status: u16, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::new();
        for via in self.headers.get_lines("Via") {
            headers.push("Via", via);
        }
        if let Some(from) = self.headers.get("From") {
            headers.push("From", from);
        }
        if let Some(to) = self.headers.get("To") {
            let has_tag = crate::header::NameAddr::parse(to)
                .map(|na| na.tag().is_some())
                .unwrap_or(true);
            match to_tag {
                Some(tag) if !has_tag && status > 100 => {
                    headers.push("To", format!("{to};tag={tag}"));
                }
                _ => headers.push("To", to),
            }
        }
        if let Some(call_id) = self.headers.get("Call-ID") {
            headers.push("Call-ID", call_id);
        }
        if let Some(cseq) = self.headers.get("CSeq") {
            headers.push("CSeq", cseq);
        }
        Response {
            status,
            reason: reason_phrase(status).to_string(),
            headers,
            body: Bytes::new(),
        }
    }
}

impl Response {
    /// Serializes the response; Content-Length is always written from the body's length.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(512 + self.body.len());
        out.put_slice(format!("SIP/2.0 {} {}\r\n", self.status, self.reason).as_bytes());
        write_headers(&mut out, &self.headers, &self.body);
        out.freeze()
    }

    /// Replaces the reason phrase (e.g. with a precise reason for a 400).
    pub fn with_reason(mut self, reason: impl Into<String>) -> Response {
        self.reason = reason.into();
        self
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Response {
        self.headers.push(name, value);
        self
    }
}

impl Message {
    /// Serializes either kind.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    /// The header list.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_names_expand_and_lookup_is_case_insensitive() {
        let mut h = Headers::new();
        h.push("v", "SIP/2.0/UDP a;branch=z9hG4bK1");
        h.push("i", "abc");
        h.push("CONTENT-length", "0");
        assert_eq!(h.get("Via"), Some("SIP/2.0/UDP a;branch=z9hG4bK1"));
        assert_eq!(h.get("call-id"), Some("abc"));
        assert_eq!(h.get("l"), Some("0"));
    }

    #[test]
    fn serialized_content_length_follows_the_body() {
        let mut r = Request::new(Method::Message, "sip:bob@example.com");
        r.headers.push("Content-Length", "999");
        r.body = Bytes::from_static(b"hello");
        let text = String::from_utf8(r.to_bytes().to_vec()).unwrap_or_default();
        assert!(text.contains("Content-Length: 5\r\n\r\nhello"), "{text}");
        assert!(!text.contains("999"));
    }

    #[test]
    fn set_replaces_all_values() {
        let mut h = Headers::new();
        h.push("Expires", "1");
        h.push("Expires", "2");
        h.set("Expires", "3");
        assert_eq!(h.get_lines("Expires").collect::<Vec<_>>(), vec!["3"]);
    }
}
