//! `tandem server`: one server process. It reads the topology, takes the roles the topology
//! gives it (store replicas, front end), serves the admin API, prints one JSON "ready" line on
//! stdout once everything listens, and runs until SIGTERM or Ctrl-C.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use topology::{Role, StoreMode, Topology};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topology file.
    #[arg(long, required = true)]
    topology: Option<PathBuf>,
    /// This server's name in the topology.
    #[arg(long, required = true)]
    name: Option<String>,
    /// This server's data directory (default: the topology's data_dir for it).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The admin token file (default: <data>/admin.token, created if missing).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The secret every server of the topology shares, for their rpc (default:
    /// <data>/cluster.secret; `tandem lab` creates one for all its servers).
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// Exit when stdin closes (used by `tandem lab`, so servers never outlive it).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

/// The "ready" line a server prints on stdout.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Ready {
    pub event: String,
    pub server: String,
    pub pid: u32,
    pub roles: Vec<String>,
    pub sip_udp: Option<String>,
    pub sip_tcp: Option<String>,
    pub admin: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (Some(topology_file), Some(name)) = (args.topology.clone(), args.name.clone()) else {
        bail!("`tandem server` needs --topology FILE and --name SERVER");
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            // openraft warns on every failed heartbeat to a dead peer: keep its errors only.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let topology = match topology::load(&topology_file) {
        Ok(t) => t,
        Err(diags) => {
            eprintln!("{diags}");
            bail!("the topology {} is not valid", topology_file.display());
        }
    };
    let Some(me) = topology.server(&name).cloned() else {
        let names: Vec<&str> = topology.servers.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "server `{}` is not in the topology {} (its servers: {})",
            name,
            topology_file.display(),
            names.join(", ")
        );
    };
    let data = match (&args.data, &me.data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => bail!(
            "no data directory: pass --data or set data_dir for `{}` in the topology",
            me.name
        ),
    };
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let lock = lock_data_dir(&data)?;
    let token_file = args
        .admin_token_file
        .clone()
        .unwrap_or_else(|| data.join("admin.token"));
    let token = crate::ensure_token(&token_file)?;
    if args.exit_with_stdin {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            std::process::exit(0);
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let secret_file = args
        .cluster_secret_file
        .clone()
        .unwrap_or_else(|| data.join("cluster.secret"));
    let result = runtime.block_on(serve(&topology, &me, &data, token, &secret_file));
    drop(lock);
    result.map(|()| ExitCode::SUCCESS)
}

/// Takes an exclusive lock on the data directory: two servers on one directory would corrupt it.
fn lock_data_dir(data: &Path) -> anyhow::Result<std::fs::File> {
    let path = data.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "the data directory {} is in use by another tandem server",
                data.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// How a store's replicas are reached, from the topology.
fn store_address(topology: &Topology, store: &topology::Store) -> store::client::StoreAddress {
    store::client::StoreAddress {
        store: store.name.clone(),
        listener: store.listener.map(|a| a.to_string()),
        replicas: store
            .replicas
            .iter()
            .filter_map(|r| {
                let server = topology.server(&r.server)?;
                Some(store::proto::Endpoint {
                    server: server.name.clone(),
                    addr: server.rpc?.to_string(),
                })
            })
            .collect(),
    }
}

/// The replica set of an availability group or a mirroring session, from the topology.
///
/// Mirroring runs on the same replica groups: under high safety with a witness, principal,
/// mirror and witness are the three voters (automatic failover; the witness votes but holds no
/// database and never leads); without a witness, or under high performance, the principal is
/// the only voter and the mirror a learner (failover by hand). Under high safety the principal
/// also waits for a connected mirror before acknowledging a commit.
fn node_config(
    topology: &Topology,
    store: &topology::Store,
    me: &topology::Server,
    data: &Path,
    rpc: &rpc::ServerConfig,
) -> anyhow::Result<store::node::NodeConfig> {
    let mut members = Vec::new();
    let mut initial_primary = None;
    let mirroring = store.mode == StoreMode::Mirroring;
    let high_safety = store.safety == topology::Safety::HighSafety;
    let with_witness = store
        .replicas
        .iter()
        .any(|r| r.role == topology::ReplicaRole::Witness);
    for r in &store.replicas {
        use topology::ReplicaRole::{Mirror, Principal, Witness};
        if mirroring && r.role == Witness && !high_safety {
            // A witness only serves automatic failover, which high performance does not do.
            continue;
        }
        let Some(addr) = topology.server(&r.server).and_then(|s| s.rpc) else {
            bail!(
                "replica {} of store `{}` has no rpc address",
                r.server,
                store.name
            );
        };
        if matches!(r.role, topology::ReplicaRole::Primary | Principal) {
            initial_primary = Some(r.server.clone());
        }
        let sync = match r.role {
            // The principal always votes (alone, unless high safety has a witness).
            Principal => true,
            Mirror => high_safety && with_witness,
            _ => r.commit == topology::Commit::Sync,
        };
        members.push(store::node::MemberSpec {
            server: r.server.clone(),
            addr: addr.to_string(),
            sync,
            // A principal without a witness is its group's only voter: it must be able to
            // elect itself (after a restart too).
            automatic: r.role == Principal || r.failover == topology::FailoverMode::Automatic,
            readable: r.readable,
            witness: r.role == Witness,
        });
    }
    Ok(store::node::NodeConfig {
        store: store.name.clone(),
        mode: store.mode.as_str().to_string(),
        me: me.name.clone(),
        members,
        initial_primary: initial_primary.unwrap_or_default(),
        dir: data.join("stores").join(&store.name),
        listener: store.listener,
        rpc_server: rpc.clone(),
        heartbeat_ms: replica::DEFAULT_HEARTBEAT_MS,
        election_timeout_min_ms: replica::DEFAULT_ELECTION_TIMEOUT_MS.0,
        election_timeout_max_ms: replica::DEFAULT_ELECTION_TIMEOUT_MS.1,
        high_safety_mirroring: mirroring && high_safety,
        users_elsewhere: false,
        in_memory: false,
        log_set: None,
    })
}

/// A failover-cluster node's setup, from the topology. A relative `shared_path` is resolved
/// against the parent of the server's data directory (in a lab: the lab's directory, which
/// every server of the lab reaches).
/// A topology path as this server sees it: absolute as given; relative, from the parent of
/// its data directory (in a lab, the lab's directory).
fn beside_data(data: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        data.parent().unwrap_or(Path::new(".")).join(path)
    }
}

fn cluster_config(
    topology: &Topology,
    store: &topology::Store,
    me: &topology::Server,
    data: &Path,
    secret_file: &Path,
) -> anyhow::Result<store::cluster::ClusterConfig> {
    let mut members = Vec::new();
    for r in &store.replicas {
        let Some(addr) = topology.server(&r.server).and_then(|s| s.rpc) else {
            bail!(
                "node {} of store `{}` has no rpc address",
                r.server,
                store.name
            );
        };
        members.push(store::node::MemberSpec {
            server: r.server.clone(),
            addr: addr.to_string(),
            sync: true,
            automatic: r.role == topology::ReplicaRole::Node,
            readable: false,
            witness: r.role == topology::ReplicaRole::Witness,
        });
    }
    let Some(shared) = &store.shared_path else {
        bail!(
            "store `{}` is a failover cluster without shared_path",
            store.name
        );
    };
    let shared = beside_data(data, shared);
    Ok(store::cluster::ClusterConfig {
        store: store.name.clone(),
        me: me.name.clone(),
        members,
        shared_db: shared.join(format!("{}.sqlite", store.name)),
        dir: data.join("stores").join(&store.name),
        listener: store.listener,
        rpc_server: rpc::ServerConfig::new(
            rpc::ClusterSecret::load(secret_file)?,
            &topology.name,
            &me.name,
        ),
        // The topology's lease is the ownership group's shortest election timeout (the owner
        // lets go once a majority has been silent that long), in the replica layer's
        // proportions: heartbeats at a third of it, elections up to 5/3 of it.
        heartbeat_ms: (store.lease_ms / 3).max(10),
        election_timeout_min_ms: store.lease_ms,
        election_timeout_max_ms: store.lease_ms * 5 / 3,
    })
}

/// A front end's part of its pool: a client of every routing group, and the replicas this
/// server holds (under `<data>/pools/<pool>/rg<N>`).
async fn open_pool_member(
    topology: &Topology,
    pool: &topology::Pool,
    me: &topology::Server,
    data: &Path,
    rpc: &rpc::RpcServer,
    rpc_pool: &store::pool::RpcPool,
    rpc_config: &rpc::ServerConfig,
) -> anyhow::Result<Arc<frontend::pool::PoolMember>> {
    let mut peers = std::collections::BTreeMap::new();
    for name in &pool.servers {
        let Some(addr) = topology.server(name).and_then(|s| s.rpc) else {
            bail!(
                "server `{name}` of pool `{}` has no rpc address: the servers of a pool replicate \
                 their users' data to each other",
                pool.name
            );
        };
        peers.insert(name.clone(), addr.to_string());
    }
    let spec = frontend::pool::PoolSpec {
        pool: pool.name.clone(),
        me: me.name.clone(),
        servers: pool.servers.clone(),
        peers,
        routing_groups: pool.routing_groups,
        group_replicas: pool.group_replicas as usize,
        dir: data.join("pools").join(&pool.name),
        replace_after: (pool.replace_after_s > 0)
            .then(|| Duration::from_secs(u64::from(pool.replace_after_s))),
    };
    frontend::pool::PoolMember::open(spec, rpc, rpc_pool.clone(), rpc_config.clone())
        .await
        .with_context(|| format!("cannot open this server's part of pool {}", pool.name))
}

async fn serve(
    topology: &Topology,
    me: &topology::Server,
    data: &Path,
    token: String,
    secret_file: &Path,
) -> anyhow::Result<()> {
    let roles = topology.roles_of(&me.name);
    // The inter-server endpoint, and the clients every path to other servers shares.
    let mut rpc_server = None;
    let mut pool = None;
    // The rpc server's configuration, which the store replicas serve with too.
    let mut rpc_config = None;
    if let Some(addr) = me.rpc {
        let secret = rpc::ClusterSecret::load(secret_file).with_context(|| {
            format!(
                "cannot read the cluster secret {}: every server of a topology shares one \
                 (`tandem lab` writes it; copy it from another server, or pass --cluster-secret-file)",
                secret_file.display()
            )
        })?;
        let config = rpc::ServerConfig::new(secret.clone(), &topology.name, &me.name);
        rpc_config = Some(config.clone());
        let server = rpc::RpcServer::bind(addr, config)
            .await
            .with_context(|| format!("cannot bind the rpc address {addr}"))?;
        server.spawn();
        let clients =
            store::pool::RpcPool::new(rpc::ClientConfig::new(secret, &topology.name, &me.name));
        clients.serve_locally(&addr.to_string(), server.clone());
        pool = Some(clients);
        rpc_server = Some(server);
    }
    // Store replicas held by this server.
    let mut stores = Vec::new();
    let mut nodes = Vec::new();
    let mut cluster_nodes = Vec::new();
    let mut local_stores = std::collections::BTreeMap::new();
    let mut secondaries = Vec::new();
    for (store, replica) in topology.stores_on(&me.name) {
        // A store at one end of a log-shipping link: the link's roles on the share say
        // whether it serves (the primary), restores (the secondary), or neither (failed
        // over, until the roles are reversed).
        if let Some(link) = topology
            .log_shipping
            .iter()
            .find(|l| l.primary == store.name || l.secondary == store.name)
        {
            let share = beside_data(data, &link.share);
            let roles = store::logship::roles(&share, &link.name, &link.primary, &link.secondary)
                .with_context(|| {
                format!("cannot read the roles of log-shipping link `{}`", link.name)
            })?;
            if roles.secondary == store.name && !roles.shipping {
                let lsn = roles.failover.as_ref().map_or(0, |f| f.lsn);
                bail!(
                    "store `{}` was failed over to `{}` by log shipping `{}` (at LSN {lsn}): this \
                     server must not serve it again. To make it the new secondary, run \
                     `tandem logship reverse {}` on `{}`'s server, then start this server again: \
                     it reseeds the store from `{}`",
                    store.name,
                    roles.primary,
                    link.name,
                    link.name,
                    roles.primary,
                    roles.primary
                );
            }
            if roles.secondary == store.name {
                let replicated = store.mode == StoreMode::AvailabilityGroup;
                if store.mode != StoreMode::Standalone && !replicated {
                    bail!(
                        "store `{}` is the secondary of log shipping `{}`, but it is {}: a \
                         log-shipping secondary is a standalone store or an availability group. \
                         Restore it from `{}`'s backups instead (`tandem store restore`)",
                        store.name,
                        link.name,
                        store.mode.as_str(),
                        roles.primary
                    );
                }
                let dir = data.join("stores").join(&store.name);
                let mut opener = None;
                if replicated {
                    // One replica of an availability group reseeded as the secondary (the old
                    // primary, after a reversal): its replica's files are set aside the first
                    // time; each replica restores a seed of its own from the chain, and opens
                    // the group from it once the link fails back to it.
                    // Set aside unless this replica already restores from the link's primary
                    // (a restart while it is the secondary): whatever else is here (a replica
                    // of the group, its raft log) belongs to another life.
                    if dir.exists()
                        && store::logship::restoring_from(&dir.join("logship")).as_deref()
                            != Some(roles.primary.as_str())
                    {
                        let aside = dir.with_file_name(format!(
                            "{}.replaced-{}",
                            store.name,
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_millis())
                                .unwrap_or(0)
                        ));
                        std::fs::rename(&dir, &aside).with_context(|| {
                            format!("cannot set {} aside to {}", dir.display(), aside.display())
                        })?;
                        tracing::warn!(store = %store.name, to = %aside.display(), "this replica's files are set aside: it is reseeded from the log-shipping chain");
                    }
                    let (Some(server), Some(pool), Some(rpc_config)) =
                        (&rpc_server, &pool, &rpc_config)
                    else {
                        bail!(
                            "store `{}` is replicated but `{}` has no rpc address",
                            store.name,
                            me.name
                        );
                    };
                    let cfg = node_config(topology, store, me, data, rpc_config)?;
                    let (server, pool) = (server.clone(), pool.clone());
                    let open: store::logship::NodeOpener = Arc::new(move || {
                        let (cfg, server, pool) = (cfg.clone(), server.clone(), pool.clone());
                        Box::pin(async move {
                            store::node::StoreNode::open(cfg, &server, pool)
                                .await
                                .map_err(|e| e.to_string())
                        })
                    });
                    opener = Some(open);
                }
                let cfg = store::logship::SecondaryConfig {
                    link: link.name.clone(),
                    primary: roles.primary.clone(),
                    secondary: store.name.clone(),
                    share: share.clone(),
                    copy_dir: dir.join("logship"),
                    db: dir.join(if replicated {
                        "seed.sqlite"
                    } else {
                        "store.sqlite"
                    }),
                    copy_interval: Duration::from_secs(link.copy_interval_s.max(1)),
                    restore_interval: Duration::from_secs(link.restore_interval_s.max(1)),
                    restore_delay: Duration::from_secs(link.restore_delay_s),
                    backup_alert: Duration::from_secs(link.backup_alert_s),
                    retention: Duration::from_secs(link.retention_h.saturating_mul(3600)),
                    restore_alert: Duration::from_secs(link.restore_alert_s),
                    mode: link.secondary_mode.to_string(),
                };
                let job = store::logship::Secondary::start(cfg, opener)
                    .with_context(|| format!("cannot start log shipping into `{}`", store.name))?;
                tracing::info!(store = %store.name, link = %link.name, from = %roles.primary, "log-shipping secondary: copy and restore jobs started");
                secondaries.push(job);
                continue;
            }
        }
        match store.mode {
            StoreMode::Standalone => {
                let path = data.join("stores").join(&store.name).join("store.sqlite");
                let handle = store::Store::open_local(&path, store::Options::default())
                    .with_context(|| format!("cannot open store `{}`", store.name))?;
                tracing::info!(store = %store.name, path = %path.display(), "store open (standalone)");
                local_stores.insert(store.name.clone(), (path, handle.clone()));
                stores.push((store.name.clone(), handle));
            }
            StoreMode::AvailabilityGroup | StoreMode::Mirroring => {
                let (Some(server), Some(pool), Some(rpc_config)) =
                    (&rpc_server, &pool, &rpc_config)
                else {
                    bail!(
                        "store `{}` is replicated but `{}` has no rpc address",
                        store.name,
                        me.name
                    );
                };
                let cfg = node_config(topology, store, me, data, rpc_config)?;
                let node = store::node::StoreNode::open(cfg, server, pool.clone())
                    .await
                    .with_context(|| format!("cannot open replica of store `{}`", store.name))?;
                tracing::info!(store = %store.name, role = replica.role.as_str(), mode = store.mode.as_str(), "store replica open");
                nodes.push(node);
            }
            StoreMode::FailoverCluster => {
                let (Some(server), Some(pool)) = (&rpc_server, &pool) else {
                    bail!(
                        "store `{}` is a failover cluster but `{}` has no rpc address",
                        store.name,
                        me.name
                    );
                };
                let cfg = cluster_config(topology, store, me, data, secret_file)?;
                let node = store::cluster::ClusterNode::open(cfg, server, pool.clone())
                    .await
                    .with_context(|| format!("cannot open node of store `{}`", store.name))?;
                tracing::info!(store = %store.name, role = replica.role.as_str(), "failover-cluster node open");
                cluster_nodes.push(node);
            }
        }
    }
    // Log shipping, the primary's side, for each end of a link this server serves: a log
    // backup every interval while the roles make it the primary (see `store::logship::ship`).
    let mut primary_links = Vec::new();
    for link in &topology.log_shipping {
        for end in [&link.primary, &link.secondary] {
            let source = if let Some((_, h)) = stores.iter().find(|(n, _)| n == end) {
                store::logship::Source::Local(h.clone())
            } else if let Some(n) = nodes.iter().find(|n| n.name() == end.as_str()) {
                store::logship::Source::Node(n.clone())
            } else if let Some(c) = cluster_nodes.iter().find(|c| c.name() == end.as_str()) {
                store::logship::Source::Cluster(c.clone())
            } else if let Some(sec) = secondaries.iter().find(|s| s.config().link == link.name) {
                if sec.config().secondary != *end {
                    continue;
                }
                store::logship::Source::Secondary(sec.clone())
            } else {
                continue;
            };
            let db = match &source {
                store::logship::Source::Cluster(c) => c.shared_db().to_path_buf(),
                _ => data.join("stores").join(end).join("store.sqlite"),
            };
            let plink = store::logship::PrimaryLink {
                link: link.name.clone(),
                primary: link.primary.clone(),
                secondary: link.secondary.clone(),
                store: end.clone(),
                share: beside_data(data, &link.share),
                db,
                backup_alert: Duration::from_secs(link.backup_alert_s),
                started_ms: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            };
            primary_links.push((plink.clone(), source.clone()));
            tokio::spawn(store::logship::ship(
                plink,
                source,
                Duration::from_secs(link.backup_interval_s.max(1)),
                Duration::from_secs(link.retention_h.saturating_mul(3600)),
                me.name.clone(),
            ));
        }
    }
    // Clients of every replicated store, for the front end and the admin API.
    let mut clients = std::collections::BTreeMap::new();
    if let Some(pool) = &pool {
        for s in topology
            .stores
            .iter()
            .filter(|s| s.mode != StoreMode::Standalone)
        {
            clients.insert(
                s.name.clone(),
                store::client::StoreClient::new(store_address(topology, s), pool.clone()),
            );
        }
    }
    let mut frontend = None;
    // The admin API's user store, without a front end here: a standalone store this server
    // holds, else a standalone log-shipping secondary it holds (it serves once failed over
    // to), else a replicated store.
    let mut user_store = stores
        .first()
        .map(|(_, s)| s.clone())
        .or_else(|| {
            secondaries
                .iter()
                .find(|s| !s.is_replicated())
                .map(|s| store::Store::standby(s.clone()))
        })
        .or_else(|| {
            clients
                .values()
                .next()
                .map(|c| store::Store::remote(c.clone()))
        });
    if roles.contains(&Role::Frontend) {
        let Some(pool_cfg) = topology.frontend_pool_of(&me.name) else {
            bail!("`{}` has the front-end role but no pool", me.name)
        };
        let store = if let Some((_, s)) = stores.iter().find(|(n, _)| *n == pool_cfg.store) {
            s.clone()
        } else if let Some(sec) = secondaries
            .iter()
            .find(|s| s.config().secondary == pool_cfg.store && !s.is_replicated())
        {
            // The pool's store is a log-shipping secondary here (the old primary, reseeded
            // after a reversal): the front end serves once the link is failed over to it.
            store::Store::standby(sec.clone())
        } else if let Some(c) = clients.get(&pool_cfg.store) {
            store::Store::remote(c.clone())
        } else {
            bail!(
                "pool `{}` uses store `{}`, which is neither a standalone store on `{}` nor a replicated store it can reach",
                pool_cfg.name,
                pool_cfg.store,
                me.name
            );
        };
        let mut config =
            frontend::Config::new(&me.name, &topology.sip_domain, me.sip_udp, me.sip_tcp);
        config.sip = topology.sip.clone();
        let fe = match (&rpc_server, &pool, &rpc_config) {
            // A pool of several servers keeps its users' data in routing groups.
            (Some(server), Some(rpc_pool), Some(rpc_config)) if pool_cfg.servers.len() > 1 => {
                let member =
                    open_pool_member(topology, pool_cfg, me, data, server, rpc_pool, rpc_config)
                        .await?;
                // The groups are replica sets like a store's: `tandem store status|failover|
                // add-replica|…` work on them by name (pool1.rg3).
                for c in &member.clients {
                    clients.insert(c.store().to_string(), c.clone());
                }
                frontend::Frontend::start_in_pool(config, store.clone(), member, server).await
            }
            _ => frontend::Frontend::start(config, store.clone()).await,
        }
        .with_context(|| format!("cannot bind the SIP addresses of `{}`", me.name))?;
        tracing::info!(udp = ?fe.udp_addr(), tcp = ?fe.tcp_addr(), "SIP front end listening");
        user_store = Some(store);
        frontend = Some(fe);
    }
    let admin_listener = tokio::net::TcpListener::bind(me.admin)
        .await
        .with_context(|| format!("cannot bind the admin address {}", me.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let info = admin::ServerInfo {
        server: me.name.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        sip_udp: frontend
            .as_ref()
            .and_then(|f| f.udp_addr())
            .map(|a| a.to_string()),
        sip_tcp: frontend
            .as_ref()
            .and_then(|f| f.tcp_addr())
            .map(|a| a.to_string()),
        admin: admin_addr.to_string(),
    };
    let state = Arc::new(admin::AdminState {
        info: info.clone(),
        domain: topology.sip_domain.clone(),
        token,
        store: user_store,
        frontend: frontend.as_ref().map(|f| f.core().clone()),
        stores: clients,
        rpc_addrs: topology
            .servers
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.rpc?.to_string())))
            .collect(),
        local_stores,
        logship: secondaries,
        logship_ends: primary_links,
        backup_shares: topology
            .log_shipping
            .iter()
            .map(|l| (l.primary.clone(), beside_data(data, &l.share)))
            .collect(),
        store_nodes: nodes.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, state));
    let ready = Ready {
        event: "ready".into(),
        server: info.server,
        pid: info.pid,
        roles: info.roles,
        sip_udp: info.sip_udp,
        sip_tcp: info.sip_tcp,
        admin: info.admin,
    };
    println!("{}", serde_json::to_string(&ready)?);
    tracing::info!(server = %me.name, admin = %admin_addr, "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
        r = admin_task => {
            match r {
                Ok(Ok(())) => bail!("the admin API stopped"),
                Ok(Err(e)) => bail!("the admin API failed: {e}"),
                Err(e) => bail!("the admin API task failed: {e}"),
            }
        }
    }
    let pool_member = frontend.as_ref().and_then(|f| f.core().pool.clone());
    if let Some(fe) = frontend {
        // Answer what was accepted before the groups' replicas go.
        fe.shutdown(Duration::from_secs(10)).await;
    }
    if let Some(pool) = pool_member {
        for (_, node) in pool.local() {
            node.shutdown().await;
        }
    }
    for node in &nodes {
        node.shutdown().await;
    }
    for node in &cluster_nodes {
        node.shutdown().await;
    }
    drop(stores);
    if let Some(server) = rpc_server {
        server.shutdown().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A failover cluster's `lease_ms` sets its ownership group's timing: elections from the
    /// lease to 5/3 of it, heartbeats at a third; without it, the replica layer's defaults.
    #[test]
    fn a_cluster_lease_sets_the_ownership_timing() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        rpc::ClusterSecret::generate(&secret).unwrap();
        let example = include_str!("../../../examples/failover-cluster.toml");
        let timing = |source: &str| {
            let topology = topology::parse(source, "t.toml").unwrap();
            let store = topology.stores.iter().find(|s| s.name == "store1").unwrap();
            let me = topology.server("node1").unwrap();
            let c = cluster_config(&topology, store, me, dir.path(), &secret).unwrap();
            (
                c.heartbeat_ms,
                c.election_timeout_min_ms,
                c.election_timeout_max_ms,
            )
        };
        assert_eq!(
            timing(example),
            (
                replica::DEFAULT_HEARTBEAT_MS,
                replica::DEFAULT_ELECTION_TIMEOUT_MS.0,
                replica::DEFAULT_ELECTION_TIMEOUT_MS.1
            )
        );
        let slow = example.replace(
            "shared_path = \"shared\"",
            "shared_path = \"shared\"\nlease_ms = 900",
        );
        assert_eq!(timing(&slow), (300, 900, 1500));
    }
}
