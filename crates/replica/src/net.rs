//! Replication traffic: openraft's network traits over an application-provided [`Transport`]
//! (the `rpc` crate in servers, an in-process router in simulations), and the receiving side
//! that turns requests into calls on the local replica.
//!
//! Messages are postcard-encoded. Service names are `raft/<group>/<kind>`, `kind` one of
//! `append`, `vote`, `prevote`, `snapshot`, `transfer`, and `held` (what the other members hold,
//! asked of the leader by a member that keeps its log for them).

use crate::types::{Member, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};
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
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, _target: NodeId, node: &Member) -> Conn {
        Conn {
            transport: self.transport.clone(),
            group: self.group.clone(),
            to: node.clone(),
        }
    }
}

/// The way to one peer.
pub struct Conn {
    transport: Arc<dyn Transport>,
    group: String,
    to: Member,
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
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        Ok(self.call("snapshot", &req, option.soft_ttl()).await?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        Ok(self.call("transfer", &req, option.soft_ttl()).await?)
    }
}

/// A snapshot as sent over the wire: the sender's vote, the metadata, the bytes.
pub(crate) type SnapshotRequest = (Vote, SnapshotMeta, SnapshotData);
