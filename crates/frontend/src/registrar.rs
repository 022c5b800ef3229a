//! REGISTER (RFC 3261 §10.3): authentication, Expires negotiation, then the store applies
//! the change durably and the 200 OK lists every current binding.

use crate::core::{Core, now_ms, random_hex};
use crate::handlers::{Challenge, Reply, authenticate, local_aor, reject, store_error};
use crate::transport::Peer;
use sip::Request;
use sip::header::{Contact, NameAddr, parse_contacts, parse_delta_seconds};
use std::sync::Arc;
use store::{Binding, Command, ContactUpdate, Outcome, Register, RegisterUpdate, Route};

/// The route a binding or subscription made over `peer` is reached by. `outbound`: the
/// client registered with RFC 5626 `reg-id` and `+sip.instance`.
pub(crate) fn route_of(core: &Core, peer: &Peer, outbound: bool) -> Route {
    Route {
        transport: peer.transport().to_string(),
        source: peer.addr().to_string(),
        flow: core
            .transports
            .flow_of(&core.config.server_name, peer, outbound),
    }
}

/// Handles a REGISTER.
pub(crate) async fn register(core: &Arc<Core>, req: &Request, peer: &Peer) -> Reply {
    match register_inner(core, req, peer).await {
        Ok(r) | Err(r) => r,
    }
}

async fn register_inner(core: &Arc<Core>, req: &Request, peer: &Peer) -> Result<Reply, Reply> {
    let settings = &core.config.sip;
    // The Request-URI names the domain (RFC 3261 §10.3 step 1).
    let ruri = sip::Uri::parse(&req.uri)
        .map_err(|e| reject(req, 400, &format!("bad Request-URI: {e}")))?;
    if !ruri.host.eq_ignore_ascii_case(&core.config.domain) {
        return Err(reject(
            req,
            404,
            &format!("domain {} is not served here", ruri.host),
        )
        .into());
    }
    let to = req.headers.get("To").unwrap_or_default();
    let to = NameAddr::parse(to).map_err(|e| reject(req, 400, &format!("bad To header: {e}")))?;
    let aor = local_aor(core, req, &to.uri.to_string(), "To URI")?;
    let who = authenticate(core, req, Challenge::Www).await?;
    if who != aor {
        return Err(reject(req, 403, &format!("{who} may not register {aor}")).into());
    }
    let contacts = parse_contacts(req.headers.get_all("Contact"))
        .map_err(|e| reject(req, 400, &format!("bad Contact header: {e}")))?;
    let data = core.data(&aor).clone();
    let now = now_ms();
    if contacts.is_empty() {
        // A query: list the bindings (step 8).
        let bindings = data
            .bindings(&aor, now)
            .await
            .map_err(|e| store_error(req, &e))?;
        return Ok(ok(req, &bindings, now).into());
    }
    let header_expires = match req.headers.get("Expires") {
        Some(v) => Some(
            parse_delta_seconds(v).map_err(|e| reject(req, 400, &format!("bad Expires: {e}")))?,
        ),
        None => None,
    };
    let outbound = contacts.iter().any(|c| {
        matches!(c, Contact::Addr(na) if na.params.has("reg-id") && na.params.has("+sip.instance"))
    });
    let update = if contacts.iter().any(|c| matches!(c, Contact::Star)) {
        if contacts.len() != 1 || header_expires != Some(0) {
            return Err(
                reject(req, 400, "Contact: * needs Expires: 0 and no other Contact").into(),
            );
        }
        RegisterUpdate::RemoveAll
    } else {
        let mut updates = Vec::with_capacity(contacts.len());
        for c in &contacts {
            let Contact::Addr(na) = c else { continue };
            if !na.uri.is_sip() {
                return Err(reject(
                    req,
                    416,
                    &format!("contact scheme {} is not supported", na.uri.scheme),
                )
                .into());
            }
            let asked = match na.params.get("expires") {
                Some(v) => parse_delta_seconds(v)
                    .map_err(|e| reject(req, 400, &format!("bad expires parameter: {e}")))?,
                None => header_expires.unwrap_or(settings.register_expires_default_s),
            };
            if asked != 0 && asked < settings.register_expires_min_s {
                return Err(reject(req, 423, "Interval Too Brief")
                    .with_header("Min-Expires", settings.register_expires_min_s.to_string())
                    .into());
            }
            let mut params = na.params.clone();
            params.0.retain(|(k, _)| !k.eq_ignore_ascii_case("expires"));
            updates.push(ContactUpdate {
                contact: na.uri.to_string(),
                params: params.to_wire(),
                expires_s: asked.min(settings.register_expires_max_s),
            });
        }
        RegisterUpdate::Contacts(updates)
    };
    let cseq = sip::header::CSeq::parse(req.headers.get("CSeq").unwrap_or_default())
        .map_err(|e| reject(req, 400, &format!("bad CSeq: {e}")))?;
    let cmd = Command::Register(Register {
        aor,
        call_id: req.headers.get("Call-ID").unwrap_or_default().to_string(),
        cseq: cseq.seq,
        update,
        route: route_of(core, peer, outbound),
        user_agent: req
            .headers
            .get("User-Agent")
            .unwrap_or_default()
            .to_string(),
        max_contacts: settings.max_contacts_per_user,
        now_ms: now,
    });
    let applied = data.apply(cmd).await.map_err(|e| store_error(req, &e))?;
    let bindings = match &applied.outcome {
        Outcome::Bindings(b) => b.as_slice(),
        _ => &[],
    };
    Ok(Reply {
        response: ok(req, bindings, now),
        notify: applied.notify,
    })
}

/// 200 OK listing every binding with its remaining lifetime.
fn ok(req: &Request, bindings: &[Binding], now: u64) -> sip::Response {
    let mut resp = req.response(200, Some(&random_hex(4)));
    for b in bindings {
        let left = b.expires_ms.saturating_sub(now).div_ceil(1000);
        resp.headers.push(
            "Contact",
            format!("<{}>{};expires={left}", b.contact, b.params),
        );
    }
    resp
}
