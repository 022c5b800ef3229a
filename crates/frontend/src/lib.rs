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
mod presence;
mod registrar;
mod transport;

pub use crate::core::{Config, Core, now_ms};
pub use metrics::Metrics;
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
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Frontend {
    /// Binds the SIP sockets and starts serving.
    pub async fn start(config: Config, store: Store) -> std::io::Result<Frontend> {
        let (transports, listener) =
            transport::Transports::bind(config.sip_udp, config.sip_tcp, config.max_tcp_connections)
                .await?;
        let core = Arc::new(Core::new(config, store, transports));
        let mut tasks = vec![
            tokio::spawn(transport::run_udp(core.clone())),
            tokio::spawn(run_timers(core.clone())),
            tokio::spawn(run_expiry(core.clone())),
        ];
        if let Some(l) = listener {
            tasks.push(tokio::spawn(transport::run_tcp_listener(core.clone(), l)));
        }
        Ok(Frontend { core, tasks })
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
        for t in &self.tasks {
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
async fn run_expiry(core: Arc<Core>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = now_ms();
        match core.store.next_expiry().await {
            Ok(Some(at)) if at <= now => {}
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read expiry times");
                continue;
            }
        }
        match core
            .store
            .apply(store::Command::Expire { now_ms: now })
            .await
        {
            Ok(applied) => presence::send_notifies(&core, applied.notify).await,
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
        }
    }
}
