//! The consensus types: what a log entry carries, how members are named, and the openraft type
//! configuration. Commands and responses are opaque bytes here; the application (the store)
//! gives them meaning, so this crate stays generic without generic openraft types.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Node ids of a replica group: stable per server (see [`node_id`]).
pub type NodeId = u64;

/// A member of a replica group: the server that holds the replica and its RPC address.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub server: String,
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.server, self.addr)
    }
}

/// An application command, serialized by the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cmd(#[serde(with = "bytes_as_seq")] pub Vec<u8>);

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cmd({} bytes)", self.0.len())
    }
}

/// An application response, serialized by the application; empty for entries without a
/// command (blank, membership).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resp(#[serde(with = "bytes_as_seq")] pub Vec<u8>);

pub(crate) mod bytes_as_seq {
    //! Bytes as one serde byte string (compact in postcard) rather than a sequence of numbers.
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Tokio, with openraft's few random draws (election timeouts, tick phase) taken from a seeded
/// generator: random per replica in servers, fixed per seed in simulations.
pub type Runtime =
    openraft::rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

openraft::declare_raft_types!(
    /// The type configuration of every replica group.
    pub TypeConfig:
        D = Cmd,
        R = Resp,
        NodeId = NodeId,
        Node = Member,
        // Standard Raft: at most one leader per term. openraft's default ("advanced" leader
        // ids, ordered by (term, node)) lets a second candidate win the same term, so two
        // members could accept writes in one term (found by the simulation, tests/sim.rs).
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        AsyncRuntime = Runtime,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot's bytes, as the state machine wrote them: a range of an open file (a server's
/// snapshot is a copy of its whole database, and is never held in memory whole), or bytes in
/// memory (a state machine without a snapshot file). Cheap to clone.
#[derive(Clone, Debug)]
pub enum SnapshotData {
    Memory(std::sync::Arc<Vec<u8>>),
    File {
        file: std::sync::Arc<std::fs::File>,
        offset: u64,
        len: u64,
    },
}

impl SnapshotData {
    /// The whole of an open file.
    pub fn whole_file(file: std::fs::File) -> std::io::Result<SnapshotData> {
        let len = file.metadata()?.len();
        Ok(SnapshotData::File {
            file: std::sync::Arc::new(file),
            offset: 0,
            len,
        })
    }

    /// Writes the bytes, a piece at a time, to a new file at `path` (a scratch copy for a
    /// reader that needs a file of its own: not synced).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        self.copy_to(&mut f)?;
        // into_inner flushes the buffer.
        f.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    }

    /// The snapshot's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            SnapshotData::Memory(b) => b.len() as u64,
            SnapshotData::File { len, .. } => *len,
        }
    }

    /// Whether the snapshot has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Up to `max` bytes from `at` (fewer only at the end). Reads the file: blocking.
    pub fn read_at(&self, at: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let at = at.min(self.len());
        let end = self.len().min(at.saturating_add(max as u64));
        let n = end.saturating_sub(at) as usize;
        match self {
            SnapshotData::Memory(b) => Ok(b[at as usize..at as usize + n].to_vec()),
            SnapshotData::File { file, offset, .. } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0; n];
                file.read_exact_at(&mut buf, offset + at)?;
                Ok(buf)
            }
        }
    }

    /// Copies the bytes to `out`, a piece at a time. Reads the file: blocking.
    pub fn copy_to(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        const PIECE: usize = 1 << 20;
        let mut at = 0;
        while at < self.len() {
            let piece = self.read_at(at, PIECE)?;
            out.write_all(&piece)?;
            at += piece.len() as u64;
        }
        Ok(())
    }
}
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// The node id of a server in every group it is part of: a stable hash of its name, so ids
/// survive restarts and topology edits that keep the name.
pub fn node_id(server: &str) -> NodeId {
    // FNV-1a, 64 bits: stable across Rust versions (unlike DefaultHasher).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Id 0 is avoided: some openraft displays treat it specially.
    h.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("fe-a1"), node_id("fe-a1"));
        assert_ne!(node_id("fe-a1"), node_id("fe-a2"));
        // Pinned (FNV-1a of "a"): a change here would renumber every existing group.
        assert_eq!(node_id("a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn commands_serialize_as_byte_strings() {
        let c = Cmd(vec![1, 2, 3]);
        let p = postcard::to_allocvec(&c).unwrap_or_default();
        assert_eq!(p, vec![3, 1, 2, 3], "length then bytes");
        let back: Cmd = postcard::from_bytes(&p).unwrap_or(Cmd(vec![]));
        assert_eq!(back, c);
    }
}
