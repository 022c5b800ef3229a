//! The simulated application: a key-value map (commands set a key; the response is the
//! previous value), with optional injected bugs that the checker must catch.

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
