//! The file as written: every field optional and spanned, so that validation can report
//! missing fields and point at the offending value.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::model::{Commit, FailoverMode, PoolKind, ReplicaRole, Safety, SecondaryMode, StoreMode};

/// An optional value with its position.
pub(crate) type Opt<T> = Option<Spanned<T>>;
/// An optional list of names, with the position of the list and of each name.
pub(crate) type Names = Option<Spanned<Vec<Spanned<String>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    pub name: Opt<String>,
    pub sip_domain: Opt<String>,
    #[serde(default)]
    pub site: Vec<Spanned<RawSite>>,
    #[serde(default)]
    pub server: Vec<Spanned<RawServer>>,
    #[serde(default)]
    pub pool: Vec<Spanned<RawPool>>,
    #[serde(default)]
    pub store: Vec<Spanned<RawStore>>,
    #[serde(default)]
    pub pair: Vec<Spanned<RawPair>>,
    #[serde(default)]
    pub log_shipping: Vec<Spanned<RawLogShipping>>,
    pub sip: Option<Spanned<RawSip>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSip {
    pub digest_algorithms: Names,
    pub register_expires_min_s: Opt<u64>,
    pub register_expires_max_s: Opt<u64>,
    pub register_expires_default_s: Opt<u64>,
    pub presence_expires_min_s: Opt<u64>,
    pub presence_expires_max_s: Opt<u64>,
    pub presence_expires_default_s: Opt<u64>,
    pub max_contacts_per_user: Opt<u64>,
    pub nonce_ttl_s: Opt<u64>,
    pub max_queue_delay_ms: Opt<u64>,
    pub max_pending_requests: Opt<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSite {
    pub name: Opt<String>,
    pub description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub name: Opt<String>,
    pub site: Opt<String>,
    pub sip_udp: Opt<SocketAddr>,
    pub sip_tcp: Opt<SocketAddr>,
    pub rpc: Opt<SocketAddr>,
    pub admin: Opt<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub name: Opt<String>,
    pub kind: Opt<PoolKind>,
    pub site: Opt<String>,
    pub sites: Names,
    pub servers: Names,
    pub active: Names,
    pub idle: Names,
    pub store: Opt<String>,
    /// Signed so that 0 and negative values get the `routing-groups` rule, not `syntax`.
    pub routing_groups: Opt<i64>,
    /// Signed for the same reason.
    pub replace_after_s: Opt<i64>,
    pub group_replicas: Opt<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub name: Opt<String>,
    pub site: Opt<String>,
    pub mode: Opt<StoreMode>,
    pub listener: Opt<SocketAddr>,
    pub safety: Opt<Safety>,
    pub shared_path: Opt<PathBuf>,
    pub lease_ms: Opt<u64>,
    #[serde(default)]
    pub replica: Vec<Spanned<RawReplica>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplica {
    pub server: Opt<String>,
    pub role: Opt<ReplicaRole>,
    pub commit: Opt<Commit>,
    pub failover: Opt<FailoverMode>,
    pub readable: Opt<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPair {
    pub pools: Names,
    pub automatic_failover: Opt<bool>,
    pub witness: Opt<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogShipping {
    pub name: Opt<String>,
    pub primary: Opt<String>,
    pub secondary: Opt<String>,
    pub share: Opt<PathBuf>,
    pub backup_interval_s: Opt<u64>,
    pub copy_interval_s: Opt<u64>,
    pub restore_interval_s: Opt<u64>,
    pub restore_delay_s: Opt<u64>,
    pub backup_alert_s: Opt<u64>,
    pub restore_alert_s: Opt<u64>,
    pub secondary_mode: Opt<SecondaryMode>,
    pub retention_h: Opt<u64>,
}

/// The value of an optional spanned field.
pub(crate) fn val<T>(field: &Opt<T>) -> Option<&T> {
    field.as_ref().map(Spanned::get_ref)
}

/// The names of an optional list (empty when absent).
pub(crate) fn names(list: &Names) -> &[Spanned<String>] {
    list.as_ref()
        .map(|l| l.get_ref().as_slice())
        .unwrap_or_default()
}
