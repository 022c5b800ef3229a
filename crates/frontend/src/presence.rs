//! Presence: PUBLISH (RFC 3903) of PIDF documents, SUBSCRIBE/NOTIFY for the `presence` event
//! package (RFC 3856, RFC 6665). The store keeps publications and subscription dialogs and
//! decides which NOTIFYs a change calls for; this module checks requests and sends NOTIFYs.

use crate::core::{Core, SendFailure, now_ms, random_hex};
use crate::handlers::{Challenge, Reply, authenticate, from_aor, local_aor, reject, store_error};
use crate::pidf::{self, PIDF_TYPE};
use crate::registrar::route_of;
use crate::transport::Peer;
use bytes::Bytes;
use sip::header::{Event, NameAddr, parse_delta_seconds};
use sip::{Method, Request};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use store::{Command, Notify, Outcome, Publish, Subscribe, Subscription, SubscriptionState};

/// Checks the Event header: only `presence` is served.
fn presence_event(req: &Request) -> Result<(), Reply> {
    let event = req.headers.get("Event").map(Event::parse);
    match event {
        Some(Ok(e)) if e.package == "presence" => Ok(()),
        Some(Ok(e)) => Err(reject(
            req,
            489,
            &format!("event package {} is not supported", e.package),
        )
        .with_header("Allow-Events", "presence")
        .into()),
        Some(Err(e)) => Err(reject(req, 400, &format!("bad Event header: {e}")).into()),
        None => Err(reject(req, 489, "Event header missing")
            .with_header("Allow-Events", "presence")
            .into()),
    }
}

/// Negotiates Expires for PUBLISH and SUBSCRIBE: 0 stays 0, too short gets 423.
fn negotiate_expires(core: &Core, req: &Request) -> Result<u32, Reply> {
    let s = &core.config.sip;
    let asked = match req.headers.get("Expires") {
        Some(v) => {
            parse_delta_seconds(v).map_err(|e| reject(req, 400, &format!("bad Expires: {e}")))?
        }
        None => s.presence_expires_default_s,
    };
    if asked != 0 && asked < s.presence_expires_min_s {
        return Err(reject(req, 423, "Interval Too Brief")
            .with_header("Min-Expires", s.presence_expires_min_s.to_string())
            .into());
    }
    Ok(asked.min(s.presence_expires_max_s))
}

/// Handles a PUBLISH.
pub(crate) async fn publish(core: &Arc<Core>, req: &Request) -> Reply {
    match publish_inner(core, req).await {
        Ok(r) | Err(r) => r,
    }
}

fn checked_body(req: &Request) -> Result<(), Reply> {
    let ctype = req.headers.get("Content-Type").unwrap_or_default();
    let media = ctype.split(';').next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case(PIDF_TYPE) {
        return Err(
            reject(req, 415, &format!("content type {media} is not supported"))
                .with_header("Accept", PIDF_TYPE)
                .into(),
        );
    }
    pidf::validate(&req.body).map_err(|e| reject(req, 400, &format!("invalid PIDF: {e}")).into())
}

async fn publish_inner(core: &Arc<Core>, req: &Request) -> Result<Reply, Reply> {
    let presentity = local_aor(core, req, &req.uri, "Request-URI")?;
    let who = authenticate(core, req, Challenge::Www).await?;
    if who != presentity {
        return Err(reject(
            req,
            403,
            &format!("{who} may not publish the presence of {presentity}"),
        )
        .into());
    }
    presence_event(req)?;
    let expires = negotiate_expires(core, req)?;
    let data = core.data(&presentity).clone();
    let now = now_ms();
    let new_etag = random_hex(8);
    let cmd = match req.headers.get("SIP-If-Match").map(str::trim) {
        None => {
            if req.body.is_empty() {
                return Err(reject(req, 400, "an initial PUBLISH needs a body").into());
            }
            if expires == 0 {
                return Err(reject(req, 400, "an initial PUBLISH cannot have Expires: 0").into());
            }
            checked_body(req)?;
            Publish::Create {
                aor: presentity,
                etag: new_etag,
                body: req.body.to_vec(),
                content_type: PIDF_TYPE.to_string(),
                expires_s: expires,
                now_ms: now,
            }
        }
        Some(etag) if expires == 0 => Publish::Remove {
            aor: presentity,
            etag: etag.to_string(),
            now_ms: now,
        },
        Some(etag) if req.body.is_empty() => Publish::Refresh {
            aor: presentity,
            etag: etag.to_string(),
            new_etag,
            expires_s: expires,
            now_ms: now,
        },
        Some(etag) => {
            checked_body(req)?;
            Publish::Modify {
                aor: presentity,
                etag: etag.to_string(),
                new_etag,
                body: req.body.to_vec(),
                content_type: PIDF_TYPE.to_string(),
                expires_s: expires,
                now_ms: now,
            }
        }
    };
    let applied = data
        .apply(Command::Publish(cmd))
        .await
        .map_err(|e| store_error(req, &e))?;
    let mut resp = req
        .response(200, Some(&random_hex(4)))
        .with_header("Expires", expires.to_string());
    if let Outcome::Published { etag: Some(etag) } = &applied.outcome {
        resp.headers.push("SIP-ETag", etag.clone());
    }
    Ok(Reply {
        response: resp,
        notify: applied.notify,
    })
}

/// Handles a SUBSCRIBE.
pub(crate) async fn subscribe(core: &Arc<Core>, req: &Request, peer: &Peer) -> Reply {
    match subscribe_inner(core, req, peer).await {
        Ok(r) | Err(r) => r,
    }
}

fn accepts_pidf(req: &Request) -> bool {
    let accept = req.headers.get_all("Accept");
    accept.is_empty()
        || accept.iter().any(|a| {
            let media = a
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            media == PIDF_TYPE || media == "*/*" || media == "application/*"
        })
}

async fn subscribe_inner(core: &Arc<Core>, req: &Request, peer: &Peer) -> Result<Reply, Reply> {
    presence_event(req)?;
    if !accepts_pidf(req) {
        return Err(reject(
            req,
            406,
            &format!("presence is only offered as {PIDF_TYPE}"),
        )
        .into());
    }
    let (watcher_aor, from) = from_aor(req)?;
    let who = authenticate(core, req, Challenge::Www).await?;
    if who != watcher_aor {
        return Err(reject(
            req,
            403,
            &format!("{who} may not subscribe as {watcher_aor}"),
        )
        .into());
    }
    let expires = negotiate_expires(core, req)?;
    let to = NameAddr::parse(req.headers.get("To").unwrap_or_default())
        .map_err(|e| reject(req, 400, &format!("bad To header: {e}")))?;
    let Some(watcher_tag) = from.tag().map(str::to_string) else {
        return Err(reject(req, 400, "From header has no tag").into());
    };
    let call_id = req.headers.get("Call-ID").unwrap_or_default().to_string();
    let contact = match req.headers.get_all("Contact").first() {
        Some(c) => Some(
            NameAddr::parse(c)
                .map_err(|e| reject(req, 400, &format!("bad Contact header: {e}")))?
                .uri
                .to_string(),
        ),
        None => None,
    };
    let now = now_ms();
    // The subscription lives in the presentity's group: a new one names it in the
    // Request-URI; a refresh (addressed to the server's contact) in its To header.
    let group_key = to.uri.aor();
    let (cmd, local_tag) = match to.tag() {
        Some(local_tag) => (
            Subscribe::Refresh {
                call_id,
                watcher_tag,
                local_tag: local_tag.to_string(),
                contact,
                route: route_of(core, peer, false),
                expires_s: expires,
                now_ms: now,
            },
            local_tag.to_string(),
        ),
        None => {
            let presentity = local_aor(core, req, &req.uri, "Request-URI")?;
            let Some(contact) = contact else {
                return Err(reject(req, 400, "SUBSCRIBE needs a Contact header").into());
            };
            let local_tag = random_hex(6);
            let subscription = Subscription {
                id: 0,
                presentity,
                presentity_uri: to.uri.to_string(),
                watcher: watcher_aor,
                watcher_uri: from.uri.to_string(),
                call_id,
                watcher_tag,
                local_tag: local_tag.clone(),
                contact,
                route: route_of(core, peer, false),
                expires_ms: 0,
                notify_cseq: 0,
            };
            (
                Subscribe::New {
                    subscription: Box::new(subscription),
                    expires_s: expires,
                    now_ms: now,
                },
                local_tag,
            )
        }
    };
    let applied = match core.data(&group_key).apply(Command::Subscribe(cmd)).await {
        Ok(a) => a,
        Err(store::StoreError::NotFound(what)) if what.starts_with("subscription") => {
            return Err(reject(req, 481, "Subscription does not exist").into());
        }
        Err(e) => return Err(store_error(req, &e).into()),
    };
    let resp = req
        .response(200, Some(&local_tag))
        .with_header("Expires", expires.to_string())
        .with_header("Contact", core.contact_uri(peer.transport()));
    Ok(Reply {
        response: resp,
        notify: applied.notify,
    })
}

/// Sends the NOTIFYs a change called for, concurrently, each through the server that holds
/// its watcher; a watcher that answers 481 or never answers loses its subscription.
pub async fn send_notifies(core: &Arc<Core>, notifies: Vec<Notify>) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in notifies {
        let core = core.clone();
        tasks.spawn(async move { send_notify(&core, n).await });
    }
    while tasks.join_next().await.is_some() {}
}

async fn send_notify(core: &Arc<Core>, n: Notify) {
    let sub = &n.subscription;
    let mut req = Request::new(Method::Notify, sub.contact.clone());
    req.headers.push("Max-Forwards", "70");
    req.headers.push(
        "From",
        format!("<{}>;tag={}", sub.presentity_uri, sub.local_tag),
    );
    req.headers.push(
        "To",
        format!("<{}>;tag={}", sub.watcher_uri, sub.watcher_tag),
    );
    req.headers.push("Call-ID", sub.call_id.clone());
    req.headers
        .push("CSeq", format!("{} NOTIFY", sub.notify_cseq));
    // The Contact is added by the server that sends it (`Core::deliver_here`).
    req.headers.push("Event", "presence");
    let state = match &n.state {
        SubscriptionState::Active { expires_s } => format!("active;expires={expires_s}"),
        SubscriptionState::Terminated { reason } => format!("terminated;reason={reason}"),
    };
    req.headers.push("Subscription-State", state);
    req.headers.push("Content-Type", PIDF_TYPE);
    req.headers.push("User-Agent", crate::SERVER_NAME);
    req.body = Bytes::from(pidf::compose(&n.presence));
    core.metrics.notifies_sent.fetch_add(1, Ordering::Relaxed);
    match core.deliver(&sub.route, &sub.contact, req).await {
        Ok(resp) if (200..300).contains(&resp.status) => {}
        Ok(resp) => {
            core.metrics.notifies_failed.fetch_add(1, Ordering::Relaxed);
            // RFC 6665 §4.2.2: 481 (and other failures of the dialog) end the subscription.
            if matches!(
                resp.status,
                404 | 405 | 410 | 416 | 480..=485 | 489 | 501 | 604
            ) {
                end_subscription(core, &n).await;
            }
        }
        Err(SendFailure::Unreachable(why)) => {
            tracing::info!(watcher = %sub.watcher, error = %why, "watcher unreachable; ending its subscription");
            core.metrics.notifies_failed.fetch_add(1, Ordering::Relaxed);
            end_subscription(core, &n).await;
        }
        Err(SendFailure::Timeout) => {
            core.metrics.notifies_failed.fetch_add(1, Ordering::Relaxed);
            end_subscription(core, &n).await;
        }
    }
}

async fn end_subscription(core: &Core, n: &Notify) {
    if n.subscription.id == 0 || matches!(n.state, SubscriptionState::Terminated { .. }) {
        return;
    }
    let cmd = Command::Subscribe(Subscribe::End {
        id: n.subscription.id,
    });
    if let Err(e) = core.data(&n.subscription.presentity).apply(cmd).await {
        tracing::warn!(error = %e, "could not end a subscription");
    }
}
