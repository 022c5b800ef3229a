//! The shared storage of a failover cluster, as the simulation models it: one database every
//! node reaches, holding a fencing token that taking ownership raises and every write checks
//! (the rules of `store::machine::take_fence` and `apply_batch_fenced`), and the record of
//! every ownership taken and every write it accepted, for the "never two writers" check.

use std::collections::{BTreeMap, BTreeSet};

/// A deliberately broken failover cluster, to prove the cluster checks can fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClusterBug {
    #[default]
    None,
    /// The storage accepts writes under any token (no fencing): an owner paused across a
    /// failover writes after the new owner took the storage.
    NoFence,
}

/// One ownership taken: `node` raised the fence to `token`.
#[derive(Debug, Clone)]
pub struct Take {
    pub token: u64,
    pub node: String,
}

/// One write the storage accepted.
#[derive(Debug, Clone)]
pub struct Written {
    pub key: String,
    pub node: String,
    /// The token the write was made under.
    pub token: u64,
    /// The token that held the storage when it was written.
    pub fence: u64,
    pub at_ms: u64,
}

#[derive(Debug, Default)]
pub struct SharedDisk {
    pub bug: ClusterBug,
    fence: u64,
    data: BTreeMap<String, String>,
    pub takes: Vec<Take>,
    pub writes: Vec<Written>,
}

impl SharedDisk {
    pub fn new(bug: ClusterBug) -> SharedDisk {
        SharedDisk {
            bug,
            ..SharedDisk::default()
        }
    }

    /// Takes the storage for `node` under `token`: refused (with the current token) when a
    /// newer token holds it.
    pub fn take(&mut self, token: u64, node: &str) -> Result<(), u64> {
        if self.fence > token {
            return Err(self.fence);
        }
        self.fence = token;
        self.takes.push(Take {
            token,
            node: node.to_string(),
        });
        Ok(())
    }

    /// Writes `key=value` under `token`; returns the previous value, or the token holding the
    /// storage when it is not `token` (fenced).
    pub fn write(
        &mut self,
        token: u64,
        node: &str,
        key: &str,
        value: &str,
        at_ms: u64,
    ) -> Result<Option<String>, u64> {
        if self.fence != token && self.bug != ClusterBug::NoFence {
            return Err(self.fence);
        }
        self.writes.push(Written {
            key: key.to_string(),
            node: node.to_string(),
            token,
            fence: self.fence,
            at_ms,
        });
        Ok(self.data.insert(key.to_string(), value.to_string()))
    }

    pub fn map(&self) -> BTreeMap<String, String> {
        self.data.clone()
    }
}

/// The checks over the storage's record:
/// - one owner per token: no two nodes took the storage under one token;
/// - never two writers: every write was made under the token that held the storage at that
///   moment, by the node that took it under that token. (A node paused across a failover that
///   wrote when it woke would break this.)
pub fn check(takes: &[Take], writes: &[Written]) -> Vec<String> {
    let mut v = Vec::new();
    let mut owners: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for t in takes {
        owners.entry(t.token).or_default().insert(&t.node);
    }
    for (token, who) in &owners {
        if who.len() > 1 {
            v.push(format!(
                "two owners took the shared storage under token {token}: {who:?}"
            ));
        }
    }
    let stale: Vec<String> = writes
        .iter()
        .filter(|w| {
            w.token != w.fence
                || owners
                    .get(&w.token)
                    .is_none_or(|who| !who.contains(w.node.as_str()))
        })
        .map(|w| {
            format!(
                "{} by {} under token {} at {} ms, while token {} held the storage",
                w.key, w.node, w.token, w.at_ms, w.fence
            )
        })
        .collect();
    if !stale.is_empty() {
        v.push(format!(
            "two writers: {} write(s) by a node that did not own the shared storage: {}",
            stale.len(),
            stale.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    v
}
