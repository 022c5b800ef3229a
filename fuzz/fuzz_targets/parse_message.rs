//! Any bytes into `parse_message`. A request that comes out is validated, serialized, and the
//! serialization must parse back to the same method, Request-URI, headers, body and verdict; a
//! response must round-trip the same way. Every request the server could answer (a parsed one,
//! or the partial request of a parse error) must give a response that parses back. The typed
//! header views a registrar uses are run over the headers too (they must not panic).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::header::{self, CSeq, DigestParams, Event, NameAddr, SubscriptionState, Via};
use sip::transaction::TxKey;
use sip::{Headers, Limits, Message, Request, Uri, parse_message, validate_request};

/// The header lines a serialization keeps as they are (Content-Length is rewritten from the
/// body).
fn without_length(headers: &Headers) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Length"))
        .collect()
}

/// The serialization may be longer than the input (compact names expand, folded lines are
/// joined, a Content-Length is added), so it is parsed back without limits.
const ROOMY: Limits = Limits {
    max_message_bytes: usize::MAX,
    max_headers: usize::MAX,
    max_line_bytes: usize::MAX,
};

/// The response the server would send to `req` parses back as that response.
fn answer_parses(req: &Request, status: u16) {
    let resp = req.response(status, Some("fz1"));
    let wire = resp.to_bytes();
    match parse_message(&wire, &ROOMY) {
        Ok(Message::Response(back)) => {
            assert_eq!(back.status, status);
            assert_eq!(without_length(&back.headers), without_length(&resp.headers));
        }
        other => panic!(
            "our {status} does not parse back: {other:?}\n{:?}",
            String::from_utf8_lossy(&wire)
        ),
    }
}

/// The typed views must not panic, whatever the header values.
fn typed_views(headers: &Headers) {
    for v in headers.get_all("Via") {
        let _ = Via::parse(v);
    }
    for name in ["From", "To", "Route", "Record-Route"] {
        for v in headers.get_all(name) {
            if let Ok(na) = NameAddr::parse(v) {
                let _ = na.uri.aor();
                let _ = na.to_wire();
            }
        }
    }
    let _ = header::parse_contacts(headers.get_all("Contact"));
    for v in headers.get_lines("CSeq") {
        let _ = CSeq::parse(v);
    }
    for name in ["Expires", "Min-Expires"] {
        for v in headers.get_lines(name) {
            let _ = header::parse_delta_seconds(v);
        }
    }
    for name in ["Authorization", "Proxy-Authorization", "WWW-Authenticate"] {
        for v in headers.get_lines(name) {
            let _ = DigestParams::parse(v);
        }
    }
    for v in headers.get_lines("Event") {
        let _ = Event::parse(v);
    }
    for v in headers.get_lines("Subscription-State") {
        let _ = SubscriptionState::parse(v);
    }
}

fuzz_target!(|data: &[u8]| {
    let msg = match parse_message(data, &Limits::default()) {
        Ok(msg) => msg,
        Err(e) => {
            if let Some(partial) = e.partial {
                answer_parses(&partial, e.status);
            }
            return;
        }
    };
    typed_views(msg.headers());
    let wire = msg.to_bytes();
    let again = match parse_message(&wire, &ROOMY) {
        Ok(again) => again,
        Err(e) => panic!(
            "serialization does not parse back: {e}\n{:?}",
            String::from_utf8_lossy(&wire)
        ),
    };
    match (&msg, &again) {
        (Message::Request(req), Message::Request(back)) => {
            let verdict = validate_request(req);
            assert_eq!(back.method, req.method);
            assert_eq!(back.uri, req.uri);
            assert_eq!(without_length(&back.headers), without_length(&req.headers));
            assert_eq!(back.body, req.body);
            assert_eq!(validate_request(back), verdict);
            let _ = Uri::parse(&req.uri).map(|u| u.to_string());
            let _ = TxKey::for_request(req);
            answer_parses(req, verdict.map_or_else(|r| r.status, |()| 200));
        }
        (Message::Response(resp), Message::Response(back)) => {
            assert_eq!(back.status, resp.status);
            assert_eq!(back.reason, resp.reason);
            assert_eq!(without_length(&back.headers), without_length(&resp.headers));
            assert_eq!(back.body, resp.body);
            let _ = TxKey::for_response(resp);
        }
        _ => panic!("a message came back as the other kind: {msg:?}"),
    }
});
