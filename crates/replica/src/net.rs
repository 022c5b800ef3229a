//! Replication traffic: openraft's network traits over an application-provided [`Transport`]
//! (the `rpc` crate in servers, an in-process router in simulations), and the receiving side
//! that turns requests into calls on the local replica.
//!
//! Messages are postcard-encoded. Service names are `raft/<group>/<kind>`, `kind` one of
//! `append`, `vote`, `prevote`, `snapshot-chunk`, `transfer`, and `held` (what the other members
//! hold, asked of the leader by a member that keeps its log for them).
//!
//! A snapshot (a copy of the whole state, as large as the database) travels in chunks of
//! [`ReplicaConfig::snapshot_chunk_bytes`](crate::ReplicaConfig), one call each, in order; the
//! receiver installs it when the last one arrives. In one message it could not exceed the
//! transport's frame limit (64 MiB in `rpc`), and a follower of a larger store could never
//! be seeded or catch up.

use crate::types::{
    Member, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote, bytes_as_seq,
};
use openraft::OptionalSend;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How replicas reach each other. Errors are reasons in words: every failure is "unreachable"
/// to the consensus layer, which retries.
pub trait Transport: Send + Sync + 'static {
    /// Calls `service` on `to` with `body`, waiting at most `timeout`.
    fn call(
        &self,
        to: &Member,
        service: String,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, String>>;
}

/// The service name of one kind of replication message for a group.
pub fn service(group: &str, kind: &str) -> String {
    format!("raft/{group}/{kind}")
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("encode: {e}"))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("decode: {e}"))
}

/// Creates a connection object per peer; nothing connects until a call is made.
pub struct Network {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) group: String,
    pub(crate) snapshot_chunk_bytes: usize,
    /// Read snapshot pieces on a blocking thread (real storage) or inline (simulation).
    pub(crate) blocking: bool,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, _target: NodeId, node: &Member) -> Conn {
        Conn {
            transport: self.transport.clone(),
            group: self.group.clone(),
            to: node.clone(),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.max(1),
            blocking: self.blocking,
        }
    }
}

/// The way to one peer.
pub struct Conn {
    transport: Arc<dyn Transport>,
    group: String,
    to: Member,
    snapshot_chunk_bytes: usize,
    blocking: bool,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl Conn {
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Unreachable<TypeConfig>> {
        let body = encode(req).map_err(unreachable)?;
        let reply = self
            .transport
            .call(&self.to, service(&self.group, kind), body, timeout)
            .await
            .map_err(unreachable)?;
        // The peer answers Result<Resp, String>: an Err means it could not handle it (stopped).
        let answer: Result<Resp, String> = decode(&reply).map_err(unreachable)?;
        answer.map_err(unreachable)
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call("append", &rpc, option.soft_ttl()).await?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call("vote", &rpc, option.soft_ttl()).await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call("prevote", &rpc, option.soft_ttl()).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot;
        let total = data.len();
        let send = async {
            let mut offset = 0;
            loop {
                // Read from the snapshot file a piece at a time: a snapshot is as large as the
                // database, and is never held in memory whole. Off the runtime's threads: a
                // piece from a cold disk takes milliseconds, and they carry the heartbeats.
                let (piece, size) = (data.clone(), self.snapshot_chunk_bytes);
                let bytes =
                    crate::machine::off_runtime(self.blocking, move || piece.read_at(offset, size))
                        .await
                        .map_err(|e| StreamingError::Unreachable(unreachable(e)))?;
                let end = offset + bytes.len() as u64;
                let chunk = SnapshotChunk {
                    vote,
                    meta: snapshot.meta.clone(),
                    total,
                    offset,
                    bytes,
                };
                let reply: ChunkReply = self
                    .call("snapshot-chunk", &chunk, option.soft_ttl())
                    .await?;
                match reply {
                    ChunkReply::Installed(resp) => return Ok(resp),
                    ChunkReply::Received if end < total => offset = end,
                    ChunkReply::Received => {
                        return Err(StreamingError::Unreachable(unreachable(
                            "the peer received the whole snapshot but did not install it",
                        )));
                    }
                }
            }
        };
        let sent = tokio::select! {
            sent = send => sent,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        // openraft tries again later, without a word: say why, or a replica that never gets
        // seeded shows no reason anywhere.
        if let Err(e) = &sent {
            tracing::warn!(group = %self.group, to = %self.to, bytes = total, error = %e, "sending a snapshot failed");
        }
        sent
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call("transfer", &req, option.soft_ttl()).await?)
    }
}

/// One piece of a snapshot as sent over the wire: the sender's vote, the snapshot's metadata
/// and size, where the bytes start.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    pub total: u64,
    pub offset: u64,
    #[serde(with = "bytes_as_seq")]
    pub bytes: Vec<u8>,
}

/// The answer to a chunk: more wanted, or (to the last one) the installed snapshot's answer.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum ChunkReply {
    Received,
    Installed(SnapshotResponse<TypeConfig>),
}
