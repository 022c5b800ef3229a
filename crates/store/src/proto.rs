//! What store clients and replicas say to each other over `rpc` (services `store/<name>/<op>`),
//! postcard-encoded.

use crate::machine::StoreError;
use crate::model::{Applied, Envelope, FailoverEvent, Query, QueryResult};
use serde::{Deserialize, Serialize};

/// A replica's address for clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub server: String,
    pub addr: String,
}

/// Why a replica did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The store refused the command; retrying changes nothing.
    #[error("{0}")]
    Store(StoreError),
    /// This replica is not the primary; the primary, when known.
    #[error("not the primary (primary: {})", primary.as_ref().map_or("unknown".to_string(), |p| p.server.clone()))]
    NotPrimary { primary: Option<Endpoint> },
    /// The replica cannot serve now (no quorum, an election, an outcome still unknown): try
    /// again, here or elsewhere.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// An operation that cannot be done, with the reason (admin operations).
    #[error("{0}")]
    Refused(String),
}

/// A reply: the value, or why not.
pub type Reply<T> = Result<T, Refusal>;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Linearizable: on the primary, after a read-index round with a quorum.
    Primary,
    /// Any replica whose data is at most this old (a readable secondary).
    Stale { max_ms: u64 },
}

/// `store/<name>/query`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRequest {
    pub query: Query,
    pub consistency: Consistency,
}

/// `store/<name>/query`'s answer: the result, and how old the data may be (0 on the primary).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryAnswer {
    pub result: QueryResult,
    pub staleness_ms: u64,
    pub server: String,
}

/// One replica in `store status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub server: String,
    /// `primary` or `secondary` (availability group); `principal`, `mirror` or `witness`
    /// (mirroring).
    pub role: String,
    /// `sync` (a voter) or `async` (a learner).
    pub commit: String,
    /// `automatic` or `manual`.
    pub failover: String,
    pub readable: bool,
    /// Connected to the primary, and held everything the primary had within the last
    /// election timeout: behind by no more than what is in flight.
    pub synchronized: bool,
    /// Log positions behind the primary.
    pub lag_entries: u64,
    /// How long ago it last held everything the primary had (0 when it holds it now).
    pub lag_ms: u64,
    /// It answered the primary recently.
    pub healthy: bool,
    /// Its last log position as the primary knows it.
    pub matched: Option<u64>,
}

/// `store status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    pub store: String,
    pub mode: String,
    /// The server that reported this status.
    pub reported_by: String,
    pub primary: Option<String>,
    pub term: u64,
    /// Milliseconds since a quorum last acknowledged the primary (its lease is fresh while
    /// this is below the election timeout).
    pub lease_age_ms: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub listener: Option<String>,
    pub replicas: Vec<ReplicaStatus>,
    pub failovers: Vec<FailoverEvent>,
    /// Mirroring stores, as the principal sees them.
    #[serde(default)]
    pub mirroring: Option<MirroringStatus>,
}

/// The state of a mirroring session, in the terms of database mirroring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirroringStatus {
    /// `high-safety` (commits wait for the mirror) or `high-performance` (they do not).
    pub safety: String,
    pub mirror: String,
    pub witness: Option<String>,
    /// `synchronized` (the mirror holds every commit), `synchronizing` (connected, catching
    /// up) or `suspended` (the mirror is not connected).
    pub state: String,
    /// The principal commits without the mirror holding its commits: a loss of the principal
    /// now loses data (or, with a witness, cannot fail over automatically).
    pub exposed: bool,
}

/// `store/<name>/apply`.
pub type ApplyRequest = Envelope;
/// Its answer.
pub type ApplyReply = Reply<Applied>;

/// `store/<name>/backup`: a full backup onto the share at `share` (a path on the serving
/// node's machine), taken by the primary (the owner, for a failover cluster).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupRequest {
    pub share: String,
    /// A log backup (the transaction log since the last one) rather than a full one.
    #[serde(default)]
    pub log: bool,
    /// With a log backup: also take a full one when the newest on the share is older than
    /// this (so that the retention policy can let old segments go).
    #[serde(default)]
    pub full_every_s: Option<u64>,
    /// With a log backup: close the store's writes first ([`crate::Command::CloseWrites`],
    /// with this reason), so the segment is the last one — the tail-log backup of a store
    /// that another takes over.
    #[serde(default)]
    pub close_writes: Option<String>,
}

/// `store/<name>/failover`: a planned failover to a replica (or the best synchronized one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverRequest {
    pub to: Option<String>,
    /// The primary the failover is away from. A node that is primary and is not `from` has
    /// already taken over — the request is a retry whose first answer was lost with the old
    /// primary's listener — and answers with its status instead of failing over again.
    #[serde(default)]
    pub from: Option<String>,
}

/// `store/<name>/mirroring`: a mirroring store's safety level and witness, changed while it
/// serves. `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MirroringChange {
    /// `high-safety` or `high-performance`.
    pub safety: Option<String>,
    /// Whether the topology's witness takes part (high safety only).
    pub witness: Option<bool>,
}

/// `store/<name>/force`: what forcing service here would lose, or doing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForceRequest {
    /// `false`: only report the loss; `true`: force service.
    pub confirm: bool,
}

/// The loss a forced failover implies, as this replica knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceReport {
    pub server: String,
    /// The last position this replica holds (applied, or received into its log: forcing
    /// service applies its whole log).
    pub last_applied: u64,
    /// The highest position the primary told this replica was committed.
    pub primary_committed_seen: u64,
    /// Committed transactions this replica lacks, as far as it knows.
    pub lost_transactions: u64,
    /// The positions lost, e.g. "1043..=1050".
    pub lost_positions: String,
    /// Unix ms of the last message from the primary: anything it committed after that is
    /// unknown here and lost too.
    pub last_primary_contact_ms: Option<u64>,
    /// Done (when `confirm`): the replica now serves as the only member of a new generation.
    pub forced: bool,
    pub generation: u64,
}

/// `store/<name>/add-replica`, `remove-replica`, `set-commit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberChange {
    pub server: String,
    /// The server's rpc address (add only).
    pub addr: Option<String>,
    /// `sync` or `async`.
    pub commit: Option<String>,
}

/// Encodes a message.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Decodes a message; the error names what could not be read.
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, Refusal> {
    postcard::from_bytes(b).map_err(|e| Refusal::Refused(format!("unreadable {what}: {e}")))
}
