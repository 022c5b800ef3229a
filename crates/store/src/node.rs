//! A store replica in a server: the SQL machine under a [`replica::Replica`], the store's
//! services on the server's `rpc` endpoint, the listener while primary, and the bookkeeping
//! of failovers (detection, decision, first write: RPO and RTO as measured).

use crate::listener::Listener;
use crate::machine::{self, StoreError};
use crate::model::*;
use crate::pool::{RpcPool, RpcTransport};
use crate::proto::*;
use crate::replicated::{SqliteMachine, decode_outcome, encode_command};
use crate::sqlite::{Db, Readers};
use crate::witness::{NodeMachine, WitnessMachine};
/// Replication timing defaults, for nodes configured outside the topology (routing groups).
pub use replica::{DEFAULT_ELECTION_TIMEOUT_MS, DEFAULT_HEARTBEAT_MS};
use replica::{Member, Replica, ReplicaConfig, Role, WriteError, node_id};
use rpc::{RemoteError, Request, RpcServer};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One replica as the topology declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub server: String,
    /// The server's rpc address.
    pub addr: String,
    /// A voter (sync) or a learner (async).
    pub sync: bool,
    /// May take over by itself.
    pub automatic: bool,
    /// Serves reads with a staleness bound.
    pub readable: bool,
    /// A mirroring witness: votes, holds the log but no database, is never primary.
    pub witness: bool,
}

/// A set of logs shared by replicas on one server (see `replica::wal`).
pub use replica::wal::LogSet;

/// How a store replica is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub store: String,
    /// `availability-group` or `mirroring` (the HA mode shown in status).
    pub mode: String,
    /// This server.
    pub me: String,
    /// Every replica the topology declares, this one included.
    pub members: Vec<MemberSpec>,
    /// The replica that starts the group when none exists yet.
    pub initial_primary: String,
    /// `<data>/stores/<store>`.
    pub dir: PathBuf,
    /// An address bound by whichever replica is primary.
    pub listener: Option<SocketAddr>,
    /// For the listener's own rpc endpoint.
    pub rpc_server: rpc::ServerConfig,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// High-safety mirroring: a commit is acknowledged only once the mirror (whichever of
    /// the two data-holding members is not the principal now) holds it too, while the mirror
    /// is connected; without it the principal is "exposed".
    pub high_safety_mirroring: bool,
    /// A front-end pool's routing group: the users live in the pool's store, so the group's
    /// database keeps registrations, presence and subscriptions without user rows.
    pub users_elsewhere: bool,
    /// Keep the database in memory, rebuilt on start from the replica's snapshot file and
    /// log (a routing group's): a commit then costs no page writes to a file, and the log
    /// stays the durable copy. No backups are taken of such a store.
    pub in_memory: bool,
    /// The set of logs the replica's log goes in (a front-end server's routing groups share
    /// one); `None`: a log of its own.
    pub log_set: Option<replica::wal::LogSet>,
}

/// Opens the node's database, `data`.
fn open_data(cfg: &NodeConfig, data: &Db) -> Result<SqliteMachine, StoreError> {
    let m = SqliteMachine::open_db(data.clone(), &cfg.dir.join("store.sqlite"))?;
    if cfg.users_elsewhere {
        m.users_elsewhere()
    } else {
        Ok(m)
    }
}

/// Entries between snapshots of a replica whose database is in memory (the default is
/// 100,000). Its start applies every entry after the last snapshot again — at about 13 us an
/// entry, 1.3 s a group for 100,000 and 21 s for a server with 16 groups — while a snapshot
/// of a routing group's database is a copy of a few MB; so snapshots come ten times as often.
pub const IN_MEMORY_SNAPSHOT_EVERY: u64 = 10_000;

/// The copy of an in-memory database that forced service starts `generation` from, kept
/// until that generation's first snapshot holds it (the new log does not).
fn forced_copy(dir: &std::path::Path, generation: u64) -> PathBuf {
    dir.join(format!("forced-g{generation}.sqlite"))
}

/// Prepares the in-memory database of a node about to open `generation`: holds it open for
/// the node's life (a replica replaced by a new generation hands its data on), loads the
/// forced-service copy of this generation if one is kept, and removes files that no longer
/// mean anything (copies of other generations, a database file of an earlier version).
fn prepare_memory(
    cfg: &NodeConfig,
    data: &Db,
    generation: u64,
) -> Result<rusqlite::Connection, StoreError> {
    let anchor = data.open(crate::sqlite::Sync::Normal)?;
    if let Ok(entries) = std::fs::read_dir(&cfg.dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale_copy =
                name.starts_with("forced-g") && entry.path() != forced_copy(&cfg.dir, generation);
            if stale_copy || name.starts_with("store.sqlite") {
                tracing::info!(store = %cfg.store, file = %name, "removing a file the in-memory database does not use");
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let copy = forced_copy(&cfg.dir, generation);
    if copy.exists() {
        // Once the generation has a snapshot, the snapshot holds the copy's state and more.
        let snapshot = raft_dir(&cfg.dir, generation).join("snapshot.bin");
        if snapshot.exists() {
            let _ = std::fs::remove_file(&copy);
        } else {
            tracing::warn!(store = %cfg.store, generation, "starting from the copy forced service was started from");
            open_data(cfg, data)?.load_from(&copy)?;
        }
    }
    Ok(anchor)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the node remembers between status samples.
#[derive(Default)]
struct Watch {
    /// The last leader seen, and in which term.
    last_leader: Option<(u64, u64)>,
    /// The last term this node recorded a failover for (as the new primary).
    recorded_term: u64,
    /// The term whose failover record is being written now.
    recording: Option<u64>,
    /// A planned transfer to this node: when it was asked (unix ms) and from whom.
    planned: Option<(u64, String)>,
    /// Per member, the last time (unix ms) it held everything the primary had.
    caught_up_at: HashMap<u64, u64>,
    /// The server's rpc endpoint (to re-register replication on a new generation).
    rpc: Option<RpcServer>,
    /// Mirroring: whether this node last set its replica to campaign.
    elect: Option<bool>,
    /// When peers' generations were last compared with ours (unix ms).
    generation_checked_ms: u64,
    /// When this node last became primary (unix ms).
    leader_since_ms: u64,
    /// The term in which it did.
    leader_term: u64,
    /// The log's last index when this node was first seen leading in `leader_term`: once it
    /// has applied that far, it holds every earlier term's entries.
    term_start_index: u64,
}

/// A running store replica.
pub struct StoreNode {
    cfg: NodeConfig,
    /// The current replica; replaced when the node starts a new generation (forced service)
    /// or is reseeded into one.
    replica: Mutex<Replica<NodeMachine>>,
    /// The group's generation this node belongs to: raised by a forced failover, so members
    /// of an older generation can never again form a group with newer ones.
    generation: AtomicU64,
    /// A newer generation exists elsewhere: this node serves nothing until it is reseeded.
    fenced: AtomicBool,
    /// Reader connections on the database (`None` on a witness, which has none).
    readers: Option<Readers>,
    /// Where the database lives: its file, or memory of this node's alone.
    data: Db,
    /// A connection that holds an in-memory database for as long as the node lives.
    _memory: Option<Mutex<rusqlite::Connection>>,
    watch: Mutex<Watch>,
    listener: Listener,
    /// Mirroring: whether the principal waits for the mirror now (the topology's setting
    /// until `store set-safety` changes it; read from the store when this node becomes primary).
    high_safety: AtomicBool,
    pool: RpcPool,
    /// Held while the node changes generation (forced service, reseed, fence): one at a time.
    transition: tokio::sync::Mutex<()>,
    /// [`StoreNode::close`] ran: the background work ends and the services are gone.
    closed: AtomicBool,
}

/// The replica group's name in service names for a generation.
fn group(store: &str, generation: u64) -> String {
    if generation == 0 {
        store.to_string()
    } else {
        format!("{store}@g{generation}")
    }
}

fn read_generation(dir: &std::path::Path) -> u64 {
    std::fs::read_to_string(dir.join("generation"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn write_generation(dir: &std::path::Path, generation: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("generation.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(generation.to_string().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("generation"))?;
    std::fs::File::open(dir)?.sync_all()
}

/// The directory of a generation's replica (its log and snapshot).
fn raft_dir(dir: &std::path::Path, generation: u64) -> PathBuf {
    if generation == 0 {
        dir.join("raft")
    } else {
        dir.join(format!("raft-g{generation}"))
    }
}

/// Opens the replica of a generation (its log under `raft` or `raft-g<n>`).
async fn open_replica(
    cfg: &NodeConfig,
    data: &Db,
    me: &MemberSpec,
    generation: u64,
    pool: &RpcPool,
) -> std::io::Result<Replica<NodeMachine>> {
    let machine = if me.witness {
        NodeMachine::Witness(WitnessMachine::new(cfg.dir.clone()))
    } else {
        NodeMachine::Data(open_data(cfg, data).map_err(store_err)?)
    };
    let mut rcfg = ReplicaConfig::new(
        &group(&cfg.store, generation),
        member(me),
        raft_dir(&cfg.dir, generation),
    );
    // A witness campaigns too — it may hold committed entries the mirror lacks, and then no
    // one else can win — but only to hand the mirror what it lacks and step aside (see
    // `witness::hand_over`); it never serves.
    rcfg.elect = me.sync && (me.automatic || me.witness);
    // A witness holds no data: its log is the only copy it can give a mirror that was down
    // of the commits made without it, so it purges only what the others hold.
    rcfg.keep_log_for_others = me.witness;
    rcfg.heartbeat_ms = cfg.heartbeat_ms;
    rcfg.election_timeout_min_ms = cfg.election_timeout_min_ms;
    rcfg.election_timeout_max_ms = cfg.election_timeout_max_ms;
    rcfg.log_set = cfg.log_set.clone();
    if cfg.in_memory {
        rcfg.snapshot_every = IN_MEMORY_SNAPSHOT_EVERY;
    }
    let transport = Arc::new(RpcTransport { pool: pool.clone() });
    Replica::open(rcfg, machine, transport).await
}

fn member(spec: &MemberSpec) -> Member {
    Member {
        server: spec.server.clone(),
        addr: spec.addr.clone(),
    }
}

fn store_err(e: StoreError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl StoreNode {
    /// Opens the replica under `cfg.dir`, serves it on `rpc`, and starts its background work.
    pub async fn open(
        cfg: NodeConfig,
        rpc: &RpcServer,
        pool: RpcPool,
    ) -> std::io::Result<Arc<StoreNode>> {
        let me = cfg
            .members
            .iter()
            .find(|m| m.server == cfg.me)
            .cloned()
            .ok_or_else(|| {
                std::io::Error::other(format!(
                    "{} is not a replica of store {}",
                    cfg.me, cfg.store
                ))
            })?;
        std::fs::create_dir_all(&cfg.dir)?;
        let generation = read_generation(&cfg.dir);
        let data = if cfg.in_memory {
            Db::new_memory()
        } else {
            Db::File(cfg.dir.join("store.sqlite"))
        };
        let memory = if cfg.in_memory && !me.witness {
            Some(Mutex::new(
                prepare_memory(&cfg, &data, generation).map_err(store_err)?,
            ))
        } else {
            None
        };
        let replica = open_replica(&cfg, &data, &me, generation, &pool).await?;
        let readers = if me.witness {
            None
        } else {
            Some(Readers::open_db(&data, 2, 8192).map_err(store_err)?)
        };
        let listener = Listener::new(&cfg.store, cfg.listener, cfg.rpc_server.clone());
        let high_safety = cfg.high_safety_mirroring;
        let node = Arc::new(StoreNode {
            cfg,
            replica: Mutex::new(replica),
            generation: AtomicU64::new(generation),
            fenced: AtomicBool::new(false),
            readers,
            data,
            _memory: memory,
            watch: Mutex::default(),
            listener,
            high_safety: AtomicBool::new(high_safety),
            pool,
            transition: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        });
        node.serve(rpc);
        tokio::spawn(node.clone().bootstrap());
        tokio::spawn(node.clone().watch_loop());
        Ok(node)
    }

    fn serve(self: &Arc<Self>, rpc: &RpcServer) {
        self.serve_raft(rpc);
        self.serve_store(rpc);
        if let Ok(mut w) = self.watch.lock() {
            w.rpc = Some(rpc.clone());
        }
    }

    /// Registers the replication service of the current generation (and drops older ones).
    fn serve_raft(self: &Arc<Self>, rpc: &RpcServer) {
        let generation = self.generation.load(Ordering::SeqCst);
        for g in 0..generation {
            rpc.unhandle(&format!("raft/{}/", group(&self.cfg.store, g)));
        }
        let n = self.clone();
        rpc.handle(
            format!("raft/{}/", group(&self.cfg.store, generation)),
            move |req: Request| {
                let n = n.clone();
                async move {
                    let kind = req.service.rsplit('/').next().unwrap_or("").to_string();
                    if kind == "transfer" && !n.is_witness(&req.peer) {
                        n.note_planned(&req.peer);
                    }
                    n.replica()
                        .handle(&kind, &req.body)
                        .await
                        .map(bytes::Bytes::from)
                        .map_err(|e| RemoteError::new("replication", e))
                }
            },
        );
    }

    /// Registers the store's client services on an rpc endpoint.
    fn serve_store(self: &Arc<Self>, rpc: &RpcServer) {
        let n = self.clone();
        rpc.handle(format!("store/{}/", self.cfg.store), move |req: Request| {
            let n = n.clone();
            async move {
                let op = req.service.rsplit('/').next().unwrap_or("").to_string();
                Ok(bytes::Bytes::from(n.handle_op(&op, &req.body).await))
            }
        });
    }

    fn is_witness(&self, server: &str) -> bool {
        self.cfg
            .members
            .iter()
            .any(|m| m.server == server && m.witness)
    }

    fn note_planned(&self, from: &str) {
        if let Ok(mut w) = self.watch.lock() {
            w.planned = Some((now_ms(), from.to_string()));
        }
    }

    /// The current replica (for status and tests).
    pub fn replica(&self) -> Replica<NodeMachine> {
        match self.replica.lock() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Stops this replica from becoming primary and, if it is the primary, hands the role to
    /// the most advanced synchronous secondary with no data loss (`server drain`), one not on
    /// a server in `avoid` (others draining too) when there is one. Returns the primary after
    /// it.
    pub async fn step_down(&self, avoid: &BTreeSet<String>) -> Reply<Option<String>> {
        self.replica().set_elect(false);
        let st = self.replica().status();
        if st.role != Role::Leader {
            let leader = st
                .leader
                .and_then(|id| st.voters.get(&id).map(|m| m.server.clone()));
            return Ok(leader);
        }
        let st = self
            .planned_failover_avoiding(
                FailoverRequest {
                    to: None,
                    from: Some(self.cfg.me.clone()),
                },
                avoid,
            )
            .await?;
        Ok(st.primary)
    }

    /// Lets this replica campaign again after [`StoreNode::step_down`] (if its topology
    /// allows it to fail over by itself).
    pub fn resume_elections(&self) {
        let elect = self
            .cfg
            .members
            .iter()
            .any(|m| m.server == self.cfg.me && m.sync && (m.automatic || m.witness));
        self.replica().set_elect(elect);
    }

    /// Whether this replica is the primary now (and of the newest generation).
    pub fn is_primary(&self) -> bool {
        !self.fenced.load(Ordering::SeqCst) && self.replica().role() == Role::Leader
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.cfg.store
    }

    async fn handle_op(self: &Arc<Self>, op: &str, body: &[u8]) -> Vec<u8> {
        let fenced = self.fenced.load(Ordering::SeqCst);
        match op {
            "generation" => {
                return encode(&Reply::<(u64, bool)>::Ok((
                    self.generation.load(Ordering::SeqCst),
                    fenced,
                )));
            }
            "reseed" => {
                return encode(&match decode::<u64>(body, "generation") {
                    Ok(g) => self.reseed(g).await,
                    Err(e) => Err(e),
                });
            }
            "force" => {
                return encode(&match decode::<ForceRequest>(body, "force request") {
                    Ok(r) => self.force(r).await,
                    Err(e) => Err(e),
                });
            }
            _ if fenced => {
                return encode(&Reply::<()>::Err(Refusal::Unavailable(format!(
                    "{} holds an old generation of {} and serves nothing until it is reseeded (tandem store add-replica)",
                    self.cfg.me, self.cfg.store
                ))));
            }
            _ => {}
        }
        match op {
            "apply" => encode(&match decode::<ApplyRequest>(body, "command") {
                Ok(env) => self.apply(env).await,
                Err(e) => Err(e),
            }),
            "query" => encode(&match decode::<QueryRequest>(body, "query") {
                Ok(q) => self.query(q).await,
                Err(e) => Err(e),
            }),
            "status" => encode(&self.status().await),
            "failover" => encode(&match decode::<FailoverRequest>(body, "failover request") {
                Ok(r) => self.planned_failover(r).await,
                Err(e) => Err(e),
            }),
            "backup" => encode(&match decode::<BackupRequest>(body, "backup request") {
                Ok(r) => self.backup(r).await,
                Err(e) => Err(e),
            }),
            "add-replica" | "remove-replica" | "set-commit" => {
                encode(&match decode::<MemberChange>(body, "change") {
                    Ok(c) => self.change_member(op, c).await,
                    Err(e) => Err(e),
                })
            }
            "mirroring" => encode(&match decode::<MirroringChange>(body, "mirroring change") {
                Ok(c) => self.change_mirroring(c).await,
                Err(e) => Err(e),
            }),
            other => encode(&Reply::<()>::Err(Refusal::Refused(format!(
                "unknown store operation {other}"
            )))),
        }
    }

    fn endpoint(&self, id: u64) -> Option<Endpoint> {
        let st = self.replica().status();
        st.voters
            .get(&id)
            .or_else(|| st.learners.get(&id))
            .map(|m| Endpoint {
                server: m.server.clone(),
                addr: m.addr.clone(),
            })
    }

    fn refusal(&self, e: WriteError) -> Refusal {
        match e {
            WriteError::NotLeader { leader } => Refusal::NotPrimary {
                primary: leader.map(|(_, m)| Endpoint {
                    server: m.server,
                    addr: m.addr,
                }),
            },
            WriteError::Unknown(why) => {
                Refusal::Unavailable(format!("outcome unknown ({why}); retry"))
            }
            WriteError::Stopped(why) => Refusal::Unavailable(format!("replica stopped: {why}")),
            WriteError::Membership(why) => Refusal::Unavailable(why),
        }
    }

    fn not_primary(&self) -> Refusal {
        Refusal::NotPrimary {
            primary: self
                .replica()
                .status()
                .leader
                .and_then(|id| self.endpoint(id)),
        }
    }

    /// Applies a command on the primary.
    pub async fn apply(&self, env: Envelope) -> Reply<Applied> {
        if self.is_witness(&self.cfg.me) {
            return Err(Refusal::Unavailable(format!(
                "{} is a witness: it never serves",
                self.cfg.me
            )));
        }
        if self.replica().role() != Role::Leader {
            return Err(self.not_primary());
        }
        let bytes = encode_command(&env).map_err(Refusal::Store)?;
        let replica = self.replica();
        let (out, index) = replica
            .write_indexed(bytes)
            .await
            .map_err(|e| self.refusal(e))?;
        if self.high_safety.load(Ordering::SeqCst)
            && let Some(mirror) = self
                .cfg
                .members
                .iter()
                .find(|m| m.server != self.cfg.me && !m.witness)
        {
            // High safety: the mirror holds it too before it is acknowledged — unless the
            // mirror is not connected (silent for an election timeout): then the principal
            // goes on alone, exposed, and status says so.
            replica
                .wait_replicated(
                    node_id(&mirror.server),
                    index,
                    self.cfg.election_timeout_max_ms,
                )
                .await;
        }
        match decode_outcome(&out) {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(e)) if e.is_storage() => Err(Refusal::Unavailable(e.to_string())),
            Ok(Err(e)) => Err(Refusal::Store(e)),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// Answers a query, on the primary (linearizable) or here within a staleness bound.
    pub async fn query(&self, q: QueryRequest) -> Reply<QueryAnswer> {
        let staleness_ms = match q.consistency {
            Consistency::Primary => {
                if self.replica().role() != Role::Leader {
                    return Err(self.not_primary());
                }
                self.replica()
                    .read_barrier()
                    .await
                    .map_err(|e| self.refusal(e))?;
                0
            }
            Consistency::Stale { max_ms } => {
                let st = self.replica().status();
                let staleness = if st.role == Role::Leader {
                    0
                } else {
                    let readable = self
                        .cfg
                        .members
                        .iter()
                        .any(|m| m.server == self.cfg.me && m.readable);
                    if !readable {
                        return Err(Refusal::Refused(format!(
                            "{} is not a readable secondary",
                            self.cfg.me
                        )));
                    }
                    // Caught up with what the primary last said: the data is as old as that message.
                    match (st.applied, st.leader_commit_seen, st.last_leader_contact_ms) {
                        (Some(a), Some(c), Some(t)) if a >= c => now_ms().saturating_sub(t),
                        _ => u64::MAX,
                    }
                };
                if staleness > max_ms {
                    return Err(Refusal::Unavailable(format!(
                        "data here may be older than {max_ms} ms (last contact with the primary: {})",
                        st.last_leader_contact_ms
                            .map_or("never".into(), |t| format!(
                                "{} ms ago",
                                now_ms().saturating_sub(t)
                            ))
                    )));
                }
                staleness
            }
        };
        let query = q.query;
        let Some(readers) = &self.readers else {
            return Err(Refusal::Refused(format!(
                "{} is a witness: it holds no data",
                self.cfg.me
            )));
        };
        let result = readers.query(query).await.map_err(Refusal::Store)?;
        Ok(QueryAnswer {
            result,
            staleness_ms,
            server: self.cfg.me.clone(),
        })
    }

    /// This replica's view of the store: complete on the primary, partial elsewhere.
    /// The replicas' rows of `store status`, from memory alone (complete on the primary):
    /// what the pool's re-placement looks at every round.
    pub fn replicas(&self) -> Vec<ReplicaStatus> {
        self.replica_rows(&self.replica().status())
    }

    fn replica_rows(&self, st: &replica::Status) -> Vec<ReplicaStatus> {
        let is_leader = st.role == Role::Leader;
        let now = now_ms();
        let leader_since = self.watch.lock().map(|w| w.leader_since_ms).unwrap_or(0);
        let caught = self
            .watch
            .lock()
            .map(|w| w.caught_up_at.clone())
            .unwrap_or_default();
        let last = st.last_log_index.unwrap_or(0);
        let mut replicas = Vec::new();
        let spec = |server: &str| {
            self.cfg
                .members
                .iter()
                .find(|m| m.server == server)
                .cloned()
        };
        let election = self.cfg.election_timeout_max_ms;
        let mut push = |id: u64, m: &Member, voter: bool| {
            let s = spec(&m.server);
            let progress = st.replication.get(&id);
            let matched = if id == st.id {
                st.last_log_index
            } else {
                progress.and_then(|p| p.matched)
            };
            let lag_entries = last.saturating_sub(matched.unwrap_or(0));
            let healthy = if id == st.id {
                true
            } else {
                progress
                    .and_then(|p| p.last_ack_ms_ago)
                    .is_some_and(|ms| ms < 2 * election)
            };
            let lag_ms = if lag_entries == 0 && healthy {
                0
            } else {
                // Never seen caught up since this node became primary: behind all that time.
                let since = caught.get(&id).copied().unwrap_or(leader_since);
                now.saturating_sub(since)
            };
            // Connected, and held everything the primary had within the last election timeout
            // (the watch samples every 50 ms): under load a follower is always an entry or two
            // behind the primary's newest, which is in flight, not missing.
            let synchronized = is_leader
                && healthy
                && (lag_entries == 0
                    || caught.get(&id).is_some_and(|t| {
                        now.saturating_sub(*t) < self.cfg.election_timeout_min_ms
                    }));
            let mirroring = self.cfg.mode == "mirroring";
            let role = if s.as_ref().is_some_and(|s| s.witness) {
                "witness"
            } else if st.leader == Some(id) {
                if mirroring { "principal" } else { "primary" }
            } else if mirroring {
                "mirror"
            } else {
                "secondary"
            };
            replicas.push(ReplicaStatus {
                server: m.server.clone(),
                role: role.into(),
                commit: if voter { "sync".into() } else { "async".into() },
                failover: match s.as_ref() {
                    Some(s) if s.automatic && voter => "automatic".into(),
                    // A routing group's replica moved to a server outside its first placement.
                    None if voter && self.cfg.mode == "routing-group" => "automatic".into(),
                    _ => "manual".into(),
                },
                readable: s.as_ref().is_some_and(|s| s.readable),
                synchronized,
                lag_entries: if is_leader { lag_entries } else { 0 },
                lag_ms: if is_leader { lag_ms } else { 0 },
                healthy: if is_leader { healthy } else { id == st.id },
                matched: if is_leader { matched } else { None },
            });
        };
        for (id, m) in &st.voters {
            push(*id, m, true);
        }
        for (id, m) in &st.learners {
            push(*id, m, false);
        }
        replicas
    }

    pub async fn status(&self) -> Reply<StoreStatus> {
        let st = self.replica().status();
        let is_leader = st.role == Role::Leader;
        let replicas = self.replica_rows(&st);
        let mirroring = self.mirroring_status(&replicas, is_leader);
        let failovers = match &self.readers {
            Some(r) => r
                .read(|c| machine::failovers(c, 10))
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(StoreStatus {
            store: self.cfg.store.clone(),
            mode: self.cfg.mode.clone(),
            reported_by: self.cfg.me.clone(),
            // A witness leads only for the moment it takes to hand the role to the mirror: it
            // is never the primary.
            primary: st
                .leader
                .and_then(|id| self.endpoint(id))
                .map(|e| e.server)
                .filter(|s| !self.is_witness(s)),
            term: st.term,
            lease_age_ms: st.quorum_ack_ms_ago,
            last_log_index: st.last_log_index,
            committed: st.committed,
            listener: self.cfg.listener.map(|a| a.to_string()),
            replicas,
            failovers,
            mirroring,
        })
    }

    /// The mirroring session's state, from the principal's rows of `store status`.
    fn mirroring_status(
        &self,
        replicas: &[ReplicaStatus],
        is_leader: bool,
    ) -> Option<MirroringStatus> {
        if self.cfg.mode != "mirroring" || !is_leader {
            return None;
        }
        let mirror = replicas.iter().find(|r| r.role == "mirror")?;
        let state = if mirror.synchronized {
            "synchronized"
        } else if mirror.healthy {
            "synchronizing"
        } else {
            "suspended"
        };
        Some(MirroringStatus {
            safety: if self.high_safety.load(Ordering::SeqCst) {
                "high-safety".into()
            } else {
                "high-performance".into()
            },
            mirror: mirror.server.clone(),
            witness: replicas
                .iter()
                .find(|r| r.role == "witness")
                .map(|r| r.server.clone()),
            state: state.into(),
            // High safety holds commits for a connected mirror: only a suspended one exposes
            // the principal. High performance never waits.
            exposed: !self.high_safety.load(Ordering::SeqCst) || !mirror.healthy,
        })
    }

    /// A planned failover: hands the primary role to a synchronized sync replica.
    pub async fn planned_failover(&self, req: FailoverRequest) -> Reply<StoreStatus> {
        self.planned_failover_avoiding(req, &BTreeSet::new()).await
    }

    /// [`StoreNode::planned_failover`]; with no target named, a replica on a server in
    /// `avoid` is chosen only when no other can take over.
    async fn planned_failover_avoiding(
        &self,
        req: FailoverRequest,
        avoid: &BTreeSet<String>,
    ) -> Reply<StoreStatus> {
        let st = self.replica().status();
        if st.role != Role::Leader {
            return Err(self.not_primary());
        }
        if req.from.as_ref().is_some_and(|from| *from != self.cfg.me) {
            return self.status().await;
        }
        let last = st.last_log_index.unwrap_or(0);
        let witness = |server: &str| {
            self.cfg
                .members
                .iter()
                .any(|s| s.server == server && s.witness)
        };
        if let Some(to) = &req.to
            && witness(to)
        {
            return Err(Refusal::Refused(format!(
                "{to} is the witness of {}: it holds no data and is never primary",
                self.cfg.store
            )));
        }
        // Mirroring without a witness voting (or in high performance): the mirror is a learner,
        // and a planned failover makes it a voter before handing it leadership (below).
        let mirroring = self.cfg.mode == "mirroring";
        let candidates: Vec<(u64, Member)> = st
            .voters
            .iter()
            .chain(st.learners.iter().filter(|_| mirroring))
            .filter(|(id, m)| **id != st.id && !witness(&m.server))
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let target = match &req.to {
            Some(server) => {
                let Some((id, _)) = candidates.iter().find(|(_, m)| m.server == *server) else {
                    return Err(Refusal::Refused(format!(
                        "{server} is not a synchronous secondary of {}: a planned failover goes to a sync replica",
                        self.cfg.store
                    )));
                };
                *id
            }
            None => {
                // The most advanced sync secondary, automatic ones first, and before them
                // any not on a server to avoid.
                let mut best: Option<(bool, bool, u64, u64)> = None;
                for (id, m) in &candidates {
                    let matched = st.replication.get(id).and_then(|p| p.matched).unwrap_or(0);
                    let automatic = self
                        .cfg
                        .members
                        .iter()
                        .any(|s| s.server == m.server && s.automatic);
                    let key = (!avoid.contains(&m.server), automatic, matched, *id);
                    if best.is_none_or(|b| (key.0, key.1, key.2) > (b.0, b.1, b.2)) {
                        best = Some(key);
                    }
                }
                match best {
                    Some((_, _, _, id)) => id,
                    None => {
                        return Err(Refusal::Refused(
                            "no synchronous secondary to fail over to".into(),
                        ));
                    }
                }
            }
        };
        let matched = st
            .replication
            .get(&target)
            .and_then(|p| p.matched)
            .unwrap_or(0);
        if last.saturating_sub(matched) > 1000 {
            return Err(Refusal::Refused(format!(
                "the target is {} transactions behind; wait until it is synchronized",
                last - matched
            )));
        }
        // A primary handed the role a moment ago records that failover first: once it is
        // not the primary any more it cannot, and the history would miss a failover.
        let recorded_by = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.failover_unrecorded(st.term) && tokio::time::Instant::now() < recorded_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Held until the mirror leads, so that `keep_mirroring_shape` here does not demote
        // the mirror on its way in.
        let _transition = self.transition.lock().await;
        if st.learners.contains_key(&target) {
            // The mirror votes first: from then on every commit waits for it, so it holds
            // everything acknowledged when it takes over. Its new principal then makes this
            // node its learner (`keep_mirroring_shape`).
            self.replica()
                .promote(BTreeSet::from([target]))
                .await
                .map_err(|e| self.refusal(e))?;
        }
        self.replica()
            .transfer_leader(target)
            .await
            .map_err(|e| self.refusal(e))?;
        let done = self
            .replica()
            .wait_for(Duration::from_secs(10), "the new primary", |s| {
                s.leader == Some(target)
            })
            .await;
        if let Err(e) = done {
            return Err(Refusal::Unavailable(format!(
                "the transfer did not complete: {e}"
            )));
        }
        self.status().await
    }

    /// A full or log backup of the database onto a share, taken on the primary while it
    /// serves (refused elsewhere).
    pub async fn backup(&self, req: BackupRequest) -> Reply<crate::backup::LogBackup> {
        if self.replica().status().role != Role::Leader {
            return Err(self.not_primary());
        }
        if self.cfg.in_memory {
            return Err(Refusal::Refused(format!(
                "{} keeps its database in memory, rebuilt from its replicas' logs: it has no backups",
                self.cfg.store
            )));
        }
        let (db, store, me) = (
            self.cfg.dir.join("store.sqlite"),
            self.cfg.store.clone(),
            self.cfg.me.clone(),
        );
        run_backup_request(db, req, store, me, |cmd| async move {
            self.apply(Envelope {
                request: Some(random_id()),
                cmd,
            })
            .await
            .map(|_| ())
        })
        .await
    }

    /// Mirroring without the witness voting: the principal votes alone and the mirror is its
    /// learner. After a planned failover to a learner mirror both vote (see
    /// `planned_failover`): the new principal makes the old one its learner. Skipped while a
    /// transition (a failover, a reshape) is under way here.
    async fn keep_mirroring_shape(&self, st: &replica::Status) {
        let witness_votes = self
            .cfg
            .members
            .iter()
            .any(|m| m.witness && st.voters.contains_key(&node_id(&m.server)));
        let others: BTreeSet<u64> = st
            .voters
            .keys()
            .copied()
            .filter(|id| *id != st.id)
            .collect();
        if witness_votes || others.is_empty() {
            return;
        }
        let Ok(_transition) = self.transition.try_lock() else {
            return;
        };
        // The old principal must acknowledge the change too (joint consensus): if it is gone,
        // this waits in vain; try again on a later round.
        let wait = Duration::from_millis(2 * self.cfg.election_timeout_max_ms);
        match tokio::time::timeout(wait, self.replica().demote(others)).await {
            Ok(Ok(_)) => {
                tracing::info!(store = %self.cfg.store, "mirroring: the old principal is now the mirror");
            }
            Ok(Err(e)) => {
                tracing::debug!(store = %self.cfg.store, error = %e, "mirroring: cannot demote the old principal yet");
            }
            Err(_) => {
                tracing::debug!(store = %self.cfg.store, "mirroring: demoting the old principal timed out");
            }
        }
    }

    /// Membership changes on the primary: `op` is `add-replica`, `remove-replica` or
    /// `set-commit`.
    pub async fn change_member(&self, op: &str, c: MemberChange) -> Reply<StoreStatus> {
        let st = self.replica().status();
        if st.role != Role::Leader {
            return Err(self.not_primary());
        }
        let id = node_id(&c.server);
        let sync = match c.commit.as_deref() {
            None | Some("sync") => true,
            Some("async") => false,
            Some(other) => {
                return Err(Refusal::Refused(format!(
                    "commit mode {other} is not sync or async"
                )));
            }
        };
        let result = match op {
            "add-replica" => {
                let Some(addr) = c.addr.clone() else {
                    return Err(Refusal::Refused(
                        "add-replica needs the server's rpc address".into(),
                    ));
                };
                // Asking again (a retry after a slow first attempt) finds the work done.
                if (sync && st.voters.contains_key(&id)) || (!sync && st.learners.contains_key(&id))
                {
                    return self.status().await;
                }
                if st.voters.contains_key(&id) || st.learners.contains_key(&id) {
                    return Err(Refusal::Refused(format!(
                        "{} is already a replica with another commit mode: use set-commit",
                        c.server
                    )));
                }
                // A replica of another generation is emptied and joins this one first.
                let generation = self.generation.load(Ordering::SeqCst);
                let service = format!("store/{}/generation", self.cfg.store);
                let theirs = match self
                    .pool
                    .call(&addr, &service, Vec::new(), Duration::from_secs(2))
                    .await
                {
                    Ok(bytes) => decode::<Reply<(u64, bool)>>(&bytes, "generation")
                        .ok()
                        .and_then(Result::ok),
                    Err(e) => {
                        return Err(Refusal::Unavailable(format!(
                            "{} does not answer: {e}",
                            c.server
                        )));
                    }
                };
                if let Some((g, fenced)) = theirs
                    && (g != generation || fenced)
                {
                    let service = format!("store/{}/reseed", self.cfg.store);
                    let bytes = self
                        .pool
                        .call(
                            &addr,
                            &service,
                            encode(&generation),
                            Duration::from_secs(30),
                        )
                        .await
                        .map_err(|e| {
                            Refusal::Unavailable(format!("cannot reseed {}: {e}", c.server))
                        })?;
                    decode::<Reply<()>>(&bytes, "reseed")??;
                }
                let m = Member {
                    server: c.server.clone(),
                    addr,
                };
                match self.replica().add_learner(m, sync).await {
                    Ok(()) if sync => self.replica().promote(BTreeSet::from([id])).await,
                    other => other,
                }
            }
            "remove-replica" => {
                if id == st.id {
                    return Err(Refusal::Refused(format!(
                        "{} is the primary: fail over first, then remove it",
                        c.server
                    )));
                }
                if !st.voters.contains_key(&id) && !st.learners.contains_key(&id) {
                    return Err(Refusal::Refused(format!("{} is not a replica", c.server)));
                }
                self.replica().remove(BTreeSet::from([id])).await
            }
            _ => {
                // set-commit
                if sync {
                    if !st.learners.contains_key(&id) {
                        return Err(Refusal::Refused(format!(
                            "{} is not an async replica",
                            c.server
                        )));
                    }
                    self.replica().promote(BTreeSet::from([id])).await
                } else {
                    if id == st.id {
                        return Err(Refusal::Refused(
                            "the primary commits synchronously by definition".into(),
                        ));
                    }
                    if !st.voters.contains_key(&id) {
                        return Err(Refusal::Refused(format!(
                            "{} is not a sync replica",
                            c.server
                        )));
                    }
                    self.replica().demote(BTreeSet::from([id])).await
                }
            }
        };
        result.map_err(|e| self.refusal(e))?;
        self.status().await
    }

    /// A new principal takes the safety level last set while serving, if any.
    async fn load_safety(&self) {
        let Some(readers) = &self.readers else { return };
        if let Ok(Some(high)) = readers.read(machine::mirroring_high_safety).await {
            self.high_safety.store(high, Ordering::SeqCst);
        }
    }

    /// Mirroring: switches between high safety and high performance, and lets the topology's
    /// witness in or out, while the store serves. The group's shape follows (see
    /// `tandem::server::node_config`): with high safety and the witness, principal, mirror and
    /// witness vote; otherwise the principal votes alone and the mirror is a learner.
    async fn change_mirroring(&self, c: MirroringChange) -> Reply<StoreStatus> {
        if self.cfg.mode != "mirroring" {
            return Err(Refusal::Refused(format!(
                "{} is not a mirroring store",
                self.cfg.store
            )));
        }
        let _transition = self.transition.lock().await;
        let st = self.replica().status();
        if st.role != Role::Leader {
            return Err(self.not_primary());
        }
        let high = match c.safety.as_deref() {
            None => self.high_safety.load(Ordering::SeqCst),
            Some("high-safety") => true,
            Some("high-performance") => false,
            Some(other) => {
                return Err(Refusal::Refused(format!(
                    "unknown safety `{other}`: high-safety or high-performance"
                )));
            }
        };
        let witness = self.cfg.members.iter().find(|m| m.witness).cloned();
        let mirror = self
            .cfg
            .members
            .iter()
            .find(|m| !m.witness && m.server != self.cfg.me)
            .cloned();
        let Some(mirror) = mirror else {
            return Err(Refusal::Refused("the topology declares no mirror".into()));
        };
        let witness_in = witness
            .as_ref()
            .is_some_and(|w| st.voters.contains_key(&node_id(&w.server)));
        let want_witness = c.witness.unwrap_or(witness_in && high);
        if want_witness && !high {
            return Err(Refusal::Refused(
                "a witness serves high safety only (automatic failover); switch to high-safety first, or leave the witness out".into(),
            ));
        }
        if want_witness && witness.is_none() {
            return Err(Refusal::Refused(format!(
                "the topology declares no witness for {}",
                self.cfg.store
            )));
        }
        // Waiting for the mirror starts before the group relies on it, and stops only after.
        if high {
            self.set_safety(true).await?;
        }
        let (m_id, replica) = (node_id(&mirror.server), self.replica());
        if want_witness {
            let w = witness
                .as_ref()
                .map(member)
                .ok_or_else(|| Refusal::Refused("no witness".into()))?;
            let w_id = node_id(&w.server);
            if !st.voters.contains_key(&w_id) && !st.learners.contains_key(&w_id) {
                replica
                    .add_learner(w, true)
                    .await
                    .map_err(|e| self.refusal(e))?;
            }
            let promote: BTreeSet<u64> = [m_id, w_id]
                .into_iter()
                .filter(|id| !st.voters.contains_key(id))
                .collect();
            if !promote.is_empty() {
                replica
                    .promote(promote)
                    .await
                    .map_err(|e| self.refusal(e))?;
            }
        } else {
            if let Some(w) = &witness {
                let w_id = node_id(&w.server);
                if st.voters.contains_key(&w_id) || st.learners.contains_key(&w_id) {
                    replica
                        .remove(BTreeSet::from([w_id]))
                        .await
                        .map_err(|e| self.refusal(e))?;
                }
            }
            if replica.status().voters.contains_key(&m_id) {
                replica
                    .demote(BTreeSet::from([m_id]))
                    .await
                    .map_err(|e| self.refusal(e))?;
            }
        }
        if !high {
            self.set_safety(false).await?;
        }
        self.status().await
    }

    /// Records the safety level in the store (so a new principal knows it) and applies it here.
    async fn set_safety(&self, high_safety: bool) -> Result<(), Refusal> {
        self.apply(Envelope {
            request: Some(random_id()),
            cmd: Command::SetMirroringSafety { high_safety },
        })
        .await?;
        self.high_safety.store(high_safety, Ordering::SeqCst);
        Ok(())
    }

    fn spec(&self) -> Option<MemberSpec> {
        self.cfg
            .members
            .iter()
            .find(|m| m.server == self.cfg.me)
            .cloned()
    }

    /// Replaces the replica with a fresh one of `generation`, and serves it.
    async fn switch_generation(
        self: &Arc<Self>,
        generation: u64,
        me: &MemberSpec,
    ) -> std::io::Result<Replica<NodeMachine>> {
        write_generation(&self.cfg.dir, generation)?;
        let replica = open_replica(&self.cfg, &self.data, me, generation, &self.pool).await?;
        if let Ok(mut r) = self.replica.lock() {
            *r = replica.clone();
        }
        self.generation.store(generation, Ordering::SeqCst);
        let rpc = self.watch.lock().ok().and_then(|w| w.rpc.clone());
        if let Some(rpc) = rpc {
            self.serve_raft(&rpc);
        }
        if let Ok(mut w) = self.watch.lock() {
            w.last_leader = None;
            w.recorded_term = 0;
            w.caught_up_at.clear();
            w.elect = None;
        }
        Ok(replica)
    }

    /// What forcing service here would lose; with `confirm`, does it: this replica becomes
    /// the only member of a new generation, serving the state it has.
    async fn force(self: &Arc<Self>, req: ForceRequest) -> Reply<ForceReport> {
        let _transition = self.transition.lock().await;
        if self.fenced.load(Ordering::SeqCst) {
            return Err(Refusal::Refused(format!(
                "{} holds an old generation: reseed it instead",
                self.cfg.me
            )));
        }
        if self.is_witness(&self.cfg.me) {
            return Err(Refusal::Refused(format!(
                "{} is a witness: it holds no data and cannot serve",
                self.cfg.me
            )));
        }
        let st = self.replica().status();
        // What this replica holds: applied, and received into its log (applied on forcing).
        let applied = st.applied.unwrap_or(0).max(st.last_log_index.unwrap_or(0));
        let seen = st.leader_commit_seen.unwrap_or(0);
        let lost = seen.saturating_sub(applied);
        let generation = self.generation.load(Ordering::SeqCst);
        let mut report = ForceReport {
            server: self.cfg.me.clone(),
            last_applied: applied,
            primary_committed_seen: seen,
            lost_transactions: lost,
            lost_positions: if lost > 0 {
                format!("{}..={}", applied + 1, seen)
            } else {
                String::new()
            },
            last_primary_contact_ms: st.last_leader_contact_ms,
            forced: false,
            generation,
        };
        if !req.confirm {
            return Ok(report);
        }
        if st.role == Role::Leader
            && st
                .quorum_ack_ms_ago
                .is_some_and(|ms| ms < self.cfg.election_timeout_max_ms)
        {
            return Err(Refusal::Refused(format!(
                "{} is already the primary, with a quorum",
                self.cfg.me
            )));
        }
        let detected_ms = now_ms();
        let Some(mut me) = self.spec() else {
            return Err(Refusal::Refused(format!(
                "{} is not in the topology's replicas",
                self.cfg.me
            )));
        };
        // As the only member, it votes and may be elected, whatever its mode was.
        me.sync = true;
        me.automatic = true;
        self.release_listener().await;
        let old = self.replica();
        old.shutdown().await;
        // Entries received from the lost primary but not yet known committed here may have
        // been acknowledged to clients: they are kept, not dropped with the old log.
        match old.apply_log_tail().await {
            Ok(last) => {
                tracing::info!(store = %self.cfg.store, last = ?last, "forced service: applied this replica's whole log")
            }
            Err(e) => {
                return Err(Refusal::Unavailable(format!(
                    "cannot apply this replica's log before forcing service: {e}"
                )));
            }
        }
        let new_generation = generation + 1;
        let reopened = (|| -> Result<(), StoreError> {
            let mut m = open_data(&self.cfg, &self.data)?;
            m.forget_position()?;
            if self.cfg.in_memory {
                // Until the new generation's first snapshot, its state is in no file.
                m.copy_to(&forced_copy(&self.cfg.dir, new_generation))?;
            }
            Ok(())
        })();
        if let Err(e) = reopened {
            return Err(Refusal::Unavailable(format!(
                "cannot reopen the database: {e}"
            )));
        }
        let replica = self
            .switch_generation(new_generation, &me)
            .await
            .map_err(|e| {
                Refusal::Unavailable(format!("cannot start generation {new_generation}: {e}"))
            })?;
        replica
            .initialize(BTreeMap::from([(node_id(&me.server), member(&me))]))
            .await
            .map_err(|e| self.refusal(e))?;
        replica
            .wait_for(Duration::from_secs(10), "leadership", |s| {
                s.role == Role::Leader && s.applied == s.last_log_index
            })
            .await
            .map_err(Refusal::Unavailable)?;
        let decided_ms = now_ms();
        let event = FailoverEvent {
            id: 0,
            kind: FailoverKind::Forced,
            from_server: st.leader.and_then(|id| {
                st.voters
                    .get(&id)
                    .or_else(|| st.learners.get(&id))
                    .map(|m| m.server.clone())
            }),
            to_server: self.cfg.me.clone(),
            term: replica.status().term,
            detected_ms,
            decided_ms,
            first_write_ms: 0,
            last_acked_before: seen,
            last_acked_after: applied,
            lost_transactions: lost,
            lost_detail: report.lost_positions.clone(),
            reason: format!(
                "forced service on {} (generation {new_generation}); loss known at the time: {lost} transaction(s)",
                self.cfg.me
            ),
        };
        let id = match self
            .apply(Envelope {
                request: Some(random_id()),
                cmd: Command::RecordFailover(event),
            })
            .await
        {
            Ok(Applied {
                outcome: Outcome::Recorded(id),
                ..
            }) => id,
            other => {
                return Err(Refusal::Unavailable(format!(
                    "could not record the forced failover: {other:?}"
                )));
            }
        };
        let first_write_ms = now_ms();
        let _ = self
            .apply(Envelope {
                request: Some(random_id()),
                cmd: Command::FailoverServing { id, first_write_ms },
            })
            .await;
        // The state did not come from this generation's log: members that join must install a
        // snapshot of it, so the log it covers goes.
        replica
            .snapshot_and_purge(Duration::from_secs(30))
            .await
            .map_err(|e| self.refusal(e))?;
        let _ = std::fs::remove_file(forced_copy(&self.cfg.dir, new_generation));
        report.forced = true;
        report.generation = new_generation;
        tracing::warn!(store = %self.cfg.store, generation = new_generation, lost, "forced service: this replica is the only member of a new generation");
        Ok(report)
    }

    /// Drops this replica's state and joins `generation` empty, to be filled by a snapshot
    /// from its primary.
    async fn reseed(self: &Arc<Self>, generation: u64) -> Reply<()> {
        let _transition = self.transition.lock().await;
        let current = self.generation.load(Ordering::SeqCst);
        if generation < current || (generation == current && !self.fenced.load(Ordering::SeqCst)) {
            return Err(Refusal::Refused(format!(
                "{} is at generation {current}; reseeding to {generation} would go back",
                self.cfg.me
            )));
        }
        let Some(me) = self.spec() else {
            return Err(Refusal::Refused(format!(
                "{} is not in the topology's replicas",
                self.cfg.me
            )));
        };
        self.release_listener().await;
        self.replica().shutdown().await;
        let wiped = (|| -> Result<(), StoreError> {
            let mut m = open_data(&self.cfg, &self.data)?;
            m.reset()
        })();
        if let Err(e) = wiped {
            return Err(Refusal::Unavailable(format!(
                "cannot empty the database: {e}"
            )));
        }
        let _ = std::fs::remove_dir_all(raft_dir(&self.cfg.dir, generation));
        self.switch_generation(generation, &me).await.map_err(|e| {
            Refusal::Unavailable(format!("cannot start generation {generation}: {e}"))
        })?;
        self.fenced.store(false, Ordering::SeqCst);
        tracing::info!(store = %self.cfg.store, generation, "reseeded: waiting for the primary's snapshot");
        Ok(())
    }

    /// Asks the other replicas for their generation; a newer one fences this node.
    async fn check_generation(self: &Arc<Self>) {
        let mine = self.generation.load(Ordering::SeqCst);
        let mut peers: Vec<String> = self
            .cfg
            .members
            .iter()
            .filter(|m| m.server != self.cfg.me)
            .map(|m| m.addr.clone())
            .collect();
        let st = self.replica().status();
        for m in st.voters.values().chain(st.learners.values()) {
            if m.server != self.cfg.me && !peers.contains(&m.addr) {
                peers.push(m.addr.clone());
            }
        }
        let service = format!("store/{}/generation", self.cfg.store);
        for addr in peers {
            let Ok(bytes) = self
                .pool
                .call(&addr, &service, Vec::new(), Duration::from_millis(500))
                .await
            else {
                continue;
            };
            let Ok(Ok((theirs, their_fence))) = decode::<Reply<(u64, bool)>>(&bytes, "generation")
            else {
                continue;
            };
            if theirs <= mine || their_fence {
                continue;
            }
            // Decide under the transition lock, against the generation as it is now (a reseed
            // may have moved this node forward while the question was on the wire).
            let _transition = self.transition.lock().await;
            if theirs > self.generation.load(Ordering::SeqCst)
                && !self.fenced.swap(true, Ordering::SeqCst)
            {
                tracing::warn!(
                    store = %self.cfg.store, mine, theirs, peer = %addr,
                    "a newer generation of this store exists (forced failover): this replica stops serving until reseeded"
                );
                self.release_listener().await;
                self.replica().shutdown().await;
                return;
            }
        }
    }

    /// Starts the group on the initial primary when it does not exist yet, then adds the
    /// asynchronous replicas.
    async fn bootstrap(self: Arc<Self>) {
        // A replica of an older generation must not start a group again.
        self.check_generation().await;
        if self.cfg.me != self.cfg.initial_primary || self.fenced.load(Ordering::SeqCst) {
            return;
        }
        let st = self.replica().status();
        if !st.voters.is_empty() || st.last_log_index.is_some() {
            return;
        }
        let voters: BTreeMap<u64, Member> = self
            .cfg
            .members
            .iter()
            .filter(|m| m.sync)
            .map(|m| (node_id(&m.server), member(m)))
            .collect();
        if let Err(e) = self.replica().initialize(voters).await {
            tracing::error!(store = %self.cfg.store, error = %e, "cannot start the replica group");
            return;
        }
        let learners: Vec<Member> = self
            .cfg
            .members
            .iter()
            .filter(|m| !m.sync)
            .map(member)
            .collect();
        if learners.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for m in learners {
            // A new primary changes membership only after its first entry committed: retry.
            loop {
                match self.replica().add_learner(m.clone(), false).await {
                    Ok(()) => break,
                    Err(e) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(store = %self.cfg.store, learner = %m.server, error = %e, "adding an async replica; retrying");
                        let _ = self
                            .replica()
                            .wait_for(Duration::from_millis(200), "a membership change", |s| {
                                s.role == Role::Leader && s.applied == s.last_log_index
                            })
                            .await;
                    }
                    Err(e) => {
                        tracing::error!(store = %self.cfg.store, learner = %m.server, error = %e, "cannot add an async replica");
                        break;
                    }
                }
            }
        }
    }

    /// Follows the replica's role: records failovers it wins, binds the listener while
    /// primary, and samples how far behind each member is.
    async fn watch_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        for n in 0u64.. {
            tick.tick().await;
            if self.closed.load(Ordering::SeqCst) {
                return;
            }
            let now = now_ms();
            let due = self
                .watch
                .lock()
                .map(|w| now.saturating_sub(w.generation_checked_ms) >= 2000)
                .unwrap_or(false);
            if due {
                if let Ok(mut w) = self.watch.lock() {
                    w.generation_checked_ms = now;
                }
                self.check_generation().await;
            }
            let st = self.replica().status();
            if st.role == Role::Stopped {
                // Stopped by a fence or a generation switch: the next replica takes over.
                self.set_listener(false).await;
                continue;
            }
            let is_leader = st.role == Role::Leader;
            if self.is_witness(&self.cfg.me) {
                // A witness never serves: it leads only to hand over.
                self.set_listener(false).await;
                if is_leader {
                    let data = self.cfg.members.iter().filter(|m| !m.witness);
                    crate::witness::hand_over(&self.cfg.store, &self.replica(), &st, data).await;
                }
                // Once a second, purge the log the others hold.
                if n % 20 == 0
                    && let Err(e) = self.replica().purge_kept_log(Duration::from_secs(1)).await
                {
                    tracing::debug!(store = %self.cfg.store, error = %e, "witness: log kept whole for now");
                }
                continue;
            }
            self.set_listener(is_leader).await;
            if is_leader && self.cfg.mode == "mirroring" {
                self.keep_mirroring_shape(&st).await;
            }
            if self.cfg.mode == "mirroring" && !self.is_witness(&self.cfg.me) {
                // Principal and mirror campaign exactly while they vote: the group's shape
                // changes with `store set-safety` and the witness.
                let elect = st.voters.contains_key(&st.id);
                let changed = self
                    .watch
                    .lock()
                    .map(|mut w| w.elect.replace(elect) != Some(elect))
                    .unwrap_or(false);
                if changed {
                    self.replica().set_elect(elect);
                }
            }
            let now = now_ms();
            let mut record = None;
            if let Ok(mut w) = self.watch.lock() {
                if is_leader {
                    if w.leader_term != st.term {
                        w.leader_term = st.term;
                        w.leader_since_ms = now;
                        w.term_start_index = st.last_log_index.unwrap_or(0);
                        if self.cfg.mode == "mirroring" {
                            let node = self.clone();
                            tokio::spawn(async move { node.load_safety().await });
                        }
                    }
                    let last = st.last_log_index.unwrap_or(0);
                    for (id, p) in &st.replication {
                        if p.matched.unwrap_or(0) >= last {
                            w.caught_up_at.insert(*id, now);
                        }
                    }
                    // Applied through the start of its term — not "applied everything": under
                    // a steady load the log always has entries not yet applied, and the
                    // failover would never be recorded.
                    if st.term > w.recorded_term && st.applied.unwrap_or(0) >= w.term_start_index {
                        w.recorded_term = st.term;
                        // A failover, unless this is the group's first primary.
                        if let Some((prev_id, _)) = w.last_leader.take() {
                            let planned = w.planned.take();
                            record = Some((prev_id, planned));
                            w.recording = Some(st.term);
                        }
                    }
                }
                // The last *other* leader: the one a failover to this node replaces.
                if let Some(l) = st.leader
                    && l != st.id
                    && !self.endpoint(l).is_some_and(|e| self.is_witness(&e.server))
                {
                    w.last_leader = Some((l, st.term));
                }
            }
            if let Some((prev_id, planned)) = record {
                let node = self.clone();
                let st2 = st.clone();
                tokio::spawn(async move { node.record_failover(prev_id, planned, st2).await });
            }
        }
    }

    async fn record_failover(
        self: Arc<Self>,
        prev_id: u64,
        planned: Option<(u64, String)>,
        st: replica::Status,
    ) {
        self.write_failover_record(prev_id, planned, &st).await;
        if let Ok(mut w) = self.watch.lock()
            && w.recording == Some(st.term)
        {
            w.recording = None;
        }
    }

    /// Whether this primary has yet to record how it became primary (a failover to it
    /// that the watch noticed but whose record is not written, or not decided yet).
    fn failover_unrecorded(&self, term: u64) -> bool {
        self.watch
            .lock()
            .map(|w| {
                w.recording == Some(term) || (w.last_leader.is_some() && w.recorded_term < term)
            })
            .unwrap_or(false)
    }

    async fn write_failover_record(
        &self,
        prev_id: u64,
        planned: Option<(u64, String)>,
        st: &replica::Status,
    ) {
        let decided_ms = now_ms();
        let from_server = self.endpoint(prev_id).map(|e| e.server);
        let (kind, detected_ms, reason) = match planned {
            Some((asked, by)) => (
                FailoverKind::Planned,
                asked,
                format!("planned, asked by {by}"),
            ),
            None => {
                // The old primary's last message plus the election timeout: the earliest moment
                // the replicas could conclude it was gone.
                let detected = st
                    .last_leader_contact_ms
                    .map(|t| (t + self.cfg.election_timeout_min_ms).min(decided_ms))
                    .unwrap_or(decided_ms);
                (
                    FailoverKind::Automatic,
                    detected,
                    "primary lost; elected by the sync replicas".to_string(),
                )
            }
        };
        let before = st.leader_commit_seen.unwrap_or(0);
        let after = st.last_log_index.unwrap_or(0);
        let lost = before.saturating_sub(after);
        let event = FailoverEvent {
            id: 0,
            kind,
            from_server,
            to_server: self.cfg.me.clone(),
            term: st.term,
            detected_ms,
            decided_ms,
            first_write_ms: 0,
            last_acked_before: before,
            last_acked_after: after,
            lost_transactions: lost,
            lost_detail: if lost > 0 {
                format!("{}..={}", after + 1, before)
            } else {
                String::new()
            },
            reason,
        };
        tracing::info!(store = %self.cfg.store, kind = kind.as_str(), term = st.term, "this replica is the new primary");
        let env = Envelope {
            request: Some(random_id()),
            cmd: Command::RecordFailover(event),
        };
        // Right after an election the first write can be refused (the new primary is still
        // taking over, or a transfer under load moves on): try again, with the same request
        // id so it is recorded once, while this replica is still the primary of that term.
        let mut tries = 0;
        let id = loop {
            tries += 1;
            match self.apply(env.clone()).await {
                Ok(Applied {
                    outcome: Outcome::Recorded(id),
                    ..
                }) => break id,
                other => {
                    let now = self.replica().status();
                    if tries >= 50 || now.role != Role::Leader || now.term != st.term {
                        tracing::warn!(store = %self.cfg.store, result = ?other, tries, "could not record the failover");
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        // The record itself was the new primary's first committed write.
        let first_write_ms = now_ms();
        let env = Envelope {
            request: Some(random_id()),
            cmd: Command::FailoverServing { id, first_write_ms },
        };
        if let Err(e) = self.apply(env).await {
            tracing::warn!(store = %self.cfg.store, error = %e, "could not complete the failover record");
        }
    }

    /// Binds the listener while primary, releases it otherwise.
    async fn set_listener(self: &Arc<Self>, primary: bool) {
        self.listener
            .hold(primary, |server| self.serve_store(server))
            .await;
    }

    async fn release_listener(&self) {
        self.listener.release().await;
    }

    /// The rpc pool the node uses (for clients in the same server).
    pub fn pool(&self) -> &RpcPool {
        &self.pool
    }

    /// Stops the replica (and the listener).
    pub async fn shutdown(&self) {
        self.release_listener().await;
        self.replica().shutdown().await;
    }

    /// Takes this replica out of service for good (a routing group's replica that moved to
    /// another server): its rpc services go, its background work ends, its replica stops.
    /// The caller removes its directory.
    pub async fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let rpc = self.watch.lock().ok().and_then(|w| w.rpc.clone());
        if let Some(rpc) = rpc {
            let generation = self.generation.load(Ordering::SeqCst);
            rpc.unhandle(&format!("raft/{}/", group(&self.cfg.store, generation)));
            rpc.unhandle(&format!("store/{}/", self.cfg.store));
        }
        self.shutdown().await;
    }

    /// The directory holding this replica.
    pub fn dir(&self) -> &std::path::Path {
        &self.cfg.dir
    }
}

/// Takes a full backup of `db` onto `share` off the async threads.
pub(crate) async fn run_backup(
    db: PathBuf,
    share: String,
    store: String,
    me: String,
) -> Reply<crate::backup::Manifest> {
    let taken = tokio::task::spawn_blocking(move || {
        crate::backup::take_full(&db, std::path::Path::new(&share), &store, &me)
    })
    .await
    .map_err(|e| Refusal::Unavailable(format!("the backup stopped: {e}")))?;
    taken.map_err(|e| match e {
        StoreError::Invalid(why) => Refusal::Refused(why),
        other => Refusal::Unavailable(other.to_string()),
    })
}

/// Carries out a backup request on the database at `db` (the serving node's); `apply` writes
/// a command through the store (replicated where the store is). A log backup turns the
/// transaction log on first if it is off, takes a full backup when [`backup::needs_full`]
/// says so, writes the segment, and then has the log forget what the segment holds.
pub async fn run_backup_request<F, Fut>(
    db: PathBuf,
    req: BackupRequest,
    store: String,
    me: String,
    apply: F,
) -> Reply<crate::backup::LogBackup>
where
    F: Fn(Command) -> Fut,
    Fut: std::future::Future<Output = Reply<()>>,
{
    use crate::backup::{self, LogBackup};
    if !req.log {
        let full = run_backup(db, req.share, store, me).await?;
        return Ok(LogBackup {
            full: Some(full),
            segment: None,
        });
    }
    let share = PathBuf::from(&req.share);
    let full_every = req.full_every_s.map(Duration::from_secs);
    let (db2, share2, store2) = (db.clone(), share.clone(), store.clone());
    let looked = tokio::task::spawn_blocking(move || -> Result<(bool, bool), StoreError> {
        let conn =
            rusqlite::Connection::open_with_flags(&db2, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", db2.display())))?;
        let on = machine::txlog_on(&conn)?;
        let first_logged: Option<i64> = conn
            .query_row("SELECT min(lsn) FROM txlog", [], |r| r.get(0))
            .map_err(StoreError::from)?;
        let need_full =
            backup::needs_full(&share2, &store2, first_logged.map(|f| f as u64), full_every)?;
        Ok((on, need_full))
    })
    .await
    .map_err(|e| Refusal::Unavailable(format!("the backup stopped: {e}")))?;
    let (on, need_full) = looked.map_err(|e| match e {
        StoreError::Invalid(why) => Refusal::Refused(why),
        other => Refusal::Unavailable(other.to_string()),
    })?;
    if !on {
        apply(Command::SetTransactionLog { on: true }).await?;
    }
    if let Some(reason) = req.close_writes.clone() {
        apply(Command::CloseWrites { reason }).await?;
    }
    let mut out = LogBackup::default();
    if need_full {
        out.full =
            Some(run_backup(db.clone(), req.share.clone(), store.clone(), me.clone()).await?);
    }
    let taken = tokio::task::spawn_blocking(move || backup::take_log(&db, &share, &store, &me))
        .await
        .map_err(|e| Refusal::Unavailable(format!("the backup stopped: {e}")))?
        .map_err(|e| Refusal::Unavailable(e.to_string()))?;
    if let Some(seg) = &taken {
        apply(Command::TruncateTransactionLog { upto: seg.last }).await?;
    }
    out.segment = taken;
    Ok(out)
}

/// A new request id: the time in ms in the top 48 bits, 80 random bits below. Unique like a
/// random id, but ids made close in time sort close together, so the store's table of
/// remembered requests (keyed by id) grows at its end instead of at a random page per insert.
pub fn random_id() -> u128 {
    let mut b = [0u8; 10];
    let random = if getrandom::fill(&mut b).is_ok() {
        let mut wide = [0u8; 16];
        wide[6..].copy_from_slice(&b);
        u128::from_be_bytes(wide)
    } else {
        // Unique enough without the OS: a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        u128::from(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    };
    (u128::from(now_ms() & 0xFFFF_FFFF_FFFF) << 80) | random
}
