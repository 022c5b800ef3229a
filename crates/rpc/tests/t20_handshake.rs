//! The handshake: only peers of the same protocol version, cluster and secret get through.
#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use rpc::wire::{self, Hello, PROTOCOL_VERSION};
use rpc::{Bytes, ClientConfig, RpcClient, RpcError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn hello_of_version(version: u16) -> Vec<u8> {
    let hello = Hello {
        cluster: CLUSTER.into(),
        node: "impostor".into(),
        nonce: [9; wire::NONCE_LEN],
        max_frame_bytes: 1 << 20,
    };
    frame(&wire::encode_hello(version, &hello).unwrap())
}

/// Reads until the peer closes (a reset counts as closed).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// Proves: a client with the wrong secret gets Auth, the server counts an auth failure, and
// no handler ever runs for it.
#[tokio::test]
async fn wrong_secret_is_refused_before_any_handler() {
    let server = echo_server("srv").await;
    let invoked = Arc::new(AtomicUsize::new(0));
    {
        let invoked = invoked.clone();
        server.handle("count", move |_req: rpc::Request| {
            invoked.fetch_add(1, Ordering::SeqCst);
            async { Ok(Bytes::new()) }
        });
    }
    let mut config = client_config("cli");
    config.secret = other_secret();
    let client = RpcClient::new(server.local_addr().to_string(), config);
    assert_eq!(
        client.call("count", Bytes::new(), SECOND).await,
        Err(RpcError::Auth)
    );
    wait_until("the server counts the auth failure", 5 * SECOND, || {
        server.stats().auth_failures == 1
    })
    .await;
    assert_eq!(invoked.load(Ordering::SeqCst), 0);
    assert_eq!(server.stats().calls, 0);
    assert_eq!(server.stats().connections_authenticated, 0);

    // The right secret still works, and reaches the handler.
    let good = client_of(&server, "cli-good");
    assert_eq!(
        good.call("count", Bytes::new(), SECOND).await,
        Ok(Bytes::new())
    );
    assert_eq!(invoked.load(Ordering::SeqCst), 1);
}

// Proves: a server speaking another protocol version makes the client fail with
// Version { ours, theirs }.
#[tokio::test]
async fn client_reports_version_mismatch() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .write_all(&hello_of_version(PROTOCOL_VERSION + 98))
            .await
            .unwrap();
        read_to_close(&mut stream).await
    });
    let client = RpcClient::new(addr.to_string(), client_config("cli"));
    assert_eq!(
        client.call("echo", Bytes::new(), SECOND).await,
        Err(RpcError::Version {
            ours: PROTOCOL_VERSION,
            theirs: PROTOCOL_VERSION + 98
        })
    );
    // What the client sent before giving up was its own hello, with its version up front.
    let sent = within("the fake server sees the client close", 5 * SECOND, fake)
        .await
        .unwrap();
    let (version, _) = wire::split_hello(&sent[4..]).unwrap();
    assert_eq!(version, PROTOCOL_VERSION);
}

// Proves: a client speaking another protocol version is counted and closed by the server,
// after the server's hello told it our version.
#[tokio::test]
async fn server_refuses_other_version() {
    let server = echo_server("srv").await;
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    raw.write_all(&hello_of_version(PROTOCOL_VERSION + 1))
        .await
        .unwrap();
    let got = within("the server closes", 5 * SECOND, read_to_close(&mut raw)).await;
    let (version, _) = wire::split_hello(&got[4..]).unwrap();
    assert_eq!(version, PROTOCOL_VERSION);
    wait_until("the server counts the mismatch", 5 * SECOND, || {
        server.stats().version_mismatches == 1
    })
    .await;
    assert_eq!(server.stats().connections_authenticated, 0);
}

// Proves: a peer of another cluster (same secret) is refused with a clear Cluster error.
#[tokio::test]
async fn other_cluster_is_refused() {
    let server = echo_server("srv").await;
    let config = ClientConfig::new(secret(), "another-cluster", "cli");
    let client = RpcClient::new(server.local_addr().to_string(), config);
    assert_eq!(
        client.call("echo", Bytes::new(), SECOND).await,
        Err(RpcError::Cluster {
            ours: "another-cluster".into(),
            theirs: CLUSTER.into()
        })
    );
    wait_until("the server counts the failed handshake", 5 * SECOND, || {
        server.stats().handshake_failures == 1
    })
    .await;
}

// Proves: a peer that connects and then says nothing is closed after the handshake timeout,
// so idle unauthenticated sockets cannot pile up.
#[tokio::test]
async fn silent_peer_is_closed_after_handshake_timeout() {
    let mut config = server_config("srv");
    config.handshake_timeout = std::time::Duration::from_millis(200);
    let server = echo_server_with(config).await;
    let mut raw = TcpStream::connect(server.local_addr()).await.unwrap();
    within(
        "the server closes the silent peer",
        5 * SECOND,
        read_to_close(&mut raw),
    )
    .await;
    wait_until("the server counts it", 5 * SECOND, || {
        server.stats().handshake_failures == 1 && server.stats().connections_open == 0
    })
    .await;
}
