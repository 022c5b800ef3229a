//! Bad input from the network closes the offending connection, is counted, and affects no
//! other connection; nothing panics.
#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use std::net::SocketAddr;

use common::*;
use rpc::wire::{self, FrameReader, Hello, Role};
use rpc::{Bytes, RpcClient, RpcError, RpcServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Sends `bytes` on a fresh unauthenticated connection, then reads until the server closes.
async fn raw_send(addr: SocketAddr, bytes: &[u8], half_close: bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may close (even reset) before taking everything; that is its right.
    let _ = stream.write_all(bytes).await;
    if half_close {
        let _ = stream.shutdown().await;
    }
    let mut buf = [0u8; 4096];
    within("the server closes the connection", 5 * SECOND, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// A connection that has passed the handshake as a client named `node`, done by hand.
async fn authenticated(
    addr: SocketAddr,
    node: &str,
) -> (FrameReader<OwnedReadHalf>, OwnedWriteHalf) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut reader = FrameReader::new(r, 1 << 20);
    let own = Hello {
        cluster: CLUSTER.into(),
        node: node.into(),
        nonce: [5; wire::NONCE_LEN],
        max_frame_bytes: 1 << 20,
    };
    wire::write_frame(
        &mut w,
        &wire::encode_hello(wire::PROTOCOL_VERSION, &own).unwrap(),
        &[],
    )
    .await
    .unwrap();
    let theirs = reader.next_frame().await.unwrap().unwrap();
    let peer = wire::decode_hello(wire::split_hello(&theirs).unwrap().1).unwrap();
    let proof = wire::proof(secret().as_bytes(), Role::Client, &own, &peer);
    wire::write_frame(&mut w, &proof, &[]).await.unwrap();
    let their_proof = reader.next_frame().await.unwrap().unwrap();
    assert!(wire::verify_proof(
        secret().as_bytes(),
        Role::Server,
        &own,
        &peer,
        &their_proof
    ));
    (reader, w)
}

/// A server with `echo`, a 1 MiB frame limit, and a client that keeps a call going on it.
async fn server_and_bystander() -> (RpcServer, RpcClient) {
    let mut config = server_config("srv");
    config.max_frame_bytes = 1 << 20;
    let server = echo_server_with(config).await;
    let client = client_of(&server, "bystander");
    assert!(client.call("echo", Bytes::new(), SECOND).await.is_ok());
    (server, client)
}

/// The bystander's connection is the same one and still serves.
async fn bystander_unaffected(server: &RpcServer, client: &RpcClient) {
    let answer = client
        .call("echo", Bytes::from_static(b"still here"), SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"still here")));
    assert_eq!(client.stats().connects, 1);
    assert_eq!(client.stats().disconnects, 0);
    assert_eq!(server.stats().calls, 2);
}

// Proves: garbage instead of a hello (an HTTP request, a small frame with a bad magic, a
// hello cut short) closes that connection and is counted as a bad frame; another client's
// connection carries on.
#[tokio::test]
async fn garbage_before_handshake() {
    let (server, client) = server_and_bystander().await;
    let addr = server.local_addr();
    raw_send(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false).await;
    raw_send(addr, &[0, 0, 0, 4, b'a', b'b', b'c', b'd'], false).await;
    let mut hello = wire::encode_hello(
        wire::PROTOCOL_VERSION,
        &Hello {
            cluster: CLUSTER.into(),
            node: "x".into(),
            nonce: [1; wire::NONCE_LEN],
            max_frame_bytes: 1,
        },
    )
    .unwrap();
    hello.truncate(hello.len() - 3);
    let mut framed = (hello.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&hello);
    raw_send(addr, &framed, false).await;
    wait_until("three bad frames are counted", 5 * SECOND, || {
        server.stats().bad_frames == 3
    })
    .await;
    assert_eq!(server.stats().connections_authenticated, 1);
    bystander_unaffected(&server, &client).await;
}

// Proves: an oversized length prefix (before the handshake, and after it) closes the
// connection without the server reserving the claimed size, and is counted.
#[tokio::test]
async fn oversized_length_prefix() {
    let (server, client) = server_and_bystander().await;
    let addr = server.local_addr();
    // 4 GiB claimed before the handshake: far above its 4 KiB limit.
    raw_send(addr, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3], false).await;
    // Just above the 1 MiB limit after the handshake.
    let (mut reader, mut w) = authenticated(addr, "big-talker").await;
    let _ = w.write_all(&((1u32 << 20) + 1).to_be_bytes()).await;
    let _ = w.write_all(&[0u8; 1024]).await;
    assert!(
        matches!(
            within("closed", 5 * SECOND, reader.next_frame()).await,
            Ok(None) | Err(_)
        ),
        "the server closed the connection"
    );
    wait_until("two bad frames are counted", 5 * SECOND, || {
        server.stats().bad_frames == 2
    })
    .await;
    bystander_unaffected(&server, &client).await;
}

// Proves: after the handshake, a frame with an unknown message variant, a message only a
// server may send, a body on a bodiless message, and a frame cut short by the end of the
// stream each close their connection and are counted.
#[tokio::test]
async fn garbage_after_handshake() {
    let (server, client) = server_and_bystander().await;
    let addr = server.local_addr();
    let ping = wire::encode_header(&wire::Header::Ping).unwrap();
    let pong = wire::encode_header(&wire::Header::Pong).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown variant", vec![0, 0, 0, 2, 200, 0]),
        (
            "server message",
            [vec![0, 0, 0, pong.len() as u8], pong.clone()].concat(),
        ),
        (
            "body on ping",
            [vec![0, 0, 0, ping.len() as u8 + 1], ping.clone(), vec![9]].concat(),
        ),
        ("truncated", vec![0, 0, 0, 50, 1, 2, 3]),
    ];
    for (what, bytes) in &cases {
        let (mut reader, mut w) = authenticated(addr, "garbler").await;
        // A ping first proves the connection was good before the garbage.
        wire::write_frame(&mut w, &ping, &[]).await.unwrap();
        let pong_back = within("pong", 5 * SECOND, reader.next_frame())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pong_back, Bytes::from(pong.clone()));
        w.write_all(bytes).await.unwrap();
        if *what == "truncated" {
            w.shutdown().await.unwrap();
        }
        let end = within(what, 5 * SECOND, reader.next_frame()).await;
        assert!(
            matches!(end, Ok(None) | Err(_)),
            "{what}: connection closed"
        );
    }
    wait_until("every case is counted", 5 * SECOND, || {
        server.stats().bad_frames == cases.len() as u64
    })
    .await;
    assert_eq!(server.stats().calls, 1, "no garbage reached a handler");
    bystander_unaffected(&server, &client).await;
}

// Proves: a server that sends garbage after the handshake makes the client drop that
// connection: the call in flight fails with Disconnected and the client counts a bad frame.
#[tokio::test]
async fn garbage_from_server_closes_client_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut reader = FrameReader::new(r, 1 << 20);
        let own = Hello {
            cluster: CLUSTER.into(),
            node: "liar".into(),
            nonce: [7; wire::NONCE_LEN],
            max_frame_bytes: 1 << 20,
        };
        let hello = wire::encode_hello(wire::PROTOCOL_VERSION, &own).unwrap();
        wire::write_frame(&mut w, &hello, &[]).await.unwrap();
        let theirs = reader.next_frame().await.unwrap().unwrap();
        let peer = wire::decode_hello(wire::split_hello(&theirs).unwrap().1).unwrap();
        wire::write_frame(
            &mut w,
            &wire::proof(secret().as_bytes(), Role::Server, &own, &peer),
            &[],
        )
        .await
        .unwrap();
        let _their_proof = reader.next_frame().await.unwrap();
        let _request = reader.next_frame().await.unwrap();
        w.write_all(&[0, 0, 0, 3, 250, 250, 250]).await.unwrap();
        while let Ok(Some(_)) = reader.next_frame().await {}
    });
    let client = RpcClient::new(addr.to_string(), client_config("cli"));
    let result = client.call("echo", Bytes::new(), 5 * SECOND).await;
    assert_eq!(result, Err(RpcError::Disconnected));
    assert_eq!(client.stats().bad_frames, 1);
}

// Proves: the connection limit holds: connections beyond `max_connections` are closed on
// accept and counted, while the ones already open keep working.
#[tokio::test]
async fn connection_limit() {
    let mut config = server_config("srv");
    config.max_connections = 1;
    let server = echo_server_with(config).await;
    let client = client_of(&server, "first");
    assert!(client.call("echo", Bytes::new(), SECOND).await.is_ok());
    let second = client_of(&server, "second");
    assert_eq!(
        second.call("echo", Bytes::new(), SECOND).await,
        Err(RpcError::Disconnected)
    );
    assert_eq!(server.stats().connections_refused, 1);
    assert!(client.call("echo", Bytes::new(), SECOND).await.is_ok());
}
