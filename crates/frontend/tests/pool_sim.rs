//! Seeded simulation of a pool's fabric: servers crash, come back, are declared lost for good
//! (left out of the placement) and return, in random order; after every event the routing
//! groups' placement and the pool's quorum are checked against what operators rely on.
//!
//! `POOL_SIM_SEEDS` (default 1,000) seeds run; `POOL_SIM_SEED` replays one.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use frontend::pool::{
    GroupState, Placement, REPLICAS, ServerState, fabric_state, placement, placement_of,
};
use frontend::replace::{MemberView, Step, next_step};
use std::collections::{BTreeMap, BTreeSet};

/// splitmix64: a tiny, well-known generator, so a seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, set: &'a BTreeSet<String>) -> Option<&'a String> {
        if set.is_empty() {
            return None;
        }
        set.iter().nth(self.below(set.len()))
    }
}

/// What the world is like at one step.
struct World {
    servers: Vec<String>,
    groups: u32,
    /// Crashed (or stopped) for now.
    down: BTreeSet<String>,
    /// Lost for good or removed: left out of the placement.
    out: BTreeSet<String>,
}

impl World {
    fn in_pool(&self) -> usize {
        self.servers.len() - self.out.len()
    }
}

fn check_placement(w: &World, p: &[Placement], seed: u64) {
    let want = REPLICAS.min(w.in_pool());
    assert_eq!(p.len(), w.groups as usize, "seed {seed}");
    for g in p {
        let set: BTreeSet<&String> = g.replicas.iter().collect();
        assert_eq!(
            set.len(),
            g.replicas.len(),
            "seed {seed}: a server twice in {g:?}"
        );
        assert_eq!(
            g.replicas.len(),
            want,
            "seed {seed}: {g:?} with out {:?}",
            w.out
        );
        assert!(
            g.replicas.iter().all(|r| !w.out.contains(r)),
            "seed {seed}: {g:?} on a server left out ({:?})",
            w.out
        );
        assert_eq!(g.primary(), g.replicas[0], "seed {seed}");
    }
    // Load: each server in the pool holds at most (3 + servers out) × ⌈G/N⌉ replicas (it
    // takes over the positions of out servers before it), and all replicas are placed.
    let n = w.servers.len();
    let per = (w.groups as usize).div_ceil(n);
    let mut load: BTreeMap<&String, usize> = BTreeMap::new();
    for g in p {
        for r in &g.replicas {
            *load.entry(r).or_default() += 1;
        }
    }
    assert_eq!(
        load.values().sum::<usize>(),
        want * w.groups as usize,
        "seed {seed}"
    );
    for (s, l) in &load {
        assert!(
            *l <= (REPLICAS + w.out.len()) * per,
            "seed {seed}: {s} holds {l} replicas (N {n}, G {}, out {:?})",
            w.groups,
            w.out
        );
    }
    if w.out.is_empty() {
        // Balanced: each server the preferred primary of ⌊G/N⌋ or ⌈G/N⌉ groups, and a replica
        // of three residues' worth.
        let floor = w.groups as usize / n;
        for s in &w.servers {
            let primaries = p.iter().filter(|g| g.primary() == s).count();
            assert!(
                primaries == floor || primaries == per,
                "seed {seed}: {s} leads {primaries} of {} groups on {n} servers",
                w.groups
            );
            let replicas = load.get(s).copied().unwrap_or(0);
            assert!(
                replicas >= want * floor && replicas <= want * per,
                "seed {seed}: {s} holds {replicas} replicas"
            );
        }
    }
}

/// A server newly left out moves only the groups it was in, each keeping its other replicas
/// in order and gaining at most one (none when too few servers remain).
fn check_movement(
    before: &[Placement],
    after: &[Placement],
    gone: &str,
    in_pool: usize,
    seed: u64,
) {
    for (b, a) in before.iter().zip(after) {
        if !b.replicas.iter().any(|r| r == gone) {
            assert_eq!(a, b, "seed {seed}: a group without {gone} moved");
            continue;
        }
        let kept: Vec<&String> = b.replicas.iter().filter(|r| *r != gone).collect();
        let still: Vec<&String> = a.replicas.iter().filter(|r| kept.contains(r)).collect();
        assert_eq!(
            kept, still,
            "seed {seed}: {b:?} -> {a:?} lost a replica it had"
        );
        let added = a.replicas.len() - kept.len();
        let expect = usize::from(in_pool >= REPLICAS);
        assert_eq!(added, expect, "seed {seed}: {b:?} -> {a:?}");
    }
}

/// Each group serves while a majority of its replicas is up; the pool's reported state
/// follows.
fn check_quorum(w: &World, p: &[Placement], seed: u64) -> usize {
    let groups: Vec<GroupState> = p
        .iter()
        .map(|g| {
            let up = g.replicas.iter().filter(|r| !w.down.contains(*r)).count();
            let serving = up * 2 > g.replicas.len();
            GroupState {
                id: g.group,
                name: format!("pool.rg{}", g.group),
                primary: if serving {
                    g.replicas.iter().find(|r| !w.down.contains(*r)).cloned()
                } else {
                    None
                },
                secondaries: Vec::new(),
                serving,
                healthy_replicas: if serving { up as u32 } else { 0 },
                placed_replicas: REPLICAS as u32,
                replicas: Vec::new(),
                term: 0,
                reason: None,
                last_failover: None,
            }
        })
        .collect();
    let servers: Vec<ServerState> = w
        .servers
        .iter()
        .filter(|s| !w.out.contains(*s))
        .map(|s| ServerState {
            server: s.clone(),
            healthy: !w.down.contains(s),
            draining: false,
            primaries: 0,
            replicas: 0,
            lost: false,
        })
        .collect();
    let serving = groups.iter().filter(|g| g.serving).count();
    let down_in_pool = w.down.iter().filter(|s| !w.out.contains(*s)).count();
    // One server down never stops a group of three replicas.
    if down_in_pool <= 1 && w.in_pool() >= REPLICAS {
        assert_eq!(
            serving,
            groups.len(),
            "seed {seed}: one server down stopped a group"
        );
    }
    if down_in_pool == w.in_pool() {
        assert_eq!(
            serving, 0,
            "seed {seed}: a group serves with every server down"
        );
    }
    let (state, reason) = fabric_state(&servers, &groups);
    let expect = if serving == 0 {
        "down"
    } else if serving < groups.len() {
        "partial-outage"
    } else if down_in_pool > 0
        || groups
            .iter()
            .any(|g| g.healthy_replicas < g.placed_replicas)
    {
        "degraded"
    } else {
        "healthy"
    };
    assert_eq!(state, expect, "seed {seed}: {reason}");
    if state == "partial-outage" {
        // The reason names exactly the groups whose users cannot sign in.
        let not_serving: Vec<u32> = groups.iter().filter(|g| !g.serving).map(|g| g.id).collect();
        assert!(
            reason.contains(&format!("{not_serving:?}")),
            "seed {seed}: {reason}"
        );
    }
    groups.len() - serving
}

fn run(seed: u64) {
    let mut rng = Rng(seed);
    let n = 2 + rng.below(15);
    let mut w = World {
        servers: (1..=n).map(|i| format!("fe{i}")).collect(),
        groups: 1 + rng.below(64) as u32,
        down: BTreeSet::new(),
        out: BTreeSet::new(),
    };
    let mut seen: BTreeMap<BTreeSet<String>, Vec<Placement>> = BTreeMap::new();
    let mut current = placement(&w.servers, w.groups, &w.out);
    check_placement(&w, &current, seed);
    seen.insert(w.out.clone(), current.clone());
    for _ in 0..200 {
        let up: BTreeSet<String> = w
            .servers
            .iter()
            .filter(|s| !w.down.contains(*s) && !w.out.contains(*s))
            .cloned()
            .collect();
        match rng.below(4) {
            // A crash.
            0 => {
                if let Some(s) = rng.pick(&up).cloned() {
                    w.down.insert(s);
                }
            }
            // A restart.
            1 => {
                let down: BTreeSet<String> = w.down.difference(&w.out).cloned().collect();
                if let Some(s) = rng.pick(&down).cloned() {
                    w.down.remove(&s);
                }
            }
            // Down longer than the configured time: left out, its groups re-placed. A pool
            // keeps at least one server in its placement.
            2 => {
                let down: BTreeSet<String> = w.down.difference(&w.out).cloned().collect();
                if w.in_pool() > 1
                    && let Some(s) = rng.pick(&down).cloned()
                {
                    w.out.insert(s.clone());
                    let next = placement(&w.servers, w.groups, &w.out);
                    check_movement(&current, &next, &s, w.in_pool(), seed);
                    current = next;
                }
            }
            // A server left out comes back (repaired, added again).
            _ => {
                if let Some(s) = rng.pick(&w.out).cloned() {
                    w.out.remove(&s);
                    w.down.remove(&s);
                    current = placement(&w.servers, w.groups, &w.out);
                }
            }
        }
        check_placement(&w, &current, seed);
        // The placement depends only on who is out, not on the order things happened in.
        match seen.get(&w.out) {
            Some(p) => assert_eq!(p, &current, "seed {seed}: placement depends on history"),
            None => {
                seen.insert(w.out.clone(), current.clone());
            }
        }
        check_quorum(&w, &current, seed);
    }
}

/// Runs `run` on `POOL_SIM_SEED` alone if set, else on seeds 0 to `POOL_SIM_SEEDS` (1,000).
fn each_seed(run: fn(u64)) {
    if let Some(seed) = std::env::var("POOL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run(seed);
        return;
    }
    let seeds: u64 = std::env::var("POOL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000);
    for seed in 0..seeds {
        run(seed);
    }
}

#[test]
fn placement_and_quorum_hold_under_server_loss_and_return() {
    each_seed(run);
}

/// In a pool of five, any one server down leaves every group serving; two down stop exactly
/// the groups that have both among their three replicas — which the status names.
#[test]
fn two_of_five_down_stop_only_the_groups_on_both() {
    let servers: Vec<String> = (1..=5).map(|i| format!("fe{i}")).collect();
    let p = placement(&servers, 20, &BTreeSet::new());
    for a in 0..5 {
        for b in (a + 1)..5 {
            let w = World {
                servers: servers.clone(),
                groups: 20,
                down: [servers[a].clone(), servers[b].clone()].into(),
                out: BTreeSet::new(),
            };
            let stopped = check_quorum(&w, &p, 0);
            let on_both = p
                .iter()
                .filter(|g| g.replicas.contains(&servers[a]) && g.replicas.contains(&servers[b]))
                .count();
            assert_eq!(stopped, on_both);
            // Rotation: neighbours share two windows' worth of groups, others one.
            let neighbours = (b - a) == 1 || (b - a) == 4;
            assert_eq!(stopped, if neighbours { 8 } else { 4 }, "{a} {b}");
        }
    }
}

/// One routing group as the re-placement simulation sees it.
struct SimGroup {
    id: u32,
    /// Replicas the group should have.
    size: usize,
    voters: BTreeSet<String>,
    /// Servers holding every acknowledged write of the group.
    data: BTreeSet<String>,
    /// Servers with a copy of the group on disk (members, and copies left to close).
    holders: BTreeSet<String>,
    primary: Option<String>,
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

impl SimGroup {
    fn up_voters(&self, up: &BTreeSet<String>) -> usize {
        self.voters.iter().filter(|v| up.contains(*v)).count()
    }

    /// Raft's election, as far as the controller cares: a majority of voters up elects an up
    /// voter that holds every acknowledged write; without a majority, no primary.
    fn elect(&mut self, up: &BTreeSet<String>, seed: u64) {
        if self.up_voters(up) < majority(self.voters.len()) {
            self.primary = None;
            return;
        }
        if let Some(p) = &self.primary
            && up.contains(p)
            && self.voters.contains(p)
        {
            return;
        }
        let candidate = self
            .voters
            .iter()
            .find(|v| up.contains(*v) && self.data.contains(*v))
            .cloned();
        assert!(
            candidate.is_some(),
            "seed {seed}: group {} has a majority up but no up voter holds every acknowledged write",
            self.id
        );
        self.primary = candidate;
    }

    /// A write acknowledged by the primary: every up voter holds everything from then on.
    fn write(&mut self, up: &BTreeSet<String>) {
        if self.primary.is_some() {
            self.data = self
                .voters
                .iter()
                .filter(|v| up.contains(*v))
                .cloned()
                .collect();
        }
    }

    fn check(&self, seed: u64, what: &str) {
        let holding = self.data.intersection(&self.voters).count();
        assert!(
            holding >= majority(self.voters.len()),
            "seed {seed}: after {what}, group {} could elect a primary missing acknowledged writes: voters {:?}, holding {:?}",
            self.id,
            self.voters,
            self.data
        );
        assert!(
            self.voters.is_subset(&self.holders),
            "seed {seed}: after {what}, a member's copy of group {} was closed",
            self.id
        );
        assert!(
            self.voters.len() <= self.size + 1,
            "seed {seed}: group {} grew to {:?}",
            self.id,
            self.voters
        );
    }

    /// One controller round: the primary takes `next_step` and the world carries it out.
    fn control(&mut self, want: &[String], up: &BTreeSet<String>, seed: u64) -> Step {
        let Some(me) = self.primary.clone() else {
            return Step::Settled;
        };
        let members: Vec<MemberView> = self
            .voters
            .iter()
            .map(|v| MemberView {
                server: v.clone(),
                voter: true,
                synchronized: up.contains(v) && self.data.contains(v),
            })
            .collect();
        let seen: BTreeSet<String> = self.holders.intersection(up).cloned().collect();
        let down: BTreeSet<String> = self
            .voters
            .iter()
            .chain(want)
            .filter(|s| !up.contains(*s))
            .cloned()
            .collect();
        let step = next_step(&me, &members, want, &down, &seen);
        match &step {
            Step::Add(s) if up.contains(s) => {
                // A snapshot seeds it with everything committed.
                self.voters.insert(s.clone());
                self.holders.insert(s.clone());
                self.data.insert(s.clone());
            }
            Step::Remove(s) => {
                let mut after = self.voters.clone();
                after.remove(s);
                if after.iter().filter(|v| up.contains(*v)).count() >= majority(after.len()) {
                    self.voters = after;
                    if up.contains(s) {
                        self.holders.remove(s);
                    }
                }
            }
            Step::HandOff(to) if up.contains(to) && self.data.contains(to) => {
                self.primary = Some(to.clone());
            }
            Step::Unhost(s) => {
                assert!(
                    !self.voters.contains(s),
                    "seed {seed}: a member was told to close its copy"
                );
                if up.contains(s) {
                    self.holders.remove(s);
                }
            }
            _ => {}
        }
        step
    }
}

fn run_replacement(seed: u64) {
    let mut rng = Rng(seed);
    let n = 3 + rng.below(6);
    let servers: Vec<String> = (1..=n).map(|i| format!("fe{i}")).collect();
    let groups = 1 + rng.below(8) as u32;
    let size = if n >= 5 && rng.below(2) == 0 {
        5
    } else {
        REPLICAS
    };
    let start = placement_of(&servers, groups, size, &BTreeSet::new());
    let mut up: BTreeSet<String> = servers.iter().cloned().collect();
    let mut lost: BTreeSet<String> = BTreeSet::new();
    let mut sim: Vec<SimGroup> = start
        .iter()
        .map(|p| {
            let set: BTreeSet<String> = p.replicas.iter().cloned().collect();
            SimGroup {
                id: p.group,
                size,
                voters: set.clone(),
                data: set.clone(),
                holders: set,
                primary: p.replicas.first().cloned(),
            }
        })
        .collect();
    for round in 0..300 {
        match rng.below(10) {
            0 => {
                if let Some(s) = rng.pick(&up).cloned() {
                    up.remove(&s);
                }
            }
            1 => {
                let down: BTreeSet<String> = servers
                    .iter()
                    .filter(|s| !up.contains(*s))
                    .cloned()
                    .collect();
                if let Some(s) = rng.pick(&down).cloned() {
                    up.insert(s.clone());
                    lost.remove(&s);
                }
            }
            2 => {
                // Down past `replace_after_s`.
                let down: BTreeSet<String> = servers
                    .iter()
                    .filter(|s| !up.contains(*s) && !lost.contains(*s))
                    .cloned()
                    .collect();
                if let Some(s) = rng.pick(&down).cloned() {
                    lost.insert(s);
                }
            }
            _ => {}
        }
        let want = placement_of(&servers, groups, size, &lost);
        for g in &mut sim {
            g.elect(&up, seed);
            g.write(&up);
            g.check(seed, &format!("round {round}'s events"));
            g.control(&want[g.id as usize].replicas, &up, seed);
            g.elect(&up, seed);
            g.check(seed, &format!("round {round}'s step"));
        }
    }
    // Every server comes back: every group returns to its first placement, and no copy is
    // left behind.
    up = servers.iter().cloned().collect();
    lost.clear();
    for g in &mut sim {
        let want = &start[g.id as usize].replicas;
        let mut settled = false;
        for _ in 0..40 {
            g.elect(&up, seed);
            g.write(&up);
            if g.control(want, &up, seed) == Step::Settled {
                settled = true;
                break;
            }
            g.check(seed, "recovery");
        }
        assert!(settled, "seed {seed}: group {} does not settle", g.id);
        let want: BTreeSet<String> = want.iter().cloned().collect();
        assert_eq!(g.voters, want, "seed {seed}: group {}", g.id);
        assert_eq!(g.holders, want, "seed {seed}: group {} left copies", g.id);
    }
}

/// Re-placement (`frontend::replace::next_step`) under random crashes, restarts and losses:
/// no step lets a group elect a primary that misses an acknowledged write, no step closes a
/// member's copy, a group never holds more than one replica beyond its 3 (or 5), and once every
/// server is back each group is on its first placement with no copy left behind.
#[test]
fn replacement_keeps_every_acknowledged_write_and_converges() {
    each_seed(run_replacement);
}

/// With `group_replicas = 5`, any two of a five-server pool down at once leave every group
/// with a majority.
#[test]
fn five_replicas_survive_any_two_of_five_down() {
    let servers: Vec<String> = (1..=5).map(|i| format!("fe{i}")).collect();
    let p = placement_of(&servers, 20, 5, &BTreeSet::new());
    for a in 0..5 {
        for b in (a + 1)..5 {
            for g in &p {
                let up = g
                    .replicas
                    .iter()
                    .filter(|r| **r != servers[a] && **r != servers[b])
                    .count();
                assert!(up * 2 > g.replicas.len(), "{g:?} without {a} and {b}");
            }
        }
    }
}
