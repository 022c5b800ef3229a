//! A failover-cluster store: two or more nodes reach one database on shared storage, and
//! exactly one of them — the owner — serves it.
//!
//! Who owns is a replicated decision: the nodes (and an optional witness) form a replica group
//! whose machine holds no data ([`WitnessMachine`], the position only); its leader is the
//! owner — unless it is the witness, which leads only to hand leadership to a node
//! ([`crate::witness::hand_over`]) and never owns. The fencing token is the leader's term — one leader per term, so one owner per
//! token. Taking ownership writes the token into the database (one fsynced transaction), and
//! every write transaction checks it under the database's write lock
//! ([`machine::apply_batch_fenced`]): once a newer owner took the storage, an old owner that
//! was paused or cut off can never write again, whatever it believes. The database is written
//! with `synchronous=FULL` by the owner's local engine (group commit), so an acknowledged write
//! is on the shared storage and survives any node.

use crate::listener::Listener;
use crate::local::{LocalStore, Options};
use crate::machine::{self, StoreError};
use crate::model::{Applied, Command, Envelope, FailoverEvent, FailoverKind, Outcome};
use crate::node::{MemberSpec, random_id};
use crate::pool::{RpcPool, RpcTransport};
use crate::proto::*;
use crate::witness::WitnessMachine;
use replica::{Member, Replica, ReplicaConfig, Role, node_id};
use rpc::{RemoteError, Request, RpcServer};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a failover-cluster node is set up.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub store: String,
    /// This server.
    pub me: String,
    /// Every node (and the witness) the topology declares, this one included.
    pub members: Vec<MemberSpec>,
    /// The database on the shared storage.
    pub shared_db: PathBuf,
    /// This node's own directory (`<data>/stores/<store>`): the ownership group's log.
    pub dir: PathBuf,
    pub listener: Option<SocketAddr>,
    pub rpc_server: rpc::ServerConfig,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
}

/// The storage while this node owns it.
#[derive(Clone)]
struct Owned {
    token: u64,
    store: LocalStore,
}

#[derive(Default)]
struct State {
    owned: Option<Owned>,
    /// A planned transfer to this node: when it was asked (unix ms) and from whom.
    planned: Option<(u64, String)>,
}

/// A running failover-cluster node.
pub struct ClusterNode {
    cfg: ClusterConfig,
    replica: Replica<WitnessMachine>,
    state: Mutex<State>,
    listener: Listener,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn member(spec: &MemberSpec) -> Member {
    Member {
        server: spec.server.clone(),
        addr: spec.addr.clone(),
    }
}

impl ClusterNode {
    /// Opens this node's ownership log, serves the store on `rpc`, and starts following who
    /// owns the storage.
    pub async fn open(
        cfg: ClusterConfig,
        rpc: &RpcServer,
        pool: RpcPool,
    ) -> std::io::Result<Arc<ClusterNode>> {
        let me = cfg
            .members
            .iter()
            .find(|m| m.server == cfg.me)
            .cloned()
            .ok_or_else(|| {
                std::io::Error::other(format!("{} is not a node of store {}", cfg.me, cfg.store))
            })?;
        std::fs::create_dir_all(&cfg.dir)?;
        let mut rcfg = ReplicaConfig::new(
            &format!("fc-{}", cfg.store),
            member(&me),
            cfg.dir.join("ownership"),
        );
        // A witness campaigns too, only to hand over (`witness::hand_over`): it may hold an
        // entry the surviving node lacks. It never owns the storage.
        rcfg.elect = true;
        rcfg.heartbeat_ms = cfg.heartbeat_ms;
        rcfg.election_timeout_min_ms = cfg.election_timeout_min_ms;
        rcfg.election_timeout_max_ms = cfg.election_timeout_max_ms;
        let machine = WitnessMachine::new(cfg.dir.clone());
        let replica = Replica::open(rcfg, machine, Arc::new(RpcTransport { pool })).await?;
        let listener = Listener::new(&cfg.store, cfg.listener, cfg.rpc_server.clone());
        let node = Arc::new(ClusterNode {
            cfg,
            replica,
            state: Mutex::default(),
            listener,
        });
        node.serve_raft(rpc);
        node.serve_store(rpc);
        tokio::spawn(node.clone().bootstrap());
        tokio::spawn(node.clone().watch_loop());
        Ok(node)
    }

    fn serve_raft(self: &Arc<Self>, rpc: &RpcServer) {
        let n = self.clone();
        rpc.handle(
            format!("raft/fc-{}/", self.cfg.store),
            move |req: Request| {
                let n = n.clone();
                async move {
                    let kind = req.service.rsplit('/').next().unwrap_or("").to_string();
                    if kind == "transfer"
                        && let Ok(mut s) = n.state.lock()
                    {
                        s.planned = Some((now_ms(), req.peer.clone()));
                    }
                    n.replica
                        .handle(&kind, &req.body)
                        .await
                        .map(bytes::Bytes::from)
                        .map_err(|e| RemoteError::new("replication", e))
                }
            },
        );
    }

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

    async fn handle_op(self: &Arc<Self>, op: &str, body: &[u8]) -> Vec<u8> {
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
            other => encode::<Reply<()>>(&Err(Refusal::Refused(format!(
                "`{other}` does not apply to a failover cluster: its nodes share one storage"
            )))),
        }
    }

    /// A full or log backup of the storage onto a share, by the owner.
    pub async fn backup(&self, r: BackupRequest) -> Reply<crate::backup::LogBackup> {
        if self.owned().is_none() {
            return Err(self.not_owner());
        }
        crate::node::run_backup_request(
            self.cfg.shared_db.clone(),
            r,
            self.cfg.store.clone(),
            self.cfg.me.clone(),
            |cmd| async move {
                self.apply(Envelope {
                    request: Some(random_id()),
                    cmd,
                })
                .await
                .map(|_| ())
            },
        )
        .await
    }

    /// The store's name.
    pub fn name(&self) -> &str {
        &self.cfg.store
    }

    /// The database on the shared storage.
    pub fn shared_db(&self) -> &std::path::Path {
        &self.cfg.shared_db
    }

    fn is_witness(&self) -> bool {
        self.cfg
            .members
            .iter()
            .any(|m| m.server == self.cfg.me && m.witness)
    }

    fn owned(&self) -> Option<Owned> {
        self.state.lock().ok().and_then(|s| s.owned.clone())
    }

    fn not_owner(&self) -> Refusal {
        let st = self.replica.status();
        if st.leader == Some(st.id) {
            // Leading the group but not (or no longer) owning the storage: ownership is
            // changing hands.
            return Refusal::Unavailable(format!(
                "{} does not own the storage now; retry",
                self.cfg.me
            ));
        }
        Refusal::NotPrimary {
            primary: st.leader.and_then(|id| {
                st.voters.get(&id).map(|m| Endpoint {
                    server: m.server.clone(),
                    addr: m.addr.clone(),
                })
            }),
        }
    }

    /// Applies a command on the owner, under its fencing token.
    pub async fn apply(&self, env: Envelope) -> Reply<Applied> {
        let Some(owned) = self.owned() else {
            return Err(self.not_owner());
        };
        match owned.store.apply_envelope(env).await {
            Ok(applied) => Ok(applied),
            Err(StoreError::Fenced { token, current }) => {
                tracing::warn!(store = %self.cfg.store, token, current, "fenced: another node owns the storage now");
                self.lose_ownership(token).await;
                Err(self.not_owner())
            }
            Err(e) if e.is_storage() => Err(Refusal::Unavailable(e.to_string())),
            Err(e) => Err(Refusal::Store(e)),
        }
    }

    /// Answers a query on the owner.
    pub async fn query(&self, q: QueryRequest) -> Reply<QueryAnswer> {
        let Some(owned) = self.owned() else {
            return Err(self.not_owner());
        };
        let query = q.query;
        let result = owned
            .store
            .read(move |c| machine::query(c, &query))
            .await
            .map_err(Refusal::Store)?;
        Ok(QueryAnswer {
            result,
            staleness_ms: 0,
            server: self.cfg.me.clone(),
        })
    }

    /// This node's view of the cluster: who owns the storage under which token, and how
    /// each node answers the ownership group's leader.
    pub async fn status(&self) -> Reply<StoreStatus> {
        let st = self.replica.status();
        let is_leader = st.role == Role::Leader;
        let owned = self.owned();
        let election = self.cfg.election_timeout_max_ms;
        let mut replicas = Vec::new();
        for (id, m) in &st.voters {
            let spec = self.cfg.members.iter().find(|s| s.server == m.server);
            let witness = spec.is_some_and(|s| s.witness);
            let healthy = if *id == st.id {
                true
            } else {
                st.replication
                    .get(id)
                    .and_then(|p| p.last_ack_ms_ago)
                    .is_some_and(|ms| ms < 2 * election)
            };
            replicas.push(ReplicaStatus {
                server: m.server.clone(),
                role: if witness {
                    "witness".into()
                } else if st.leader == Some(*id) {
                    "owner".into()
                } else {
                    "node".into()
                },
                commit: "shared".into(),
                failover: if witness { "manual" } else { "automatic" }.into(),
                readable: false,
                // Every node reaches the same storage: nothing to be behind on.
                synchronized: !witness && (healthy || !is_leader),
                lag_entries: 0,
                lag_ms: 0,
                healthy: if is_leader { healthy } else { *id == st.id },
                matched: None,
            });
        }
        let failovers = match &owned {
            Some(o) => o
                .store
                .read(|c| machine::failovers(c, 10))
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(StoreStatus {
            store: self.cfg.store.clone(),
            mode: "failover-cluster".into(),
            reported_by: self.cfg.me.clone(),
            // A witness leads only to hand leadership to a node: it never owns.
            primary: st
                .leader
                .and_then(|id| st.voters.get(&id).map(|m| m.server.clone()))
                .filter(|s| !self.cfg.members.iter().any(|m| &m.server == s && m.witness)),
            // The fencing token of the owner.
            term: owned.as_ref().map_or(st.term, |o| o.token),
            lease_age_ms: st.quorum_ack_ms_ago,
            last_log_index: None,
            committed: None,
            listener: self.cfg.listener.map(|a| a.to_string()),
            replicas,
            failovers,
            mirroring: None,
        })
    }

    /// A planned failover: hands ownership to another node.
    async fn planned_failover(&self, req: FailoverRequest) -> Reply<StoreStatus> {
        let st = self.replica.status();
        if st.role != Role::Leader {
            return Err(self.not_owner());
        }
        if req.from.as_ref().is_some_and(|from| *from != self.cfg.me) {
            return self.status().await;
        }
        let nodes: Vec<(u64, String)> = st
            .voters
            .iter()
            .filter(|(id, m)| {
                **id != st.id
                    && self
                        .cfg
                        .members
                        .iter()
                        .any(|s| s.server == m.server && !s.witness)
            })
            .map(|(id, m)| (*id, m.server.clone()))
            .collect();
        let target = match &req.to {
            Some(to) => match nodes.iter().find(|(_, s)| s == to) {
                Some((id, _)) => *id,
                None => {
                    return Err(Refusal::Refused(format!(
                        "{to} is not another node of {} (a witness never owns the storage)",
                        self.cfg.store
                    )));
                }
            },
            None => match nodes.first() {
                Some((id, _)) => *id,
                None => return Err(Refusal::Refused("no other node to fail over to".into())),
            },
        };
        self.replica
            .transfer_leader(target)
            .await
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        self.replica
            .wait_for(Duration::from_secs(10), "the new owner", |s| {
                s.leader == Some(target)
            })
            .await
            .map_err(Refusal::Unavailable)?;
        self.status().await
    }

    /// The first node starts the ownership group when none exists yet.
    async fn bootstrap(self: Arc<Self>) {
        let first = self.cfg.members.iter().find(|m| !m.witness);
        if first.is_none_or(|m| m.server != self.cfg.me) {
            return;
        }
        let st = self.replica.status();
        if !st.voters.is_empty() || st.last_log_index.is_some() {
            return;
        }
        let voters: BTreeMap<u64, Member> = self
            .cfg
            .members
            .iter()
            .map(|m| (node_id(&m.server), member(m)))
            .collect();
        if let Err(e) = self.replica.initialize(voters).await {
            tracing::error!(store = %self.cfg.store, error = %e, "cannot start the cluster's ownership group");
        }
    }

    /// Follows the ownership group: takes the storage when this node leads it with a fresh
    /// lease, lets it go when it does not, and holds the listener while owner.
    async fn watch_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let st = self.replica.status();
            if st.role == Role::Stopped {
                self.listener.release().await;
                return;
            }
            if self.is_witness() {
                if st.role == Role::Leader {
                    let nodes = self.cfg.members.iter().filter(|m| !m.witness);
                    crate::witness::hand_over(&self.cfg.store, &self.replica, &st, nodes).await;
                }
                continue;
            }
            let leading = st.role == Role::Leader
                && st
                    .quorum_ack_ms_ago
                    .is_some_and(|ms| ms < self.cfg.election_timeout_min_ms);
            let owned = self.owned();
            match (&owned, leading) {
                (None, true) => self.take_ownership(&st).await,
                (Some(o), true) if o.token != st.term => {
                    self.lose_ownership(o.token).await;
                    self.take_ownership(&st).await;
                }
                (Some(o), false) => self.lose_ownership(o.token).await,
                _ => {}
            }
            let serving = self.owned().is_some();
            self.listener
                .hold(serving, |server| self.serve_store(server))
                .await;
        }
    }

    async fn take_ownership(self: &Arc<Self>, st: &replica::Status) {
        let token = st.term;
        let (db, me) = (self.cfg.shared_db.clone(), self.cfg.me.clone());
        let decided_ms = now_ms();
        let opened = tokio::task::spawn_blocking(move || {
            LocalStore::open_fenced(&db, Options::default(), token, &me)
        })
        .await;
        let (store, (previous_token, previous_owner)) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                tracing::warn!(store = %self.cfg.store, token, error = %e, "cannot take the shared storage");
                return;
            }
            Err(e) => {
                tracing::warn!(store = %self.cfg.store, error = %e, "cannot take the shared storage");
                return;
            }
        };
        // The fence is this owner's first write.
        let first_write_ms = now_ms();
        tracing::info!(store = %self.cfg.store, token, previous = previous_token, "this node owns the shared storage");
        let planned = self.state.lock().ok().and_then(|mut s| {
            s.owned = Some(Owned {
                token,
                store: store.clone(),
            });
            s.planned.take()
        });
        let Some(from) = previous_owner.filter(|p| *p != self.cfg.me) else {
            return;
        };
        let (kind, detected_ms, reason) = match planned {
            Some((asked, by)) => (
                FailoverKind::Planned,
                asked,
                format!("planned, asked by {by}; storage fenced with token {token}"),
            ),
            None => (
                FailoverKind::Automatic,
                st.last_leader_contact_ms
                    .map(|t| (t + self.cfg.election_timeout_min_ms).min(decided_ms))
                    .unwrap_or(decided_ms),
                format!("owner lost; elected by the nodes, storage fenced with token {token}"),
            ),
        };
        let event = FailoverEvent {
            id: 0,
            kind,
            from_server: Some(from),
            to_server: self.cfg.me.clone(),
            term: token,
            detected_ms,
            decided_ms,
            first_write_ms: 0,
            last_acked_before: previous_token,
            last_acked_after: token,
            // Shared storage: every acknowledged write was fsynced to it.
            lost_transactions: 0,
            lost_detail: String::new(),
            reason,
        };
        let recorded = store
            .apply_envelope(Envelope {
                request: Some(random_id()),
                cmd: Command::RecordFailover(event),
            })
            .await;
        if let Ok(Applied {
            outcome: Outcome::Recorded(id),
            ..
        }) = recorded
        {
            let _ = store
                .apply_envelope(Envelope {
                    request: Some(random_id()),
                    cmd: Command::FailoverServing { id, first_write_ms },
                })
                .await;
        } else {
            tracing::warn!(store = %self.cfg.store, result = ?recorded, "could not record the failover");
        }
    }

    async fn lose_ownership(&self, token: u64) {
        let dropped = self.state.lock().ok().and_then(|mut s| {
            if s.owned.as_ref().is_some_and(|o| o.token == token) {
                s.owned.take()
            } else {
                None
            }
        });
        if dropped.is_some() {
            tracing::warn!(store = %self.cfg.store, token, "this node no longer owns the shared storage");
            self.listener.release().await;
        }
    }

    /// Stops the node (and the listener).
    pub async fn shutdown(&self) {
        self.listener.release().await;
        self.replica.shutdown().await;
    }
}
