//! Calls over real loopback sockets: round trips, concurrency, routing, deadlines, limits.
#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use rpc::{Bytes, RemoteError, Request, RpcError, RpcServer};
use tokio::sync::Notify;

// Proves: a call reaches its handler with the body, the service name and the caller's
// authenticated node name, and the handler's answer comes back.
#[tokio::test]
async fn call_round_trips() {
    let server = echo_server("srv").await;
    server.handle("whoami", |req: Request| async move {
        Ok(Bytes::from(format!("{} asked {}", req.peer, req.service)))
    });
    let client = client_of(&server, "cli");
    let answer = client
        .call("echo", Bytes::from_static(b"hello"), SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"hello")));
    let answer = client.call("whoami", Bytes::new(), SECOND).await;
    assert_eq!(answer, Ok(Bytes::from_static(b"cli asked whoami")));
    assert_eq!(client.peer_name().as_deref(), Some("srv"));
    let empty = client.call("echo", Bytes::new(), SECOND).await;
    assert_eq!(empty, Ok(Bytes::new()));
}

// Proves: 1,000 calls in flight at once on one client (one connection) all succeed, each
// with its own answer, even though the handlers finish in a different order than they
// started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_calls_pair_correctly() {
    let server = echo_server("srv").await;
    // Finishes after a number of yields that depends on the request, so answers interleave.
    server.handle("shuffle", |req: Request| async move {
        let n = req.body.iter().map(|b| *b as usize).sum::<usize>() % 17;
        for _ in 0..n {
            tokio::task::yield_now().await;
        }
        Ok(req.body)
    });
    let client = client_of(&server, "cli");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let client = client.clone();
        calls.spawn(async move {
            let body = Bytes::from(format!("call-{i}"));
            let answer = client.call("shuffle", body.clone(), 10 * SECOND).await;
            (body, answer)
        });
    }
    let mut ok = 0;
    while let Some(done) = calls.join_next().await {
        let (body, answer) = done.unwrap();
        assert_eq!(answer, Ok(body));
        ok += 1;
    }
    assert_eq!(ok, 1000);
    let stats = server.stats();
    assert_eq!(stats.calls, 1000);
    assert_eq!(
        stats.connections_authenticated, 1,
        "one connection carries every call"
    );
    assert_eq!(client.stats().connects, 1);
}

// Proves: services route by exact name first, then by the longest '/'-ending prefix; a
// handler's error arrives with its code and message; unregistering takes effect for the
// next call; an unknown service answers `no-such-service`.
#[tokio::test]
async fn routing_errors_and_unregistering() {
    let server = echo_server("srv").await;
    server.handle("store/a/", |req: Request| async move {
        Ok(Bytes::from(format!("prefix:{}", req.service)))
    });
    server.handle("store/a/special", |_req: Request| async move {
        Ok(Bytes::from_static(b"exact"))
    });
    server.handle("store/a/deep/", |_req: Request| async move {
        Ok(Bytes::from_static(b"deeper"))
    });
    server.handle("fails", |_req: Request| async move {
        Err(RemoteError::new("not-leader", "ask srv-2"))
    });
    let client = client_of(&server, "cli");
    let call = |service: &'static str| {
        let client = client.clone();
        async move { client.call(service, Bytes::new(), SECOND).await }
    };
    assert_eq!(
        call("store/a/write").await,
        Ok(Bytes::from_static(b"prefix:store/a/write"))
    );
    assert_eq!(
        call("store/a/special").await,
        Ok(Bytes::from_static(b"exact"))
    );
    assert_eq!(
        call("store/a/deep/x/y").await,
        Ok(Bytes::from_static(b"deeper"))
    );
    assert_eq!(
        call("fails").await,
        Err(RpcError::Remote(RemoteError::new(
            "not-leader",
            "ask srv-2"
        )))
    );
    assert!(server.unhandle("store/a/"));
    assert!(!server.unhandle("store/a/"));
    match call("store/a/write").await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, RemoteError::NO_SUCH_SERVICE),
        other => panic!("expected no-such-service, got {other:?}"),
    }
    match call("nothing/here").await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, RemoteError::NO_SUCH_SERVICE),
        other => panic!("expected no-such-service, got {other:?}"),
    }
    assert_eq!(server.stats().unknown_service, 2);
    // The connection survived every error.
    assert_eq!(server.stats().connections_authenticated, 1);
}

// Proves: a call's deadline fires while its handler is still running (Timeout), the same
// connection then carries further calls, and the handler's late answer is discarded
// (counted) without confusing the calls that follow.
#[tokio::test]
async fn deadline_fires_and_connection_stays_usable() {
    let server = echo_server("srv").await;
    let release = Arc::new(Notify::new());
    let started = Arc::new(AtomicUsize::new(0));
    {
        let (release, started) = (release.clone(), started.clone());
        server.handle("slow", move |req: Request| {
            let (release, started) = (release.clone(), started.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                Ok(req.body)
            }
        });
    }
    let client = client_of(&server, "cli");
    let t0 = tokio::time::Instant::now();
    let answer = client
        .call(
            "slow",
            Bytes::from_static(b"late"),
            Duration::from_millis(200),
        )
        .await;
    assert_eq!(answer, Err(RpcError::Timeout));
    assert!(t0.elapsed() < 5 * SECOND);
    assert_eq!(started.load(Ordering::SeqCst), 1);

    let answer = client
        .call("echo", Bytes::from_static(b"after"), SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"after")));

    release.notify_one();
    wait_until("the late answer arrives", 5 * SECOND, || {
        client.stats().late_responses == 1
    })
    .await;
    let answer = client
        .call("echo", Bytes::from_static(b"again"), SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"again")));
    assert_eq!(client.stats().timeouts, 1);
    assert_eq!(
        server.stats().connections_authenticated,
        1,
        "no reconnect was needed"
    );
}

// Proves: a handler sees the caller's deadline, roughly as far away as the caller's.
#[tokio::test]
async fn handler_sees_deadline() {
    let server = echo_server("srv").await;
    server.handle("left", |req: Request| async move {
        let left = req
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        Ok(Bytes::from(left.as_millis().to_string()))
    });
    let client = client_of(&server, "cli");
    let answer = client
        .call("left", Bytes::new(), 10 * SECOND)
        .await
        .unwrap();
    let left: u64 = std::str::from_utf8(&answer).unwrap().parse().unwrap();
    assert!((5_000..=10_000).contains(&left), "{left} ms left");
}

// Proves: frame limits are enforced by the sender from the limit the peer announced: a
// request over the server's limit fails locally with FrameTooLarge, an answer over the
// client's limit comes back as `response-too-large`; the connection is kept both times.
#[tokio::test]
async fn frame_limits_are_clear_errors() {
    let mut config = server_config("srv");
    config.max_frame_bytes = 1024;
    let server = echo_server_with(config).await;
    server.handle("big", |_req: Request| async move {
        Ok(Bytes::from(vec![7u8; 4096]))
    });
    let mut cc = client_config("cli");
    cc.max_frame_bytes = 2048;
    let client = rpc::RpcClient::new(server.local_addr().to_string(), cc);

    let answer = client
        .call("echo", Bytes::from(vec![1u8; 2000]), SECOND)
        .await;
    assert!(
        matches!(answer, Err(RpcError::FrameTooLarge { limit: 1024, .. })),
        "{answer:?}"
    );
    match client.call("big", Bytes::new(), SECOND).await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, RemoteError::RESPONSE_TOO_LARGE),
        other => panic!("expected response-too-large, got {other:?}"),
    }
    let answer = client
        .call("echo", Bytes::from(vec![1u8; 900]), SECOND)
        .await;
    assert_eq!(answer.map(|b| b.len()), Ok(900));
    assert_eq!(server.stats().connections_authenticated, 1);
    assert_eq!(server.stats().bad_frames, 0);
}

// Proves: a large body (8 MiB, far above one read chunk) crosses intact both ways.
#[tokio::test]
async fn large_bodies_cross_intact() {
    let server = echo_server("srv").await;
    let client = client_of(&server, "cli");
    let body: Bytes = (0..8 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let answer = client.call("echo", body.clone(), 30 * SECOND).await;
    assert_eq!(answer, Ok(body));
}

// Proves: a panicking handler answers `handler-panicked` and the server keeps serving on the
// same connection.
#[tokio::test]
async fn handler_panic_is_an_error_not_a_crash() {
    let server = echo_server("srv").await;
    server.handle("boom", |_req: Request| async move {
        if true {
            panic!("handler bug");
        }
        Ok(Bytes::new())
    });
    let client = client_of(&server, "cli");
    match client.call("boom", Bytes::new(), SECOND).await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, RemoteError::HANDLER_PANICKED),
        other => panic!("expected handler-panicked, got {other:?}"),
    }
    let answer = client.call("echo", Bytes::from_static(b"ok"), SECOND).await;
    assert_eq!(answer, Ok(Bytes::from_static(b"ok")));
}

// Proves: a closed client refuses further calls with Closed; other clients are unaffected.
#[tokio::test]
async fn closed_client_refuses_calls() {
    let server = echo_server("srv").await;
    let client = client_of(&server, "cli");
    let other = client_of(&server, "cli-2");
    assert!(client.call("echo", Bytes::new(), SECOND).await.is_ok());
    client.close();
    assert_eq!(
        client.call("echo", Bytes::new(), SECOND).await,
        Err(RpcError::Closed)
    );
    assert!(other.call("echo", Bytes::new(), SECOND).await.is_ok());
}

// Proves: handlers registered while the server runs are served from the next call on, and
// the server can be run in the caller's task with `run`.
#[tokio::test]
async fn run_in_task_and_register_later() {
    let server = RpcServer::bind("127.0.0.1:0", server_config("srv"))
        .await
        .unwrap();
    let runner = {
        let server = server.clone();
        tokio::spawn(async move { server.run().await })
    };
    let client = client_of(&server, "cli");
    match client.call("late", Bytes::new(), SECOND).await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, RemoteError::NO_SUCH_SERVICE),
        other => panic!("expected no-such-service, got {other:?}"),
    }
    server.handle("late", echo);
    let answer = client
        .call("late", Bytes::from_static(b"now"), SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"now")));
    server.shutdown().await;
    within("run returns after shutdown", 5 * SECOND, runner)
        .await
        .unwrap();
}

// Proves: a call a process makes to its own server reaches the same handler as a peer's, with
// this node's name as the peer, crosses no socket (no connection, no counted remote call),
// names an unknown service the same way, and ends by its deadline while the handler still
// runs to its end, as it would for a peer that stopped waiting.
#[tokio::test]
async fn a_call_to_its_own_server_runs_in_process_with_the_same_answers() {
    let server = echo_server("srv").await;
    server.handle("whoami", |req: Request| async move {
        Ok(Bytes::from(format!("{} asked {}", req.peer, req.service)))
    });
    let release = Arc::new(Notify::new());
    let finished = Arc::new(AtomicUsize::new(0));
    {
        let (release, finished) = (release.clone(), finished.clone());
        server.handle("slow", move |req: Request| {
            let (release, finished) = (release.clone(), finished.clone());
            async move {
                release.notified().await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(req.body)
            }
        });
    }
    let answer = server
        .call_local("echo", Bytes::from_static(b"hello"), SECOND)
        .await;
    assert_eq!(answer, Ok(Bytes::from_static(b"hello")));
    let answer = server.call_local("whoami", Bytes::new(), SECOND).await;
    assert_eq!(answer, Ok(Bytes::from_static(b"srv asked whoami")));
    match server.call_local("nope", Bytes::new(), SECOND).await {
        Err(RpcError::Remote(e)) => assert_eq!(e.code, RemoteError::NO_SUCH_SERVICE),
        other => panic!("expected no-such-service, got {other:?}"),
    }
    let late = server
        .call_local("slow", Bytes::new(), Duration::from_millis(100))
        .await;
    assert_eq!(late, Err(RpcError::Timeout));
    release.notify_one();
    wait_until("the abandoned handler finishes", 5 * SECOND, || {
        finished.load(Ordering::SeqCst) == 1
    })
    .await;
    let stats = server.stats();
    assert_eq!(stats.local_calls, 4);
    assert_eq!(stats.unknown_service, 1);
    assert_eq!((stats.calls, stats.connections_accepted), (0, 0));
}
