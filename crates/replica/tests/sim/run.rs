//! One simulated seed: a replica group (3 or 5 voters, sometimes an async learner; or, in
//! mirroring seeds, principal, mirror and witness) under a fault schedule, clients writing
//! through whoever leads, then healing and the checks.
//!
//! Every member is a real `Replica` (openraft, the WAL written inline without fsync, the
//! snapshot file) in its own directory; the runtime is tokio's current-thread one on a paused
//! clock, so a seed takes a few hundred ms of CPU for seconds of virtual time.
//!
//! Phases:
//! 1. Start: every member opens its directory; the first voter initializes the group; a
//!    learner (when the seed has one) is added as soon as a leader can change membership.
//! 2. Safety (`safety_ms` of virtual time): clients write unique keys through whoever they
//!    believe leads (following `NotLeader` hints, giving a write up after 3 s: its outcome is
//!    then unknown) and read through read barriers. The fault schedule crashes members
//!    (shutdown; the directory stays, and the machine too when it is durable) and restarts
//!    them, partitions the network (one-way or both ways), heals it, changes the link quality,
//!    transfers leadership, sends write bursts, and at a random moment loses the learner's
//!    site for good, after sampling the lag its leader reports. In a few seeds a follower
//!    stays down while over a thousand entries are written (the snapshot-install path).
//! 3. Liveness: the network heals and calms down, crashed members restart (not the lost
//!    learner; and in half the seeds with a witness, not a data member that is down: it is
//!    lost for good, and the others must go on without it), clients finish; the group must
//!    converge within `converge_ms`, with a data member leading.
//! 4. Checks: see `history::check`.
//!
//! Mirroring seeds run high-safety mirroring with a witness as `store::node::node_config`
//! and `store::node::StoreNode::apply` build it: `n1` (the initial principal) and `n2` (the
//! mirror) hold data; the witness `wit` votes, holds the log and runs a machine that applies
//! nothing ([`SimWitness`]); it campaigns too, but serves nothing and, when it leads, hands
//! leadership to a data member holding its whole log ([`hand_over`], as
//! `store::witness::hand_over`): that gets the group out of the witness trap (the principal
//! lost for good while the mirror lacks a commit only the witness holds). It is never a
//! transfer target. A client's write is acknowledged once `write_indexed`
//! returned and `wait_replicated` on the other data member returned (true: it holds the entry;
//! false: it was silent for an election timeout, the principal exposed). Right after each
//! acknowledgement the mirror's log file is read: what the acknowledgement says it holds, it
//! must hold.
//!
//! Failover-cluster seeds run the ownership group of `store::cluster::ClusterNode`: nodes
//! `n1`, `n2`... (or `n1`, `n2` and a witness, as above) with machines that hold no
//! data, and a shared storage ([`SharedDisk`]) that checks fencing tokens as the store's
//! database does. Each node follows its ownership as `ClusterNode::watch_loop` does ([`owner`]);
//! clients write to the storage through the owner ([`cluster_write`]), which now and then
//! pauses between its ownership check and its write for up to two election timeouts (a GC
//! pause, a SIGSTOP) and writes, or is fenced, when it wakes.

use super::disk::{ClusterBug, SharedDisk};
use super::history::{AsyncCut, AsyncLoss, CutLearner, Final, History, check, contains};
use super::machine::{Bug, MachineStats, SimKv, SimMachine, SimWitness, set_cmd};
use super::net::{Net, NetBug, NetStats};
use super::rng::{Rng, derive};
use replica::wal::{Wal, WalOptions};

/// Bytes of written log records a simulated member keeps in memory: a few dozen entries, so
/// catch-up reads and replays after restarts read records back from the segment files.
const SIM_LOG_MEMORY_BYTES: u64 = 2048;
use replica::{Member, NodeId, Replica, ReplicaConfig, Role, Status, WriteError, node_id};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::{Instant, sleep};

/// Everything a seed decides up front.
#[derive(Debug, Clone)]
pub struct Params {
    pub seed: u64,
    pub voters: usize,
    pub learner: bool,
    pub safety_ms: u64,
    pub converge_ms: u64,
    pub clients: usize,
    /// A client pauses up to this long between writes.
    pub pace_ms: u64,
    pub drop: f64,
    pub max_delay_ms: u64,
    pub snapshot_every: u64,
    /// Snapshots travel in pieces of this many bytes.
    pub snapshot_chunk_bytes: usize,
    pub heartbeat_ms: u64,
    /// Election timeouts are drawn in this range (the upper end is also the leader lease).
    pub election_ms: (u64, u64),
    /// Restarted members keep their machine (a durable machine, as the SQL store) rather
    /// than rebuilding it from the snapshot and the log.
    pub durable_machine: bool,
    /// Pause between faults, in ms.
    pub fault_gap: (u64, u64),
    /// Bursts of concurrent writes (many entries at once: batching, long catch-ups).
    pub bursts: bool,
    pub burst_size: (u64, u64),
    /// A straggler: a follower is down while over a thousand entries are written, so that the
    /// leader purges what it would need and must send it a snapshot when it is back
    /// (`max_in_snapshot_log_to_keep` is 1,000 entries).
    pub straggler: bool,
    /// High-safety mirroring with a witness: principal `n1`, mirror `n2` and witness `wit` are
    /// the three voters (`voters` and `learner` do not apply); see the module's documentation.
    pub mirroring: bool,
    /// Count a write acknowledged exposed by a new leader that had not heard from the mirror
    /// yet (and had led for less than an election timeout) as a violation: see
    /// `history::Exposure::NewLeader`. On by default (`SIM_PARAMS=strict_exposure=0` turns it
    /// off).
    pub strict_exposure: bool,
    /// A failover cluster: the data members (`n1`, `n2`, and `n3`... or a witness `wit`) run
    /// the ownership group as `store::cluster::ClusterNode` does (a machine with no data), and
    /// clients write to the shared storage through the owner; see [`owner`].
    pub cluster: bool,
    /// The failover cluster has nodes `n1`, `n2` and a witness (otherwise `voters` nodes).
    pub cluster_witness: bool,
    /// Under a failover cluster, the chance that an owner pauses between checking that it owns
    /// and writing (a GC pause, a SIGSTOP), for up to two election timeouts.
    pub stall: f64,
    pub cluster_bug: ClusterBug,
    pub bug: Bug,
    pub net_bug: NetBug,
    pub mirror_bug: MirrorBug,
    /// Wall-clock seconds after which a seed counts as hung.
    pub watchdog_s: u64,
    /// Keep every message and its fate in the report (`SIM_TRACE_NET`).
    pub record_net: bool,
}

impl Params {
    pub fn from_seed(seed: u64) -> Params {
        let mut r = Rng::new(derive(seed, "params"));
        let voters = if r.chance(0.8) { 3 } else { 5 };
        let mut p = Params {
            seed,
            voters,
            learner: r.chance(0.4),
            safety_ms: r.between(1_000, 2_500),
            converge_ms: 30_000,
            clients: if r.chance(0.7) { 2 } else { 3 },
            pace_ms: r.between(100, 300),
            drop: r.unit() * 0.2,
            max_delay_ms: r.between(0, 50),
            snapshot_every: r.between(20, 50),
            snapshot_chunk_bytes: replica::DEFAULT_SNAPSHOT_CHUNK_BYTES,
            heartbeat_ms: 50,
            election_ms: (200, 400),
            durable_machine: r.chance(0.5),
            fault_gap: (50, r.between(200, 800)),
            bursts: r.chance(0.1),
            burst_size: (20, 80),
            straggler: false,
            mirroring: false,
            strict_exposure: true,
            cluster: false,
            cluster_witness: false,
            stall: 0.1,
            cluster_bug: ClusterBug::None,
            bug: Bug::None,
            net_bug: NetBug::None,
            mirror_bug: MirrorBug::None,
            watchdog_s: 120,
            record_net: std::env::var("SIM_TRACE_NET").is_ok_and(|v| v != "0"),
        };
        // Half the seeds run the timing of `ReplicaConfig::new` (what servers run), half a
        // faster one (50 ms heartbeats, elections after 200-400 ms).
        if r.chance(0.5) {
            let d = ReplicaConfig::new("sim", member("x"), PathBuf::new());
            p.heartbeat_ms = d.heartbeat_ms;
            p.election_ms = (d.election_timeout_min_ms, d.election_timeout_max_ms);
        }
        // A few seeds take the long way: over a thousand entries while a follower is down.
        // (Drawn last, so that adding it left the other seeds as they were.)
        if r.chance(0.015) {
            p.straggler = true;
            p.safety_ms = p.safety_ms.max(4_000);
        }
        // High-safety mirroring with a witness, in 30% of seeds. (Drawn after everything
        // else, so that the other seeds run as they did before it.)
        if r.chance(0.3) {
            p.set_mirroring(true);
            // More stragglers among them: a witness left behind installs a data member's
            // snapshot.
            if r.chance(0.03) {
                p.straggler = true;
                p.safety_ms = p.safety_ms.max(4_000);
            }
        }
        // A failover cluster in a quarter of the other seeds, half of them with a witness.
        // (Drawn last again.)
        if !p.mirroring && r.chance(0.25) {
            p.cluster_witness = r.chance(0.5);
            p.set_cluster(true);
        }
        // Half the seeds send snapshots in small pieces (several per snapshot), through the
        // same losses, delays and crashes. (Drawn last.)
        if r.chance(0.5) {
            p.snapshot_chunk_bytes = r.between(64, 1024) as usize;
        }
        p
    }

    /// Turns the failover cluster on or off (on: no learner, no mirroring; with a witness,
    /// three voters).
    pub fn set_cluster(&mut self, on: bool) {
        self.cluster = on;
        if on {
            self.mirroring = false;
            self.learner = false;
            if self.cluster_witness {
                self.voters = 3;
            }
        }
    }

    /// Turns high-safety mirroring with a witness on or off (on: three voters, no learner).
    pub fn set_mirroring(&mut self, on: bool) {
        self.mirroring = on;
        if on {
            self.voters = 3;
            self.learner = false;
            self.cluster = false;
        }
    }

    /// Applies `name=value,...` overrides (the `SIM_PARAMS` variable), e.g. `voters=5,learner=1`.
    pub fn with_overrides(mut self, spec: &str) -> Params {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').unwrap_or((item, "1"));
            let n = || {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("SIM_PARAMS: {item}"))
            };
            match k {
                "voters" => self.voters = n() as usize,
                "learner" => self.learner = n() != 0,
                "safety_ms" => self.safety_ms = n(),
                "converge_ms" => self.converge_ms = n(),
                "clients" => self.clients = n() as usize,
                "pace_ms" => self.pace_ms = n(),
                "drop_pct" => self.drop = n() as f64 / 100.0,
                "max_delay_ms" => self.max_delay_ms = n(),
                "snapshot_every" => self.snapshot_every = n(),
                "heartbeat_ms" => self.heartbeat_ms = n(),
                "election_min_ms" => self.election_ms.0 = n(),
                "election_max_ms" => self.election_ms.1 = n(),
                "burst_min" => self.burst_size.0 = n(),
                "burst_max" => self.burst_size.1 = n(),
                "durable_machine" => self.durable_machine = n() != 0,
                "bursts" => self.bursts = n() != 0,
                "straggler" => self.straggler = n() != 0,
                "mirroring" => self.set_mirroring(n() != 0),
                "strict_exposure" => self.strict_exposure = n() != 0,
                "cluster" => self.set_cluster(n() != 0),
                "cluster_witness" => {
                    self.cluster_witness = n() != 0;
                    let on = self.cluster;
                    self.set_cluster(on);
                }
                "stall_pct" => self.stall = n() as f64 / 100.0,
                // A broken failover cluster (with `cluster=1`).
                "bug_no_fence" => self.cluster_bug = ClusterBug::NoFence,
                // A broken machine, to see what a failure looks like.
                "bug_forget_every" => self.bug = Bug::ForgetEvery(n()),
                "fault_gap_max" => self.fault_gap.1 = n(),
                // A broken mirroring setup (with `mirroring=1`).
                "bug_witness_never_campaigns" => {
                    self.mirror_bug = MirrorBug::WitnessNeverCampaigns;
                }
                "bug_witness_serves" => self.mirror_bug = MirrorBug::WitnessServes,
                "bug_wait_on_witness" => self.mirror_bug = MirrorBug::WaitOnWitness,
                "bug_witness_purges" => self.mirror_bug = MirrorBug::WitnessPurges,
                other => panic!("SIM_PARAMS: unknown parameter {other}"),
            }
        }
        self
    }

    pub fn describe(&self) -> String {
        let shape = if self.mirroring {
            format!("mirroring (principal n1, mirror n2, witness {WITNESS})")
        } else if self.cluster && self.cluster_witness {
            format!(
                "failover cluster (nodes n1, n2, witness {WITNESS}; stalls {:.0}%)",
                self.stall * 100.0
            )
        } else if self.cluster {
            format!(
                "failover cluster ({} nodes; stalls {:.0}%)",
                self.voters,
                self.stall * 100.0
            )
        } else {
            format!(
                "{} voters{}",
                self.voters,
                if self.learner { " + learner" } else { "" }
            )
        };
        format!(
            "{shape}, {} ms of faults, {} clients (pace {} ms), drop {:.1}%, delay 0-{} ms, \
             heartbeat {} ms, elections {}-{} ms, snapshot every {} (pieces of {} bytes), {} machine{}{}",
            self.safety_ms,
            self.clients,
            self.pace_ms,
            self.drop * 100.0,
            self.max_delay_ms,
            self.heartbeat_ms,
            self.election_ms.0,
            self.election_ms.1,
            self.snapshot_every,
            self.snapshot_chunk_bytes,
            if self.durable_machine {
                "durable"
            } else {
                "rebuilt"
            },
            if self.bursts { ", bursts" } else { "" },
            if self.straggler { ", straggler" } else { "" },
        )
    }
}

/// A deliberately broken mirroring setup, to prove the mirroring checks can fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MirrorBug {
    #[default]
    None,
    /// The witness never campaigns (as it was first built): when the principal is lost for
    /// good while the mirror lacks a commit only the witness holds, no one can be elected.
    WitnessNeverCampaigns,
    /// The witness serves writes while it leads, instead of handing leadership over.
    WitnessServes,
    /// The principal waits for the witness to hold a write instead of the mirror (and so
    /// reports the mirror as holding what it may lack).
    WaitOnWitness,
    /// The witness purges its log after its snapshots like any member (as it was first
    /// built): a mirror that was down cannot get from it the commits it lacks when the
    /// principal is then lost for good.
    WitnessPurges,
}

/// What one seed produced.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    /// Every message with its fate, when `record_net` was set.
    pub messages: Vec<String>,
    pub counts: BTreeMap<&'static str, u64>,
    pub acked: usize,
    pub unknown: usize,
    pub max_term: u64,
    pub virtual_ms: u64,
    pub net: NetStats,
    pub installs: u64,
    pub loads: u64,
    pub snapshots: u64,
    /// Of the installs, those on a witness (a data member's snapshot).
    pub witness_installs: u64,
    pub async_loss: Option<AsyncLoss>,
    pub mirroring: bool,
    pub cluster: bool,
}

const LEARNER: &str = "dr";
/// The mirroring witness.
pub const WITNESS: &str = "wit";

fn member(name: &str) -> Member {
    Member {
        server: name.to_string(),
        addr: format!("{name}:7000"),
    }
}

/// The members and their network, shared by the simulation's tasks.
struct World {
    p: Params,
    dir: PathBuf,
    net: Arc<Net>,
    hist: Arc<Mutex<History>>,
    stats: Arc<MachineStats>,
    voters: Vec<String>,
    learner: Option<String>,
    /// The mirroring or failover-cluster witness (one of the voters), in the seeds with one.
    witness: Option<String>,
    /// A failover cluster's shared storage.
    disk: Mutex<SharedDisk>,
    /// Under a failover cluster, the nodes that own the storage (as they believe) and their
    /// fencing tokens.
    owners: Mutex<BTreeMap<String, u64>>,
    incarnations: Mutex<BTreeMap<String, u64>>,
    /// Machines of crashed members (reused at a restart when the machine is durable).
    saved: Mutex<BTreeMap<String, SimMachine>>,
    down: Mutex<BTreeSet<String>>,
    /// Down members the fault schedule must not restart (the straggler).
    held: Mutex<BTreeSet<String>>,
    learner_added: AtomicBool,
    learner_cut: AtomicBool,
    stop: AtomicBool,
    /// Tasks started along the way (bursts, the lost site's stop).
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Under mirroring, one `wait_replicated` at a time per member, in the order the writes
    /// returned (their log order). `wait_replicated` waits on the member's metrics channel,
    /// whose waiters tokio wakes in an order it draws at random: concurrent waits would end
    /// in a random order within the millisecond, and the seed would not replay exactly.
    /// (Serialized, a wait ends no later than it would have: the one before it waits for an
    /// earlier entry.)
    wait_turns: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl World {
    fn hist<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        f(&mut self.hist.lock().unwrap())
    }

    fn all(&self) -> Vec<String> {
        let mut v = self.voters.clone();
        v.extend(self.learner.clone());
        v
    }

    fn wait_turn(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.wait_turns
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn incarnation(&self, name: &str) -> u64 {
        self.incarnations
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn is_witness(&self, name: &str) -> bool {
        self.witness.as_deref() == Some(name)
    }

    /// Under mirroring, for a write acknowledged by `name`: the mirror (the other
    /// data-holding member) and the member whose copy the acknowledgement waits for (the
    /// mirror, unless a bug says otherwise). `None` without mirroring, or for the witness.
    fn mirror_of(&self, name: &str) -> Option<(String, NodeId)> {
        if !self.p.mirroring {
            return None;
        }
        let wit = self.witness.as_ref()?;
        if name == wit {
            return None;
        }
        let mirror = self.voters.iter().find(|v| *v != name && *v != wit)?;
        let wait_on = if self.p.mirror_bug == MirrorBug::WaitOnWitness {
            wit
        } else {
            mirror
        };
        Some((mirror.clone(), node_id(wait_on)))
    }

    async fn start(self: &Arc<World>, name: &str) {
        // Only a member that is down (and no longer stopping) starts again, and only once.
        let inc = {
            let mut down = self.down.lock().unwrap();
            let mut i = self.incarnations.lock().unwrap();
            if i.contains_key(name) && !down.remove(name) {
                return;
            }
            let e = i.entry(name.to_string()).or_default();
            *e += 1;
            *e
        };
        let mut cfg = ReplicaConfig::new("sim", member(name), self.dir.join(name));
        cfg.heartbeat_ms = self.p.heartbeat_ms;
        cfg.election_timeout_min_ms = self.p.election_ms.0;
        cfg.election_timeout_max_ms = self.p.election_ms.1;
        cfg.snapshot_every = self.p.snapshot_every;
        cfg.snapshot_chunk_bytes = self.p.snapshot_chunk_bytes;
        // The witness campaigns too (it may hold a commit the others lack), but only to hand
        // leadership over (`store::node::node_config`, `StoreNode::hand_over`).
        cfg.elect = !self.is_witness(name) || self.p.mirror_bug != MirrorBug::WitnessNeverCampaigns;
        cfg.blocking_machine = false;
        // The mirroring witness keeps the log the mirror may need (`store::node`, the same).
        cfg.keep_log_for_others = self.p.mirroring
            && self.is_witness(name)
            && self.p.mirror_bug != MirrorBug::WitnessPurges;
        cfg.seed = Some(derive(self.p.seed, &format!("{name}#{inc}")));
        cfg.log = WalOptions {
            sync: false,
            inline: true,
            memory_bytes: SIM_LOG_MEMORY_BYTES,
        };
        let saved = self
            .saved
            .lock()
            .unwrap()
            .remove(name)
            .filter(|_| self.p.durable_machine);
        // A witness's machine lives in memory only (as the store's): a restart rebuilds it
        // from the snapshot and the log.
        let machine = if self.is_witness(name) || self.p.cluster {
            SimMachine::Witness(SimWitness::new(self.stats.clone()))
        } else {
            saved.unwrap_or_else(|| {
                SimMachine::Kv(SimKv::new(name, self.p.bug.clone(), self.stats.clone()))
            })
        };
        self.stats.opening.store(true, Ordering::Relaxed);
        let opened = Replica::open(cfg, machine, self.net.transport(name)).await;
        self.stats.opening.store(false, Ordering::Relaxed);
        let r = match opened {
            Ok(r) => r,
            Err(e) => {
                self.hist(|h| h.violation(format!("{name} could not reopen its directory: {e}")));
                self.down.lock().unwrap().insert(name.to_string());
                return;
            }
        };
        self.net.add(name, r.clone());
        self.hist(|h| {
            h.event(format!("start {name} #{inc}"));
            if inc > 1 && !self.stopped() {
                h.count("restarts");
            }
        });
        if self.p.cluster && !self.is_witness(name) {
            tokio::spawn(owner(self.clone(), name.to_string(), inc));
        }
        if self.is_witness(name) && self.p.mirror_bug != MirrorBug::WitnessServes {
            tokio::spawn(hand_over(self.clone(), name.to_string(), inc));
        }
        // Watch every status this member publishes (role and term, for the leader check).
        let hist = self.hist.clone();
        let who = name.to_string();
        tokio::spawn(async move {
            let _ = r
                .wait_for(Duration::from_secs(1 << 30), "the end", move |s| {
                    hist.lock().unwrap().observe(&who, s);
                    false
                })
                .await;
        });
    }

    /// Stops a member (`fault`: as a fault, rather than at the end).
    async fn crash(&self, name: &str, fault: bool) {
        let Some(r) = self.net.remove(name) else {
            return;
        };
        self.hist(|h| {
            if fault {
                h.event(format!("crash {name}"));
                h.count("crashes");
            } else {
                h.event(format!("stop {name}"));
            }
        });
        // A process that is gone owns nothing (the storage's fence still names it).
        self.owners.lock().unwrap().remove(name);
        r.shutdown().await;
        // The machine as the crash left it: reused at the restart if the machine is durable.
        let m = r.with_machine(|m| Ok(m.clone())).await.unwrap();
        self.saved.lock().unwrap().insert(name.to_string(), m);
        // Down only now: nothing restarts it while the old instance still runs.
        self.down.lock().unwrap().insert(name.to_string());
    }

    /// Runs `f` in the background; the liveness phase waits for it before checking.
    fn background(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.lock().unwrap().push(tokio::spawn(f));
    }

    /// The member claiming leadership in the highest term, with its status.
    fn leader(&self) -> Option<(String, Replica<SimMachine>, Status)> {
        self.net
            .up()
            .into_iter()
            .map(|(n, r)| {
                let s = r.status();
                (n, r, s)
            })
            .filter(|(_, _, s)| s.role == Role::Leader)
            .max_by_key(|(_, _, s)| s.term)
    }

    /// The member claiming leadership with a quorum acknowledgement younger than the lease:
    /// one that knows it leads. A deposed leader cut off from the others keeps reporting
    /// itself leader (openraft does not step down on quorum loss), with a stale view of the
    /// group; only a leader within its lease can report lag that means something.
    fn leader_with_lease(&self) -> Option<(String, Replica<SimMachine>, Status)> {
        self.leader().filter(|(_, _, s)| {
            s.quorum_ack_ms_ago
                .is_some_and(|ms| ms < self.p.election_ms.1)
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One write of a unique key, tried until acknowledged or until its deadline.
async fn write_one(
    w: &Arc<World>,
    client: &str,
    n: u64,
    rng: &mut Rng,
    believed: &mut Option<String>,
) {
    let key = format!("{client}-{n}");
    let value = format!("v{}-{client}-{n}", w.p.seed);
    w.hist(|h| h.issue(&key, &value));
    let cmd = set_cmd(&key, &value);
    let deadline = Instant::now() + Duration::from_secs(3);
    let all = w.all();
    let mut last = String::from("no attempt");
    loop {
        let now = Instant::now();
        if now >= deadline {
            w.hist(|h| h.unknown(&key, last));
            return;
        }
        let name = believed
            .take()
            .unwrap_or_else(|| rng.pick(&all).unwrap().clone());
        let Some(r) = w.net.get(&name) else {
            last = format!("{name} is down");
            sleep(Duration::from_millis(rng.between(5, 50))).await;
            continue;
        };
        let attempt = (deadline - now).min(Duration::from_secs(1));
        if w.is_witness(&name) && w.p.mirror_bug != MirrorBug::WitnessServes {
            // A witness never serves (`StoreNode::apply`, `ClusterNode::apply`).
            last = format!("{name} is the witness");
            sleep(Duration::from_millis(rng.between(1, 20))).await;
            continue;
        }
        if w.p.cluster {
            let stall = if rng.chance(w.p.stall) {
                rng.between(1, 2 * w.p.election_ms.1)
            } else {
                0
            };
            let write = cluster_write(w.clone(), name.clone(), key.clone(), value.clone(), stall);
            match tokio::time::timeout(attempt, tokio::spawn(write)).await {
                Ok(Ok(Ok(resp))) => {
                    let s = r.status();
                    w.hist(|h| h.ack(&key, &name, &s, &resp));
                    *believed = Some(name);
                    return;
                }
                Ok(Ok(Err((why, hint)))) => {
                    last = why;
                    sleep(Duration::from_millis(rng.between(1, 20))).await;
                    *believed = hint;
                }
                Ok(Err(e)) => panic!("a cluster write panicked: {e}"),
                Err(_) => last = format!("{name}: attempt timed out"),
            }
            continue;
        }
        // Under high-safety mirroring the principal acknowledges once the mirror holds the
        // write too, or was silent for an election timeout (`StoreNode::apply`).
        let mirror = w.mirror_of(&name);
        let write = async {
            let (resp, index) = r.write_indexed(cmd.clone()).await?;
            let said = match &mirror {
                Some((_, id)) => {
                    let turn = w.wait_turn(&name);
                    let _turn = turn.lock().await;
                    Some(r.wait_replicated(*id, index, w.p.election_ms.1).await)
                }
                None => None,
            };
            Ok::<_, WriteError>((resp, index, said))
        };
        match tokio::time::timeout(attempt, write).await {
            Ok(Ok((resp, index, said))) => {
                let s = r.status();
                // Before anything else runs: what the mirror holds now.
                let mirrored = mirror.zip(said).map(|((m, _), said)| {
                    let held = if said {
                        mirror_holds(&w.dir.join(&m), index, &cmd, &key, &value)
                    } else {
                        Ok(())
                    };
                    (m, said, held)
                });
                w.hist(|h| {
                    h.ack(&key, &name, &s, &resp);
                    if let Some((m, said, held)) = mirrored {
                        h.mirror_ack(&key, &name, &m, index, said, held, &s, w.p.election_ms.1);
                    }
                });
                *believed = Some(name);
                return;
            }
            Ok(Err(WriteError::NotLeader {
                leader: Some((_, m)),
            })) => {
                last = format!("{name}: not the leader, {} is", m.server);
                // Always let time pass: two members naming each other would spin otherwise
                // (on a paused clock, a task that never waits on a timer stops the clock).
                sleep(Duration::from_millis(rng.between(1, 20))).await;
                *believed = Some(m.server);
            }
            Ok(Err(e)) => {
                last = format!("{name}: {e}");
                sleep(Duration::from_millis(rng.between(5, 60))).await;
            }
            Err(_) => last = format!("{name}: attempt timed out"),
        }
    }
}

/// Under a failover cluster: a write through `name` as `ClusterNode::apply` makes it — only
/// while `name` owns the storage (refused otherwise, with the ownership group's leader as a
/// hint), under its fencing token, which the storage checks. `stall_ms` pauses the owner
/// between its ownership check and the write; the write runs as its own task, so a paused
/// owner that wakes after the client gave up still writes (or is fenced), as a real one would.
async fn cluster_write(
    w: Arc<World>,
    name: String,
    key: String,
    value: String,
    stall_ms: u64,
) -> Result<Vec<u8>, (String, Option<String>)> {
    let Some(r) = w.net.get(&name) else {
        return Err((format!("{name} is down"), None));
    };
    let inc = w.incarnation(&name);
    let owned = w.owners.lock().unwrap().get(&name).copied();
    let Some(token) = owned else {
        let s = r.status();
        let hint = s
            .leader
            .filter(|l| *l != s.id)
            .and_then(|l| s.voters.get(&l))
            .map(|m| m.server.clone());
        return Err((format!("{name} does not own the storage"), hint));
    };
    if stall_ms > 0 {
        w.hist(|h| {
            h.event(format!(
                "{name} pauses {stall_ms} ms before writing {key} under token {token}"
            ));
            h.count("owner pauses");
        });
        sleep(Duration::from_millis(stall_ms)).await;
        // A process killed meanwhile writes nothing.
        if w.incarnation(&name) != inc || w.net.get(&name).is_none() {
            return Err((format!("{name} was killed while paused"), None));
        }
    }
    let at = w.hist(|h| h.now_ms());
    let written = w.disk.lock().unwrap().write(token, &name, &key, &value, at);
    match written {
        Ok(previous) => Ok(serde_json::to_vec(&previous).unwrap()),
        Err(current) => {
            w.hist(|h| {
                h.event(format!(
                    "{name} fenced writing {key}: token {token}, the storage holds {current}"
                ));
                h.count("writes fenced");
            });
            // Fenced, the node lets ownership go (`ClusterNode::apply`).
            let mut owners = w.owners.lock().unwrap();
            if owners.get(&name) == Some(&token) {
                owners.remove(&name);
            }
            Err((format!("{name}: fenced by token {current}"), None))
        }
    }
}

/// Under a failover cluster, a node's ownership as `ClusterNode::watch_loop` follows it: every
/// 50 ms it takes the storage (raising the fence to its term) when it leads the ownership
/// group with a quorum acknowledgement younger than the shortest election timeout, and lets it
/// go when it does not. Ends with the node's incarnation.
async fn owner(w: Arc<World>, name: String, inc: u64) {
    loop {
        sleep(Duration::from_millis(50)).await;
        if w.incarnation(&name) != inc {
            return;
        }
        let Some(r) = w.net.get(&name) else { return };
        let s = r.status();
        let leading =
            s.role == Role::Leader && s.quorum_ack_ms_ago.is_some_and(|ms| ms < w.p.election_ms.0);
        let owned = w.owners.lock().unwrap().get(&name).copied();
        if let Some(token) = owned
            && (!leading || token != s.term)
        {
            w.owners.lock().unwrap().remove(&name);
            w.hist(|h| h.event(format!("{name} lets the storage go (token {token})")));
        }
        if leading && owned != Some(s.term) {
            let taken = w.disk.lock().unwrap().take(s.term, &name);
            match taken {
                Ok(()) => {
                    w.owners.lock().unwrap().insert(name.clone(), s.term);
                    w.hist(|h| {
                        h.event(format!("{name} owns the storage, token {}", s.term));
                        h.count("ownership taken");
                    });
                }
                Err(current) => w.hist(|h| {
                    h.event(format!(
                        "{name} cannot take the storage under token {}: {current} holds it",
                        s.term
                    ))
                }),
            }
        }
    }
}

/// Under a failover cluster, after healing: the group's leader owns the storage, within two
/// election timeouts. Returns who owns it, or why not.
async fn owned_after_healing(w: &World) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_millis(2 * w.p.election_ms.1 + 200);
    loop {
        if let Some((name, _, s)) = w.leader()
            && w.owners.lock().unwrap().get(&name) == Some(&s.term)
        {
            return Ok(name);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no node owns the storage after healing: leader {:?}, owners {:?}",
                w.leader().map(|(n, _, s)| (n, s.term)),
                w.owners.lock().unwrap()
            ));
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// A witness that leads hands leadership to a data member that holds its whole log, as
/// `StoreNode::hand_over` does (checked every 50 ms). Ends with the witness's incarnation.
async fn hand_over(w: Arc<World>, name: String, inc: u64) {
    let mut purged = None;
    for tick in 0u64.. {
        sleep(Duration::from_millis(50)).await;
        if w.incarnation(&name) != inc {
            return;
        }
        let Some(r) = w.net.get(&name) else { return };
        // Now and then, the witness purges what the others hold (as the store's does).
        if tick % 10 == 0
            && r.config().keep_log_for_others
            && let Ok(Some(upto)) = r.purge_kept_log(Duration::from_millis(200)).await
            && Some(upto) > purged
        {
            purged = Some(upto);
            w.hist(|h| h.count("witness log purges"));
        }
        let s = r.status();
        if s.role != Role::Leader {
            continue;
        }
        let last = s.last_log_index.unwrap_or(0);
        let target = w.voters.iter().map(|v| node_id(v)).find(|id| {
            *id != s.id
                && s.voters.contains_key(id)
                && s.replication
                    .get(id)
                    .and_then(|p| p.matched)
                    .is_some_and(|m| m >= last)
        });
        if let Some(target) = target {
            w.hist(|h| {
                h.event(format!("{name} hands leadership over"));
                h.count("witness hand-overs");
            });
            let _ = r.transfer_leader(target).await;
        }
    }
}

async fn client(w: Arc<World>, c: usize) {
    let mut rng = Rng::new(derive(w.p.seed, &format!("client{c}")));
    let name = format!("c{c}");
    let mut believed = None;
    let mut n = 0;
    while !w.stopped() {
        n += 1;
        write_one(&w, &name, n, &mut rng, &mut believed).await;
        sleep(Duration::from_millis(rng.between(0, w.p.pace_ms))).await;
    }
}

/// Many writes at once, each its own task.
async fn burst(w: &Arc<World>, id: u64, size: u64) {
    let mut tasks = Vec::new();
    for i in 0..size {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(derive(w.p.seed, &format!("burst{id}-{i}")));
            let mut believed = w.leader().map(|(n, _, _)| n);
            write_one(&w, &format!("b{id}"), i + 1, &mut rng, &mut believed).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Takes a follower down, writes over a thousand entries, brings it back.
async fn straggler(w: Arc<World>) {
    let mut rng = Rng::new(derive(w.p.seed, "straggler"));
    let victim = loop {
        sleep(Duration::from_millis(100)).await;
        if w.stopped() {
            return;
        }
        if !w.down.lock().unwrap().is_empty() {
            continue;
        }
        let Some((leader, _, _)) = w.leader() else {
            continue;
        };
        // Under mirroring, the mirror or the witness (which then installs a data member's
        // snapshot); otherwise the first follower.
        let followers: Vec<String> = w.voters.iter().filter(|v| **v != leader).cloned().collect();
        let pick = if w.witness.is_some() {
            rng.pick(&followers)
        } else {
            followers.first()
        };
        if let Some(v) = pick {
            break v.clone();
        }
    };
    w.held.lock().unwrap().insert(victim.clone());
    w.crash(&victim, true).await;
    w.hist(|h| h.event(format!("straggler {victim}: down for 1,200 writes")));
    for b in 0..3 {
        burst(&w, 100 + b, 400).await;
    }
    // Time for the leader to build a snapshot and purge what the straggler needs.
    sleep(Duration::from_millis(1_000)).await;
    w.held.lock().unwrap().remove(&victim);
    if !w.stopped() {
        w.start(&victim).await;
    }
}

/// Reads through a read barrier on the leader: every write acknowledged before the read
/// began must be visible.
async fn reader(w: Arc<World>) {
    let mut rng = Rng::new(derive(w.p.seed, "reader"));
    let all = w.all();
    let mut believed: Option<String> = None;
    while !w.stopped() {
        sleep(Duration::from_millis(rng.between(150, 500))).await;
        let name = believed
            .take()
            .unwrap_or_else(|| rng.pick(&all).unwrap().clone());
        let Some(r) = w.net.get(&name) else { continue };
        if w.is_witness(&name) {
            // A witness holds no data and answers no query.
            continue;
        }
        let before = w.hist(|h| h.acked());
        match tokio::time::timeout(Duration::from_secs(1), r.read_barrier()).await {
            Ok(Ok(())) => {
                let missing = r
                    .with_machine(move |m| {
                        Ok(before
                            .into_iter()
                            .filter(|(k, v)| m.data().and_then(|d| d.get(k)) != Some(v))
                            .collect::<Vec<_>>())
                    })
                    .await
                    .unwrap_or_default();
                w.hist(|h| {
                    h.count("reads");
                    if !missing.is_empty() {
                        h.violation(format!(
                            "stale read on {name} after a read barrier: {} acknowledged write(s) missing, e.g. {:?}",
                            missing.len(),
                            missing.first()
                        ));
                    }
                });
                believed = Some(name);
            }
            Ok(Err(WriteError::NotLeader {
                leader: Some((_, m)),
            })) => believed = Some(m.server),
            _ => {}
        }
    }
}

/// Adds the learner, retrying while leaders cannot change membership yet.
async fn add_learner(w: Arc<World>) {
    let Some(l) = w.learner.clone() else { return };
    let lid = node_id(&l);
    while !w.stopped() {
        sleep(Duration::from_millis(50)).await;
        let Some((name, r, s)) = w.leader() else {
            continue;
        };
        if s.learners.contains_key(&lid) && s.committed >= s.last_log_index {
            w.learner_added.store(true, Ordering::Relaxed);
            w.hist(|h| h.event(format!("learner {l} added (seen on {name})")));
            return;
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), r.add_learner(member(&l), false)).await;
    }
}

/// Loses the learner's site after sampling the leader's view of it; false if no leader.
fn cut_learner(w: &World) -> bool {
    let Some(l) = w.learner.clone() else {
        return true;
    };
    let Some((leader, _, s)) = w.leader_with_lease() else {
        return false;
    };
    let progress = s.replication.get(&node_id(&l));
    let matched = progress.and_then(|p| p.matched);
    let lag_entries = match (s.last_log_index, matched) {
        (Some(last), Some(m)) => last.saturating_sub(m),
        (Some(last), None) => last + 1,
        (None, _) => 0,
    };
    let lag_ms = progress.and_then(|p| p.last_ack_ms_ago);
    w.net.lose_site(&l);
    w.learner_cut.store(true, Ordering::Relaxed);
    w.hist(|h| {
        let acked_before = h.acked();
        h.event(format!(
            "site of {l} lost: {leader} reported lag {lag_entries} entries ({lag_ms:?} ms), {} writes acked",
            acked_before.len()
        ));
        h.cut = Some(AsyncCut {
            at_ms: h.now_ms(),
            learner: l.clone(),
            leader,
            last_log_index: s.last_log_index,
            matched,
            lag_entries,
            lag_ms,
            acked_before,
        });
    });
    true
}

fn random_partition(rng: &mut Rng, members: &[String]) -> (String, BTreeSet<(String, String)>) {
    let mut m = members.to_vec();
    rng.shuffle(&mut m);
    let roll = rng.below(10);
    let k = if roll < 3 {
        1
    } else {
        rng.between(1, m.len() as u64 - 1) as usize
    };
    let (a, b) = m.split_at(k);
    let one_way = rng.chance(0.3);
    let mut links = BTreeSet::new();
    for x in a {
        for y in b {
            links.insert((x.clone(), y.clone()));
            if !one_way {
                links.insert((y.clone(), x.clone()));
            }
        }
    }
    let what = format!("{a:?} {} {b:?}", if one_way { "-/->" } else { "<-/->" });
    (what, links)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Crash,
    Restart,
    Partition,
    Heal,
    Transfer,
    Learner,
    Weather,
    Burst,
}

const FAULTS: [(Fault, u64); 8] = [
    (Fault::Crash, 15),
    (Fault::Restart, 20),
    (Fault::Partition, 15),
    (Fault::Heal, 20),
    (Fault::Transfer, 12),
    (Fault::Learner, 6),
    (Fault::Weather, 6),
    (Fault::Burst, 6),
];

async fn faults(w: Arc<World>, end: Instant) {
    let mut rng = Rng::new(derive(w.p.seed, "faults"));
    let f = (w.voters.len() - 1) / 2;
    let start = Instant::now();
    let cut_at = start + (end - start).mul_f64(0.3 + 0.5 * rng.unit());
    let mut bursts = 0;
    let total: u64 = FAULTS.iter().map(|(_, n)| n).sum();
    loop {
        let gap = rng.between(w.p.fault_gap.0, w.p.fault_gap.1);
        sleep(Duration::from_millis(gap)).await;
        if Instant::now() >= end {
            return;
        }
        if w.learner.is_some()
            && !w.learner_cut.load(Ordering::Relaxed)
            && w.learner_added.load(Ordering::Relaxed)
            && Instant::now() >= cut_at
            && w.net.get(LEARNER).is_some()
            && cut_learner(&w)
        {
            // Nothing reaches the lost site any more: stop it once it applied what it knew
            // was committed (what it holds is read at the end).
            let w2 = w.clone();
            w.background(async move {
                sleep(Duration::from_millis(200)).await;
                w2.crash(LEARNER, false).await;
            });
        }
        let down: Vec<String> = w.down.lock().unwrap().iter().cloned().collect();
        let down_voters = down.iter().filter(|d| w.voters.contains(d)).count();
        let up_voters: Vec<String> = w
            .voters
            .iter()
            .filter(|v| !down.contains(v))
            .cloned()
            .collect();
        let mut roll = rng.below(total);
        let fault = FAULTS
            .iter()
            .find(|(_, n)| {
                if roll < *n {
                    true
                } else {
                    roll -= n;
                    false
                }
            })
            .map(|(f, _)| *f)
            .unwrap();
        match fault {
            // At most a minority of voters down at once (partitions come on top).
            Fault::Crash if down_voters < f => {
                let victim = match w.leader().map(|(n, _, _)| n) {
                    Some(l) if rng.chance(0.5) && w.voters.contains(&l) => l,
                    _ => rng.pick(&up_voters).unwrap().clone(),
                };
                trap_check(&w, &victim);
                w.crash(&victim, true).await;
            }
            Fault::Crash => {}
            Fault::Restart => {
                let cut = w.learner_cut.load(Ordering::Relaxed);
                let held = w.held.lock().unwrap().clone();
                let restartable: Vec<String> = down
                    .iter()
                    .filter(|d| !(held.contains(*d) || cut && *d == LEARNER))
                    .cloned()
                    .collect();
                if let Some(n) = rng.pick(&restartable).cloned() {
                    w.start(&n).await;
                }
            }
            Fault::Partition => {
                let (what, links) = random_partition(&mut rng, &w.all());
                w.net.partition(links);
                w.hist(|h| {
                    h.event(format!("partition {what}"));
                    h.count("partitions");
                });
            }
            Fault::Heal => {
                if w.net.partitioned() {
                    w.net.heal();
                    w.hist(|h| h.event("heal"));
                }
            }
            Fault::Transfer => {
                // Never to the witness (`StoreNode` refuses it), unless a bug says otherwise.
                let targets: Vec<String> = up_voters
                    .iter()
                    .filter(|v| !w.is_witness(v))
                    .cloned()
                    .collect();
                if let Some((name, r, _)) = w.leader()
                    && let Some(to) = rng.pick(&targets).cloned()
                    && to != name
                {
                    w.hist(|h| {
                        h.event(format!("transfer {name} -> {to}"));
                        h.count("transfers");
                    });
                    let _ = r.transfer_leader(node_id(&to)).await;
                }
            }
            Fault::Learner => {
                if let Some(l) = w.learner.clone()
                    && !w.learner_cut.load(Ordering::Relaxed)
                {
                    if down.contains(&l) {
                        w.start(&l).await;
                    } else {
                        w.crash(&l, true).await;
                    }
                }
            }
            Fault::Weather => {
                // The link quality changes for a while: calm, the seed's own, or worse.
                let (drop, delay) = match rng.below(3) {
                    0 => (0.0, rng.between(0, 5)),
                    1 => (w.p.drop, w.p.max_delay_ms),
                    _ => (0.1 + rng.unit() * 0.2, rng.between(10, 50)),
                };
                w.net.set_quality(drop, delay);
                w.hist(|h| h.event(format!("weather: drop {drop:.2}, delay 0-{delay} ms")));
            }
            Fault::Burst => {
                if w.p.bursts && bursts < 3 {
                    bursts += 1;
                    let size = rng.between(w.p.burst_size.0, w.p.burst_size.1);
                    w.hist(|h| {
                        h.event(format!("burst b{bursts} of {size} writes"));
                        h.count("bursts");
                    });
                    let w2 = w.clone();
                    w.background(async move { burst(&w2, bursts, size).await });
                }
            }
        }
    }
}

/// Under mirroring, before the leader `victim` crashes: counts the times it leaves the
/// mirror without a commit only the witness shares (the "witness trap": the mirror must not
/// be elected then; the checks find any write lost if it were).
fn trap_check(w: &World, victim: &str) {
    let Some((mirror, _)) = w.mirror_of(victim) else {
        return;
    };
    let Some(s) = w.net.get(victim).map(|r| r.status()) else {
        return;
    };
    if s.role != Role::Leader {
        return;
    }
    let matched = s.replication.get(&node_id(&mirror)).and_then(|p| p.matched);
    if s.committed.is_some() && matched < s.committed {
        w.hist(|h| {
            h.count("principal lost with the mirror behind a commit");
            h.event(format!(
                "{victim} leaves {mirror} behind: committed {:?}, {mirror} matched {matched:?}",
                s.committed
            ));
        });
    }
}

/// Waits until one leader, everything applied everywhere and identical machines (those of
/// the members holding data: a witness has none).
async fn converge(
    w: &Arc<World>,
    members: &[String],
    within: Duration,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, String> {
    let deadline = Instant::now() + within;
    loop {
        let up = w.net.up();
        let why: String;
        let statuses: Vec<(String, Replica<SimMachine>, Status)> = members
            .iter()
            .filter_map(|m| up.get(m).map(|r| (m.clone(), r.clone(), r.status())))
            .collect();
        let leaders: Vec<&(String, Replica<SimMachine>, Status)> = statuses
            .iter()
            .filter(|(n, _, s)| s.role == Role::Leader && w.voters.contains(n) && !w.is_witness(n))
            .collect();
        if statuses.len() != members.len() {
            why = "members down".into();
        } else if leaders.len() != 1 {
            why = format!("{} leaders", leaders.len());
        } else {
            let ls = &leaders[0].2;
            let last = ls.last_log_index;
            let caught_up = ls.committed == last
                && statuses
                    .iter()
                    .all(|(_, _, s)| s.leader == Some(ls.id) && s.applied == last);
            if caught_up {
                let mut maps = BTreeMap::new();
                for (n, r, _) in &statuses {
                    if !w.is_witness(n) {
                        maps.insert(n.clone(), r.with_machine(|m| Ok(m.map())).await.unwrap());
                    }
                }
                let first = maps.values().next().unwrap();
                if maps.values().all(|m| m == first) {
                    return Ok(maps);
                }
                let (a, ma) = maps.iter().next().unwrap();
                let (b, mb) = maps.iter().find(|(_, m)| *m != first).unwrap();
                let diff = ma
                    .iter()
                    .find(|(k, v)| mb.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k}: {v:?} on {a}, {:?} on {b}", mb.get(k)))
                    .or_else(|| {
                        mb.iter()
                            .find(|(k, _)| !ma.contains_key(*k))
                            .map(|(k, v)| format!("{k}: absent on {a}, {v:?} on {b}"))
                    })
                    .unwrap_or_default();
                return Err(format!(
                    "machines differ with everything applied up to {last:?} ({} keys on {a}, {} on {b}; {diff})",
                    ma.len(),
                    mb.len()
                ));
            }
            why = "not caught up".into();
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = statuses
                .iter()
                .map(|(n, _, s)| {
                    format!(
                        "{n}: {:?} term {} leader {:?} last {:?} committed {:?} applied {:?}",
                        s.role,
                        s.term,
                        s.leader
                            .map(|l| w.all().into_iter().find(|m| node_id(m) == l)),
                        s.last_log_index,
                        s.committed,
                        s.applied
                    )
                })
                .collect();
            return Err(format!("after {within:?}: {why}; {}", states.join("; ")));
        }
        sleep(Duration::from_millis(20)).await;
    }
}

async fn simulate(p: Params, dir: PathBuf) -> Report {
    let (voters, witness): (Vec<String>, Option<String>) =
        if p.mirroring || p.cluster && p.cluster_witness {
            let v = ["n1", "n2", WITNESS].map(String::from).to_vec();
            (v, Some(WITNESS.to_string()))
        } else {
            ((1..=p.voters).map(|i| format!("n{i}")).collect(), None)
        };
    let learner = (p.learner && !p.mirroring && !p.cluster).then(|| LEARNER.to_string());
    let mut history = History::new();
    history.witness = witness.clone();
    history.strict_exposure = p.strict_exposure;
    let net = Net::new(
        derive(p.seed, "net"),
        p.drop,
        p.max_delay_ms,
        p.net_bug.clone(),
        p.record_net,
    );
    let w = Arc::new(World {
        p: p.clone(),
        dir,
        net,
        hist: Arc::new(Mutex::new(history)),
        stats: Arc::new(MachineStats::default()),
        voters: voters.clone(),
        learner: learner.clone(),
        witness: witness.clone(),
        disk: Mutex::new(SharedDisk::new(p.cluster_bug.clone())),
        owners: Mutex::new(BTreeMap::new()),
        incarnations: Mutex::new(BTreeMap::new()),
        saved: Mutex::new(BTreeMap::new()),
        down: Mutex::new(BTreeSet::new()),
        held: Mutex::new(BTreeSet::new()),
        learner_added: AtomicBool::new(false),
        learner_cut: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        tasks: Mutex::new(Vec::new()),
        wait_turns: Mutex::new(BTreeMap::new()),
    });
    // 1. Start.
    for n in w.all() {
        w.start(&n).await;
    }
    let initial: BTreeMap<_, _> = voters.iter().map(|v| (node_id(v), member(v))).collect();
    if let Some(r) = w.net.get(&voters[0]) {
        r.initialize(initial).await.unwrap();
    }
    // 2. Safety.
    let end = Instant::now() + Duration::from_millis(p.safety_ms);
    let mut tasks = Vec::new();
    for c in 0..p.clients {
        tasks.push(tokio::spawn(client(w.clone(), c)));
    }
    // (A failover cluster's storage is one: reads there are not replicated reads.)
    if !p.cluster {
        tasks.push(tokio::spawn(reader(w.clone())));
    }
    tasks.push(tokio::spawn(add_learner(w.clone())));
    if p.straggler {
        tasks.push(tokio::spawn(straggler(w.clone())));
    }
    let fault_task = tokio::spawn(faults(w.clone(), end));
    tokio::time::sleep_until(end).await;
    fault_task.await.unwrap();
    // 3. Liveness.
    w.stop.store(true, Ordering::Relaxed);
    w.net.heal();
    w.net.set_quality(0.0, 2);
    let cut = w.learner_cut.load(Ordering::Relaxed);
    let down: Vec<String> = w.down.lock().unwrap().iter().cloned().collect();
    // With a witness, half the seeds lose a data member that is down for good: the others
    // must go on without it (the witness trap: see `hand_over`).
    let mut liveness = Rng::new(derive(p.seed, "liveness"));
    // (Only once the others know the group: a group whose first member is lost before it
    // told anyone never formed.)
    let gone = if witness.is_some() && liveness.chance(0.5) {
        down.iter()
            .find(|d| !w.is_witness(d))
            .filter(|d| {
                w.hist(|h| {
                    voters
                        .iter()
                        .filter(|v| v != d)
                        .all(|v| h.joined.contains(v))
                })
            })
            .cloned()
    } else {
        None
    };
    for d in down {
        if !(cut && d == LEARNER) && gone.as_ref() != Some(&d) {
            w.start(&d).await;
        }
    }
    if let Some(g) = &gone {
        w.hist(|h| {
            h.event(format!("{g} is lost for good"));
            h.count("data members lost for good");
        });
    }
    w.hist(|h| h.event("liveness: healed, restarted"));
    for t in tasks {
        t.await.unwrap();
    }
    loop {
        let more: Vec<_> = std::mem::take(&mut *w.tasks.lock().unwrap());
        if more.is_empty() {
            break;
        }
        for t in more {
            t.await.unwrap();
        }
    }
    let mut members: Vec<String> = voters
        .iter()
        .filter(|v| gone.as_ref() != Some(*v))
        .cloned()
        .collect();
    if let Some(l) = &learner
        && w.learner_added.load(Ordering::Relaxed)
        && !cut
    {
        members.push(l.clone());
    }
    let mut fin = Final::default();
    match converge(&w, &members, Duration::from_millis(p.converge_ms)).await {
        Ok(maps) => fin.machines = maps,
        Err(e) => {
            fin.converged = Err(e);
            // Still check what every member holds.
            for (n, r) in w.net.up() {
                if members.contains(&n) && !w.is_witness(&n) {
                    fin.machines
                        .insert(n, r.with_machine(|m| Ok(m.map())).await.unwrap());
                }
            }
        }
    }
    if p.cluster {
        // The data is the shared storage's.
        if fin.converged.is_ok()
            && let Err(e) = owned_after_healing(&w).await
        {
            fin.converged = Err(e);
        }
        let disk = w.disk.lock().unwrap();
        fin.machines = BTreeMap::from([("the shared storage".to_string(), disk.map())]);
        fin.shared = Some((disk.takes.clone(), disk.writes.clone()));
    }
    w.hist(|h| h.event("converged"));
    // 4. Stop everything; read the lost learner's machine and log.
    for (n, _) in w.net.up() {
        w.crash(&n, false).await;
    }
    if cut && let Some(l) = &learner {
        let map = w
            .saved
            .lock()
            .unwrap()
            .get(l)
            .map(SimMachine::map)
            .unwrap_or_default();
        fin.cut_learner = Some(CutLearner {
            machine: map,
            log: read_log(&w.dir.join(l).join("log")),
        });
    }
    let virtual_ms = w.hist(|h| h.now_ms());
    let hist = std::mem::take(&mut *w.hist.lock().unwrap());
    let mut report = Report {
        virtual_ms,
        net: w.net.stats(),
        installs: w.stats.installs.load(Ordering::Relaxed),
        loads: w.stats.loads.load(Ordering::Relaxed),
        snapshots: w.stats.snapshots.load(Ordering::Relaxed),
        witness_installs: w.stats.witness_installs.load(Ordering::Relaxed),
        mirroring: p.mirroring,
        cluster: p.cluster,
        ..Report::default()
    };
    let (violations, loss) = check(&hist, &fin);
    let (acked, unknown, _) = hist.tally();
    report.violations = violations;
    report.async_loss = loss;
    report.acked = acked;
    report.unknown = unknown;
    report.max_term = hist.leaders.keys().next_back().copied().unwrap_or(0);
    report.counts = hist.counts.clone();
    report.trace = hist.trace;
    if let Some(log) = &w.net.log {
        report.messages = log.lock().unwrap().clone();
    }
    report
}

fn read_log(dir: &Path) -> Vec<Vec<u8>> {
    match Wal::open_with(
        dir,
        WalOptions {
            sync: false,
            inline: true,
            memory_bytes: SIM_LOG_MEMORY_BYTES,
        },
    )
    .and_then(|wal| wal.range(0, u64::MAX))
    {
        Ok(records) => records
            .into_iter()
            .map(|(_, b)| b.as_ref().clone())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Does the member in `dir` hold `cmd` at log `index` — or, when its log no longer has it
/// (purged after a snapshot, or a snapshot installed past its end), the write `key=value` in
/// its snapshot? Read from its files, which its log writes before it answers the leader: what
/// they hold survives a crash. `Err` says what it holds instead.
fn mirror_holds(dir: &Path, index: u64, cmd: &[u8], key: &str, value: &str) -> Result<(), String> {
    let record = log_record(&dir.join("log"), index);
    if let Ok(Some(r)) = &record
        && contains(r, cmd)
    {
        return Ok(());
    }
    // A snapshot's data is the map as JSON, stored verbatim in the snapshot file.
    let pair = format!(
        "{}:{}",
        serde_json::to_string(key).unwrap(),
        serde_json::to_string(value).unwrap()
    );
    let snapshot = std::fs::read(dir.join("snapshot.bin")).unwrap_or_default();
    if contains(&snapshot, pair.as_bytes()) {
        return Ok(());
    }
    Err(match record {
        Ok(Some(_)) => format!("holds another entry at {index}, and not the write in its snapshot"),
        Ok(None) => format!("holds no entry {index}, nor the write in its snapshot"),
        Err(e) => format!("has a log that cannot be read: {e}"),
    })
}

/// The payload of record `index` in the log in `dir`, read from its segment files (see
/// `replica::wal`: records of the log whose key `meta.json` names, entries and copies setting
/// an index, truncations removing the indexes from theirs on, in file order).
fn log_record(dir: &Path, index: u64) -> std::io::Result<Option<Vec<u8>>> {
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json"))?)
        .map_err(std::io::Error::other)?;
    let key = meta["key"].as_u64().unwrap_or(0);
    let mut segments: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wal") {
            segments.push(path);
        }
    }
    // Sequence numbers are zero-padded: name order is file order.
    segments.sort();
    let mut found: Option<Vec<u8>> = None;
    for path in segments {
        let data = std::fs::read(path)?;
        let mut pos = 0;
        // [len u32][crc32c u32][kind u8][key u64][index u64][payload], big-endian.
        while pos + 25 <= data.len() {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            let kind = data[pos + 8];
            let k = u64::from_be_bytes(data[pos + 9..pos + 17].try_into().unwrap());
            let at = u64::from_be_bytes(data[pos + 17..pos + 25].try_into().unwrap());
            if kind == 0 {
                break;
            }
            let body = data.get(pos + 25..pos + 25 + len);
            if k == key {
                match kind {
                    1 | 3 if at == index => found = body.map(<[u8]>::to_vec),
                    2 if at <= index => found = None,
                    _ => {}
                }
            }
            pos += 25 + len;
        }
    }
    Ok(found)
}

/// Runs one seed in a fresh runtime on a paused clock, in `base/seed-<seed>`.
pub fn run(p: Params, base: &Path) -> (Report, PathBuf) {
    let dir = base.join(format!("seed-{}", p.seed));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // A seed whose clock stops (a task spinning without waiting on a timer) or that never
    // ends would hang the test: name it and stop the process instead.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let (seed, limit) = (p.seed, p.watchdog_s);
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            finished.recv_timeout(Duration::from_secs(limit))
        {
            eprintln!(
                "seed {seed} still running after {limit} s of wall time: replay it with \
                 `SIM_SEED={seed} SIM_TRACE=1 cargo test -p replica --test sim simulation`"
            );
            std::process::exit(101);
        }
    });
    let report = rt.block_on(simulate(p, dir.clone()));
    drop(rt);
    let _ = done.send(());
    watchdog.join().unwrap();
    (report, dir)
}
