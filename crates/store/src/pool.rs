//! The `rpc` clients of a server, shared by everything in it that talks to other servers.
//!
//! Two connections per peer: one for replication (openraft's messages) and one for everything
//! else (store requests forwarded to a primary, deliveries, health). A peer's rpc server runs a
//! bounded number of requests per connection and stops reading that connection when they are
//! all busy; with one connection, a burst of forwarded store requests waiting for their
//! commits would hold back the very replication messages that commit them, and a server near
//! its capacity would stall instead of slowing down.

use rpc::{ClientConfig, RpcClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Clients by address and lane; cheap to clone.
#[derive(Clone)]
pub struct RpcPool {
    config: Arc<ClientConfig>,
    clients: Arc<Mutex<HashMap<(String, Lane), RpcClient>>>,
    /// This process's own rpc server and its address: calls to it do not cross a socket.
    local: Arc<OnceLock<(String, rpc::RpcServer)>>,
}

/// Which connection to a peer a call travels on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Lane {
    /// openraft's messages.
    Replication,
    /// Everything else.
    Requests,
}

impl RpcPool {
    /// A pool whose clients authenticate with `config`.
    pub fn new(config: ClientConfig) -> RpcPool {
        RpcPool {
            config: Arc::new(config),
            clients: Arc::default(),
            local: Arc::default(),
        }
    }

    /// Calls to `addr` go to `server`, this process's own, in process
    /// ([`rpc::RpcServer::call_local`]). Set once; a later call changes nothing.
    pub fn serve_locally(&self, addr: &str, server: rpc::RpcServer) {
        let _ = self.local.set((addr.to_string(), server));
    }

    /// The requests-lane client for `addr` (created on first use; connects lazily).
    pub fn client(&self, addr: &str) -> RpcClient {
        self.client_on(addr, Lane::Requests)
    }

    /// The client for `addr` on `lane`.
    pub fn client_on(&self, addr: &str, lane: Lane) -> RpcClient {
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        clients
            .entry((addr.to_string(), lane))
            .or_insert_with(|| RpcClient::new(addr.to_string(), (*self.config).clone()))
            .clone()
    }

    /// Calls `service` on `addr`, on the requests lane.
    pub async fn call(
        &self,
        addr: &str,
        service: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, rpc::RpcError> {
        self.call_on(Lane::Requests, addr, service, body, timeout)
            .await
    }

    /// Calls `service` on `addr`, on `lane`.
    pub async fn call_on(
        &self,
        lane: Lane,
        addr: &str,
        service: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, rpc::RpcError> {
        if let Some((_, server)) = self.local.get().filter(|(a, _)| a == addr) {
            return server
                .call_local(service, bytes::Bytes::from(body), timeout)
                .await
                .map(Vec::from);
        }
        self.client_on(addr, lane)
            .call(service, bytes::Bytes::from(body), timeout)
            .await
            .map(|b| b.to_vec())
    }
}

/// Replication traffic over the pool, on its own lane.
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
            pool.call_on(Lane::Replication, &addr, &service, body, timeout)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report
    use super::*;
    use rpc::{Bytes, ClusterSecret, RpcServer, ServerConfig};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Replication is not held back by requests: with every request slot of a peer's
    /// connection taken by calls that wait (forwarded writes waiting for their commit), a
    /// replication call to the same peer is still answered at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replication_goes_on_while_requests_fill_their_connection() {
        let secret =
            ClusterSecret::from_bytes(b"the-test-cluster-secret-0123456".to_vec()).unwrap();
        let mut config = ServerConfig::new(secret.clone(), "lanes", "peer");
        config.max_inflight_per_conn = 4;
        let server = RpcServer::bind("127.0.0.1:0", config).await.unwrap();
        let waiting = Arc::new(AtomicUsize::new(0));
        let w = waiting.clone();
        server.handle("wait", move |_| {
            let w = w.clone();
            async move {
                w.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(Bytes::new())
            }
        });
        server.handle("raft/append", |_| async { Ok(Bytes::from_static(b"ok")) });
        server.spawn();
        let addr = server.local_addr().to_string();
        let pool = RpcPool::new(ClientConfig::new(secret, "lanes", "me"));
        for _ in 0..8 {
            let (pool, addr) = (pool.clone(), addr.clone());
            tokio::spawn(async move {
                pool.call(&addr, "wait", Vec::new(), Duration::from_secs(30))
                    .await
            });
        }
        while waiting.load(Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
        let answer = pool
            .call_on(
                Lane::Replication,
                &addr,
                "raft/append",
                Vec::new(),
                Duration::from_secs(2),
            )
            .await;
        assert_eq!(answer.unwrap(), b"ok");
        // The requests lane itself is full: a further request waits behind the others.
        assert!(
            pool.call(&addr, "raft/append", Vec::new(), Duration::from_millis(300))
                .await
                .is_err()
        );
    }

    /// Calls to the address given as this process's own go to its server in process (no
    /// further connection is opened); before it is given, the same call crosses a socket.
    #[tokio::test]
    async fn calls_to_its_own_address_stay_in_process() {
        let secret =
            ClusterSecret::from_bytes(b"the-test-cluster-secret-0123456".to_vec()).unwrap();
        let server = RpcServer::bind("127.0.0.1:0", ServerConfig::new(secret.clone(), "c", "me"))
            .await
            .unwrap();
        server.handle("who", |req: rpc::Request| async move {
            Ok(Bytes::from(req.peer))
        });
        server.spawn();
        let addr = server.local_addr().to_string();
        let pool = RpcPool::new(ClientConfig::new(secret, "c", "me"));
        let second = Duration::from_secs(2);
        // Before: a call like any other, over a connection.
        assert_eq!(
            pool.call(&addr, "who", Vec::new(), second).await.unwrap(),
            b"me"
        );
        assert_eq!(server.stats().calls, 1);
        pool.serve_locally(&addr, server.clone());
        for _ in 0..3 {
            assert_eq!(
                pool.call(&addr, "who", Vec::new(), second).await.unwrap(),
                b"me"
            );
        }
        let stats = server.stats();
        assert_eq!((stats.calls, stats.local_calls), (1, 3));
        assert_eq!(stats.connections_accepted, 1);
    }
}
