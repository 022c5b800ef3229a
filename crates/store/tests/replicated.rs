//! A replicated store in one process: three replicas over real rpc on loopback, a client that
//! follows the primary, failover with the history it records.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::client::{StoreAddress, StoreClient};
use store::node::{MemberSpec, NodeConfig, StoreNode};
use store::pool::RpcPool;
use store::proto::Endpoint;
use store::*;

const SERVERS: [&str; 3] = ["r1", "r2", "r3"];

fn free() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], testkit::free_port("127.0.0.1")))
}

struct Cluster {
    dir: tempfile::TempDir,
    addrs: Vec<SocketAddr>,
    secret: rpc::ClusterSecret,
    nodes: Vec<Option<(Arc<StoreNode>, rpc::RpcServer)>>,
    /// Which members are sync voters (the others are async learners).
    sync: [bool; 3],
    /// The replicas keep their databases in memory (as a routing group's do).
    in_memory: bool,
}

impl Cluster {
    fn members(&self) -> Vec<MemberSpec> {
        SERVERS
            .iter()
            .zip(&self.addrs)
            .enumerate()
            .map(|(i, (s, a))| MemberSpec {
                server: s.to_string(),
                addr: a.to_string(),
                sync: self.sync[i],
                automatic: self.sync[i],
                readable: !self.sync[i],
                witness: false,
            })
            .collect()
    }

    async fn start(&mut self, i: usize) {
        let name = SERVERS[i];
        let scfg = rpc::ServerConfig::new(self.secret.clone(), "test", name);
        let server = rpc::RpcServer::bind(self.addrs[i], scfg.clone())
            .await
            .unwrap();
        server.spawn();
        let pool = RpcPool::new(rpc::ClientConfig::new(self.secret.clone(), "test", name));
        let cfg = NodeConfig {
            store: "s".into(),
            mode: "availability-group".into(),
            me: name.into(),
            members: self.members(),
            initial_primary: "r1".into(),
            dir: self.dir.path().join(name),
            listener: None,
            rpc_server: scfg,
            heartbeat_ms: 50,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            high_safety_mirroring: false,
            users_elsewhere: false,
            in_memory: self.in_memory,
            log_set: None,
        };
        let node = StoreNode::open(cfg, &server, pool).await.unwrap();
        self.nodes[i] = Some((node, server));
    }

    async fn stop(&mut self, i: usize) {
        if let Some((node, server)) = self.nodes[i].take() {
            node.shutdown().await;
            server.shutdown().await;
        }
    }

    fn client(&self) -> StoreClient {
        let pool = RpcPool::new(rpc::ClientConfig::new(
            self.secret.clone(),
            "test",
            "client",
        ));
        let address = StoreAddress {
            store: "s".into(),
            listener: None,
            replicas: SERVERS
                .iter()
                .zip(&self.addrs)
                .map(|(s, a)| Endpoint {
                    server: s.to_string(),
                    addr: a.to_string(),
                })
                .collect(),
        };
        StoreClient::new(address, pool)
    }

    fn primary(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.as_ref()
                .is_some_and(|(node, _)| node.replica().status().role == replica::Role::Leader)
        })
    }
}

async fn cluster() -> Cluster {
    cluster_with([true, true, true]).await
}

async fn cluster_with(sync: [bool; 3]) -> Cluster {
    cluster_of(sync, false).await
}

async fn cluster_of(sync: [bool; 3], in_memory: bool) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let secret = rpc::ClusterSecret::generate(dir.path().join("secret")).unwrap();
    let mut c = Cluster {
        dir,
        addrs: (0..3).map(|_| free()).collect(),
        secret,
        nodes: vec![None, None, None],
        sync,
        in_memory,
    };
    for i in 0..3 {
        c.start(i).await;
    }
    c
}

/// The users a replica has applied, read on its own machine.
async fn users_at(node: &StoreNode) -> Vec<String> {
    node.replica()
        .with_machine(|m| match m {
            store::witness::NodeMachine::Data(d) => d
                .read(|c| store::machine::users(c, 0))
                .map(|us| us.into_iter().map(|u| u.aor).collect())
                .map_err(std::io::Error::other),
            store::witness::NodeMachine::Witness(_) => Ok(Vec::new()),
        })
        .await
        .unwrap()
}

/// Adds users `sip:u<i>@example.com` for every i in `range`.
async fn add_users(store: &Store, range: std::ops::Range<u32>) {
    for i in range {
        store
            .apply(user(&format!("sip:u{i}@example.com")))
            .await
            .unwrap();
    }
}

/// Waits until replica `i` has applied everything the primary has written.
async fn caught_up(c: &Cluster, client: &StoreClient, i: usize, what: &str) {
    let target = client.status().await.unwrap().last_log_index;
    let (node, _) = c.nodes[i].as_ref().unwrap();
    node.replica()
        .wait_for(Duration::from_secs(10), what, |s| s.applied >= target)
        .await
        .unwrap();
}

/// Asks replica `i` for forced service (`confirm`: do it; else only the report).
async fn force(
    c: &Cluster,
    client: &StoreClient,
    i: usize,
    confirm: bool,
) -> store::proto::ForceReport {
    let bytes = client
        .ask(
            &c.addrs[i].to_string(),
            "force",
            store::proto::encode(&store::proto::ForceRequest { confirm }),
        )
        .await
        .unwrap();
    store::proto::decode::<store::proto::Reply<store::proto::ForceReport>>(&bytes, "report")
        .unwrap()
        .unwrap()
}

fn user(aor: &str) -> Command {
    Command::AddUser {
        user: User {
            aor: aor.into(),
            username: "u".into(),
            realm: "example.com".into(),
            ha1_md5: "m".into(),
            ha1_sha256: "s".into(),
            created_ms: 0,
        },
    }
}

/// Writes through the client reach the primary and every replica; after the primary is
/// stopped, the client follows the new one, nothing acknowledged is missing, and the new
/// primary records the failover with its RPO (0) and RTO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_follows_the_primary_across_a_failover() {
    let mut c = cluster().await;
    let client = c.client();
    let store = Store::remote(client.clone());
    for i in 0..20 {
        store
            .apply(user(&format!("sip:u{i}@example.com")))
            .await
            .unwrap();
    }
    assert!(matches!(
        store.apply(user("sip:u0@example.com")).await,
        Err(StoreError::Exists(_))
    ));
    let old = c.primary().unwrap();
    c.stop(old).await;
    for i in 20..30 {
        store
            .apply(user(&format!("sip:u{i}@example.com")))
            .await
            .unwrap();
    }
    assert_eq!(
        store.users(0).await.unwrap().len(),
        30,
        "every acknowledged user is there"
    );
    let status = client.status().await.unwrap();
    eprintln!("{status:#?}");
    assert_ne!(status.primary.as_deref(), Some(SERVERS[old]));
    let dead = status
        .replicas
        .iter()
        .find(|r| r.server == SERVERS[old])
        .unwrap();
    assert!(
        !dead.healthy && !dead.synchronized,
        "a stopped replica is neither healthy nor synchronized: {dead:?}"
    );
    // The failover record appears once the new primary has written it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let ev = loop {
        let st = client.status().await.unwrap();
        if let Some(ev) = st.failovers.first()
            && ev.first_write_ms > 0
        {
            break ev.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failover recorded: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ev.kind, FailoverKind::Automatic);
    assert_eq!(ev.from_server.as_deref(), Some(SERVERS[old]));
    assert_eq!(ev.lost_transactions, 0);
    assert!(ev.rto_ms().unwrap() < 10_000, "{ev:?}");
    // The old primary comes back and catches up.
    c.start(old).await;
    let (node, _) = c.nodes[old].as_ref().unwrap();
    let target = client.status().await.unwrap().last_log_index;
    node.replica()
        .wait_for(Duration::from_secs(10), "catch up", |s| s.applied >= target)
        .await
        .unwrap();
}

/// Forced service on an async replica after losing both sync replicas: the tool states the
/// loss before acting, the replica serves alone in a new generation with the loss recorded,
/// and an old replica that comes back serves nothing until it is reseeded into the new
/// generation, after which it holds the forced primary's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_service_names_the_loss_and_fences_the_old_generation() {
    // r1, r2 sync; r3 async.
    let mut c = cluster_with([true, true, false]).await;
    let client = c.client();
    let store = Store::remote(client.clone());
    add_users(&store, 0..10).await;
    // r3 must hold them before the site goes.
    caught_up(&c, &client, 2, "r3 caught up").await;
    c.stop(0).await;
    c.stop(1).await;
    let report = force(&c, &client, 2, false).await;
    assert!(!report.forced);
    assert_eq!(report.lost_transactions, 0, "r3 had everything: {report:?}");
    let done = force(&c, &client, 2, true).await;
    assert!(done.forced);
    assert_eq!(done.generation, 1);
    // r3 serves writes alone, and has every user.
    store.apply(user("sip:after@example.com")).await.unwrap();
    assert_eq!(store.users(0).await.unwrap().len(), 11);
    let st = client.status().await.unwrap();
    assert_eq!(st.primary.as_deref(), Some("r3"));
    let forced = st
        .failovers
        .iter()
        .find(|f| f.kind == FailoverKind::Forced)
        .expect("forced failover recorded");
    assert_eq!(forced.lost_transactions, 0);
    // r1 comes back: it learns of generation 1 and serves nothing.
    c.start(0).await;
    let (r1, _) = c.nodes[0].as_ref().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while r1.replica().status().role != replica::Role::Stopped {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old replica was not fenced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reseeded through add-replica, it joins generation 1 and gets the state.
    let change = store::proto::MemberChange {
        server: "r1".into(),
        addr: Some(c.addrs[0].to_string()),
        commit: Some("sync".into()),
    };
    let mut slow = client.clone();
    slow.attempt = Duration::from_secs(60);
    let direct = slow
        .ask(
            &c.addrs[2].to_string(),
            "add-replica",
            store::proto::encode(&change),
        )
        .await
        .unwrap();
    let st: store::proto::StoreStatus =
        store::proto::decode::<store::proto::Reply<store::proto::StoreStatus>>(&direct, "status")
            .unwrap()
            .unwrap();
    assert!(
        st.replicas
            .iter()
            .any(|r| r.server == "r1" && r.commit == "sync"),
        "{st:?}"
    );
    let (r1, _) = c.nodes[0].as_ref().unwrap();
    let target = client.status().await.unwrap().last_log_index;
    r1.replica()
        .wait_for(Duration::from_secs(10), "r1 reseeded", |s| {
            s.applied >= target
        })
        .await
        .unwrap();
    // Its database holds the forced primary's users (the snapshot replaced its own).
    let db = c.dir.path().join("r1").join("store.sqlite");
    let conn = rusqlite::Connection::open(db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 11);
}

/// A replica whose database is in memory loses it when it stops, and rebuilds it when it
/// starts again from what is durable: its snapshot file and the log after it. Users written
/// before the snapshot, after it, and while it was down are all there, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_memory_replica_rebuilds_its_state_from_its_snapshot_and_log() {
    let mut c = cluster_of([true, true, true], true).await;
    let client = c.client();
    let store = Store::remote(client.clone());
    add_users(&store, 0..20).await;
    let primary = c.primary().unwrap();
    let other = (primary + 1) % 3;
    caught_up(&c, &client, other, "caught up").await;
    let (node, _) = c.nodes[other].as_ref().unwrap();
    node.replica()
        .snapshot_and_purge(Duration::from_secs(10))
        .await
        .unwrap();
    add_users(&store, 20..30).await;
    c.stop(other).await;
    add_users(&store, 30..35).await;
    assert!(
        !c.dir
            .path()
            .join(SERVERS[other])
            .join("store.sqlite")
            .exists(),
        "an in-memory replica writes no database file"
    );
    c.start(other).await;
    caught_up(&c, &client, other, "rebuilt").await;
    let (node, _) = c.nodes[other].as_ref().unwrap();
    let mut have = users_at(node).await;
    have.sort();
    let mut want: Vec<String> = (0..35).map(|i| format!("sip:u{i}@example.com")).collect();
    want.sort();
    assert_eq!(have, want);
}

/// Forced service on a replica whose database is in memory: the new generation starts from
/// the state in memory, and once the call returns that state is durable there — the forced
/// replica stopped and started again still has every user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_service_in_memory_keeps_the_state_across_a_restart() {
    let mut c = cluster_of([true, true, true], true).await;
    let client = c.client();
    let store = Store::remote(client.clone());
    add_users(&store, 0..10).await;
    caught_up(&c, &client, 2, "r3 caught up").await;
    c.stop(0).await;
    c.stop(1).await;
    let report = force(&c, &client, 2, true).await;
    assert!(report.forced, "{report:?}");
    assert!(
        !c.dir.path().join("r3").join("forced-g1.sqlite").exists(),
        "the copy the generation started from goes once its snapshot holds the state"
    );
    store.apply(user("sip:after@example.com")).await.unwrap();
    c.stop(2).await;
    c.start(2).await;
    let (r3, _) = c.nodes[2].as_ref().unwrap();
    r3.replica()
        .wait_for(Duration::from_secs(10), "r3 leads again", |s| {
            s.role == replica::Role::Leader && s.applied == s.last_log_index
        })
        .await
        .unwrap();
    assert_eq!(users_at(r3).await.len(), 11);
    assert_eq!(store.users(0).await.unwrap().len(), 11);
    // Had it stopped between starting the generation and its first snapshot, the state would
    // be in no log and no snapshot, only in the copy forced service keeps until then: a node
    // opening the generation starts from that copy.
    let dir = c.dir.path().join("r3");
    let copy = dir.join("forced-g1.sqlite");
    let to = copy.clone();
    r3.replica()
        .with_machine(move |m| match m {
            store::witness::NodeMachine::Data(d) => d.copy_to(&to).map_err(std::io::Error::other),
            store::witness::NodeMachine::Witness(_) => Err(std::io::Error::other("a witness")),
        })
        .await
        .unwrap();
    // Without the old generation's position, as forced service writes it (a connection of
    // its own keeps the copy's rollback journal, as a copy standing alone has).
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute("DELETE FROM meta_blob WHERE key = 'position'", [])
        .unwrap();
    c.stop(2).await;
    std::fs::remove_dir_all(dir.join("raft-g1")).unwrap();
    c.start(2).await;
    let (r3, _) = c.nodes[2].as_ref().unwrap();
    assert_eq!(users_at(r3).await.len(), 11);
    assert!(
        copy.exists(),
        "the copy is kept until the generation has a snapshot"
    );
}
