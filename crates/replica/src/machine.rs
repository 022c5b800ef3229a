//! The application state machine behind a replica, and its adapter to openraft.
//!
//! An application implements [`Machine`] on plain bytes: apply a batch of committed commands
//! together with an opaque position (which it must store atomically with the data), report the
//! position back, write a snapshot, install one. The adapter turns openraft's entries,
//! membership and snapshot metadata into that.

use crate::types::{
    Cmd, LogId, Resp, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What an application provides.
pub trait Machine: Send + 'static {
    /// Applies committed commands in log order and stores `position` with them in one durable
    /// step. `commands[i]` is `None` for entries without a command. Returns one response per
    /// element of `commands`, in order (empty for `None`).
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>>;
    /// The position last stored by `apply` or `install`, if any.
    fn position(&mut self) -> io::Result<Option<Vec<u8>>>;
    /// A consistent copy of the whole state, position included.
    fn snapshot(&mut self) -> io::Result<Vec<u8>>;
    /// Replaces the state with a snapshot (which carries its own position).
    fn install(&mut self, snapshot: &[u8]) -> io::Result<()>;
}

/// The position stored with the data: the last applied log id and membership.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Position {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The snapshot kept as current (openraft asks for it again when a follower needs it).
#[derive(Clone)]
struct Current {
    meta: SnapshotMeta,
    data: Arc<SnapshotData>,
}

/// A snapshot file on disk: the metadata and the application's bytes.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes_vec")]
    data: Vec<u8>,
}

mod serde_bytes_vec {
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
        }
        d.deserialize_bytes(V)
    }
}

/// The adapter: openraft's state machine over an application [`Machine`]. Cheap to clone.
pub struct StateMachine<M: Machine> {
    machine: Arc<Mutex<M>>,
    current: Arc<Mutex<Option<Current>>>,
    /// Where the current snapshot is kept across restarts (`None`: memory only).
    snapshot_file: Option<PathBuf>,
    /// Run the machine on a blocking thread (real storage) or inline (simulation).
    blocking: bool,
}

impl<M: Machine> Clone for StateMachine<M> {
    fn clone(&self) -> Self {
        StateMachine {
            machine: self.machine.clone(),
            current: self.current.clone(),
            snapshot_file: self.snapshot_file.clone(),
            blocking: self.blocking,
        }
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

impl<M: Machine> StateMachine<M> {
    /// Wraps a machine. `snapshot_file` keeps the current snapshot across restarts.
    pub fn new(
        machine: M,
        snapshot_file: Option<PathBuf>,
        blocking: bool,
    ) -> io::Result<StateMachine<M>> {
        let current = match &snapshot_file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => {
                    let s: StoredSnapshot = postcard::from_bytes(&bytes)
                        .map_err(|e| invalid(&format!("snapshot {}", path.display()), e))?;
                    Some(Current {
                        meta: s.meta,
                        data: Arc::new(s.data),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        Ok(StateMachine {
            machine: Arc::new(Mutex::new(machine)),
            current: Arc::new(Mutex::new(current)),
            snapshot_file,
            blocking,
        })
    }

    /// Runs `f` on the machine (on a blocking thread when configured so).
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut M) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let machine = self.machine.clone();
        let run = move || {
            let mut m = machine
                .lock()
                .map_err(|_| io::Error::other("state machine poisoned"))?;
            f(&mut m)
        };
        if self.blocking {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(io::Error::other)?
        } else {
            run()
        }
    }

    fn keep_current(&self, meta: SnapshotMeta, data: Vec<u8>) -> io::Result<()> {
        if let Some(path) = &self.snapshot_file {
            let bytes = postcard::to_allocvec(&StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            })
            .map_err(io::Error::other)?;
            let tmp = path.with_extension("tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
        *self
            .current
            .lock()
            .map_err(|_| io::Error::other("snapshot slot poisoned"))? = Some(Current {
            meta,
            data: Arc::new(data),
        });
        Ok(())
    }
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for StateMachine<M> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // One step on the machine: the copy and its position are consistent.
        let (data, position) = self
            .with(|m| {
                let data = m.snapshot()?;
                let position = m.position()?;
                Ok((data, position))
            })
            .await?;
        let position: Position = match position {
            Some(p) => serde_json::from_slice(&p).map_err(|e| invalid("stored position", e))?,
            None => Position::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: position.last_applied,
            last_membership: position.membership,
        };
        self.keep_current(meta.clone(), data.clone())?;
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachine<M> {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let position = self.with(|m| m.position()).await?;
        let p: Position = match position {
            Some(p) => serde_json::from_slice(&p).map_err(|e| invalid("stored position", e))?,
            None => Position::default(),
        };
        Ok((p.last_applied, p.membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Everything committed so far goes to the machine as one batch: one transaction.
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let (last_applied, current_membership) = self.applied_state().await?;
        let mut position = Position {
            last_applied,
            membership: current_membership,
        };
        let mut commands: Vec<Option<Vec<u8>>> = Vec::with_capacity(batch.len());
        for (entry, _) in &batch {
            position.last_applied = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => commands.push(None),
                EntryPayload::Normal(Cmd(bytes)) => commands.push(Some(bytes.clone())),
                EntryPayload::Membership(m) => {
                    position.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    commands.push(None);
                }
            }
        }
        let position_bytes = serde_json::to_vec(&position).map_err(io::Error::other)?;
        let responses = self
            .with(move |m| {
                let refs: Vec<Option<&[u8]>> = commands.iter().map(|c| c.as_deref()).collect();
                m.apply(&refs, &position_bytes)
            })
            .await?;
        if responses.len() != batch.len() {
            return Err(io::Error::other(format!(
                "the state machine answered {} of {} entries",
                responses.len(),
                batch.len()
            )));
        }
        for ((_, responder), resp) in batch.into_iter().zip(responses) {
            if let Some(r) = responder {
                r.send(Resp(resp));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.clone();
        self.with(move |m| m.install(&data)).await?;
        self.keep_current(meta.clone(), snapshot)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let current = self
            .current
            .lock()
            .map_err(|_| io::Error::other("snapshot slot poisoned"))?
            .clone();
        Ok(current.map(|c| Snapshot {
            meta: c.meta,
            snapshot: c.data.as_ref().clone(),
        }))
    }
}
