//! Losing the server and getting it back: pending calls fail, the next ones reconnect.
#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rpc::{Bytes, Request, RpcClient, RpcError, RpcServer};
use tokio::time::Instant;

/// A server with a `hang` service whose calls never finish.
async fn hanging_server(addr: &str) -> RpcServer {
    let server = RpcServer::bind(addr, server_config("srv")).await.unwrap();
    server.handle("echo", echo);
    server.handle("hang", |_req: Request| async move {
        std::future::pending::<()>().await;
        Ok(Bytes::new())
    });
    server.spawn();
    server
}

/// Binds a server on `addr`, retrying while the previous listener on it is still closing.
async fn rebind(addr: SocketAddr) -> RpcServer {
    let until = Instant::now() + 5 * SECOND;
    loop {
        match RpcServer::bind(addr, server_config("srv")).await {
            Ok(server) => {
                server.handle("echo", echo);
                server.spawn();
                return server;
            }
            Err(e) => {
                assert!(Instant::now() < until, "cannot rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

// Proves: when the server shuts down mid-call, every pending call fails with Disconnected
// (promptly, not at its deadline); a new server on the same address serves the very next
// call, which reconnects without waiting.
#[tokio::test]
async fn shutdown_mid_call_then_reconnect() {
    let server = hanging_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    let client = RpcClient::new(addr.to_string(), client_config("cli"));
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let client = client.clone();
        pending.spawn(async move { client.call("hang", Bytes::new(), 60 * SECOND).await });
    }
    wait_until("the server has all three calls", 5 * SECOND, || {
        server.stats().calls == 3
    })
    .await;

    server.shutdown().await;
    while let Some(done) = within("pending calls fail", 5 * SECOND, pending.join_next()).await {
        assert_eq!(done.unwrap(), Err(RpcError::Disconnected));
    }
    wait_until("the client notices", 5 * SECOND, || !client.is_connected()).await;
    drop(server);

    let back = RpcServer::bind(addr, server_config("srv")).await.unwrap();
    back.handle("echo", echo);
    back.spawn();
    let t0 = Instant::now();
    let answer = client
        .call("echo", Bytes::from_static(b"back"), 5 * SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"back")));
    assert!(t0.elapsed() < SECOND, "reconnect took {:?}", t0.elapsed());
    assert_eq!(client.stats().connects, 2);
    assert_eq!(client.stats().disconnects, 1);
}

// Proves: dropping the last server handle (no explicit shutdown) also closes its
// connections: the pending call fails with Disconnected, and a server started again on the
// address is reached by the next call.
#[tokio::test]
async fn dropping_the_server_disconnects_then_reconnect() {
    let server = hanging_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    let client = RpcClient::new(addr.to_string(), client_config("cli"));
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.call("hang", Bytes::new(), 60 * SECOND).await })
    };
    wait_until("the server has the call", 5 * SECOND, || {
        server.stats().calls == 1
    })
    .await;
    drop(server);
    let result = within("the pending call fails", 5 * SECOND, call)
        .await
        .unwrap();
    assert_eq!(result, Err(RpcError::Disconnected));

    let _back = rebind(addr).await;
    let answer = client
        .call("echo", Bytes::from_static(b"back"), 5 * SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"back")));
}

// Proves: a dead peer is not hammered — after a failed attempt, calls inside the backoff
// window whose deadline ends before it fail at once with the last error and make no new
// attempt — and once a server listens there, a call succeeds within the backoff bound.
#[tokio::test]
async fn dead_peer_backs_off_then_recovers() {
    // A port nothing listens on (bound, then released).
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut config = client_config("cli");
    config.reconnect_backoff_min = SECOND;
    config.reconnect_backoff_max = SECOND;
    let client = RpcClient::new(addr.to_string(), config);

    let first = client.call("echo", Bytes::new(), SECOND).await;
    assert!(matches!(first, Err(RpcError::Connect(_))), "{first:?}");
    assert_eq!(client.stats().connect_failures, 1);
    for _ in 0..10 {
        let quick = client
            .call("echo", Bytes::new(), Duration::from_millis(50))
            .await;
        assert_eq!(
            quick, first,
            "a call inside the backoff fails fast with the last error"
        );
    }
    assert_eq!(
        client.stats().connect_failures,
        1,
        "no new attempt inside the backoff"
    );

    let _server = rebind(addr).await;
    let t0 = Instant::now();
    let answer = client
        .call("echo", Bytes::from_static(b"up"), 5 * SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"up")));
    assert!(
        t0.elapsed() < 3 * SECOND,
        "recovery took {:?}",
        t0.elapsed()
    );
}

// Proves: a server that accepts TCP but never completes the handshake makes the call fail
// with Connect at the connect timeout, not hang until the call's deadline.
#[tokio::test]
async fn stalled_handshake_hits_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(stream);
    });
    let mut config = client_config("cli");
    config.connect_timeout = Duration::from_millis(200);
    let client = RpcClient::new(addr.to_string(), config);
    let t0 = Instant::now();
    let result = client.call("echo", Bytes::new(), 10 * SECOND).await;
    assert!(matches!(result, Err(RpcError::Connect(_))), "{result:?}");
    assert!(t0.elapsed() < 5 * SECOND);
    hold.abort();
}

/// A fake server that completes the handshake properly, then reads everything and answers
/// nothing, not even pings.
async fn mute_server() -> SocketAddr {
    use rpc::wire::{self, FrameReader, Hello, Role};
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut reader = FrameReader::new(r, 1 << 20);
        let own = Hello {
            cluster: CLUSTER.into(),
            node: "mute".into(),
            nonce: [3; wire::NONCE_LEN],
            max_frame_bytes: 1 << 20,
        };
        let hello = wire::encode_hello(wire::PROTOCOL_VERSION, &own).unwrap();
        wire::write_frame(&mut w, &hello, &[]).await.unwrap();
        let theirs = reader.next_frame().await.unwrap().unwrap();
        let (_, rest) = wire::split_hello(&theirs).unwrap();
        let peer = wire::decode_hello(rest).unwrap();
        let proof = wire::proof(secret().as_bytes(), Role::Server, &own, &peer);
        wire::write_frame(&mut w, &proof, &[]).await.unwrap();
        w.flush().await.unwrap();
        while let Ok(Some(_)) = reader.next_frame().await {}
    });
    addr
}

// Proves: a connection on which the server goes silent (no answers, no pongs) is declared
// dead after three keepalive intervals: its pending call fails with Disconnected long
// before the call's own deadline.
#[tokio::test]
async fn silent_server_is_detected_by_keepalive() {
    let addr = mute_server().await;
    let mut config = client_config("cli");
    config.keepalive = Duration::from_millis(100);
    let client = RpcClient::new(addr.to_string(), config);
    let t0 = Instant::now();
    let result = client.call("echo", Bytes::new(), 30 * SECOND).await;
    assert_eq!(result, Err(RpcError::Disconnected));
    assert!(t0.elapsed() < 5 * SECOND, "took {:?}", t0.elapsed());
    assert_eq!(client.stats().disconnects, 1);
}

// Proves: on a healthy connection pings are answered, so a call may run for many keepalive
// intervals without the connection being declared dead.
#[tokio::test]
async fn pings_keep_a_busy_connection_alive() {
    let server = hanging_server("127.0.0.1:0").await;
    let mut config = client_config("cli");
    config.keepalive = Duration::from_millis(200);
    let client = RpcClient::new(server.local_addr().to_string(), config);
    assert!(client.call("echo", Bytes::new(), SECOND).await.is_ok());
    // 2 s is more than three times the 600 ms silence limit.
    let result = client.call("hang", Bytes::new(), 2 * SECOND).await;
    assert_eq!(result, Err(RpcError::Timeout));
    assert!(client.is_connected());
    assert_eq!(client.stats().disconnects, 0);
    assert_eq!(server.stats().connections_authenticated, 1);
}

// Proves: while a server is gone, many concurrent calls each wait for one connection attempt
// at most (their own or another caller's), not for attempt after attempt until their deadline
// — a dead peer must cost a caller one backoff, or a store client that tries it first stalls
// every request of a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_dead_server_fail_within_one_attempt() {
    let server = hanging_server("127.0.0.1:0").await;
    let addr = server.local_addr();
    server.shutdown().await;
    let client = RpcClient::new(addr.to_string(), client_config("cli"));
    let deadline = 20 * SECOND;
    let mut calls = tokio::task::JoinSet::new();
    // Waves of callers, so that many arrive during backoffs and race for each attempt.
    for _ in 0..10 {
        for _ in 0..20 {
            let client = client.clone();
            calls.spawn(async move {
                let started = Instant::now();
                let result = client
                    .call("echo", Bytes::from_static(b"x"), deadline)
                    .await;
                (result, started.elapsed())
            });
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut slowest = Duration::ZERO;
    while let Some(joined) = calls.join_next().await {
        let (result, took) = joined.unwrap();
        assert!(
            matches!(result, Err(RpcError::Connect(_))),
            "a call to a dead server: {result:?}"
        );
        slowest = slowest.max(took);
    }
    // One backoff is 500 ms at most; a call starved until its deadline would take 20 s.
    assert!(
        slowest < deadline / 4,
        "a call waited {slowest:?} for a server that is down"
    );
}
