//! Fault injection: blocking a peer cuts real connections both ways; unblocking heals.
//! (The switch is process-wide, so this binary holds the only test that uses it.)
#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use common::*;
use rpc::{Bytes, Request, RpcError, faults};

// Proves: blocking the server's name fails calls to it with Disconnected (the call in flight
// too, and new calls without connecting); unblocking lets the next call reconnect. Blocking
// the client's name makes the server drop the client's connection and refuse new ones;
// `clear` heals everything.
#[tokio::test]
async fn block_and_unblock_peers() {
    let server = echo_server("faults-srv").await;
    server.handle("hang", |_req: Request| async move {
        std::future::pending::<()>().await;
        Ok(Bytes::new())
    });
    let client = client_of(&server, "faults-cli");
    assert!(client.call("echo", Bytes::new(), SECOND).await.is_ok());

    // Outgoing: block the server from the client's side.
    let in_flight = {
        let client = client.clone();
        tokio::spawn(async move { client.call("hang", Bytes::new(), 60 * SECOND).await })
    };
    wait_until("the server has the call", 5 * SECOND, || {
        server.stats().calls == 2
    })
    .await;
    faults::block("faults-srv");
    assert_eq!(faults::blocked(), vec!["faults-srv".to_string()]);
    let result = within("the call in flight fails", 5 * SECOND, in_flight)
        .await
        .unwrap();
    assert_eq!(result, Err(RpcError::Disconnected));
    let connects = client.stats().connects;
    assert_eq!(
        client.call("echo", Bytes::new(), SECOND).await,
        Err(RpcError::Disconnected)
    );
    assert_eq!(
        client.stats().connects,
        connects,
        "no connection to a blocked peer"
    );
    wait_until("the server sees the connection go", 5 * SECOND, || {
        server.stats().connections_open == 0
    })
    .await;
    faults::unblock("faults-srv");
    assert_eq!(
        client.call("echo", Bytes::new(), SECOND).await,
        Ok(Bytes::new())
    );

    // Incoming: block the client's name; the server drops it and refuses it.
    let refused = server.stats().handshake_failures;
    faults::block("faults-cli");
    wait_until(
        "the server drops the client's connection",
        5 * SECOND,
        || server.stats().connections_open == 0,
    )
    .await;
    assert_eq!(
        client.call("echo", Bytes::new(), SECOND).await,
        Err(RpcError::Disconnected)
    );
    wait_until("the server refuses the new connection", 5 * SECOND, || {
        server.stats().handshake_failures > refused
    })
    .await;
    assert_eq!(
        server.stats().calls,
        3,
        "no call of a blocked peer reached a handler"
    );

    faults::clear();
    assert!(faults::blocked().is_empty());
    // The client backs off briefly after the refused attempt; its deadline covers that.
    assert_eq!(
        client.call("echo", Bytes::new(), 5 * SECOND).await,
        Ok(Bytes::new())
    );
}
