//! Helpers shared by the rpc test binaries: real servers and clients on 127.0.0.1:0.
#![allow(dead_code, clippy::unwrap_used)] // not every binary uses every helper; a panic is the failure report

use std::future::Future;
use std::time::Duration;

use rpc::{
    Bytes, ClientConfig, ClusterSecret, RemoteError, Request, RpcClient, RpcServer, ServerConfig,
};
use tokio::time::Instant;

pub const CLUSTER: &str = "test-cluster";

pub fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(b"the-test-cluster-secret-0123456".to_vec()).unwrap()
}

pub fn other_secret() -> ClusterSecret {
    ClusterSecret::from_bytes(b"a-different-secret-9876543210xyz".to_vec()).unwrap()
}

pub fn server_config(node: &str) -> ServerConfig {
    ServerConfig::new(secret(), CLUSTER, node)
}

pub fn client_config(node: &str) -> ClientConfig {
    ClientConfig::new(secret(), CLUSTER, node)
}

/// A server on a fresh loopback port with an `echo` service, accepting.
pub async fn echo_server(node: &str) -> RpcServer {
    echo_server_with(server_config(node)).await
}

pub async fn echo_server_with(config: ServerConfig) -> RpcServer {
    let server = RpcServer::bind("127.0.0.1:0", config).await.unwrap();
    server.handle("echo", echo);
    server.spawn();
    server
}

pub async fn echo(req: Request) -> Result<Bytes, RemoteError> {
    Ok(req.body)
}

pub fn client_of(server: &RpcServer, node: &str) -> RpcClient {
    RpcClient::new(server.local_addr().to_string(), client_config(node))
}

pub const SECOND: Duration = Duration::from_secs(1);

/// Polls `cond` until it holds, failing the test if it does not within `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, failing the test if it takes longer than `limit`.
pub async fn within<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}
