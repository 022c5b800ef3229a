//! The validated topology model: plain data, no positions.
//!
//! Values here have passed every validation rule, and optional fields have their defaults
//! filled in, so code that runs servers can use them without re-checking.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Implements `as_str` (the TOML spelling) and `Display` for a fieldless enum.
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The value as written in a topology file.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A whole topology: everything one TOML file declares.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// Name of the topology.
    pub name: String,
    /// SIP domain of all users (a DNS name).
    pub sip_domain: String,
    /// Data centers.
    pub sites: Vec<Site>,
    /// Server processes.
    pub servers: Vec<Server>,
    /// Front-end and persistent-chat pools.
    pub pools: Vec<Pool>,
    /// Back-end stores (replica sets).
    pub stores: Vec<Store>,
    /// Pool pairs (front-end pools backing each other up across sites).
    pub pairs: Vec<Pair>,
    /// Log-shipping links from a store to a store in another site.
    pub log_shipping: Vec<LogShipping>,
    /// SIP service settings shared by every front-end server.
    pub sip: SipSettings,
}

/// SIP service settings (the optional `[sip]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipSettings {
    /// Digest algorithms offered in challenges, most preferred first (`SHA-256`, `MD5`).
    /// Clients that read only the first challenge (e.g. SIPp 3.6) need `MD5` first.
    pub digest_algorithms: Vec<String>,
    /// Shortest registration a client may ask for; shorter gets `423` with `Min-Expires`.
    pub register_expires_min_s: u32,
    /// Longest registration granted; longer requests are shortened.
    pub register_expires_max_s: u32,
    /// Registration lifetime when the client names none.
    pub register_expires_default_s: u32,
    /// The same three limits for PUBLISH and SUBSCRIBE.
    pub presence_expires_min_s: u32,
    pub presence_expires_max_s: u32,
    pub presence_expires_default_s: u32,
    /// Most contacts one user may have registered at once.
    pub max_contacts_per_user: u32,
    /// How long a digest nonce stays valid.
    pub nonce_ttl_s: u32,
    /// Overload: a new request that waited longer than this since it arrived (in the UDP
    /// socket's queue, then for a thread) is answered `503` with `Retry-After` instead of
    /// being served; one carrying credentials may wait twice as long (its challenge was
    /// already paid for).
    pub max_queue_delay_ms: u32,
    /// Overload: most requests a server works on at once (waiting for a commit, a store, a
    /// delivery); beyond it new requests get `503` with `Retry-After`. Requests without
    /// credentials (which would start new work) stop at half of it, so the work under way
    /// finishes within the clients' patience.
    pub max_pending_requests: u32,
}

impl Default for SipSettings {
    fn default() -> SipSettings {
        SipSettings {
            digest_algorithms: vec!["SHA-256".to_string(), "MD5".to_string()],
            register_expires_min_s: 60,
            register_expires_max_s: 7200,
            register_expires_default_s: 3600,
            presence_expires_min_s: 60,
            presence_expires_max_s: 7200,
            presence_expires_default_s: 3600,
            max_contacts_per_user: 10,
            nonce_ttl_s: 300,
            max_queue_delay_ms: 200,
            max_pending_requests: 2_000,
        }
    }
}

/// A data center.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Unique site name.
    pub name: String,
    /// Free-text description.
    pub description: Option<String>,
}

/// One `tandem server` process.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Unique server name.
    pub name: String,
    /// The site the server runs in.
    pub site: String,
    /// SIP over UDP listening address.
    pub sip_udp: Option<SocketAddr>,
    /// SIP over TCP listening address.
    pub sip_tcp: Option<SocketAddr>,
    /// Inter-server RPC address (present whenever the server talks to other servers).
    pub rpc: Option<SocketAddr>,
    /// Admin HTTP API address.
    pub admin: SocketAddr,
    /// Default data directory.
    pub data_dir: Option<PathBuf>,
}

/// What a pool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolKind {
    /// Registrar, presence and IM routing for the users homed on the pool.
    Frontend,
    /// Persistent chat rooms, with active and idle servers over one or two sites.
    PersistentChat,
}

spelled!(PoolKind { Frontend => "frontend", PersistentChat => "persistent-chat" });

/// A pool of servers.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Unique pool name.
    pub name: String,
    /// Front-end or persistent chat.
    pub kind: PoolKind,
    /// The pool's site (exactly one for a front-end pool; one or two for a chat pool).
    pub sites: Vec<String>,
    /// All members: the front-end servers, or for a chat pool its active then idle servers.
    pub servers: Vec<String>,
    /// Active chat servers (empty for a front-end pool).
    pub active: Vec<String>,
    /// Idle chat servers (empty for a front-end pool).
    pub idle: Vec<String>,
    /// The back-end store the pool uses.
    pub store: String,
    /// Number of routing groups (front-end pools; 0 for a chat pool).
    pub routing_groups: u32,
    /// A front-end server down this long has its routing-group replicas moved to other
    /// servers of the pool (0: never; default 60).
    pub replace_after_s: u32,
    /// Replicas of each routing group: 3 (default), or 5 so that any two servers of the pool
    /// may fail at once (front-end pools of 5 or more servers).
    pub group_replicas: u32,
}

/// The HA mode of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreMode {
    /// One replica.
    Standalone,
    /// One primary and up to 8 secondaries.
    AvailabilityGroup,
    /// Principal and mirror, with an optional witness.
    Mirroring,
    /// Two or more nodes sharing one storage path.
    FailoverCluster,
}

spelled!(StoreMode {
    Standalone => "standalone",
    AvailabilityGroup => "availability-group",
    Mirroring => "mirroring",
    FailoverCluster => "failover-cluster",
});

/// Mirroring safety level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Safety {
    /// Synchronous mirroring.
    HighSafety,
    /// Asynchronous mirroring.
    HighPerformance,
}

spelled!(Safety { HighSafety => "high-safety", HighPerformance => "high-performance" });

/// A back-end store: a replica set with one HA mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// Unique store name.
    pub name: String,
    /// The site the store belongs to.
    pub site: String,
    /// HA mode.
    pub mode: StoreMode,
    /// Address that always reaches the current primary.
    pub listener: Option<SocketAddr>,
    /// Mirroring safety (`HighSafety` for other modes).
    pub safety: Safety,
    /// Shared storage path (failover cluster only).
    pub shared_path: Option<PathBuf>,
    /// Ownership lease in milliseconds (failover cluster; 300 by default): an owner that has
    /// not heard from a majority of the nodes for this long stops writing, and the others
    /// elect a new owner after this long (to 5/3 of it) without the owner.
    pub lease_ms: u64,
    /// The replicas, in file order.
    pub replicas: Vec<Replica>,
}

/// The role of a replica in its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaRole {
    /// Standalone or availability-group primary.
    Primary,
    /// Availability-group secondary.
    Secondary,
    /// Mirroring principal.
    Principal,
    /// Mirroring mirror.
    Mirror,
    /// Mirroring or failover-cluster witness: votes, holds no data, never serves.
    Witness,
    /// Failover-cluster node.
    Node,
}

spelled!(ReplicaRole {
    Primary => "primary",
    Secondary => "secondary",
    Principal => "principal",
    Mirror => "mirror",
    Witness => "witness",
    Node => "node",
});

/// How a replica commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Commit {
    /// The primary waits for this replica before acknowledging.
    Sync,
    /// The primary does not wait.
    Async,
}

spelled!(Commit { Sync => "sync", Async => "async" });

/// How a replica takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverMode {
    /// Without an operator.
    Automatic,
    /// Only on an operator's command.
    Manual,
}

spelled!(FailoverMode { Automatic => "automatic", Manual => "manual" });

/// One replica of a store.
///
/// Only availability-group replicas set `commit`, `failover` and `readable` in the file; for the
/// other modes they are derived: mirroring commits `sync` under high safety and `async` under
/// high performance, and fails over automatically only with high safety and a witness; a
/// failover-cluster node fails over automatically; a standalone replica or a mirroring witness
/// is `sync`/`manual`.
#[derive(Debug, Clone, PartialEq)]
pub struct Replica {
    /// The server holding the replica.
    pub server: String,
    /// Its role.
    pub role: ReplicaRole,
    /// Commit mode.
    pub commit: Commit,
    /// Failover mode.
    pub failover: FailoverMode,
    /// Readable secondary.
    pub readable: bool,
}

/// Two front-end pools in different sites that back each other up.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// The two pools.
    pub pools: [String; 2],
    /// Whether site failover is decided automatically (with the witness).
    pub automatic_failover: bool,
    /// The witness server, in a third site.
    pub witness: Option<String>,
}

/// State of a log-shipping secondary between restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecondaryMode {
    /// Read-only and readable between restores.
    Standby,
    /// Not readable.
    NoRecovery,
}

spelled!(SecondaryMode { Standby => "standby", NoRecovery => "no-recovery" });

/// A log-shipping link from a store to a secondary store in another site.
#[derive(Debug, Clone, PartialEq)]
pub struct LogShipping {
    /// Unique link name.
    pub name: String,
    /// Source store.
    pub primary: String,
    /// Destination store.
    pub secondary: String,
    /// Backup share directory.
    pub share: PathBuf,
    /// Seconds between backup jobs.
    pub backup_interval_s: u64,
    /// Seconds between copy jobs.
    pub copy_interval_s: u64,
    /// Seconds between restore jobs.
    pub restore_interval_s: u64,
    /// Seconds a backup waits before it is restored.
    pub restore_delay_s: u64,
    /// Alert when no backup has been taken for this many seconds.
    pub backup_alert_s: u64,
    /// Alert when no restore has been done for this many seconds.
    pub restore_alert_s: u64,
    /// State of the secondary between restores.
    pub secondary_mode: SecondaryMode,
    /// Hours backups are kept.
    pub retention_h: u64,
}

/// A role a server plays, derived from the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Member of a front-end pool.
    Frontend,
    /// Member of a persistent-chat pool.
    PersistentChat,
    /// Holds a data replica of a store.
    Store,
    /// Pair witness or mirroring witness.
    Witness,
}

spelled!(Role {
    Frontend => "frontend",
    PersistentChat => "persistent-chat",
    Store => "store",
    Witness => "witness",
});

impl Topology {
    /// The server with this name.
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The store with this name.
    pub fn store(&self, name: &str) -> Option<&Store> {
        self.stores.iter().find(|s| s.name == name)
    }

    /// The pool with this name.
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The roles of a server, sorted and without duplicates (empty for an unknown server).
    pub fn roles_of(&self, server: &str) -> Vec<Role> {
        let mut roles = Vec::new();
        for pool in self
            .pools
            .iter()
            .filter(|p| p.servers.iter().any(|s| s == server))
        {
            roles.push(match pool.kind {
                PoolKind::Frontend => Role::Frontend,
                PoolKind::PersistentChat => Role::PersistentChat,
            });
        }
        for (_, replica) in self.stores_on(server) {
            roles.push(match replica.role {
                ReplicaRole::Witness => Role::Witness,
                _ => Role::Store,
            });
        }
        if self
            .pairs
            .iter()
            .any(|p| p.witness.as_deref() == Some(server))
        {
            roles.push(Role::Witness);
        }
        roles.sort();
        roles.dedup();
        roles
    }

    /// The front-end pool the server belongs to.
    pub fn frontend_pool_of(&self, server: &str) -> Option<&Pool> {
        self.pools
            .iter()
            .find(|p| p.kind == PoolKind::Frontend && p.servers.iter().any(|s| s == server))
    }

    /// Every store with a replica on the server, with that replica.
    pub fn stores_on(&self, server: &str) -> Vec<(&Store, &Replica)> {
        self.stores
            .iter()
            .flat_map(|store| {
                store
                    .replicas
                    .iter()
                    .filter(|r| r.server == server)
                    .map(move |r| (store, r))
            })
            .collect()
    }
}
