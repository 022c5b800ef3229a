//! Tandem's front-end role: SIP over UDP and TCP, the registrar, presence and IM routing.
//!
//! The request path: `transport` receives bytes → `core` parses them (the `sip` crate) and runs
//! the transaction layer → `handlers` dispatches by method to `registrar`, `presence` or `im`
//! → the `store` applies the change durably → the response leaves. Changes that watchers must
//! hear about come back from the store as NOTIFYs to send.
//!
//! **Invariant:** a response that acknowledges a change (200 to REGISTER, PUBLISH, SUBSCRIBE)
//! is sent only after the store reported the change durable.

mod core;
mod handlers;
mod im;
pub mod metrics;
pub mod pidf;
pub mod pool;
mod presence;
mod registrar;
pub mod replace;
mod transport;

pub use crate::core::{Config, Core, now_ms};
pub use metrics::Metrics;
pub use presence::send_notifies;
pub use transport::Peer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::Store;

/// Server and User-Agent header value.
pub const SERVER_NAME: &str = concat!("Tandem/", env!("CARGO_PKG_VERSION"));

/// A running front end.
pub struct Frontend {
    core: Arc<Core>,
    /// The UDP receiver and the TCP listener: what takes new requests.
    receivers: Vec<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Frontend {
    /// Binds the SIP sockets and starts serving, with every user's data in `store`.
    pub async fn start(config: Config, store: Store) -> std::io::Result<Frontend> {
        Frontend::start_with(config, store, None).await
    }

    /// Binds the SIP sockets and starts serving as a server of a pool whose users' data
    /// lives in routing groups; other servers of the pool reach this one's clients through
    /// `rpc`.
    pub async fn start_in_pool(
        config: Config,
        store: Store,
        pool: Arc<pool::PoolMember>,
        rpc: &rpc::RpcServer,
    ) -> std::io::Result<Frontend> {
        let mut fe = Frontend::start_with(config, store, Some(pool.clone())).await?;
        let p = pool.clone();
        rpc.handle(pool::HEALTH, move |_req: rpc::Request| {
            let p = p.clone();
            async move {
                let health = postcard::to_stdvec(&p.health()).unwrap_or_default();
                Ok(bytes::Bytes::from(health))
            }
        });
        let p = pool.clone();
        rpc.handle(replace::HOST_GROUP, move |req: rpc::Request| {
            let p = p.clone();
            async move {
                let g = group_in(&req.body, &p)?;
                p.host(g)
                    .await
                    .map(|_| bytes::Bytes::new())
                    .map_err(|e| rpc::RemoteError::new("cannot-host", e.to_string()))
            }
        });
        let p = pool.clone();
        rpc.handle(replace::UNHOST_GROUP, move |req: rpc::Request| {
            let p = p.clone();
            async move {
                let g = group_in(&req.body, &p)?;
                p.unhost(g)
                    .await
                    .map(|_| bytes::Bytes::new())
                    .map_err(|e| rpc::RemoteError::new("cannot-unhost", e))
            }
        });
        fe.tasks.push(tokio::spawn(pool.clone().run_placement()));
        let core = fe.core.clone();
        rpc.handle(pool::FORGET_USER, move |req: rpc::Request| {
            let core = core.clone();
            async move {
                core.store.forget_user(&String::from_utf8_lossy(&req.body));
                Ok(bytes::Bytes::new())
            }
        });
        let core = fe.core.clone();
        rpc.handle(pool::DELIVER, move |req: rpc::Request| {
            let core = core.clone();
            async move { Ok(bytes::Bytes::from(deliver_for_peer(&core, &req.body).await)) }
        });
        Ok(fe)
    }

    async fn start_with(
        config: Config,
        store: Store,
        pool: Option<Arc<pool::PoolMember>>,
    ) -> std::io::Result<Frontend> {
        let (transports, listener) =
            transport::Transports::bind(config.sip_udp, config.sip_tcp, config.max_tcp_connections)
                .await?;
        let core = Arc::new(Core::new(config, store, pool, transports));
        let mut receivers = vec![tokio::spawn(transport::run_udp(core.clone()))];
        let mut tasks = vec![
            tokio::spawn(run_timers(core.clone())),
            tokio::spawn(run_expiry(core.clone(), core.store.clone())),
        ];
        if let Some(pool) = &core.pool {
            tasks.push(tokio::spawn(run_group_expiry(core.clone(), pool.clone())));
        }
        if let Some(l) = listener {
            receivers.push(tokio::spawn(transport::run_tcp_listener(core.clone(), l)));
        }
        Ok(Frontend {
            core,
            receivers,
            tasks,
        })
    }

    /// Stops taking requests, then waits (up to `limit`) until every request already taken
    /// is answered: a drained server stopped this way fails no request it accepted.
    pub async fn shutdown(self, limit: Duration) {
        for t in &self.receivers {
            t.abort();
        }
        let end = tokio::time::Instant::now() + limit;
        while self.core.inflight.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < end
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The bound UDP address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.core.transports.udp_addr()
    }

    /// The bound TCP address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.core.transports.tcp_addr()
    }

    /// The shared state (metrics, store, configuration).
    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        for t in self.receivers.iter().chain(&self.tasks) {
            t.abort();
        }
    }
}

/// Transaction timers: retransmissions and timeouts, every 20 ms.
async fn run_timers(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        core.tick().await;
    }
}

/// Expiry of bindings, publications and subscriptions: when the earliest expiry has passed,
/// the store removes everything expired and returns the NOTIFYs that calls for.
async fn run_expiry(core: Arc<Core>, store: Store) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        sweep(&core, &store).await;
    }
}

async fn sweep(core: &Arc<Core>, store: &Store) {
    let now = now_ms();
    match store.next_expiry().await {
        Ok(Some(at)) if at <= now => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read expiry times");
            return;
        }
    }
    match store.apply(store::Command::Expire { now_ms: now }).await {
        Ok(applied) => presence::send_notifies(core, applied.notify).await,
        Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
    }
}

/// Expiry in the routing groups this server holds a replica of: each swept while this
/// server's replica is the group's primary, so each group is swept by one server.
async fn run_group_expiry(core: Arc<Core>, pool: Arc<pool::PoolMember>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        for (g, node) in pool.local() {
            if node.is_primary()
                && let Some(store) = pool.groups.get(g as usize)
            {
                sweep(&core, store).await;
            }
        }
    }
}

/// The group id in a `host-group`/`unhost-group` request, checked against the pool.
fn group_in(body: &[u8], pool: &pool::PoolMember) -> Result<u32, rpc::RemoteError> {
    match postcard::from_bytes::<u32>(body) {
        Ok(g) if (g as usize) < pool.groups.len() => Ok(g),
        Ok(g) => Err(rpc::RemoteError::new(
            "no-such-group",
            format!("pool {} has no routing group {g}", pool.pool),
        )),
        Err(e) => Err(rpc::RemoteError::new(
            "bad-request",
            format!("a group id that does not decode: {e}"),
        )),
    }
}

/// Another server of the pool asks this one to deliver a request to a client it holds.
async fn deliver_for_peer(core: &Arc<Core>, body: &[u8]) -> Vec<u8> {
    let reply = match postcard::from_bytes::<pool::DeliverRequest>(body) {
        Err(e) => pool::DeliverReply::Unreachable(format!("a delivery that does not decode: {e}")),
        Ok(d) => match sip::parse_message(&d.request, &core.config.limits) {
            Ok(sip::Message::Request(req)) => {
                match core.deliver_here(&d.route, &d.contact, req).await {
                    Ok(resp) => pool::DeliverReply::Response(resp.to_bytes().to_vec()),
                    Err(core::SendFailure::Timeout) => pool::DeliverReply::Timeout,
                    Err(core::SendFailure::Unreachable(why)) => {
                        pool::DeliverReply::Unreachable(why)
                    }
                }
            }
            _ => pool::DeliverReply::Unreachable("a delivery whose request does not parse".into()),
        },
    };
    postcard::to_stdvec(&reply).unwrap_or_default()
}
