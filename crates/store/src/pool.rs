//! One `rpc` client per peer address, shared by everything in a server that talks to other
//! servers (replication traffic and store clients alike).

use rpc::{ClientConfig, RpcClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clients by address; cheap to clone.
#[derive(Clone)]
pub struct RpcPool {
    config: Arc<ClientConfig>,
    clients: Arc<Mutex<HashMap<String, RpcClient>>>,
}

impl RpcPool {
    /// A pool whose clients authenticate with `config`.
    pub fn new(config: ClientConfig) -> RpcPool {
        RpcPool {
            config: Arc::new(config),
            clients: Arc::default(),
        }
    }

    /// The client for `addr` (created on first use; connects lazily).
    pub fn client(&self, addr: &str) -> RpcClient {
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry(addr.to_string())
            .or_insert_with(|| RpcClient::new(addr.to_string(), (*self.config).clone()))
            .clone()
    }

    /// Calls `service` on `addr`.
    pub async fn call(
        &self,
        addr: &str,
        service: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, rpc::RpcError> {
        self.client(addr)
            .call(service, bytes::Bytes::from(body), timeout)
            .await
            .map(|b| b.to_vec())
    }
}

/// Replication traffic over the pool.
pub struct RpcTransport {
    pub pool: RpcPool,
}

impl replica::Transport for RpcTransport {
    fn call(
        &self,
        to: &replica::Member,
        service: String,
        body: Vec<u8>,
        timeout: Duration,
    ) -> replica::BoxFuture<Result<Vec<u8>, String>> {
        let pool = self.pool.clone();
        let addr = to.addr.clone();
        Box::pin(async move {
            pool.call(&addr, &service, body, timeout)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
