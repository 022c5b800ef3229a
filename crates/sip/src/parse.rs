//! The parser: bytes to `Message`, with limits on everything, and a stream decoder that frames
//! messages on TCP by Content-Length.
//!
//! Parsing is in two steps. `parse_message` checks the framing (start line, header lines,
//! body length); `validate_request` then checks the headers every request must carry, so that a
//! request with a bad header can still be answered with a `400` that names the problem.

use crate::header::{self, CSeq, NameAddr, Via};
use crate::message::{Headers, Message, Method, Request, Response, canonical_name};
use bytes::{Buf, Bytes, BytesMut};
use std::borrow::Cow;

/// Limits applied to every message. A limit hit is an error, never unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (start line, headers and body).
    pub max_message_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
    /// Longest physical line.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 65_535,
            max_headers: 128,
            max_line_bytes: 8_192,
        }
    }
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The status a request should be answered with (400, 413, 505, 513).
    pub status: u16,
    /// What was wrong, in words a 400 reason phrase can carry.
    pub reason: String,
    /// What could be read of a request before the error, so a response can copy its headers.
    /// `None` when not even the start line of a request was readable: drop the message.
    pub partial: Option<Box<Request>>,
}

impl ParseError {
    fn garbage(reason: impl Into<String>) -> ParseError {
        ParseError {
            status: 400,
            reason: reason.into(),
            partial: None,
        }
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

impl std::error::Error for ParseError {}

enum StartLine {
    Request(Method, String),
    Response(u16, String),
}

/// Finds the next line end at or after `from`: returns (end of line content, start of next).
fn next_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let nl = memchr::memchr(b'\n', &buf[from..])? + from;
    let end = if nl > from && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

fn parse_start_line(line: &[u8]) -> Result<StartLine, ParseError> {
    let text =
        std::str::from_utf8(line).map_err(|_| ParseError::garbage("start line is not UTF-8"))?;
    if text.is_empty() {
        return Err(ParseError::garbage("empty start line"));
    }
    if let Some(rest) = strip_prefix_ci(text, "SIP/") {
        // Status-Line: SIP/2.0 SP Status-Code SP Reason-Phrase
        let (version, after) = rest
            .split_once(' ')
            .ok_or_else(|| ParseError::garbage("status line lacks a code"))?;
        if version != "2.0" {
            return Err(ParseError::garbage(format!(
                "response version SIP/{version}"
            )));
        }
        let (code, reason) = after.split_once(' ').unwrap_or((after, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::garbage(format!(
                "status code '{code}' is not 3 digits"
            )));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| ParseError::garbage("bad status code"))?;
        if !(100..700).contains(&status) {
            return Err(ParseError::garbage(format!(
                "status code {status} out of range"
            )));
        }
        return Ok(StartLine::Response(status, reason.to_string()));
    }
    let (method, rest) = text
        .split_once(' ')
        .ok_or_else(|| ParseError::garbage("request line lacks a URI"))?;
    if method.is_empty() || !method.bytes().all(header::is_token_byte) {
        return Err(ParseError::garbage(format!(
            "method '{method}' is not a token"
        )));
    }
    let (uri, version) = rest
        .rsplit_once(' ')
        .ok_or_else(|| ParseError::garbage("request line lacks a version"))?;
    let method = Method::from_token(method);
    let partial = |status, reason: String| ParseError {
        status,
        reason,
        partial: Some(Box::new(Request::new(method.clone(), uri.trim()))),
    };
    let uri_t = uri.trim();
    if uri_t.is_empty() {
        return Err(partial(400, "empty Request-URI".into()));
    }
    if uri_t.bytes().any(|b| b.is_ascii_whitespace()) || uri != uri_t {
        return Err(partial(400, "Request-URI contains whitespace".into()));
    }
    match strip_prefix_ci(version, "SIP/") {
        Some("2.0") => {}
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') => {
            return Err(partial(505, format!("SIP version {v} is not supported")));
        }
        _ => return Err(partial(400, format!("bad SIP version '{version}'"))),
    }
    Ok(StartLine::Request(method, uri_t.to_string()))
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    if text.len() >= prefix.len()
        && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&text[prefix.len()..])
    } else {
        None
    }
}

/// Parses the header section `buf[from..]` up to and including the empty line. Returns the
/// headers and the offset of the body.
fn parse_headers(
    buf: &[u8],
    from: usize,
    limits: &Limits,
) -> Result<(Headers, usize), (Headers, String, u16)> {
    let mut headers = Headers::new();
    let mut pos = from;
    // The header being read: its canonical name and its value so far (folded lines joined).
    let mut current: Option<(Cow<'static, str>, String)> = None;
    loop {
        let Some((end, next)) = next_line(buf, pos) else {
            let _ = finish_header(&mut headers, current.take());
            return Err((
                headers,
                "header section not terminated by an empty line".into(),
                400,
            ));
        };
        if end - pos > limits.max_line_bytes {
            let _ = finish_header(&mut headers, current.take());
            return Err((
                headers,
                format!("header line longer than {} bytes", limits.max_line_bytes),
                400,
            ));
        }
        let line = &buf[pos..end];
        pos = next;
        if line.is_empty() {
            return match finish_header(&mut headers, current.take()) {
                Ok(()) => Ok((headers, pos)),
                Err(reason) => Err((headers, reason, 400)),
            };
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Folded continuation of the previous header (RFC 3261 §7.3.1).
            let Some((_, value)) = current.as_mut() else {
                return Err((headers, "continuation line before any header".into(), 400));
            };
            let Ok(more) = std::str::from_utf8(line) else {
                return Err((headers, "header line is not UTF-8".into(), 400));
            };
            // Folding is one SP; a value that starts on the next line (`To:` CRLF SP `sip:..`,
            // RFC 4475 §3.1.1.1) or a blank continuation adds no SP, so that the unfolded value
            // is what it will serialize and parse back to.
            let more = more.trim();
            if !more.is_empty() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(more);
            }
            continue;
        }
        if let Err(reason) = finish_header(&mut headers, current.take()) {
            return Err((headers, reason, 400));
        }
        if headers.len() >= limits.max_headers {
            return Err((
                headers,
                format!("more than {} headers", limits.max_headers),
                400,
            ));
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Err((headers, "header line is not UTF-8".into(), 400));
        };
        let Some((name, value)) = text.split_once(':') else {
            return Err((
                headers,
                format!("header line '{}' has no colon", truncate(text, 40)),
                400,
            ));
        };
        let name = name.trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(header::is_token_byte) {
            return Err((
                headers,
                format!("bad header name '{}'", truncate(name, 40)),
                400,
            ));
        }
        current = Some((canonical_name(name), value.trim().to_string()));
    }
}

/// Adds the header just read, if its value is clean (see `check_header`).
fn finish_header(
    headers: &mut Headers,
    current: Option<(Cow<'static, str>, String)>,
) -> Result<(), String> {
    if let Some((name, value)) = current {
        check_header(&name, &value)?;
        headers.push_canonical(name, value);
    }
    Ok(())
}

/// A header value (after unfolding) may hold no control character but HTAB, except inside a
/// quoted string as a quoted-pair: `"\" (%x00-09 / %x0B-0C / %x0E-7F)` (RFC 3261 §25.1; RFC 4475
/// §3.1.1.2 quotes a NUL, a BEL and a DEL this way).
fn check_header(name: &str, value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => in_quotes = !in_quotes,
            b'\\' if in_quotes => {
                if bytes.get(i + 1).is_some_and(|&b| b == b'\r' || b == b'\n') {
                    return Err(format!("control character in header {name}"));
                }
                i += 1;
            }
            b if b < 0x20 && b != b'\t' => {
                return Err(format!("control character in header {name}"));
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn content_length(headers: &Headers) -> Result<Option<usize>, String> {
    let mut found: Option<usize> = None;
    for v in headers.get_lines("Content-Length") {
        let v = v.trim();
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 9 {
            return Err(format!("Content-Length '{v}' is not a number"));
        }
        let n: usize = v
            .parse()
            .map_err(|_| format!("Content-Length '{v}' is not a number"))?;
        if found.is_some_and(|f| f != n) {
            return Err("conflicting Content-Length headers".into());
        }
        found = Some(n);
    }
    Ok(found)
}

/// Parses one whole message, as received in a datagram. A missing Content-Length means the
/// body runs to the end; a Content-Length larger than what arrived is an error; extra bytes
/// after the body are discarded (RFC 3261 §18.3).
pub fn parse_message(buf: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    parse_framed(buf, limits, false)
}

fn parse_framed(buf: &[u8], limits: &Limits, stream: bool) -> Result<Message, ParseError> {
    if buf.len() > limits.max_message_bytes {
        return Err(ParseError {
            status: 513,
            reason: format!("message larger than {} bytes", limits.max_message_bytes),
            partial: None,
        });
    }
    let (line_end, body_from) =
        next_line(buf, 0).ok_or_else(|| ParseError::garbage("no line end in message"))?;
    if line_end > limits.max_line_bytes {
        return Err(ParseError::garbage("start line too long"));
    }
    let start = match parse_start_line(&buf[..line_end]) {
        Ok(start) => start,
        Err(mut err) => {
            // A request whose start line is wrong (bad version, whitespace in the URI) is still
            // answered (505, 400): keep what can be read of its headers for the response.
            if let Some(partial) = err.partial.as_mut() {
                partial.headers = match parse_headers(buf, body_from, limits) {
                    Ok((headers, _)) | Err((headers, _, _)) => headers,
                };
            }
            return Err(err);
        }
    };
    let (headers, body_at) = match parse_headers(buf, body_from, limits) {
        Ok(v) => v,
        Err((headers, reason, status)) => {
            return Err(match start {
                StartLine::Request(method, uri) => ParseError {
                    status,
                    reason,
                    partial: Some(Box::new(Request {
                        method,
                        uri,
                        headers,
                        body: Bytes::new(),
                    })),
                },
                StartLine::Response(..) => ParseError::garbage(reason),
            });
        }
    };
    let rest = &buf[body_at..];
    let declared = content_length(&headers);
    let body_result = match declared {
        Err(e) => Err(e),
        Ok(Some(n)) if n > rest.len() => Err(format!(
            "Content-Length {n} is larger than the {} body bytes received",
            rest.len()
        )),
        Ok(Some(n)) => Ok(Bytes::copy_from_slice(&rest[..n])),
        Ok(None) if stream && !rest.is_empty() => {
            Err("Content-Length is required on a stream".into())
        }
        Ok(None) => Ok(Bytes::copy_from_slice(rest)),
    };
    match (start, body_result) {
        (StartLine::Request(method, uri), Ok(body)) => Ok(Message::Request(Request {
            method,
            uri,
            headers,
            body,
        })),
        (StartLine::Request(method, uri), Err(reason)) => Err(ParseError {
            status: 400,
            reason,
            partial: Some(Box::new(Request {
                method,
                uri,
                headers,
                body: Bytes::new(),
            })),
        }),
        (StartLine::Response(status, reason), Ok(body)) => Ok(Message::Response(Response {
            status,
            reason,
            headers,
            body,
        })),
        (StartLine::Response(..), Err(reason)) => Err(ParseError::garbage(reason)),
    }
}

/// Why a well-framed request cannot be processed: answer it with `status` and `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

/// Checks the headers every request needs (RFC 3261 §8.1.1): Via, From, To, Call-ID, CSeq
/// (matching the method), a sane Max-Forwards, a SIP Request-URI without headers, and the
/// syntax of any Contact values.
pub fn validate_request(req: &Request) -> Result<(), Rejection> {
    let bad = |reason: String| Rejection {
        status: 400,
        reason,
    };
    let via = req.headers.get_all("Via");
    let top = via
        .first()
        .ok_or_else(|| bad("missing Via header".into()))?;
    Via::parse(top).map_err(|e| bad(format!("bad Via header: {e}")))?;
    for (name, multi_ok) in [
        ("From", false),
        ("To", false),
        ("Call-ID", false),
        ("CSeq", false),
    ] {
        let count = req.headers.get_lines(name).count();
        if count == 0 {
            return Err(bad(format!("missing {name} header")));
        }
        if count > 1 && !multi_ok {
            return Err(bad(format!("more than one {name} header")));
        }
    }
    let from = req.headers.get("From").unwrap_or_default();
    NameAddr::parse(from).map_err(|e| bad(format!("bad From header: {e}")))?;
    let to = req.headers.get("To").unwrap_or_default();
    NameAddr::parse(to).map_err(|e| bad(format!("bad To header: {e}")))?;
    let call_id = req.headers.get("Call-ID").unwrap_or_default();
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(bad("bad Call-ID header".into()));
    }
    let cseq = CSeq::parse(req.headers.get("CSeq").unwrap_or_default())
        .map_err(|e| bad(format!("bad CSeq header: {e}")))?;
    if cseq.method != req.method && !(req.method == Method::Ack && cseq.method == Method::Invite) {
        return Err(bad(format!(
            "CSeq method {} does not match request method {}",
            cseq.method, req.method
        )));
    }
    if let Some(mf) = req.headers.get("Max-Forwards") {
        // 1*DIGIT, at most 255; leading zeros are legal (RFC 4475 §3.1.1.1 sends "0068").
        let mf = mf.trim();
        let significant = mf.trim_start_matches('0');
        if mf.is_empty()
            || !mf.bytes().all(|b| b.is_ascii_digit())
            || significant.len() > 3
            || significant.parse::<u16>().is_ok_and(|n| n > 255)
        {
            return Err(bad(format!("bad Max-Forwards '{mf}'")));
        }
    }
    let uri = crate::uri::Uri::parse(&req.uri).map_err(|e| bad(format!("bad Request-URI: {e}")))?;
    if !uri.is_sip() {
        return Err(Rejection {
            status: 416,
            reason: format!("URI scheme '{}' is not supported", uri.scheme),
        });
    }
    if uri.headers.is_some() {
        // Headers are not allowed in a Request-URI (RFC 3261 §19.1.1; RFC 4475 §3.1.2.11).
        return Err(bad("Request-URI must not carry headers".into()));
    }
    let contacts = req.headers.get_all("Contact");
    if !contacts.is_empty() {
        header::parse_contacts(contacts).map_err(|e| bad(format!("bad Contact header: {e}")))?;
    }
    if let Some(exp) = req.headers.get("Expires") {
        header::parse_delta_seconds(exp).map_err(|e| bad(format!("bad Expires header: {e}")))?;
    }
    Ok(())
}

/// What a stream decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    /// One message's bytes and its parse result.
    Message(Result<Message, ParseError>),
    /// A double-CRLF keep-alive ping (RFC 5626 §3.5.1): answer with a single CRLF.
    Ping,
}

/// Frames messages on a byte stream by Content-Length.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    buf: BytesMut,
    limits: Limits,
}

/// The stream is beyond repair (a message too large, or framing that cannot be found): close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError(pub String);

impl StreamDecoder {
    /// A decoder with these limits.
    pub fn new(limits: Limits) -> StreamDecoder {
        StreamDecoder {
            buf: BytesMut::new(),
            limits,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete item, `Ok(None)` when more bytes are needed.
    pub fn next_item(&mut self) -> Result<Option<StreamItem>, StreamError> {
        // Leading CRLFs are keep-alives: a double CRLF is a ping, a single one (a pong) is
        // skipped. Until what follows a CRLF has arrived it is not known which it is, so it
        // stays in the buffer: a ping split across two segments is still a ping.
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(StreamItem::Ping));
            }
            if b"\r\n\r".starts_with(&self.buf) {
                // Empty, or a prefix of a ping: wait.
                return Ok(None);
            }
            if !self.buf.starts_with(b"\r\n") {
                break;
            }
            self.buf.advance(2);
        }
        let Some(head_end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > self.limits.max_message_bytes {
                return Err(StreamError(format!(
                    "no header end within {} bytes",
                    self.limits.max_message_bytes
                )));
            }
            return Ok(None);
        };
        let body_at = head_end + 4;
        // Find Content-Length among the header lines (full or compact form).
        let mut declared = 0usize;
        let head = &self.buf[..head_end];
        for line in head.split(|&b| b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
            if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
                let v = std::str::from_utf8(&line[colon + 1..]).unwrap_or("").trim();
                declared = v
                    .parse::<usize>()
                    .map_err(|_| StreamError(format!("Content-Length '{v}' is not a number")))?;
            }
        }
        let total = body_at.saturating_add(declared);
        if total > self.limits.max_message_bytes {
            return Err(StreamError(format!(
                "message of {total} bytes exceeds {}",
                self.limits.max_message_bytes
            )));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        let frame = self.buf.split_to(total);
        Ok(Some(StreamItem::Message(parse_framed(
            &frame,
            &self.limits,
            true,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds7\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@example.com>\r\n\
From: Bob <sip:bob@example.com>;tag=456248\r\n\
Call-ID: 843817637684230@998sdasdh09\r\n\
CSeq: 1826 REGISTER\r\n\
Contact: <sip:bob@192.0.2.4>\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

    fn req(text: &str) -> Request {
        match parse_message(text.as_bytes(), &Limits::default()) {
            Ok(Message::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn parses_a_register_and_validates_it() {
        let r = req(REGISTER);
        assert_eq!(r.method, Method::Register);
        assert_eq!(r.uri, "sip:example.com");
        assert_eq!(r.headers.get("Expires"), Some("7200"));
        assert_eq!(validate_request(&r), Ok(()));
    }

    #[test]
    fn serialize_then_parse_round_trips() {
        let r = req(REGISTER);
        let again = req(std::str::from_utf8(&r.to_bytes()).unwrap());
        assert_eq!(r, again);
    }

    #[test]
    fn bare_lf_line_ends_and_folding_are_accepted() {
        let text = "OPTIONS sip:example.com SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:a@example.com>\n ;tag=1\nTo: <sip:example.com>\nCall-ID: x\nCSeq: 1 OPTIONS\n\n";
        let r = req(text);
        assert_eq!(r.headers.get("From"), Some("<sip:a@example.com> ;tag=1"));
        assert_eq!(validate_request(&r), Ok(()));
    }

    #[test]
    fn content_length_too_large_is_a_400_with_headers_to_answer() {
        let text = REGISTER.replace("Content-Length: 0", "Content-Length: 50");
        let err = parse_message(text.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.reason.contains("Content-Length 50"), "{}", err.reason);
        let partial = err.partial.expect("request headers kept");
        assert_eq!(
            partial.headers.get("Call-ID"),
            Some("843817637684230@998sdasdh09")
        );
    }

    #[test]
    fn extra_bytes_after_the_body_are_discarded() {
        let text = format!("{}{}", REGISTER, "garbage");
        let r = req(&text);
        assert!(r.body.is_empty());
    }

    #[test]
    fn limits_are_enforced() {
        let small = Limits {
            max_message_bytes: 100,
            ..Limits::default()
        };
        assert_eq!(
            parse_message(REGISTER.as_bytes(), &small)
                .unwrap_err()
                .status,
            513
        );
        let few = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let err = parse_message(REGISTER.as_bytes(), &few).unwrap_err();
        assert!(err.reason.contains("more than 3 headers"));
        let short = Limits {
            max_line_bytes: 40,
            ..Limits::default()
        };
        let err = parse_message(REGISTER.as_bytes(), &short).unwrap_err();
        assert!(err.reason.contains("longer than 40"), "{}", err.reason);
    }

    #[test]
    fn garbage_has_no_partial_request() {
        for junk in [
            &b"\x00\x01\x02"[..],
            b"hello world",
            b"",
            b"\r\n",
            b"SIP/2.0 abc OK\r\n\r\n",
        ] {
            let err = parse_message(junk, &Limits::default()).unwrap_err();
            assert!(err.partial.is_none(), "{junk:?}");
        }
    }

    #[test]
    fn unsupported_version_is_505() {
        let text = REGISTER.replace("sip:example.com SIP/2.0", "sip:example.com SIP/7.0");
        assert_eq!(
            parse_message(text.as_bytes(), &Limits::default())
                .unwrap_err()
                .status,
            505
        );
    }

    #[test]
    fn validation_names_the_broken_header() {
        let cases = [
            ("CSeq: 1826 REGISTER", "CSeq: 1826 INVITE", "does not match"),
            (
                "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds7\r\n",
                "",
                "missing Via",
            ),
            (
                "To: Bob <sip:bob@example.com>",
                "To: Bob <sip:bob@example.com",
                "bad To",
            ),
            ("Max-Forwards: 70", "Max-Forwards: 300", "Max-Forwards"),
            ("Expires: 7200", "Expires: soon", "Expires"),
            (
                "Call-ID: 843817637684230@998sdasdh09\r\n",
                "",
                "missing Call-ID",
            ),
        ];
        for (from, to, expect) in cases {
            let r = req(&REGISTER.replace(from, to));
            let rej = validate_request(&r).unwrap_err();
            assert_eq!(rej.status, 400);
            assert!(rej.reason.contains(expect), "{expect}: {}", rej.reason);
        }
        let r = req(&REGISTER.replace("REGISTER sip:example.com", "REGISTER tel:+123"));
        assert_eq!(validate_request(&r).unwrap_err().status, 416);
    }

    #[test]
    fn stream_decoder_frames_by_content_length_and_answers_pings() {
        let msg = "MESSAGE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nContent-Length: 5\r\n\r\nhello";
        let mut d = StreamDecoder::new(Limits::default());
        let data = format!("\r\n\r\n{msg}{msg}");
        let (a, b) = data.as_bytes().split_at(30);
        d.extend(a);
        assert_eq!(d.next_item().unwrap(), Some(StreamItem::Ping));
        assert_eq!(d.next_item().unwrap(), None);
        d.extend(b);
        for _ in 0..2 {
            match d.next_item().unwrap() {
                Some(StreamItem::Message(Ok(Message::Request(r)))) => {
                    assert_eq!(&r.body[..], b"hello")
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(d.next_item().unwrap(), None);
    }

    #[test]
    fn partial_request_keeps_no_header_with_control_characters() {
        // Found by the parse_message fuzz target: an unterminated header section kept its last
        // header unchecked, so the 400 copied "To: \0" and our own response did not parse.
        let err = parse_message(b"S  \nT:\0\n", &Limits::default()).unwrap_err();
        assert_eq!(err.status, 400);
        let partial = err.partial.expect("partial request");
        assert_eq!(partial.headers.get("To"), None);
        let resp = partial.response(400, Some("t")).to_bytes();
        assert!(matches!(
            parse_message(&resp, &Limits::default()),
            Ok(Message::Response(_))
        ));
        // Same for the last header before a line that is too long.
        let long = format!(
            "OPTIONS sip:a SIP/2.0\r\nTo: \x01\r\n {}\r\n\r\n",
            "x".repeat(100)
        );
        let short = Limits {
            max_line_bytes: 50,
            ..Limits::default()
        };
        let partial = parse_message(long.as_bytes(), &short)
            .unwrap_err()
            .partial
            .expect("partial");
        assert_eq!(partial.headers.get("To"), None);
    }

    #[test]
    fn ping_split_across_segments_is_still_a_ping() {
        // Found by the stream_decoder fuzz target: "\r\n" then "\r\n" gave no ping, because
        // the first CRLF was consumed as a lone keep-alive before the second arrived.
        let mut d = StreamDecoder::new(Limits::default());
        d.extend(b"\r\n");
        assert_eq!(d.next_item().unwrap(), None);
        d.extend(b"\r\n");
        assert_eq!(d.next_item().unwrap(), Some(StreamItem::Ping));
        for split in 1..4 {
            let mut d = StreamDecoder::new(Limits::default());
            d.extend(&b"\r\n\r\n"[..split]);
            assert_eq!(d.next_item().unwrap(), None);
            d.extend(&b"\r\n\r\n"[split..]);
            assert_eq!(
                d.next_item().unwrap(),
                Some(StreamItem::Ping),
                "split at {split}"
            );
            assert_eq!(d.next_item().unwrap(), None);
        }
        // A lone CRLF before a message is skipped.
        let mut d = StreamDecoder::new(Limits::default());
        d.extend(b"\r\nOPTIONS sip:a SIP/2.0\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(
            d.next_item().unwrap(),
            Some(StreamItem::Message(_))
        ));
    }

    #[test]
    fn stream_decoder_refuses_oversized_messages() {
        let mut d = StreamDecoder::new(Limits {
            max_message_bytes: 200,
            ..Limits::default()
        });
        d.extend(b"MESSAGE sip:b@example.com SIP/2.0\r\nContent-Length: 100000\r\n\r\n");
        assert!(d.next_item().is_err());
        let mut d = StreamDecoder::new(Limits {
            max_message_bytes: 200,
            ..Limits::default()
        });
        d.extend(&[b'a'; 300]);
        assert!(d.next_item().is_err());
    }

    #[test]
    fn folded_value_that_starts_on_the_next_line_round_trips() {
        // RFC 4475 §3.1.1.1: "TO :" CRLF SP "sip:...": no leading SP in the unfolded value.
        let r = req(&REGISTER.replace("To: Bob", "To:\r\n Bob"));
        assert_eq!(r.headers.get("To"), Some("Bob <sip:bob@example.com>"));
        let again = req(std::str::from_utf8(&r.to_bytes()).unwrap());
        assert_eq!(r, again);
        // A blank continuation line adds nothing either.
        let r = req(&REGISTER.replace("Expires: 7200", "Expires: 7200\r\n \t"));
        assert_eq!(r.headers.get("Expires"), Some("7200"));
    }

    #[test]
    fn quoted_pairs_may_escape_control_characters_but_nothing_else_may() {
        // RFC 4475 §3.1.1.2 quotes a BEL, a NUL and a DEL in a display name.
        let r = req(&REGISTER.replace("To: Bob", "To: \"B\\\x07\\\0b\""));
        assert_eq!(validate_request(&r), Ok(()));
        for bad in ["To: B\x07ob", "To: \"B\x07ob\"", "To: \"Bob\\\r\""] {
            let err = parse_message(
                REGISTER.replace("To: Bob", bad).as_bytes(),
                &Limits::default(),
            )
            .unwrap_err();
            assert!(
                err.reason.contains("control character in header To"),
                "{bad:?}: {err}"
            );
        }
        // Continuation lines are checked too.
        let folded = REGISTER.replace("To: Bob", "To:\r\n B\x01ob");
        let err = parse_message(folded.as_bytes(), &Limits::default()).unwrap_err();
        assert!(err.reason.contains("control character"), "{err}");
    }

    #[test]
    fn max_forwards_may_have_leading_zeros() {
        for (mf, ok) in [
            ("0068", true),
            ("000", true),
            ("0255", true),
            ("0256", false),
            ("1000", false),
        ] {
            let r = req(&REGISTER.replace("Max-Forwards: 70", &format!("Max-Forwards: {mf}")));
            assert_eq!(validate_request(&r).is_ok(), ok, "{mf}");
        }
    }

    #[test]
    fn request_uri_with_headers_is_a_400() {
        let r = req(&REGISTER.replace(
            "REGISTER sip:example.com",
            "REGISTER sip:example.com?Route=x",
        ));
        let rej = validate_request(&r).unwrap_err();
        assert_eq!(rej.status, 400);
        assert!(rej.reason.contains("headers"), "{}", rej.reason);
    }

    #[test]
    fn malformed_contact_is_a_400() {
        let r = req(&REGISTER.replace(
            "Contact: <sip:bob@192.0.2.4>",
            "Contact: sip:bob@192.0.2.4?Route=x",
        ));
        let rej = validate_request(&r).unwrap_err();
        assert!(rej.reason.contains("bad Contact"), "{}", rej.reason);
    }

    #[test]
    fn start_line_errors_keep_the_headers_to_answer_with() {
        for (from, to, status) in [
            ("sip:example.com SIP/2.0", "sip:example.com SIP/7.0", 505),
            ("sip:example.com SIP/2.0", "sip:exa mple.com SIP/2.0", 400),
        ] {
            let err = parse_message(REGISTER.replace(from, to).as_bytes(), &Limits::default())
                .unwrap_err();
            assert_eq!(err.status, status);
            let partial = err.partial.expect("partial request");
            assert_eq!(
                partial.headers.get("Call-ID"),
                Some("843817637684230@998sdasdh09")
            );
            assert_eq!(partial.headers.len(), 9);
        }
    }
}
