//! Tandem's one inter-server transport: framed, authenticated, multiplexed request/response
//! over TCP, with a deadline on every call.
//!
//! A server ([`RpcServer`]) dispatches named services (`"raft/store-a/append"`) to async
//! handlers; a client ([`RpcClient`]) keeps one connection to one server, opened lazily,
//! reopened after failures, carrying many calls at once. Both ends prove knowledge of the
//! shared [`ClusterSecret`] before a single request is read. The wire format is in [`wire`];
//! test partitions are made with [`faults`].
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use rpc::{ClientConfig, ClusterSecret, RpcClient, RpcServer, ServerConfig};
//!
//! let secret = ClusterSecret::load("cluster.secret")?;
//! let server = RpcServer::bind("127.0.0.1:0", ServerConfig::new(secret.clone(), "lab", "a")).await?;
//! server.handle("echo", |req: rpc::Request| async move { Ok(req.body) });
//! server.spawn();
//!
//! let client = RpcClient::new(server.local_addr().to_string(), ClientConfig::new(secret, "lab", "b"));
//! let answer = client.call("echo", "hi".into(), Duration::from_secs(1)).await?;
//! # Ok(()) }
//! ```

mod client;
mod conn;
pub mod faults;
mod secret;
mod server;
pub mod wire;

pub use bytes::Bytes;
pub use client::{ClientConfig, ClientStats, RpcClient};
pub use secret::ClusterSecret;
pub use server::{BoxFuture, Handler, Request, RpcServer, ServerConfig, ServerStats};

use serde::{Deserialize, Serialize};

/// An error produced on the far side of a call: by the handler, or by the server when no
/// handler could run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RemoteError {
    /// A stable, machine-readable kebab-case code (`no-such-service`, or the handler's own).
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
}

impl RemoteError {
    /// No handler is registered for the requested service.
    pub const NO_SUCH_SERVICE: &'static str = "no-such-service";
    /// The handler panicked; the server stays up.
    pub const HANDLER_PANICKED: &'static str = "handler-panicked";
    /// The handler's answer is larger than the caller accepts.
    pub const RESPONSE_TOO_LARGE: &'static str = "response-too-large";

    /// An error with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> RemoteError {
        RemoteError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// No connection could be made (refused, unreachable, connect timeout, protocol garbage
    /// during the handshake); the text says which.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The peer does not know our cluster secret (or we do not know its).
    #[error("authentication with the peer failed (cluster secrets differ)")]
    Auth,
    /// The peer speaks another protocol version.
    #[error("rpc protocol version mismatch: ours {ours}, theirs {theirs}")]
    Version {
        /// Our [`wire::PROTOCOL_VERSION`].
        ours: u16,
        /// The peer's.
        theirs: u16,
    },
    /// The peer belongs to another cluster.
    #[error("cluster name mismatch: ours {ours:?}, theirs {theirs:?}")]
    Cluster {
        /// Our cluster name.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// The call's deadline passed; a late answer is discarded.
    #[error("call timed out")]
    Timeout,
    /// The connection dropped (or the peer is blocked by [`faults`]) before the answer came;
    /// the call may or may not have run.
    #[error("connection to the peer was lost")]
    Disconnected,
    /// The handler (or the remote server) answered with an error.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// The request is larger than the peer accepts; nothing was sent.
    #[error("request frame of {size} bytes exceeds the peer's limit of {limit}")]
    FrameTooLarge {
        /// The frame's size.
        size: u64,
        /// The peer's announced limit.
        limit: u32,
    },
    /// The client was closed.
    #[error("client closed")]
    Closed,
}
