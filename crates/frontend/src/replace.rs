//! Re-placement: a routing group whose replica sits on a server lost for longer than the
//! pool's `replace_after_s` gets a new replica on the next server of its placement ranking,
//! seeded by snapshot, and then forgets the lost one; when that server returns, the group
//! moves back to it and the stand-in replica is closed. So a group has three replicas again
//! within `replace_after_s` plus a snapshot copy of a loss, and a later second loss stops no
//! group (DESIGN.md §2, "Routing group").
//!
//! Each server watches the others' health ([`Fabric`], fed by `frontend/health` every
//! 500 ms), and for every group it leads takes one [`next_step`] at a time toward the
//! placement without the lost servers. The step is a pure function of the group's members,
//! the wanted replicas and who holds a copy, so the simulation in `tests/pool_sim.rs` checks
//! it over thousands of failure sequences. Only the group's primary changes its membership,
//! through the replica crate's joint consensus; a removal waits until every wanted replica
//! is a synchronized voter, so the group never has fewer live, synchronized voters than it
//! had before the step.

use crate::pool::{HEALTH, PoolMember};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::proto::{FailoverRequest, MemberChange, ReplicaStatus};

/// The rpc service through which a group's primary asks a server to open a replica of the
/// group (empty, waiting to be added); the body is the group id.
pub const HOST_GROUP: &str = "frontend/host-group";

/// The rpc service through which a group's primary tells a server that its replica left the
/// group, so it closes it and removes its data; the body is the group id.
pub const UNHOST_GROUP: &str = "frontend/unhost-group";

/// How often a server asks the others of its pool whether they are up.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// A server's answer to `frontend/health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub draining: bool,
    /// The routing groups it holds a replica of.
    pub groups: Vec<u32>,
    /// Those of them whose replica belongs to a started group (it has a log): a server
    /// that finds one of its groups started elsewhere never starts it again.
    pub started: Vec<u32>,
    /// The pool's servers as this server's topology lists them.
    pub servers: Vec<String>,
}

/// The other servers of the pool, as this one last saw them.
#[derive(Debug, Default)]
pub struct Fabric {
    /// Servers that did not answer, since when (absent: answered last time).
    pub down_since: BTreeMap<String, Instant>,
    /// The groups each server said it holds, as of its last answer.
    pub holds: BTreeMap<String, BTreeSet<u32>>,
    /// Servers whose topology lists other pool servers than this one's, with their list.
    pub other_topology: BTreeMap<String, Vec<String>>,
    /// The groups each server said are started on it.
    pub started: BTreeMap<String, BTreeSet<u32>>,
}

/// A replica of a group, as its primary sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub server: String,
    /// Votes (a synchronous replica) rather than learns.
    pub voter: bool,
    /// Answered the primary recently and holds everything committed.
    pub synchronized: bool,
}

/// The next change a group's primary makes toward its wanted placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Open a replica on this server (if it holds none) and add it, seeded by snapshot.
    Add(String),
    /// A replica added as a learner (an add cut short): make it vote.
    Promote(String),
    /// Take this server's replica out of the group, and close it if the server is up.
    Remove(String),
    /// This primary is not wanted: hand the group to this synchronized wanted replica.
    HandOff(String),
    /// This server holds a copy the group no longer has as a member: close it.
    Unhost(String),
    /// Nothing to do.
    Settled,
}

/// The next step for a group led by `me`, with `members` (the primary's view), `want` (the
/// placement without the lost servers), `down` (servers that do not answer now) and
/// `holders` (servers known to hold a copy).
///
/// 1. An unwanted replica that is behind or gone holds nothing the group counts on: it goes
///    first (the synchronized replicas stay, and a smaller group needs no more of them).
/// 2. A missing wanted replica on a server that answers is added, while the group is no
///    larger than it should be.
/// 3. A wanted learner (an add cut short) is made to vote.
/// 4. An unwanted synchronized replica goes once every wanted replica votes and holds
///    everything, or to make room for a missing one — and only while the synchronized
///    replicas left are a majority of the smaller group. This primary hands off first.
/// 5. Copies on servers that are not members are closed.
pub fn next_step(
    me: &str,
    members: &[MemberView],
    want: &[String],
    down: &BTreeSet<String>,
    holders: &BTreeSet<String>,
) -> Step {
    let member = |s: &str| members.iter().find(|m| m.server == s);
    let synced = |m: &MemberView| m.voter && (m.synchronized || m.server == me);
    let mut unwanted = members.iter().filter(|m| !want.contains(&m.server));
    if let Some(x) = unwanted.clone().find(|m| !synced(m) && m.server != me) {
        return Step::Remove(x.server.clone());
    }
    if members.len() <= want.len()
        && let Some(s) = want
            .iter()
            .find(|s| member(s).is_none() && !down.contains(*s))
    {
        return Step::Add(s.clone());
    }
    if let Some(m) = members
        .iter()
        .find(|m| !m.voter && want.contains(&m.server))
    {
        return Step::Promote(m.server.clone());
    }
    if let Some(x) = unwanted.next() {
        let all_in = want.iter().all(|s| member(s).is_some_and(synced));
        let left = members
            .iter()
            .filter(|m| m.server != x.server && synced(m))
            .count();
        // Over size with a wanted replica still missing: make room for it.
        let room = members.len() > want.len() && want.iter().any(|s| member(s).is_none());
        if (all_in || room) && left > (members.len() - 1) / 2 {
            if x.server != me {
                return Step::Remove(x.server.clone());
            }
            if let Some(to) = members
                .iter()
                .find(|m| m.server != me && want.contains(&m.server) && synced(m))
            {
                return Step::HandOff(to.server.clone());
            }
        }
        return Step::Settled;
    }
    if let Some(s) = holders
        .iter()
        .find(|s| member(s).is_none() && !want.contains(s) && *s != me)
    {
        return Step::Unhost(s.clone());
    }
    Step::Settled
}

/// The members of a group from its primary's rows of `store status`.
pub fn members_of(replicas: &[ReplicaStatus]) -> Vec<MemberView> {
    replicas
        .iter()
        .map(|r| MemberView {
            server: r.server.clone(),
            voter: r.commit == "sync",
            synchronized: r.synchronized,
        })
        .collect()
}

impl PoolMember {
    /// What this server answers to `frontend/health`.
    pub fn health(&self) -> Health {
        let local = self.local();
        Health {
            draining: self.is_draining(),
            groups: local.iter().map(|(g, _)| *g).collect(),
            started: local
                .iter()
                .filter(|(_, n)| {
                    let st = n.replica().status();
                    !st.voters.is_empty() || st.last_log_index.is_some()
                })
                .map(|(g, _)| *g)
                .collect(),
            servers: self.servers.clone(),
        }
    }

    /// The servers lost for longer than the pool's `replace_after_s`, as this server sees them.
    pub fn lost(&self) -> BTreeSet<String> {
        let Some(after) = self.spec.replace_after else {
            return BTreeSet::new();
        };
        let fabric = self.fabric.lock().unwrap_or_else(|e| e.into_inner());
        fabric
            .down_since
            .iter()
            .filter(|(_, since)| since.elapsed() >= after)
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Asks every other server of the pool whether it is up, and what it holds.
    pub(crate) async fn poll_health(&self) {
        let asks = self
            .peers
            .iter()
            .filter(|(s, _)| **s != self.me)
            .map(|(server, addr)| {
                let rpc = self.rpc.clone();
                async move {
                    let answer = rpc
                        .call(addr, HEALTH, Vec::new(), Duration::from_secs(1))
                        .await
                        .ok()
                        .and_then(|b| postcard::from_bytes::<Health>(&b).ok());
                    (server.clone(), answer)
                }
            });
        let answers = futures::future::join_all(asks).await;
        let mut fabric = self.fabric.lock().unwrap_or_else(|e| e.into_inner());
        for (server, answer) in answers {
            match answer {
                Some(h) => {
                    fabric.down_since.remove(&server);
                    if h.servers == self.servers {
                        fabric.other_topology.remove(&server);
                    } else {
                        fabric.other_topology.insert(server.clone(), h.servers);
                    }
                    fabric
                        .started
                        .insert(server.clone(), h.started.into_iter().collect());
                    fabric.holds.insert(server, h.groups.into_iter().collect());
                }
                None => {
                    fabric.down_since.entry(server).or_insert_with(Instant::now);
                }
            }
        }
    }

    /// Watches the pool and keeps every group this server leads on its wanted servers.
    pub async fn run_placement(self: Arc<Self>) {
        let mut tick = tokio::time::interval(POLL_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut waiting = false;
        loop {
            tick.tick().await;
            self.poll_health().await;
            // While the servers run different lists of the pool's servers (a topology change
            // being rolled out), their primaries would want different placements: wait.
            let differ = {
                let fabric = self.fabric.lock().unwrap_or_else(|e| e.into_inner());
                fabric
                    .other_topology
                    .iter()
                    .find(|(s, _)| !fabric.down_since.contains_key(*s))
                    .map(|(s, list)| (s.clone(), list.clone()))
            };
            if let Some((server, list)) = differ {
                if !waiting {
                    tracing::warn!(%server, theirs = ?list, ours = ?self.servers, "re-placement waits: the pool's servers run different topologies");
                }
                waiting = true;
                continue;
            }
            waiting = false;
            let want = self.placement(&self.lost());
            for (g, node) in self.local() {
                if !node.is_primary() {
                    continue;
                }
                let Some(want) = want.get(g as usize) else {
                    continue;
                };
                self.reconcile(g, &node, &want.replicas).await;
            }
        }
    }

    /// Takes one step toward `want` for group `g`, which this server leads.
    async fn reconcile(&self, g: u32, node: &store::node::StoreNode, want: &[String]) {
        let replicas = node.replicas();
        let (down, holders): (BTreeSet<String>, BTreeSet<String>) = {
            let fabric = self.fabric.lock().unwrap_or_else(|e| e.into_inner());
            let down: BTreeSet<String> = fabric.down_since.keys().cloned().collect();
            let holders = fabric
                .holds
                .iter()
                .filter(|(s, groups)| groups.contains(&g) && !down.contains(*s))
                .map(|(s, _)| s.clone())
                .collect();
            (down, holders)
        };
        let step = next_step(&self.me, &members_of(&replicas), want, &down, &holders);
        let group = node.name().to_string();
        let change = |server: &str, commit: Option<&str>| MemberChange {
            server: server.to_string(),
            addr: self.peers.get(server).cloned(),
            commit: commit.map(str::to_string),
        };
        let result = match &step {
            Step::Settled => return,
            Step::Add(server) => {
                if !holders.contains(server) && !self.ask(server, HOST_GROUP, g).await {
                    return;
                }
                tracing::info!(%group, %server, "re-placement: adding a replica");
                node.change_member("add-replica", change(server, Some("sync")))
                    .await
                    .map(|_| ())
            }
            Step::Promote(server) => node
                .change_member("set-commit", change(server, Some("sync")))
                .await
                .map(|_| ()),
            Step::Remove(server) => {
                tracing::info!(%group, %server, "re-placement: removing a replica");
                let removed = node
                    .change_member("remove-replica", change(server, None))
                    .await
                    .map(|_| ());
                if removed.is_ok() && holders.contains(server) {
                    self.ask(server, UNHOST_GROUP, g).await;
                }
                removed
            }
            Step::HandOff(to) => {
                tracing::info!(%group, %to, "re-placement: handing the group to a wanted replica");
                node.planned_failover(FailoverRequest {
                    to: Some(to.clone()),
                    from: Some(self.me.clone()),
                })
                .await
                .map(|_| ())
            }
            Step::Unhost(server) => {
                self.ask(server, UNHOST_GROUP, g).await;
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!(%group, ?step, error = %e, "re-placement step failed; retrying");
        }
    }

    /// Calls `service` on `server` with group `g`; whether it answered yes.
    async fn ask(&self, server: &str, service: &str, g: u32) -> bool {
        let Some(addr) = self.peers.get(server) else {
            return false;
        };
        let body = postcard::to_stdvec(&g).unwrap_or_default();
        match self
            .rpc
            .call(addr, service, body, Duration::from_secs(10))
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(%server, %service, group = g, error = %e, "re-placement: the server did not do it");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(server: &str, voter: bool, synchronized: bool) -> MemberView {
        MemberView {
            server: server.into(),
            voter,
            synchronized,
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_lost_member_leaves_and_its_replacement_joins() {
        let members = [m("a", true, true), m("b", true, true), m("c", true, false)];
        let want = names(&["a", "b", "d"]);
        let none = BTreeSet::new();
        assert_eq!(
            next_step("a", &members, &want, &none, &none),
            Step::Remove("c".into())
        );
        let members = [m("a", true, true), m("b", true, true)];
        assert_eq!(
            next_step("a", &members, &want, &none, &none),
            Step::Add("d".into())
        );
        let members = [m("a", true, true), m("b", true, true), m("d", true, false)];
        assert_eq!(next_step("a", &members, &want, &none, &none), Step::Settled);
    }

    #[test]
    fn a_returning_server_joins_before_its_stand_in_leaves() {
        let want = names(&["a", "b", "c"]);
        let none = BTreeSet::new();
        let members = [m("a", true, true), m("b", true, true), m("d", true, true)];
        assert_eq!(
            next_step("a", &members, &want, &none, &none),
            Step::Add("c".into())
        );
        let members = [
            m("a", true, true),
            m("b", true, true),
            m("d", true, true),
            m("c", true, false),
        ];
        // c is still catching up: d stays.
        assert_eq!(next_step("a", &members, &want, &none, &none), Step::Settled);
        let members = [
            m("a", true, true),
            m("b", true, true),
            m("d", true, true),
            m("c", true, true),
        ];
        assert_eq!(
            next_step("a", &members, &want, &none, &none),
            Step::Remove("d".into())
        );
    }

    #[test]
    fn a_wanted_server_that_is_down_is_passed_over() {
        let want = names(&["c", "a", "b"]);
        let members = [m("a", true, true)];
        let down = BTreeSet::from(["c".to_string()]);
        let none = BTreeSet::new();
        assert_eq!(
            next_step("a", &members, &want, &down, &none),
            Step::Add("b".into())
        );
        assert_eq!(
            next_step("a", &members, &want, &none, &none),
            Step::Add("c".into())
        );
    }

    #[test]
    fn an_unwanted_primary_hands_off_and_stray_copies_are_closed() {
        let members = [m("a", true, true), m("b", true, true), m("d", true, true)];
        let want = names(&["a", "b", "c"]);
        let none = BTreeSet::new();
        assert_eq!(
            next_step("d", &members, &want, &none, &none),
            Step::Add("c".into())
        );
        let members = [
            m("a", true, true),
            m("b", true, true),
            m("c", true, true),
            m("d", true, true),
        ];
        assert_eq!(
            next_step("d", &members, &want, &none, &none),
            Step::HandOff("a".into())
        );
        assert_eq!(
            next_step("a", &members, &want, &none, &none),
            Step::Remove("d".into())
        );
        let members = [m("a", true, true), m("b", true, true), m("c", true, true)];
        let holders = BTreeSet::from(["d".to_string()]);
        assert_eq!(
            next_step("a", &members, &want, &none, &holders),
            Step::Unhost("d".into())
        );
        let learner = [m("a", true, true), m("b", true, true), m("c", false, true)];
        assert_eq!(
            next_step("a", &learner, &want, &none, &none),
            Step::Promote("c".into())
        );
    }
}
