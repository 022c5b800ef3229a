//! Front-end pools (DESIGN.md §2, "Front-end pool", "Routing group"): users hashed into
//! routing groups, each a replicated store on three of the pool's servers, and the relay that
//! lets any server of the pool deliver to a client another server holds.
//!
//! - [`group_of`]: the stable hash of an address of record to its group.
//! - [`placement`]: which servers hold each group, and which one starts as its primary.
//! - [`PoolMember`]: a front end's part of its pool: a client of every group (the group's
//!   replicas reach its primary wherever it is), the replicas this server holds, and the
//!   peers' rpc addresses for delivery.
//!
//! A routing group is a `store::node::StoreNode` whose database keeps registrations,
//! presence and subscriptions without user rows (the accounts stay in the pool's store): the
//! same replication, failover records and status as an availability group's.

use crate::core::SendFailure;
use rpc::RpcServer;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::Store;
use store::client::StoreClient;
use store::node::StoreNode;
use store::pool::RpcPool;

/// A group's primary serves while a quorum acknowledged it this recently (heartbeats go
/// every 100 ms; an election follows within a second of silence).
const LEASE_FRESH_MS: u64 = 1_000;

/// The rpc service through which a server tells the others of its pool that a user's account
/// changed, so they stop trusting their cached copy.
pub const FORGET_USER: &str = "frontend/forget-user";

/// The rpc service a pool server answers to say it is up (and whether it drains).
pub const HEALTH: &str = "frontend/health";

/// Replicas of each routing group by default (fewer only in a pool of fewer servers); a
/// pool may ask for 5 (`group_replicas`), so that any two servers may fail at once.
pub const REPLICAS: usize = 3;

/// The rpc service through which a server delivers a request to a client it holds.
pub const DELIVER: &str = "frontend/deliver";

/// The routing group of an address of record: the first 8 bytes of its SHA-256, modulo the
/// number of groups. Stable across versions and servers; the AOR is compared lowercased, as
/// the registrar stores it.
pub fn group_of(aor: &str, groups: u32) -> u32 {
    let digest = sha2::Sha256::digest(aor.to_ascii_lowercase().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(groups.max(1))) as u32
}

/// The name of a routing group's replica set (its `raft/…` and `store/…` services).
pub fn group_name(pool: &str, group: u32) -> String {
    format!("{pool}.rg{group}")
}

/// Where one routing group lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub group: u32,
    /// The servers holding a replica, the preferred primary first.
    pub replicas: Vec<String>,
}

impl Placement {
    /// The server that starts the group (and is its preferred primary).
    pub fn primary(&self) -> &str {
        self.replicas.first().map_or("", String::as_str)
    }
}

/// Where each of `groups` routing groups lives on `servers` (the pool's servers in topology
/// order), leaving out the servers in `out` (lost for good, or removed).
///
/// Group `g` ranks the servers starting at `g` (mod N) and takes the first [`REPLICAS`] that
/// are not out. So each server is the preferred primary of about G/N groups and holds about
/// 3G/N replicas; a server that goes out is replaced, in each of its groups, by the next
/// server of that group's ranking — a different one for each of the three groups a server
/// shares a ranking window with, so its load spreads — and groups without it do not move.
pub fn placement(servers: &[String], groups: u32, out: &BTreeSet<String>) -> Vec<Placement> {
    placement_of(servers, groups, REPLICAS, out)
}

/// [`placement`] with `replicas` replicas per group.
pub fn placement_of(
    servers: &[String],
    groups: u32,
    replicas: usize,
    out: &BTreeSet<String>,
) -> Vec<Placement> {
    let n = servers.len();
    (0..groups)
        .map(|g| {
            let replicas = (0..n)
                .map(|k| &servers[(g as usize + k) % n])
                .filter(|s| !out.contains(*s))
                .take(replicas)
                .cloned()
                .collect();
            Placement { group: g, replicas }
        })
        .collect()
}

/// What a server asks the server that holds a client to send it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliverRequest {
    pub route: store::Route,
    pub contact: String,
    /// The SIP request, without a Via of ours: the holding server adds its own.
    pub request: Vec<u8>,
}

/// Its answer: the final response (without the holding server's Via), or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DeliverReply {
    Response(Vec<u8>),
    Timeout,
    Unreachable(String),
}

/// What a server needs to take its part in a pool (from the topology).
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub pool: String,
    /// This server.
    pub me: String,
    /// The pool's servers, in topology order.
    pub servers: Vec<String>,
    /// Every pool server's rpc address, this one's included.
    pub peers: BTreeMap<String, String>,
    pub routing_groups: u32,
    /// Replicas of each group (3, or 5 to survive two servers failing at once).
    pub group_replicas: usize,
    /// `<data>/pools/<pool>`: a directory `rg<N>` per group replica this server holds.
    pub dir: PathBuf,
    /// A server down this long has its replicas moved to other servers (`None`: never).
    pub replace_after: Option<Duration>,
}

/// A front end's part of its pool.
pub struct PoolMember {
    pub pool: String,
    /// This server.
    pub me: String,
    /// The pool's servers, in topology order.
    pub servers: Vec<String>,
    /// A client of each routing group, by group id.
    pub groups: Vec<Store>,
    /// The same, as replica-set clients (status, planned failovers).
    pub clients: Vec<StoreClient>,
    /// The group replicas this server holds, by group: its place in the placement, and any
    /// it took over from a lost server (see `replace`).
    local: Mutex<BTreeMap<u32, Arc<StoreNode>>>,
    /// Every pool server's rpc address, this one's included.
    pub peers: BTreeMap<String, String>,
    pub rpc: RpcPool,
    /// `server drain`: this server moves its primaries away and takes no new clients.
    pub draining: AtomicBool,
    pub(crate) spec: PoolSpec,
    rpc_server: RpcServer,
    rpc_config: rpc::ServerConfig,
    /// Serializes opening and closing replicas.
    hosting: tokio::sync::Mutex<()>,
    /// The other servers' health as this one last saw it (see `replace`).
    pub(crate) fabric: Mutex<crate::replace::Fabric>,
    /// `<dir>/log`: the one log of every group replica this server holds, so that a commit
    /// round costs one `fdatasync` however many groups it holds.
    logs: store::node::LogSet,
}

impl PoolMember {
    /// Opens this server's part of a pool: a client of every routing group (any pool server
    /// may hold a group's primary, its placed replicas first), and the replicas this server
    /// holds — those the placement gives it, and any other group with a directory here (a
    /// replica it took over, or held before a change) until its group's primary closes it.
    pub async fn open(
        spec: PoolSpec,
        rpc_server: &RpcServer,
        rpc: RpcPool,
        rpc_config: rpc::ServerConfig,
    ) -> std::io::Result<Arc<PoolMember>> {
        let placed = placement_of(
            &spec.servers,
            spec.routing_groups,
            spec.group_replicas,
            &BTreeSet::new(),
        );
        let logs =
            store::node::LogSet::open(&spec.dir.join("log"), Default::default()).map_err(|e| {
                std::io::Error::other(format!(
                    "cannot open the routing groups' log in {}: {e}",
                    spec.dir.join("log").display()
                ))
            })?;
        let mut groups = Vec::new();
        let mut clients = Vec::new();
        for p in &placed {
            let mut order: Vec<&String> = p.replicas.iter().collect();
            order.extend(spec.servers.iter().filter(|s| !p.replicas.contains(s)));
            let address = store::client::StoreAddress {
                store: group_name(&spec.pool, p.group),
                listener: None,
                replicas: order
                    .into_iter()
                    .map(|server| store::proto::Endpoint {
                        server: server.clone(),
                        addr: spec.peers.get(server).cloned().unwrap_or_default(),
                    })
                    .collect(),
            };
            let client = StoreClient::new(address, rpc.clone());
            groups.push(Store::remote(client.clone()));
            clients.push(client);
        }
        let member = Arc::new(PoolMember {
            pool: spec.pool.clone(),
            me: spec.me.clone(),
            servers: spec.servers.clone(),
            groups,
            clients,
            local: Mutex::default(),
            peers: spec.peers.clone(),
            rpc,
            draining: AtomicBool::new(false),
            spec,
            rpc_server: rpc_server.clone(),
            rpc_config,
            hosting: tokio::sync::Mutex::new(()),
            fabric: Mutex::default(),
            logs,
        });
        // A group already started on another server (this server is new to the pool, or
        // lost its disk) is never started again here: its primary adds this replica.
        member.poll_health().await;
        let started_elsewhere: BTreeSet<u32> = {
            let fabric = member.fabric.lock().unwrap_or_else(|e| e.into_inner());
            fabric.started.values().flatten().copied().collect()
        };
        for p in &placed {
            if p.replicas.contains(&member.me) || member.group_dir(p.group).exists() {
                member
                    .open_replica(p.group, !started_elsewhere.contains(&p.group))
                    .await?;
            }
        }
        tracing::info!(pool = %member.pool, groups = placed.len(), replicas_here = member.local().len(), "routing groups open");
        Ok(member)
    }

    /// Where this pool's groups live, leaving out the servers in `out`.
    pub fn placement(&self, out: &BTreeSet<String>) -> Vec<Placement> {
        placement_of(
            &self.servers,
            self.spec.routing_groups,
            self.spec.group_replicas,
            out,
        )
    }

    /// The group replicas this server holds now.
    pub fn local(&self) -> Vec<(u32, Arc<StoreNode>)> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.iter().map(|(g, n)| (*g, n.clone())).collect()
    }

    /// This server's replica of `group`, if it holds one.
    pub fn replica_of(&self, group: u32) -> Option<Arc<StoreNode>> {
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        local.get(&group).cloned()
    }

    fn group_dir(&self, group: u32) -> PathBuf {
        self.spec.dir.join(format!("rg{group}"))
    }

    /// Opens (or finds open) this server's replica of `group`, which waits to be added by
    /// the group's primary and serves from then on.
    pub async fn host(&self, group: u32) -> std::io::Result<Arc<StoreNode>> {
        self.open_replica(group, false).await
    }

    /// Opens (or finds open) this server's replica of `group`. With `may_start`, the group's
    /// first placed server starts the group if it does not exist yet.
    async fn open_replica(&self, group: u32, may_start: bool) -> std::io::Result<Arc<StoreNode>> {
        let _one = self.hosting.lock().await;
        if let Some(node) = self.replica_of(group) {
            return Ok(node);
        }
        let placed = self.placement(&BTreeSet::new());
        let Some(p) = placed.get(group as usize) else {
            return Err(std::io::Error::other(format!(
                "pool {} has no routing group {group}",
                self.pool
            )));
        };
        let mut servers = p.replicas.clone();
        if !servers.contains(&self.me) {
            servers.push(self.me.clone());
        }
        let members = servers
            .iter()
            .map(|server| store::node::MemberSpec {
                server: server.clone(),
                addr: self.peers.get(server).cloned().unwrap_or_default(),
                sync: true,
                automatic: true,
                readable: false,
                witness: false,
            })
            .collect();
        let cfg = store::node::NodeConfig {
            store: group_name(&self.pool, group),
            mode: "routing-group".into(),
            me: self.me.clone(),
            members,
            initial_primary: if may_start {
                p.primary().to_string()
            } else {
                String::new()
            },
            dir: self.group_dir(group),
            listener: None,
            rpc_server: self.rpc_config.clone(),
            heartbeat_ms: store::node::DEFAULT_HEARTBEAT_MS,
            election_timeout_min_ms: store::node::DEFAULT_ELECTION_TIMEOUT_MS.0,
            election_timeout_max_ms: store::node::DEFAULT_ELECTION_TIMEOUT_MS.1,
            high_safety_mirroring: false,
            users_elsewhere: true,
            in_memory: true,
            log_set: Some(self.logs.clone()),
        };
        let node = StoreNode::open(cfg, &self.rpc_server, self.rpc.clone())
            .await
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot open routing group {}: {e}",
                    group_name(&self.pool, group)
                ))
            })?;
        if self.is_draining() {
            node.replica().set_elect(false);
        }
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, node.clone());
        Ok(node)
    }

    /// Closes this server's replica of `group` and removes its data: the group's primary
    /// took it out of the group (it moved to a server the placement prefers). Refused while
    /// this replica leads the group.
    pub async fn unhost(&self, group: u32) -> Result<bool, String> {
        let _one = self.hosting.lock().await;
        let Some(node) = self.replica_of(group) else {
            return Ok(false);
        };
        if node.is_primary() {
            return Err(format!(
                "{} leads {}: hand the group to another replica first",
                self.me,
                node.name()
            ));
        }
        node.close().await;
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        // Renamed first, so that a crash halfway leaves no directory that looks like a replica.
        let dir = self.group_dir(group);
        let gone = self.spec.dir.join(format!("rg{group}.removed"));
        let _ = std::fs::remove_dir_all(&gone);
        std::fs::rename(&dir, &gone)
            .and_then(|()| std::fs::File::open(&self.spec.dir)?.sync_all())
            .map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
        if let Err(e) = std::fs::remove_dir_all(&gone) {
            tracing::warn!(dir = %gone.display(), error = %e, "cannot delete a closed replica's data");
        }
        tracing::info!(group = %node.name(), "closed this server's replica: the group lives on other servers");
        Ok(true)
    }

    /// The group of `aor`.
    pub fn group_of(&self, aor: &str) -> u32 {
        group_of(aor, self.groups.len() as u32)
    }

    /// The store holding `aor`'s registrations, presence and subscriptions.
    pub fn store_of(&self, aor: &str) -> &Store {
        // `groups` is never empty: the topology gives a pool at least one group.
        &self.groups[self.group_of(aor) as usize % self.groups.len()]
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Tells every other server of the pool that `aor`'s account changed (a password, a
    /// removal), so none goes on authenticating with its cached copy for the cache's 10 s.
    /// Best effort: a server that does not answer is down, and reads the user again anyway
    /// within the cache's lifetime.
    pub async fn forget_user_everywhere(&self, aor: &str) {
        let calls = self
            .peers
            .iter()
            .filter(|(server, _)| **server != self.me)
            .map(|(server, addr)| {
                let rpc = self.rpc.clone();
                let body = aor.as_bytes().to_vec();
                async move {
                    if let Err(e) = rpc.call(addr, FORGET_USER, body, Duration::from_secs(2)).await {
                        tracing::debug!(%server, error = %e, "could not tell a server of a changed user");
                    }
                }
            });
        futures::future::join_all(calls).await;
    }

    /// Asks `server` to deliver a request to a client it holds.
    pub(crate) async fn relay(
        &self,
        server: &str,
        req: DeliverRequest,
    ) -> Result<sip::Response, SendFailure> {
        let Some(addr) = self.peers.get(server) else {
            return Err(SendFailure::Unreachable(format!(
                "{server} is not a server of pool {}",
                self.pool
            )));
        };
        let body = postcard::to_stdvec(&req)
            .map_err(|e| SendFailure::Unreachable(format!("cannot encode a delivery: {e}")))?;
        // The holding server's client transaction ends by timer F (64*T1); a little more here.
        let limit = Duration::from_millis(64 * sip::transaction::T1_MS + 2_000);
        let answer = self
            .rpc
            .call(addr, DELIVER, body, limit)
            .await
            .map_err(|e| SendFailure::Unreachable(format!("{server} cannot be reached: {e}")))?;
        match postcard::from_bytes::<DeliverReply>(&answer) {
            Ok(DeliverReply::Response(bytes)) => {
                match sip::parse_message(&bytes, &sip::Limits::default()) {
                    Ok(sip::Message::Response(r)) => Ok(r),
                    _ => Err(SendFailure::Unreachable(format!(
                        "{server} relayed a response that does not parse"
                    ))),
                }
            }
            Ok(DeliverReply::Timeout) => Err(SendFailure::Timeout),
            Ok(DeliverReply::Unreachable(why)) => Err(SendFailure::Unreachable(why)),
            Err(e) => Err(SendFailure::Unreachable(format!(
                "{server} sent a delivery answer that does not decode: {e}"
            ))),
        }
    }
}

/// What `server drain` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub server: String,
    /// Groups whose primary moved away, with the new primary.
    pub moved: Vec<(u32, String)>,
    /// Groups whose primary could not move, and why.
    pub failed: Vec<(u32, String)>,
    /// Replicated stores whose primary moved away, with the new primary.
    pub stores_moved: Vec<(String, String)>,
    pub stores_failed: Vec<(String, String)>,
    /// Groups and stores this server still leads (0 once drained).
    pub still_primary: u32,
    pub took_ms: u64,
}

/// What `pool start` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartReport {
    pub pool: String,
    /// Every group has a primary with a fresh lease.
    pub started: bool,
    pub took_ms: u64,
    pub servers_up: Vec<String>,
    pub servers_down: Vec<String>,
    /// Groups without a majority of their replicas up.
    pub groups_without_quorum: Vec<u32>,
    /// Servers to start so that every group has a majority (the fewest this finds).
    pub start_these: Vec<String>,
    pub message: String,
    /// The pool's state when the wait ended.
    pub status: PoolStatus,
}

/// The servers to start so that every group has a majority of its replicas up, found
/// greedily (the server completing the most groups first): at most the fewest plus a little.
pub fn servers_for_quorum(placed: &[Placement], up: &BTreeSet<String>) -> Vec<String> {
    let mut up = up.clone();
    let mut chosen = Vec::new();
    loop {
        let short: Vec<&Placement> = placed
            .iter()
            .filter(|p| {
                p.replicas.iter().filter(|r| up.contains(*r)).count() * 2 <= p.replicas.len()
            })
            .collect();
        if short.is_empty() {
            return chosen;
        }
        let mut gain: BTreeMap<&String, usize> = BTreeMap::new();
        for p in &short {
            for r in p.replicas.iter().filter(|r| !up.contains(*r)) {
                *gain.entry(r).or_default() += 1;
            }
        }
        let Some((best, _)) = gain
            .into_iter()
            .max_by_key(|(s, n)| (*n, std::cmp::Reverse(*s)))
        else {
            return chosen;
        };
        let best = best.clone();
        up.insert(best.clone());
        chosen.push(best);
    }
}

/// What `pool reset-group` found, and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetReport {
    pub group: u32,
    pub name: String,
    /// The replicas that answered.
    pub answering: Vec<String>,
    /// The replicas that did not (lost, or down).
    pub missing: Vec<String>,
    /// The most advanced answering replica: the group's only member once reset.
    pub chosen: String,
    /// What it lacks, as far as it knows (its forced-service report).
    pub loss: store::proto::ForceReport,
    /// The reset was done (with `--accept-data-loss`); otherwise this is what it would do.
    pub done: bool,
    /// What to do next.
    pub next: String,
}

/// Why `pool reset-group` did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResetRefusal {
    NoSuchGroup(String),
    /// The group serves: nothing to reset.
    Serving(String),
    /// No replica answers: there is nothing to reset from.
    NoReplica(String),
    Failed(String),
}

impl std::fmt::Display for ResetRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResetRefusal::NoSuchGroup(m)
            | ResetRefusal::Serving(m)
            | ResetRefusal::NoReplica(m)
            | ResetRefusal::Failed(m) => f.write_str(m),
        }
    }
}

/// One server as the pool sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerState {
    pub server: String,
    /// It answered over rpc just now.
    pub healthy: bool,
    pub draining: bool,
    /// Groups it is the primary of.
    pub primaries: u32,
    /// Groups it holds a replica of.
    pub replicas: u32,
    /// Down for longer than the pool's `replace_after_s`: its groups' replicas move to
    /// other servers.
    #[serde(default)]
    pub lost: bool,
}

/// One replica of a routing group, as the group's primary reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReplica {
    pub server: String,
    pub healthy: bool,
    pub synchronized: bool,
    pub lag_entries: u64,
    pub lag_ms: u64,
}

/// One routing group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub id: u32,
    pub name: String,
    pub primary: Option<String>,
    pub secondaries: Vec<String>,
    /// It has a primary that answers: its users can register, publish and subscribe.
    pub serving: bool,
    /// Replicas of the group that are up and synchronized, of those placed.
    pub healthy_replicas: u32,
    pub placed_replicas: u32,
    pub replicas: Vec<GroupReplica>,
    /// The term of the current primary.
    pub term: u64,
    /// Why it is not serving, when it is not.
    pub reason: Option<String>,
    /// Its most recent failover, measured (RPO and RTO), if any.
    pub last_failover: Option<store::FailoverEvent>,
}

/// The fabric state of a pool: `pool status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub pool: String,
    /// `healthy`, `degraded` (every group serves, some replica or server is missing),
    /// `partial-outage` (some groups do not serve) or `down` (none does).
    pub state: String,
    pub reason: String,
    pub servers: Vec<ServerState>,
    pub groups: Vec<GroupState>,
    /// Servers up, and the number the classic pool-level quorum rule would ask for (Tandem
    /// does not stop on it: each group serves while a majority of its replicas is up).
    pub servers_up: u32,
    pub classic_quorum: u32,
    /// When some groups do not serve: their users (from the pool's store), who cannot
    /// register, publish or subscribe now.
    #[serde(default)]
    pub affected_users: Option<AffectedUsers>,
}

/// The users of the groups that do not serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffectedUsers {
    pub count: usize,
    /// The first of them, by address (at most 100).
    pub first: Vec<String>,
}

/// Skype for Business's pool-level quorum: the servers that must run for a pool of `n`
/// (`research/sfb-hadr-facts.md` §1). Reported for operators who know it.
pub fn classic_quorum(n: usize) -> u32 {
    match n {
        0 | 1 => n as u32,
        2 => 1,
        3 | 4 => 2,
        5 | 6 => 3,
        7..=9 => 4,
        10..=12 => 5,
        _ => 7,
    }
}

impl PoolMember {
    /// `server drain`: this server stops taking new clients (OPTIONS answer 503, new TCP
    /// connections are closed), stops campaigning in its groups and hands every group it
    /// leads to a synchronized secondary, with no data loss. Requests it still gets are
    /// served (through the groups' new primaries). Servers draining too take a group only
    /// when no other secondary can. A restart ends the drain, as does
    /// [`PoolMember::resume`].
    pub async fn drain(&self) -> DrainReport {
        let started = std::time::Instant::now();
        self.draining.store(true, Ordering::SeqCst);
        let avoid: BTreeSet<String> = self
            .servers_health(Duration::from_secs(1))
            .await
            .into_iter()
            .filter(|(server, (_, draining))| *draining && *server != self.me)
            .map(|(server, _)| server)
            .collect();
        let mut moved = Vec::new();
        let mut failed = Vec::new();
        let local = self.local();
        for (g, node) in &local {
            let was_primary = node.is_primary();
            match node.step_down(&avoid).await {
                Ok(Some(to)) if was_primary && to != self.me => moved.push((*g, to)),
                Ok(_) if was_primary => {
                    failed.push((*g, "no synchronized secondary took over".to_string()))
                }
                Ok(_) => {}
                Err(e) => failed.push((*g, e.to_string())),
            }
        }
        let still_primary = local.iter().filter(|(_, n)| n.is_primary()).count() as u32;
        DrainReport {
            server: self.me.clone(),
            moved,
            failed,
            still_primary,
            took_ms: started.elapsed().as_millis() as u64,
            ..DrainReport::default()
        }
    }

    /// `pool reset-group`: recovers a group that lost the majority of its replicas for good.
    /// Its most advanced answering replica becomes the group's only member (a new generation,
    /// as a store's forced service), after stating what it lacks; the replicas that come back
    /// later are reseeded from it with `store add-replica`. Without `accept_data_loss`, only
    /// says what it would do and lose.
    pub async fn reset_group(
        &self,
        group: u32,
        accept_data_loss: bool,
    ) -> Result<ResetReport, ResetRefusal> {
        let Some(client) = self.clients.get(group as usize) else {
            return Err(ResetRefusal::NoSuchGroup(format!(
                "pool {} has groups 0 to {}, not {group}",
                self.pool,
                self.clients.len().saturating_sub(1)
            )));
        };
        let placed = self.placement(&BTreeSet::new());
        let Some(place) = placed.get(group as usize) else {
            return Err(ResetRefusal::NoSuchGroup(format!("no group {group}")));
        };
        let limit = Duration::from_secs(2);
        let state = group_state(client, place, limit).await;
        if state.serving {
            return Err(ResetRefusal::Serving(format!(
                "group {group} serves (primary {}): there is nothing to reset. reset-group is \
                 for a group that lost the majority of its replicas for good",
                state.primary.unwrap_or_default()
            )));
        }
        let ask = |addr: String, confirm: bool| {
            let client = client.clone();
            async move {
                client
                    .force(&addr, confirm)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        let mut answering = Vec::new();
        let mut missing = Vec::new();
        // The servers that may hold a copy: those the group was placed on, and any that says
        // it holds one (a replica moved there).
        self.poll_health().await;
        let holders: BTreeSet<String> = {
            let fabric = self.fabric.lock().unwrap_or_else(|e| e.into_inner());
            fabric
                .holds
                .iter()
                .filter(|(_, groups)| groups.contains(&group))
                .map(|(s, _)| s.clone())
                .collect()
        };
        let mine = self.replica_of(group).is_some();
        for r in client.replicas().iter().filter(|r| {
            place.replicas.contains(&r.server)
                || holders.contains(&r.server)
                || (mine && r.server == self.me)
        }) {
            match ask(r.addr.clone(), false).await {
                Ok(report) => answering.push((r.clone(), report)),
                Err(_) => missing.push(r.server.clone()),
            }
        }
        let Some((chosen, preview)) = answering
            .iter()
            .max_by_key(|(_, rep)| rep.last_applied)
            .cloned()
        else {
            return Err(ResetRefusal::NoReplica(format!(
                "no replica of group {group} answers ({}): start one of their servers. If all \
                 of them are lost for good, the group can only start empty: stop those servers, \
                 remove their pools/{}/rg{group} directories and start them; the group's users \
                 register again",
                missing.join(", "),
                self.pool
            )));
        };
        let loss = if accept_data_loss {
            ask(chosen.addr.clone(), true)
                .await
                .map_err(ResetRefusal::Failed)?
        } else {
            preview
        };
        let next = if missing.is_empty() {
            String::new()
        } else {
            format!(
                "when {} {} back, the group's primary adds {} again by itself (reseeded from \
                 the surviving replica); to do it at once: {}",
                missing.join(" and "),
                if missing.len() == 1 { "is" } else { "are" },
                if missing.len() == 1 { "it" } else { "them" },
                missing
                    .iter()
                    .map(|m| format!("`tandem store add-replica {} --server {m}`", client.store()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Ok(ResetReport {
            group,
            name: client.store().to_string(),
            answering: answering.iter().map(|(r, _)| r.server.clone()).collect(),
            missing,
            chosen: chosen.server.clone(),
            done: accept_data_loss && loss.forced,
            loss,
            next,
        })
    }

    /// Of `users` (addresses of record), those whose group does not serve in `status`.
    pub fn affected(&self, status: &PoolStatus, users: &[String]) -> AffectedUsers {
        let down: BTreeSet<u32> = status
            .groups
            .iter()
            .filter(|g| !g.serving)
            .map(|g| g.id)
            .collect();
        let mut affected: Vec<&String> = users
            .iter()
            .filter(|u| down.contains(&self.group_of(u)))
            .collect();
        affected.sort();
        AffectedUsers {
            count: affected.len(),
            first: affected.into_iter().take(100).cloned().collect(),
        }
    }

    /// `pool start`: waits (up to `wait`) until every group has a primary, as the pool's
    /// servers come up; when they do not all, says which servers are down, which groups lack
    /// a majority, and which servers to start for every group to have one. The servers
    /// themselves are started by whatever runs them (a service manager, `tandem lab`).
    pub async fn start(&self, wait: Duration) -> StartReport {
        let started = std::time::Instant::now();
        let mut status = self.status().await;
        while !status.groups.iter().all(|g| g.serving) && started.elapsed() < wait {
            tokio::time::sleep(Duration::from_millis(200)).await;
            status = self.status().await;
        }
        let up: BTreeSet<String> = status
            .servers
            .iter()
            .filter(|s| s.healthy)
            .map(|s| s.server.clone())
            .collect();
        let down: Vec<String> = self
            .servers
            .iter()
            .filter(|s| !up.contains(*s))
            .cloned()
            .collect();
        // Where each group's replicas are: as a replica of it reports its membership (moved
        // groups are elsewhere than first placed), else the first placement.
        let placed: Vec<Placement> = self
            .placement(&BTreeSet::new())
            .into_iter()
            .zip(&status.groups)
            .map(|(p, g)| {
                if g.replicas.is_empty() {
                    p
                } else {
                    Placement {
                        group: p.group,
                        replicas: g.replicas.iter().map(|r| r.server.clone()).collect(),
                    }
                }
            })
            .collect();
        let without: Vec<u32> = placed
            .iter()
            .filter(|p| {
                p.replicas.iter().filter(|r| up.contains(*r)).count() * 2 <= p.replicas.len()
            })
            .map(|p| p.group)
            .collect();
        let start_these = servers_for_quorum(&placed, &up);
        let ok = status.groups.iter().all(|g| g.serving);
        let message = if ok {
            format!(
                "pool {} serves: every group has a primary ({} of {} servers up)",
                self.pool,
                up.len(),
                self.servers.len()
            )
        } else if start_these.is_empty() {
            format!(
                "every group has a majority of its servers up, but groups {:?} have no primary \
                 yet: they are electing or catching up; wait, then see `pool status`",
                status
                    .groups
                    .iter()
                    .filter(|g| !g.serving)
                    .map(|g| g.id)
                    .collect::<Vec<_>>()
            )
        } else {
            format!(
                "pool {} cannot serve every user: {} of {} servers are up, and groups {without:?} \
                 lack a majority of their replicas. Start {} more: {}. If a server is lost for \
                 good, `pool reset-group` recovers a group from what remains",
                self.pool,
                up.len(),
                self.servers.len(),
                start_these.len(),
                start_these.join(", ")
            )
        };
        StartReport {
            pool: self.pool.clone(),
            started: ok,
            took_ms: started.elapsed().as_millis() as u64,
            servers_up: up.into_iter().collect(),
            servers_down: down,
            groups_without_quorum: without,
            start_these,
            message,
            status,
        }
    }

    /// Ends a drain: the server takes clients again and its replicas campaign again.
    pub fn resume(&self) {
        for (_, node) in self.local() {
            node.resume_elections();
        }
        self.draining.store(false, Ordering::SeqCst);
    }

    /// Every server of the pool asked over rpc: whether it answered, and whether it drains.
    async fn servers_health(&self, limit: Duration) -> BTreeMap<String, (bool, bool)> {
        let asks = self.servers.iter().map(|server| {
            let addr = self.peers.get(server).cloned().unwrap_or_default();
            let rpc = self.rpc.clone();
            async move {
                let answer = rpc
                    .call(&addr, HEALTH, Vec::new(), limit)
                    .await
                    .ok()
                    .and_then(|b| postcard::from_bytes::<crate::replace::Health>(&b).ok());
                let draining = answer.as_ref().is_some_and(|h| h.draining);
                (server.clone(), (answer.is_some(), draining))
            }
        });
        futures::future::join_all(asks).await.into_iter().collect()
    }

    /// The pool's fabric state as this server sees it now: every server asked over rpc,
    /// every group's primary asked for its status, with a short deadline each.
    pub async fn status(&self) -> PoolStatus {
        let limit = Duration::from_secs(2);
        let health = self.servers_health(limit).await;
        // Where the groups should be now: without the servers lost long enough to be replaced.
        let lost = self.lost();
        let placed = self.placement(&lost);
        let groups = futures::future::join_all(
            self.clients
                .iter()
                .zip(&placed)
                .map(|(c, p)| group_state(c, p, limit)),
        )
        .await;
        let servers: Vec<ServerState> = self
            .servers
            .iter()
            .map(|s| {
                let (healthy, draining) = health.get(s).copied().unwrap_or((false, false));
                ServerState {
                    server: s.clone(),
                    healthy,
                    draining,
                    lost: lost.contains(s),
                    primaries: groups
                        .iter()
                        .filter(|g| g.primary.as_deref() == Some(s))
                        .count() as u32,
                    // Where the replicas are: as each group's primary says, else as placed.
                    replicas: groups
                        .iter()
                        .zip(&placed)
                        .filter(|(g, p)| {
                            if g.replicas.is_empty() {
                                p.replicas.contains(s)
                            } else {
                                g.replicas.iter().any(|r| r.server == *s)
                            }
                        })
                        .count() as u32,
                }
            })
            .collect();
        let servers_up = servers.iter().filter(|s| s.healthy).count() as u32;
        let (state, reason) = fabric_state(&servers, &groups);
        PoolStatus {
            pool: self.pool.clone(),
            state,
            reason,
            servers,
            groups,
            servers_up,
            classic_quorum: classic_quorum(self.servers.len()),
            affected_users: None,
        }
    }
}

/// The pool's state and its reason, from its servers' health and its groups' state:
/// `down` when no group serves, `partial-outage` when some do not, `degraded` when every
/// group serves but a server or a synchronized replica is missing, else `healthy`.
pub fn fabric_state(servers: &[ServerState], groups: &[GroupState]) -> (String, String) {
    let down: Vec<u32> = groups.iter().filter(|g| !g.serving).map(|g| g.id).collect();
    let short: Vec<u32> = groups
        .iter()
        .filter(|g| g.serving && g.healthy_replicas < g.placed_replicas)
        .map(|g| g.id)
        .collect();
    let missing: Vec<&str> = servers
        .iter()
        .filter(|s| !s.healthy)
        .map(|s| s.server.as_str())
        .collect();
    let (state, reason) = if down.len() == groups.len() && !groups.is_empty() {
        (
            "down",
            format!(
                "no routing group has a primary ({} of {} servers up): no user of the pool \
                 can register; start the missing servers",
                servers.iter().filter(|s| s.healthy).count(),
                servers.len()
            ),
        )
    } else if !down.is_empty() {
        (
            "partial-outage",
            format!(
                "routing groups {down:?} have no primary (a majority of their replicas is \
                 down): their users cannot register, publish or subscribe"
            ),
        )
    } else if !short.is_empty() || !missing.is_empty() {
        (
            "degraded",
            format!(
                "every group serves; servers down: {missing:?}; groups missing a \
                 synchronized replica: {short:?}"
            ),
        )
    } else {
        (
            "healthy",
            "every server is up and every group fully replicated".to_string(),
        )
    };
    (state.to_string(), reason)
}

async fn group_state(client: &StoreClient, placed: &Placement, limit: Duration) -> GroupState {
    let mut c = client.clone();
    c.deadline = limit;
    c.attempt = limit;
    let mut st = GroupState {
        id: placed.group,
        name: client.store().to_string(),
        primary: None,
        secondaries: Vec::new(),
        serving: false,
        healthy_replicas: 0,
        placed_replicas: placed.replicas.len() as u32,
        replicas: Vec::new(),
        term: 0,
        reason: None,
        last_failover: None,
    };
    let mut status = match c.status().await {
        Ok(s) => s,
        Err(e) => {
            st.reason = Some(format!("no replica answered: {e}"));
            return st;
        }
    };
    // A replica that is not a member yet (opened to be added) knows no primary: another may.
    if status.primary.is_none() {
        for r in client.replicas() {
            if let Ok(bytes) = c.ask(&r.addr, "status", Vec::new()).await
                && let Ok(Ok(s)) = store::proto::decode::<
                    store::proto::Reply<store::proto::StoreStatus>,
                >(&bytes, "status")
                && s.primary.is_some()
            {
                status = s;
                break;
            }
        }
    }
    // A secondary's view names the primary; the primary's own has the replicas' progress.
    if let Some(p) = status.primary.clone()
        && p != status.reported_by
        && let Some(addr) = client
            .replicas()
            .iter()
            .find(|r| r.server == p)
            .map(|r| r.addr.clone())
        && let Ok(bytes) = c.ask(&addr, "status", Vec::new()).await
        && let Ok(Ok(s)) =
            store::proto::decode::<store::proto::Reply<store::proto::StoreStatus>>(&bytes, "status")
    {
        status = s;
    }
    st.term = status.term;
    st.last_failover = status.failovers.first().cloned();
    st.primary = status.primary.clone();
    let answers =
        status.primary.is_some() && status.primary.as_deref() == Some(&status.reported_by);
    // A primary that lost its majority still calls itself primary, but takes no write: its
    // lease (a quorum's last acknowledgement) must be fresh.
    let lease_fresh = status.lease_age_ms.is_some_and(|a| a < LEASE_FRESH_MS);
    st.serving = answers && lease_fresh;
    if !st.serving {
        st.reason = Some(match &status.primary {
            Some(p) if answers => format!(
                "its primary {p} has not heard from a majority of its replicas for {} ms",
                status.lease_age_ms.unwrap_or(0)
            ),
            Some(p) => format!("its primary {p} does not answer"),
            None => "no primary: a majority of its replicas is down".to_string(),
        });
    }
    for r in &status.replicas {
        if r.role == "primary" {
            continue;
        }
        st.secondaries.push(r.server.clone());
    }
    st.replicas = status
        .replicas
        .iter()
        .map(|r| GroupReplica {
            server: r.server.clone(),
            healthy: r.healthy,
            synchronized: r.synchronized,
            lag_entries: r.lag_entries,
            lag_ms: r.lag_ms,
        })
        .collect();
    st.healthy_replicas = if st.serving {
        st.replicas
            .iter()
            .filter(|r| r.healthy && r.synchronized)
            .count() as u32
    } else {
        0
    };
    st
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("fe{i}")).collect()
    }

    #[test]
    fn the_hash_is_stable_and_spreads_users() {
        // Fixed values: a change of hash would move every user of a running pool.
        assert_eq!(
            group_of("alice@example.com", 16),
            group_of("Alice@Example.com", 16)
        );
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[group_of(&format!("user{i}@example.com"), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_servers_to_start_give_every_group_a_majority() {
        let s = servers(5);
        let p = placement(&s, 10, &BTreeSet::new());
        let up: BTreeSet<String> = ["fe1".to_string()].into();
        let start = servers_for_quorum(&p, &up);
        let mut after = up.clone();
        after.extend(start.iter().cloned());
        for g in &p {
            let n = g.replicas.iter().filter(|r| after.contains(*r)).count();
            assert!(n * 2 > g.replicas.len(), "{g:?} with {after:?}");
        }
        // From one server of five, two more are not enough for all groups, four are.
        assert!((3..=4).contains(&start.len()), "{start:?}");
        assert!(servers_for_quorum(&p, &s.iter().cloned().collect()).is_empty());
    }

    #[test]
    fn placement_balances_primaries_and_replicas() {
        let s = servers(5);
        let p = placement(&s, 20, &BTreeSet::new());
        for server in &s {
            let primaries = p.iter().filter(|g| g.primary() == server).count();
            let replicas = p.iter().filter(|g| g.replicas.contains(server)).count();
            assert_eq!((primaries, replicas), (4, 12), "{server}");
        }
        assert!(p.iter().all(|g| {
            let set: BTreeSet<_> = g.replicas.iter().collect();
            set.len() == REPLICAS
        }));
    }

    #[test]
    fn a_lost_server_moves_only_its_groups_and_spreads_them() {
        let s = servers(6);
        let before = placement(&s, 12, &BTreeSet::new());
        let out: BTreeSet<String> = ["fe2".to_string()].into();
        let after = placement(&s, 12, &out);
        let mut took = BTreeMap::new();
        for (b, a) in before.iter().zip(&after) {
            if b.replicas.contains(&"fe2".to_string()) {
                let added: Vec<_> = a
                    .replicas
                    .iter()
                    .filter(|r| !b.replicas.contains(r))
                    .collect();
                assert_eq!(added.len(), 1, "{b:?} -> {a:?}");
                *took.entry(added[0].clone()).or_insert(0) += 1;
                assert!(!a.replicas.contains(&"fe2".to_string()));
            } else {
                assert_eq!(a, b, "a group without the lost server moved");
            }
        }
        // fe2's six groups went to three different servers, two each.
        assert_eq!(
            took.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "{took:?}"
        );
    }
}
