//! The simulated application: a key-value map (commands set a key; the response is the
//! previous value), with optional injected bugs that the checker must catch; and a mirroring
//! witness's machine, which applies nothing and keeps only the position.

use replica::Machine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A command: set a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Set {
    pub key: String,
    pub value: String,
}

pub fn set_cmd(key: &str, value: &str) -> Vec<u8> {
    serde_json::to_vec(&Set {
        key: key.into(),
        value: value.into(),
    })
    .unwrap()
}

/// A deliberately broken machine, to prove the checker can fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Bug {
    #[default]
    None,
    /// Every member answers writes of keys ending in `-<multiple of n>` as if it applied them,
    /// and forgets them: acknowledged writes vanish everywhere, identically.
    ForgetEvery(u64),
    /// This member alone skips keys ending in `-<multiple of n>`: the replicas diverge.
    DivergeOn(String, u64),
    /// Data members install a witness's snapshot (no data) as their own.
    TakesWitnessSnapshots,
}

/// Counters shared by every machine of one simulation.
#[derive(Default)]
pub struct MachineStats {
    /// Snapshots installed from a leader.
    pub installs: AtomicU64,
    /// Snapshots loaded while a member opens (a restart rebuilding its machine).
    pub loads: AtomicU64,
    /// Set while a member opens.
    pub opening: std::sync::atomic::AtomicBool,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Snapshots installed from a leader on a witness (a data member's snapshot, of which it
    /// keeps the position only).
    pub witness_installs: AtomicU64,
}

/// The machine. The map and the position are its state; the rest is test wiring.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SimKv {
    pub map: BTreeMap<String, String>,
    pub position: Option<Vec<u8>>,
    #[serde(skip)]
    pub me: String,
    #[serde(skip)]
    pub bug: Bug,
    #[serde(skip)]
    pub stats: Option<Arc<MachineStats>>,
}

fn counter(key: &str) -> Option<u64> {
    key.rsplit('-').next()?.parse().ok()
}

impl SimKv {
    pub fn new(me: &str, bug: Bug, stats: Arc<MachineStats>) -> SimKv {
        SimKv {
            map: BTreeMap::new(),
            position: None,
            me: me.to_string(),
            bug,
            stats: Some(stats),
        }
    }

    fn forgets(&self, key: &str) -> bool {
        let multiple = |n: u64| counter(key).is_some_and(|c| c > 0 && c % n == 0);
        match &self.bug {
            Bug::None => false,
            Bug::ForgetEvery(n) => multiple(*n),
            Bug::DivergeOn(who, n) => *who == self.me && multiple(*n),
            Bug::TakesWitnessSnapshots => false,
        }
    }
}

impl Machine for SimKv {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(commands.len());
        for c in commands {
            match c {
                Some(bytes) => {
                    let set: Set = serde_json::from_slice(bytes).map_err(io::Error::other)?;
                    let prev = if self.forgets(&set.key) {
                        self.map.get(&set.key).cloned()
                    } else {
                        self.map.insert(set.key, set.value)
                    };
                    out.push(serde_json::to_vec(&prev).map_err(io::Error::other)?);
                }
                None => out.push(Vec::new()),
            }
        }
        self.position = Some(position.to_vec());
        Ok(out)
    }

    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.position.clone())
    }

    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        if let Some(s) = &self.stats {
            s.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        serde_json::to_vec(self).map_err(io::Error::other)
    }

    fn accepts_snapshot(&mut self, head: &[u8]) -> Result<(), String> {
        if head.starts_with(WITNESS_SNAPSHOT) && self.bug != Bug::TakesWitnessSnapshots {
            return Err("a data member never installs a witness's snapshot".into());
        }
        Ok(())
    }

    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        let state: SimKv = serde_json::from_slice(snapshot).map_err(io::Error::other)?;
        self.map = state.map;
        self.position = state.position;
        if let Some(s) = &self.stats {
            if s.opening.load(Ordering::Relaxed) {
                s.loads.fetch_add(1, Ordering::Relaxed);
            } else {
                s.installs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// A mirroring witness's machine (as `store::witness::WitnessMachine`): it votes and holds the
/// log, but applies nothing; it keeps only the position. A snapshot it receives (a data
/// member's whole map, when it fell behind the leader's purge point) is read for its position
/// and dropped. Its own snapshots say they are a witness's ([`WITNESS_SNAPSHOT`]): a data
/// member refuses them (as `store::replicated::SqliteMachine` refuses the store witness's).
#[derive(Clone, Default)]
pub struct SimWitness {
    pub position: Option<Vec<u8>>,
    pub stats: Option<Arc<MachineStats>>,
}

/// How a witness's snapshot starts.
pub const WITNESS_SNAPSHOT: &[u8] = b"{\"witness\":true";

/// A witness's snapshot.
#[derive(Serialize)]
struct WitnessSnap<'a> {
    witness: bool,
    position: &'a Option<Vec<u8>>,
}

/// Any snapshot, read for its position only (the map, if any, is skipped).
#[derive(Deserialize)]
struct PositionOnly {
    position: Option<Vec<u8>>,
}

impl SimWitness {
    pub fn new(stats: Arc<MachineStats>) -> SimWitness {
        SimWitness {
            position: None,
            stats: Some(stats),
        }
    }
}

impl Machine for SimWitness {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.position = Some(position.to_vec());
        Ok(vec![Vec::new(); commands.len()])
    }

    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.position.clone())
    }

    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        if let Some(s) = &self.stats {
            s.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        let snap = WitnessSnap {
            witness: true,
            position: &self.position,
        };
        serde_json::to_vec(&snap).map_err(io::Error::other)
    }

    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        let state: PositionOnly = serde_json::from_slice(snapshot).map_err(io::Error::other)?;
        self.position = state.position;
        if let Some(s) = &self.stats {
            if s.opening.load(Ordering::Relaxed) {
                s.loads.fetch_add(1, Ordering::Relaxed);
            } else {
                s.installs.fetch_add(1, Ordering::Relaxed);
                s.witness_installs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The machine a simulated member runs: a data member's map, or a witness's position (as
/// `store::witness::NodeMachine`).
#[derive(Clone)]
pub enum SimMachine {
    Kv(SimKv),
    Witness(SimWitness),
}

impl SimMachine {
    /// The data, if this machine holds any (a witness holds none).
    pub fn data(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            SimMachine::Kv(m) => Some(&m.map),
            SimMachine::Witness(_) => None,
        }
    }

    /// The data, or nothing for a witness.
    pub fn map(&self) -> BTreeMap<String, String> {
        self.data().cloned().unwrap_or_default()
    }
}

impl Machine for SimMachine {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        match self {
            SimMachine::Kv(m) => m.apply(commands, position),
            SimMachine::Witness(m) => m.apply(commands, position),
        }
    }

    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self {
            SimMachine::Kv(m) => m.position(),
            SimMachine::Witness(m) => m.position(),
        }
    }

    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        match self {
            SimMachine::Kv(m) => m.snapshot(),
            SimMachine::Witness(m) => m.snapshot(),
        }
    }

    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        match self {
            SimMachine::Kv(m) => m.install(snapshot),
            SimMachine::Witness(m) => m.install(snapshot),
        }
    }

    fn accepts_snapshot(&mut self, head: &[u8]) -> Result<(), String> {
        match self {
            SimMachine::Kv(m) => m.accepts_snapshot(head),
            SimMachine::Witness(m) => m.accepts_snapshot(head),
        }
    }
}
