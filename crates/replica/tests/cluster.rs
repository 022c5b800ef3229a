//! A replica group over an in-process transport, with real logs on disk: elections, writes,
//! failover, restarts, membership, transfer, snapshots.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use common::*;
use replica::{Role, node_id};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn three(name: &str) -> (Router, tempfile::TempDir) {
    let dir = tmp(name);
    let router = Router::default();
    for s in ["a", "b", "c"] {
        start(&router, s, dir.path(), true).await;
    }
    let voters: BTreeMap<_, _> = ["a", "b", "c"]
        .iter()
        .map(|s| (node_id(s), member(s)))
        .collect();
    router.get("a").unwrap().initialize(voters).await.unwrap();
    (router, dir)
}

/// Adds `new` as a learner through leader `l` and waits until it applied everything `l` had.
async fn add_learner_and_wait(l: &replica::Replica<Kv>, new: &replica::Replica<Kv>, what: &str) {
    // Retry: a leader changes membership only once its first entry committed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while l.add_learner(new.config().me.clone(), true).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let target = l.status().last_log_index.unwrap();
    new.wait_for(WAIT, what, |s| s.applied >= Some(target))
        .await
        .unwrap();
}

async fn leader(router: &Router, servers: &[&str]) -> String {
    let a = router.get(servers[0]).unwrap();
    let s = a
        .wait_for(WAIT, "a leader", |s| s.leader.is_some())
        .await
        .unwrap();
    let id = s.leader.unwrap();
    servers
        .iter()
        .find(|x| node_id(x) == id)
        .unwrap()
        .to_string()
}

async fn value(router: &Router, server: &str, key: &str) -> Option<String> {
    let key = key.to_string();
    router
        .get(server)
        .unwrap()
        .with_machine(move |m| Ok(m.map.get(&key).cloned()))
        .await
        .unwrap()
}

/// Writes commit on a majority and reach every member; the response is the machine's.
#[tokio::test]
async fn writes_replicate_to_every_member() {
    let (router, _dir) = three("writes").await;
    let l = leader(&router, &["a", "b", "c"]).await;
    let r = router.get(&l).unwrap();
    let prev: Option<String> = serde_json::from_slice(
        &write_anywhere(&router, &["a", "b", "c"], set("k", "1"), WAIT).await,
    )
    .unwrap();
    assert_eq!(prev, None);
    let prev: Option<String> =
        serde_json::from_slice(&r.write(set("k", "2")).await.unwrap()).unwrap();
    assert_eq!(prev.as_deref(), Some("1"));
    let last = r.status().last_log_index.unwrap();
    for s in ["a", "b", "c"] {
        router
            .get(s)
            .unwrap()
            .wait_for(WAIT, "applied", |st| st.applied >= Some(last))
            .await
            .unwrap();
        assert_eq!(value(&router, s, "k").await.as_deref(), Some("2"), "on {s}");
    }
    // A follower refuses writes and names the leader.
    let f = ["a", "b", "c"].into_iter().find(|s| *s != l).unwrap();
    match router.get(f).unwrap().write(set("x", "y")).await {
        Err(replica::WriteError::NotLeader {
            leader: Some((id, _)),
        }) => assert_eq!(id, node_id(&l)),
        other => panic!("{other:?}"),
    }
}

/// Losing the leader: the others elect a new one holding every acknowledged write; the old
/// member, restarted from its disk, rejoins and catches up.
#[tokio::test]
async fn failover_keeps_acknowledged_writes_and_the_old_leader_rejoins() {
    let (router, dir) = three("failover").await;
    let servers = ["a", "b", "c"];
    for i in 0..20 {
        write_anywhere(&router, &servers, set(&format!("k{i}"), "v"), WAIT).await;
    }
    let old = leader(&router, &servers).await;
    let gone = router.remove(&old).unwrap();
    gone.shutdown().await;
    drop(gone);
    let rest: Vec<&str> = servers.iter().copied().filter(|s| *s != old).collect();
    let new = router
        .get(rest[0])
        .unwrap()
        .wait_for(WAIT, "a new leader", |s| {
            s.leader.is_some_and(|l| l != node_id(&old))
        })
        .await
        .unwrap()
        .leader
        .unwrap();
    let new = rest.iter().find(|s| node_id(s) == new).unwrap().to_string();
    write_anywhere(&router, &rest, set("after", "failover"), WAIT).await;
    for i in 0..20 {
        assert_eq!(
            value(&router, &new, &format!("k{i}")).await.as_deref(),
            Some("v")
        );
    }
    // The old leader comes back from its directory.
    let back = start(&router, &old, dir.path(), true).await;
    let target = router.get(&new).unwrap().status().last_log_index.unwrap();
    back.wait_for(WAIT, "catch up", |s| s.applied >= Some(target))
        .await
        .unwrap();
    assert_eq!(
        value(&router, &old, "after").await.as_deref(),
        Some("failover")
    );
}

/// An isolated leader cannot commit: its writes fail or stay unacknowledged, while the
/// majority side elects a leader and serves.
#[tokio::test]
async fn an_isolated_leader_acknowledges_nothing() {
    let (router, _dir) = three("isolated").await;
    let servers = ["a", "b", "c"];
    write_anywhere(&router, &servers, set("before", "1"), WAIT).await;
    let old = leader(&router, &servers).await;
    router.isolate(&old);
    let stale = router.get(&old).unwrap();
    let attempt =
        tokio::time::timeout(Duration::from_secs(3), stale.write(set("split", "brain"))).await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "an isolated leader acknowledged a write: {attempt:?}"
    );
    let rest: Vec<&str> = servers.iter().copied().filter(|s| *s != old).collect();
    write_anywhere(&router, &rest, set("majority", "ok"), WAIT).await;
    router.heal();
    let target = router.get(rest[0]).unwrap().status().committed.unwrap();
    stale
        .wait_for(WAIT, "rejoin", |s| s.applied >= Some(target))
        .await
        .unwrap();
    assert_eq!(
        value(&router, &old, "split").await,
        None,
        "the unacknowledged write vanished"
    );
    assert_eq!(
        value(&router, &old, "majority").await.as_deref(),
        Some("ok")
    );
}

/// Planned failover: leadership moves to the named member, which had every write.
#[tokio::test]
async fn leadership_transfer_moves_the_primary() {
    let (router, _dir) = three("transfer").await;
    let servers = ["a", "b", "c"];
    write_anywhere(&router, &servers, set("k", "v"), WAIT).await;
    let old = leader(&router, &servers).await;
    let to = servers.iter().copied().find(|s| *s != old).unwrap();
    router
        .get(&old)
        .unwrap()
        .transfer_leader(node_id(to))
        .await
        .unwrap();
    router
        .get(to)
        .unwrap()
        .wait_for(WAIT, "leadership", |s| s.role == Role::Leader)
        .await
        .unwrap();
    assert_eq!(value(&router, to, "k").await.as_deref(), Some("v"));
}

/// Members with elections off (manual failover) never take over by themselves.
#[tokio::test]
async fn manual_failover_members_do_not_elect_themselves() {
    let dir = tmp("manual");
    let router = Router::default();
    start(&router, "a", dir.path(), true).await;
    start(&router, "b", dir.path(), false).await;
    start(&router, "c", dir.path(), false).await;
    let voters: BTreeMap<_, _> = ["a", "b", "c"]
        .iter()
        .map(|s| (node_id(s), member(s)))
        .collect();
    router.get("a").unwrap().initialize(voters).await.unwrap();
    router
        .get("a")
        .unwrap()
        .wait_for(WAIT, "leader a", |s| s.role == Role::Leader)
        .await
        .unwrap();
    let gone = router.remove("a").unwrap();
    gone.shutdown().await;
    let b = router.get("b").unwrap();
    let waited = b
        .wait_for(Duration::from_secs(3), "an election", |s| {
            s.role == Role::Leader || s.role == Role::Candidate
        })
        .await;
    assert!(
        waited.is_err(),
        "a manual-failover member elected itself: {waited:?}"
    );
}

/// Membership: a learner (async secondary) receives everything without voting, can be
/// promoted to voter, demoted back, and removed; a new member catches up from a snapshot.
#[tokio::test]
async fn learners_promotion_demotion_removal_and_snapshot_catch_up() {
    let (router, dir) = three("membership").await;
    let servers = ["a", "b", "c"];
    for i in 0..120 {
        write_anywhere(&router, &servers, set(&format!("k{i}"), "v"), WAIT).await;
    }
    let l = router.get(&leader(&router, &servers).await).unwrap();
    l.snapshot().await.unwrap();
    let d = start(&router, "d", dir.path(), true).await;
    add_learner_and_wait(&l, &d, "the learner catching up").await;
    assert_eq!(value(&router, "d", "k0").await.as_deref(), Some("v"));
    assert_eq!(d.status().role, Role::Learner);
    l.promote(BTreeSet::from([node_id("d")])).await.unwrap();
    assert!(l.status().voters.contains_key(&node_id("d")));
    l.demote(BTreeSet::from([node_id("d")])).await.unwrap();
    assert!(l.status().learners.contains_key(&node_id("d")));
    l.remove(BTreeSet::from([node_id("d")])).await.unwrap();
    let st = l.status();
    assert!(!st.voters.contains_key(&node_id("d")) && !st.learners.contains_key(&node_id("d")));
}

/// A snapshot larger than the transport's largest message still seeds a new member: it
/// travels in pieces. (In one message it could never be sent: the member would stay empty.)
#[tokio::test]
async fn a_snapshot_larger_than_a_message_reaches_a_new_member_in_pieces() {
    const LIMIT: usize = 64 * 1024;
    let dir = tmp("pieces");
    let router = Router::default();
    router.limit_messages(LIMIT);
    let pieces = |c: &mut replica::ReplicaConfig| c.snapshot_chunk_bytes = 8 * 1024;
    let servers = ["a", "b", "c"];
    for s in servers {
        start_configured(&router, s, dir.path(), true, pieces).await;
    }
    let voters: BTreeMap<_, _> = servers.iter().map(|s| (node_id(s), member(s))).collect();
    router.get("a").unwrap().initialize(voters).await.unwrap();
    let long = "v".repeat(100);
    for i in 0..800 {
        write_anywhere(&router, &servers, set(&format!("k{i}"), &long), WAIT).await;
    }
    let l = router.get(&leader(&router, &servers).await).unwrap();
    // The log goes: a new member can only start from the snapshot.
    l.snapshot_and_purge(WAIT).await.unwrap();
    let d = start_configured(&router, "d", dir.path(), true, pieces).await;
    add_learner_and_wait(&l, &d, "the new member installing the snapshot").await;
    assert_eq!(
        value(&router, "d", "k799").await.as_deref(),
        Some(long.as_str())
    );
    let (pieces_sent, bytes) = router.delivered("snapshot-chunk");
    assert!(
        bytes > LIMIT && pieces_sent > 1,
        "the snapshot went in {pieces_sent} pieces of {bytes} bytes in all"
    );
}

/// The leader's view of a dead member: not caught up, no recent acknowledgement.
#[tokio::test]
async fn a_dead_member_shows_no_progress() {
    let (router, _dir) = three("deadview").await;
    let servers = ["a", "b", "c"];
    write_anywhere(&router, &servers, set("k", "v"), WAIT).await;
    let old = leader(&router, &servers).await;
    let gone = router.remove(&old).unwrap();
    gone.shutdown().await;
    let rest: Vec<&str> = servers.iter().copied().filter(|s| *s != old).collect();
    write_anywhere(&router, &rest, set("k2", "v"), WAIT).await;
    let l = router.get(&leader(&router, &rest).await).unwrap();
    let st = l.status();
    eprintln!("{st:#?}");
    let p = st.replication.get(&node_id(&old)).cloned();
    assert!(
        p.as_ref().is_none_or(|p| p.matched < st.last_log_index),
        "{p:?} vs {:?}",
        st.last_log_index
    );
}
