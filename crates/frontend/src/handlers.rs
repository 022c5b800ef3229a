//! Method dispatch and what every handler shares: authentication, AOR checks, and the mapping
//! of store errors to responses.

use crate::core::{Core, random_hex};
use crate::transport::Peer;
use crate::{im, presence, registrar};
use sip::digest::{Algorithm, Credentials, NonceState};
use sip::{Method, Request, Response, Uri};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use store::{Notify, StoreError};

/// What the server supports, for Allow.
pub const ALLOW: &str = "REGISTER, MESSAGE, PUBLISH, SUBSCRIBE, NOTIFY, OPTIONS, ACK";

/// A handler's answer: the response, and the NOTIFYs the change calls for (sent after it).
pub(crate) struct Reply {
    pub response: Response,
    pub notify: Vec<Notify>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Reply {
        Reply {
            response,
            notify: Vec::new(),
        }
    }
}

/// Runs the handler of a new request; returns the response to send (with its To tag).
pub(crate) async fn dispatch(core: &Arc<Core>, req: &Request, peer: &Peer) -> Option<Response> {
    if let Some(resp) = unsupported_extensions(req) {
        return Some(resp);
    }
    let reply: Reply = match req.method {
        Method::Register => registrar::register(core, req, peer).await,
        Method::Publish => presence::publish(core, req).await,
        Method::Subscribe => presence::subscribe(core, req, peer).await,
        Method::Message => im::message(core, req).await.into(),
        Method::Options => options(core, req).into(),
        Method::Ack => return None,
        Method::Notify | Method::Bye | Method::Cancel => {
            reject(req, 481, "no such dialog or transaction here").into()
        }
        Method::Invite => reject(req, 501, "calls are not supported by this server").into(),
        _ => reject(
            req,
            501,
            &format!("{} is not supported by this server", req.method),
        )
        .with_header("Allow", ALLOW)
        .into(),
    };
    if !reply.notify.is_empty() {
        let core = core.clone();
        let notify = reply.notify;
        // After the response: the subscriber learns of its dialog before its first NOTIFY.
        tokio::spawn(async move { presence::send_notifies(&core, notify).await });
    }
    Some(reply.response)
}

/// A final response with a To tag and a precise reason phrase.
pub(crate) fn reject(req: &Request, status: u16, reason: &str) -> Response {
    req.response(status, Some(&random_hex(4)))
        .with_reason(reason)
}

fn unsupported_extensions(req: &Request) -> Option<Response> {
    if req.method == Method::Ack {
        return None;
    }
    let required: Vec<&str> = req.headers.get_all("Require");
    if required.is_empty() {
        return None;
    }
    Some(reject(req, 420, "Bad Extension").with_header("Unsupported", required.join(", ")))
}

/// OPTIONS: what this server does — or, while it drains, 503 so that load balancers and
/// clients that probe their registrars (as SIP dispatchers do) send new work elsewhere.
fn options(core: &Core, req: &Request) -> Response {
    if core.pool.as_ref().is_some_and(|p| p.is_draining()) {
        return req
            .response(503, Some(&random_hex(4)))
            .with_reason("Draining")
            .with_header("Retry-After", "30");
    }
    req.response(200, Some(&random_hex(4)))
        .with_header("Allow", ALLOW)
        .with_header("Accept", "application/pidf+xml, text/plain")
        .with_header("Allow-Events", "presence")
}

/// The AOR a URI names, if it is a user of our domain; else the response to send.
pub(crate) fn local_aor(
    core: &Core,
    req: &Request,
    uri_text: &str,
    what: &str,
) -> Result<String, Response> {
    let uri = Uri::parse(uri_text).map_err(|e| reject(req, 400, &format!("bad {what}: {e}")))?;
    if !uri.is_sip() {
        return Err(reject(
            req,
            416,
            &format!("{what} scheme {} is not supported", uri.scheme),
        ));
    }
    if !uri.host.eq_ignore_ascii_case(&core.config.domain) {
        return Err(reject(
            req,
            404,
            &format!("domain {} is not served here", uri.host),
        ));
    }
    if uri.user.is_none() {
        return Err(reject(req, 404, &format!("{what} names no user")));
    }
    Ok(uri.aor())
}

/// The AOR of the From header.
pub(crate) fn from_aor(req: &Request) -> Result<(String, sip::header::NameAddr), Response> {
    let from = sip::header::NameAddr::parse(req.headers.get("From").unwrap_or_default())
        .map_err(|e| reject(req, 400, &format!("bad From header: {e}")))?;
    Ok((from.uri.aor(), from))
}

/// The response for a store error.
pub(crate) fn store_error(req: &Request, e: &StoreError) -> Response {
    match e {
        StoreError::NotFound(what) => reject(req, 404, &format!("{what} not found")),
        StoreError::Exists(what) => {
            reject(req, 500, &format!("{what} already exists")).with_header("Retry-After", "1")
        }
        StoreError::OutOfOrder { .. } => reject(req, 500, &e.to_string()),
        StoreError::TooManyContacts { .. } => reject(req, 403, &e.to_string()),
        StoreError::UnknownEtag(_) => reject(req, 412, "Conditional Request Failed"),
        StoreError::Invalid(_) => reject(req, 400, &e.to_string()),
        StoreError::Storage(_) | StoreError::Closed | StoreError::Fenced { .. } => {
            tracing::warn!(error = %e, "store unavailable");
            reject(req, 503, "store unavailable").with_header("Retry-After", "5")
        }
        StoreError::WritesClosed(why) => {
            tracing::warn!(reason = %why, "the store takes no writes");
            reject(req, 503, "store takes no writes: it was failed over")
        }
    }
}

/// Which challenge a request gets: 401 from a UAS (registrar, presence server), 407 from a
/// proxy (MESSAGE routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    Www,
    Proxy,
}

impl Challenge {
    fn headers(self) -> (&'static str, u16, &'static str) {
        match self {
            Challenge::Www => ("Authorization", 401, "WWW-Authenticate"),
            Challenge::Proxy => ("Proxy-Authorization", 407, "Proxy-Authenticate"),
        }
    }
}

fn challenge(core: &Core, req: &Request, kind: Challenge, stale: bool) -> Response {
    let (_, status, header) = kind.headers();
    let nonce = match core.nonces.lock() {
        Ok(mut n) => n.issue(core.mono_ms()),
        Err(_) => return reject(req, 500, "nonce table unavailable"),
    };
    core.metrics.challenges.fetch_add(1, Ordering::Relaxed);
    let mut resp = req.response(status, Some(&random_hex(4)));
    for alg in &core.config.sip.digest_algorithms {
        if let Some(alg) = Algorithm::parse(Some(alg)) {
            resp.headers.push(
                header,
                sip::digest::challenge(&core.config.domain, &nonce, alg, stale),
            );
        }
    }
    resp
}

/// The digest-uri must name this request or this server: the Request-URI itself, or a SIP
/// URI of our domain or of one of our addresses (some clients, SIPp among them, put the
/// server's address there).
fn digest_uri_ok(core: &Core, digest_uri: &str, request_uri: &str) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    let Ok(d) = Uri::parse(digest_uri) else {
        return false;
    };
    if Uri::parse(request_uri).is_ok_and(|r| r == d) {
        return true;
    }
    let ours = |t: &str| core.transports.local_addr(t).map(|a| a.ip().to_string());
    d.is_sip()
        && (d.host.eq_ignore_ascii_case(&core.config.domain)
            || Some(d.host.clone()) == ours("udp")
            || Some(d.host.clone()) == ours("tcp"))
}

/// Authenticates a request by digest; returns the authenticated AOR, or the response to send
/// (a challenge, 400 for malformed credentials, 403 for wrong ones).
pub(crate) async fn authenticate(
    core: &Core,
    req: &Request,
    kind: Challenge,
) -> Result<String, Response> {
    let (header, _, _) = kind.headers();
    let domain = &core.config.domain;
    let mut creds = None;
    for value in req.headers.get_lines(header) {
        match Credentials::parse(value) {
            Ok(c) if c.realm == *domain => {
                creds = Some(c);
                break;
            }
            Ok(_) => continue,
            Err(e) => return Err(reject(req, 400, &format!("bad {header} header: {e}"))),
        }
    }
    let Some(c) = creds else {
        return Err(challenge(core, req, kind, false));
    };
    if !core
        .config
        .sip
        .digest_algorithms
        .iter()
        .any(|a| a.eq_ignore_ascii_case(c.algorithm.as_str()))
    {
        return Err(challenge(core, req, kind, false));
    }
    let state = match core.nonces.lock() {
        Ok(mut n) => n.check(&c.nonce, core.mono_ms()),
        Err(_) => return Err(reject(req, 500, "nonce table unavailable")),
    };
    let slot = match state {
        NonceState::Fresh(slot) => slot,
        NonceState::Stale => return Err(challenge(core, req, kind, true)),
        NonceState::Invalid => return Err(challenge(core, req, kind, false)),
    };
    if !digest_uri_ok(core, &c.uri, &req.uri) {
        return Err(reject(
            req,
            400,
            "digest uri names neither the Request-URI nor this server",
        ));
    }
    let failed = |core: &Core| {
        core.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        // One answer for unknown users and wrong passwords: nothing to enumerate.
        Err(reject(req, 403, "authentication failed"))
    };
    let Ok(uri) = Uri::parse(&format!("sip:{}@{domain}", c.username)) else {
        return failed(core);
    };
    let aor = uri.aor();
    let user = match core.store.user(&aor).await {
        Ok(Some(u)) => u,
        Ok(None) => return failed(core),
        Err(e) => return Err(store_error(req, &e)),
    };
    let ha1 = match c.algorithm {
        Algorithm::Md5 => &user.ha1_md5,
        Algorithm::Sha256 => &user.ha1_sha256,
    };
    if user.realm != *domain || !c.verify(req.method.as_str(), ha1) {
        return failed(core);
    }
    let fresh = core
        .nonces
        .lock()
        .map(|mut n| n.consume(slot, c.nc))
        .unwrap_or(false);
    if !fresh {
        // A replayed nonce count: make the client prove itself on a new nonce.
        return Err(challenge(core, req, kind, false));
    }
    Ok(aor)
}
