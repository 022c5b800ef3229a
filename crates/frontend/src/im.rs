//! Instant messages (RFC 3428): an authenticated user's MESSAGE is forked, as a stateful
//! proxy would, to every registered contact of the target, each over the transport that
//! contact registered with; the sender gets the best final response (RFC 3261 §16.7).

use crate::core::{Core, SendFailure, now_ms};
use crate::handlers::{Challenge, authenticate, from_aor, local_aor, reject, store_error};
use sip::{Request, Response};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Handles a MESSAGE; returns the response for the sender.
pub(crate) async fn message(core: &Arc<Core>, req: &Request) -> Response {
    match message_inner(core, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn message_inner(core: &Arc<Core>, req: &Request) -> Result<Response, Response> {
    let target = local_aor(core, req, &req.uri, "Request-URI")?;
    let (sender, _) = from_aor(req)?;
    let who = authenticate(core, req, Challenge::Proxy).await?;
    if who != sender {
        return Err(reject(req, 403, &format!("{who} may not send as {sender}")));
    }
    let max_forwards = match req.headers.get("Max-Forwards") {
        Some(v) => v.trim().parse::<u8>().unwrap_or(70),
        None => 70,
    };
    if max_forwards == 0 {
        return Err(reject(req, 483, "Too Many Hops"));
    }
    match core.store.user(&target).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(reject(req, 404, &format!("{target} is not a user here"))),
        Err(e) => return Err(store_error(req, &e)),
    }
    let bindings = core
        .data(&target)
        .bindings(&target, now_ms())
        .await
        .map_err(|e| store_error(req, &e))?;
    if bindings.is_empty() {
        return Err(reject(req, 480, &format!("{target} is not registered")));
    }
    let mut branches = tokio::task::JoinSet::new();
    for b in bindings {
        let core = core.clone();
        let mut fwd = req.clone();
        branches.spawn(async move {
            fwd.uri = b.contact.clone();
            fwd.headers
                .set("Max-Forwards", (max_forwards - 1).to_string());
            // Our realm's credentials are for us, not for the recipient.
            fwd.headers.remove("Proxy-Authorization");
            core.metrics
                .messages_forwarded
                .fetch_add(1, Ordering::Relaxed);
            core.deliver(&b.route, &b.contact, fwd).await
        });
    }
    let mut best: Option<Response> = None;
    let mut timeouts = 0usize;
    let mut unreachable = 0usize;
    while let Some(joined) = branches.join_next().await {
        match joined {
            // Our Via is off already: the response continues to the sender.
            Ok(Ok(resp)) => {
                if (200..300).contains(&resp.status) {
                    // Let the other branches finish on their own; the sender has its answer.
                    branches.detach_all();
                    return Ok(resp);
                }
                if best.as_ref().is_none_or(|b| better(resp.status, b.status)) {
                    best = Some(resp);
                }
            }
            Ok(Err(SendFailure::Timeout)) => timeouts += 1,
            Ok(Err(SendFailure::Unreachable(why))) => {
                tracing::debug!(%why, "a contact of {target} is unreachable");
                unreachable += 1;
            }
            Err(_) => unreachable += 1,
        }
    }
    match best {
        Some(resp) => Ok(resp),
        None if timeouts > 0 => Err(reject(
            req,
            408,
            &format!("no contact of {target} answered"),
        )),
        None => Err(reject(
            req,
            480,
            &format!("none of the {unreachable} contacts of {target} is reachable"),
        )),
    }
}

/// RFC 3261 §16.7 step 6: 6xx wins, then the lowest class, 4xx before 5xx.
fn better(a: u16, b: u16) -> bool {
    let rank = |s: u16| match s / 100 {
        6 => 0,
        4 => 1,
        5 => 2,
        _ => 3,
    };
    (rank(a), a) < (rank(b), b)
}
