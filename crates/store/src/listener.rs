//! A store's listener: an address of the store that reaches the current primary (or
//! failover-cluster owner) wherever it is. Whichever node serves binds it, with the store's
//! services on it, and releases it when it stops serving; while an old primary still holds
//! it, clients use the nodes' own addresses.

use rpc::{RpcServer, ServerConfig};
use std::net::SocketAddr;
use std::sync::Mutex;

pub struct Listener {
    store: String,
    addr: Option<SocketAddr>,
    config: ServerConfig,
    bound: Mutex<Option<RpcServer>>,
}

impl Listener {
    /// The listener of `store` at `addr` (`None`: the store has none, and this does nothing).
    pub fn new(store: &str, addr: Option<SocketAddr>, config: ServerConfig) -> Listener {
        Listener {
            store: store.to_string(),
            addr,
            config,
            bound: Mutex::new(None),
        }
    }

    /// Binds the listener while `serving` (with `register` putting the store's services on
    /// it), releases it otherwise.
    pub async fn hold(&self, serving: bool, register: impl FnOnce(&RpcServer)) {
        let Some(addr) = self.addr else {
            return;
        };
        if !serving {
            self.release().await;
            return;
        }
        if self.bound.lock().map(|b| b.is_some()).unwrap_or(true) {
            return;
        }
        match RpcServer::bind(addr, self.config.clone()).await {
            Ok(server) => {
                register(&server);
                server.spawn();
                tracing::info!(store = %self.store, %addr, "listener bound");
                if let Ok(mut b) = self.bound.lock() {
                    *b = Some(server);
                }
            }
            Err(e) => {
                tracing::debug!(store = %self.store, %addr, error = %e, "listener address still taken")
            }
        }
    }

    /// Releases the listener if this node holds it.
    pub async fn release(&self) {
        let current = self.bound.lock().ok().and_then(|mut b| b.take());
        if let Some(server) = current {
            server.shutdown().await;
            tracing::info!(store = %self.store, "listener released");
        }
    }
}
