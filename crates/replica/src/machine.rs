//! The application state machine behind a replica, and its adapter to openraft.
//!
//! An application implements [`Machine`] on plain bytes: apply a batch of committed commands
//! together with an opaque position (which it must store atomically with the data), report the
//! position back, write a snapshot, install one. The adapter turns openraft's entries,
//! membership and snapshot metadata into that.

use crate::types::{
    Cmd, Entry, LogId, Resp, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
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
    /// Starts a snapshot. Called with the machine held, between applies; the job it returns
    /// runs without the machine (on another thread in servers), so applies go on while a large
    /// state is copied, and reports the copy with the position it holds. The default copies
    /// right away with [`Machine::snapshot`]; a machine whose storage can give a consistent
    /// view on its own (SQLite's read transactions) does the copy in the job.
    fn start_snapshot(&mut self) -> io::Result<SnapshotJob> {
        let data = CopiedState::Bytes(self.snapshot()?);
        let position = self.position()?;
        Ok(Box::new(move || Ok(SnapshotCopy { data, position })))
    }
    /// Replaces the state with a snapshot (which carries its own position).
    fn install(&mut self, snapshot: &[u8]) -> io::Result<()>;
    /// The same from a snapshot that may be in a file: the default reads it into memory and
    /// calls [`Machine::install`]; a machine with a large state reads it from the file.
    fn install_data(&mut self, snapshot: &SnapshotData) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(usize::try_from(snapshot.len()).unwrap_or(0));
        snapshot.copy_to(&mut bytes)?;
        self.install(&bytes)
    }
    /// Whether a snapshot that starts with `head` (its first [`SNAPSHOT_HEAD`] bytes or
    /// fewer) may be installed here, asked before a leader's snapshot is handed to openraft:
    /// a refused one is answered with the error (the leader tries again later) and changes
    /// nothing. A data member refuses a witness's snapshot, which holds no data: installing
    /// it would drop the data. The default accepts everything.
    fn accepts_snapshot(&mut self, head: &[u8]) -> Result<(), String> {
        let _ = head;
        Ok(())
    }
}

/// How many leading bytes of a snapshot [`Machine::accepts_snapshot`] sees.
pub const SNAPSHOT_HEAD: usize = 64;

/// A snapshot being made: see [`Machine::start_snapshot`].
pub type SnapshotJob = Box<dyn FnOnce() -> io::Result<SnapshotCopy> + Send>;

/// A consistent copy of a machine's state and the position stored in it.
pub struct SnapshotCopy {
    pub data: CopiedState,
    pub position: Option<Vec<u8>>,
}

/// Where a snapshot copy is.
pub enum CopiedState {
    /// In memory.
    Bytes(Vec<u8>),
    /// In a file the job wrote (the snapshot's bytes alone), which the adapter takes over: it
    /// copies it into the snapshot file and removes it.
    File(PathBuf),
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
    /// The bytes, only when there is no snapshot file to read them back from: a server keeps
    /// its snapshot on disk alone, not a second copy of its whole database in memory.
    data: Option<SnapshotData>,
}

/// The most a snapshot file's header (its metadata) may take.
const MAX_HEADER: u64 = 1 << 20;

/// Writes a snapshot file: the metadata, the data's length, the data (postcard's encoding of
/// the pair, as earlier versions wrote it whole), fsynced, then renamed into place. Returns
/// the data as kept there.
fn write_stored(path: &Path, meta: &SnapshotMeta, data: &SnapshotData) -> io::Result<SnapshotData> {
    let tmp = path.with_extension("tmp");
    let mut header = postcard::to_allocvec(meta).map_err(io::Error::other)?;
    header.extend(postcard::to_allocvec(&data.len()).map_err(io::Error::other)?);
    {
        let mut f = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        f.write_all(&header)?;
        data.copy_to(&mut f)?;
        // into_inner flushes the buffer.
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    // Opened before the rename: the range stays this snapshot's even if a newer one replaces
    // the file.
    let kept = SnapshotData::File {
        file: Arc::new(std::fs::File::open(&tmp)?),
        offset: header.len() as u64,
        len: data.len(),
    };
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(kept)
}

/// Opens a snapshot file: its metadata, and its data as a range of the open file (which stays
/// readable even if a newer snapshot replaces the file).
fn read_stored(path: &Path) -> io::Result<(SnapshotMeta, SnapshotData)> {
    let bad = |e: &dyn std::fmt::Display| invalid(&format!("snapshot {}", path.display()), e);
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(size.min(MAX_HEADER))
        .read_to_end(&mut head)?;
    let (meta, rest) = postcard::take_from_bytes::<SnapshotMeta>(&head).map_err(|e| bad(&e))?;
    let (len, rest) = postcard::take_from_bytes::<u64>(rest).map_err(|e| bad(&e))?;
    let offset = (head.len() - rest.len()) as u64;
    if offset.checked_add(len) != Some(size) {
        return Err(bad(&format!(
            "{size} bytes on disk for {len} bytes of data after a {offset}-byte header"
        )));
    }
    let data = SnapshotData::File {
        file: Arc::new(file),
        offset,
        len,
    };
    Ok((meta, data))
}

/// Runs blocking work (file I/O, the machine) on a blocking thread when `blocking` (real
/// storage: the runtime's threads also carry every group's heartbeats), inline otherwise
/// (simulations, which control every step).
pub(crate) async fn off_runtime<T: Send + 'static>(
    blocking: bool,
    run: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    if blocking {
        tokio::task::spawn_blocking(run)
            .await
            .map_err(io::Error::other)?
    } else {
        run()
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
    /// Held while the snapshot file is written (a snapshot built and one installed may race).
    writing: Arc<Mutex<()>>,
}

impl<M: Machine> Clone for StateMachine<M> {
    fn clone(&self) -> Self {
        StateMachine {
            machine: self.machine.clone(),
            current: self.current.clone(),
            snapshot_file: self.snapshot_file.clone(),
            blocking: self.blocking,
            writing: self.writing.clone(),
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
            Some(path) => match read_stored(path) {
                Ok((meta, _)) => Some(Current { meta, data: None }),
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
            writing: Arc::new(Mutex::new(())),
        })
    }

    /// Runs `f` on the machine (on a blocking thread when configured so).
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut M) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let machine = self.machine.clone();
        self.off_runtime(move || {
            let mut m = machine
                .lock()
                .map_err(|_| io::Error::other("state machine poisoned"))?;
            f(&mut m)
        })
        .await
    }

    /// Applies entries (in log order, after the last applied one) as one batch on the machine,
    /// with the position they bring it to; one response per entry.
    pub(crate) async fn apply_entries(&mut self, entries: &[&Entry]) -> io::Result<Vec<Vec<u8>>> {
        let last = entries.last().map(|e| e.log_id);
        let mut membership = None;
        let mut commands: Vec<Option<Vec<u8>>> = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => commands.push(None),
                EntryPayload::Normal(Cmd(bytes)) => commands.push(Some(bytes.clone())),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    commands.push(None);
                }
            }
        }
        // One trip to the machine's thread: the stored position is read, brought forward and
        // stored with the batch.
        let responses = self
            .with(move |m| {
                let mut position: Position = match m.position()? {
                    Some(p) => {
                        serde_json::from_slice(&p).map_err(|e| invalid("stored position", e))?
                    }
                    None => Position::default(),
                };
                if last.is_some() {
                    position.last_applied = last;
                }
                if let Some(membership) = membership {
                    position.membership = membership;
                }
                let position_bytes = serde_json::to_vec(&position).map_err(io::Error::other)?;
                let refs: Vec<Option<&[u8]>> = commands.iter().map(|c| c.as_deref()).collect();
                m.apply(&refs, &position_bytes)
            })
            .await?;
        if responses.len() != entries.len() {
            return Err(io::Error::other(format!(
                "the state machine answered {} of {} entries",
                responses.len(),
                entries.len()
            )));
        }
        Ok(responses)
    }

    /// Runs blocking work on a blocking thread (real storage) or inline (simulation).
    async fn off_runtime<T: Send + 'static>(
        &self,
        run: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        off_runtime(self.blocking, run).await
    }

    /// Makes `data` the current snapshot, on disk (fsynced) or, without a file, in memory,
    /// unless the current one is newer (a snapshot installed while this one was being built).
    /// Returns the current snapshot's data as kept (the file's, when there is one).
    async fn keep_current(
        &self,
        meta: SnapshotMeta,
        data: SnapshotData,
    ) -> io::Result<SnapshotData> {
        let (current, file, writing) = (
            self.current.clone(),
            self.snapshot_file.clone(),
            self.writing.clone(),
        );
        self.off_runtime(move || {
            let _writing = writing
                .lock()
                .map_err(|_| io::Error::other("snapshot writer poisoned"))?;
            let newer_kept = |current: &Option<Current>| {
                current
                    .as_ref()
                    .is_some_and(|c| c.meta.last_log_id > meta.last_log_id)
            };
            if newer_kept(&*current.lock().map_err(|_| poisoned())?) {
                return Ok(data);
            }
            let kept = match &file {
                Some(path) => {
                    let kept = write_stored(path, &meta, &data)?;
                    *current.lock().map_err(|_| poisoned())? = Some(Current { meta, data: None });
                    kept
                }
                None => {
                    *current.lock().map_err(|_| poisoned())? = Some(Current {
                        meta,
                        data: Some(data.clone()),
                    });
                    data
                }
            };
            Ok(kept)
        })
        .await
    }
}

fn poisoned() -> io::Error {
    io::Error::other("snapshot slot poisoned")
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for StateMachine<M> {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // The machine is held only to start the copy; the copy and its position are
        // consistent, and applies go on while it is made.
        let job = self.with(|m| m.start_snapshot()).await?;
        let SnapshotCopy { data, position } = self.off_runtime(job).await?;
        // A copy in a file is taken over: kept as the snapshot file, then removed.
        let (data, copied) = match data {
            CopiedState::Bytes(b) => (SnapshotData::Memory(Arc::new(b)), None),
            CopiedState::File(path) => (
                SnapshotData::whole_file(std::fs::File::open(&path)?)?,
                Some(path),
            ),
        };
        let position: Position = match position {
            Some(p) => serde_json::from_slice(&p).map_err(|e| invalid("stored position", e))?,
            None => Position::default(),
        };
        let meta = SnapshotMeta {
            last_log_id: position.last_applied,
            last_membership: position.membership,
        };
        let kept = self.keep_current(meta.clone(), data).await;
        if let Some(path) = copied {
            let _ = std::fs::remove_file(path);
        }
        Ok(Snapshot {
            meta,
            snapshot: kept?,
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
        let entries: Vec<&Entry> = batch.iter().map(|(e, _)| e).collect();
        let responses = self.apply_entries(&entries).await?;
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
        let installing = snapshot.clone();
        self.with(move |m| m.install_data(&installing)).await?;
        self.keep_current(meta.clone(), snapshot).await.map(|_| ())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let current = self.current.lock().map_err(|_| poisoned())?.clone();
        match current {
            None => Ok(None),
            Some(Current {
                meta,
                data: Some(data),
            }) => Ok(Some(Snapshot {
                meta,
                snapshot: data,
            })),
            Some(Current { data: None, .. }) => {
                // Read back from the file, which holds the current snapshot whenever there is
                // one: the writer holds `writing` until file and slot agree.
                let (file, writing) = (self.snapshot_file.clone(), self.writing.clone());
                self.off_runtime(move || {
                    let _writing = writing
                        .lock()
                        .map_err(|_| io::Error::other("snapshot writer poisoned"))?;
                    let path = file.ok_or_else(|| io::Error::other("no snapshot file"))?;
                    let (meta, data) = read_stored(&path)?;
                    Ok(Some(Snapshot {
                        meta,
                        snapshot: data,
                    }))
                })
                .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report
    use super::*;

    /// A machine whose whole state is a byte string.
    struct Blob(Vec<u8>);

    impl Machine for Blob {
        fn apply(&mut self, commands: &[Option<&[u8]>], _: &[u8]) -> io::Result<Vec<Vec<u8>>> {
            Ok(vec![Vec::new(); commands.len()])
        }
        fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn snapshot(&mut self) -> io::Result<Vec<u8>> {
            Ok(self.0.clone())
        }
        fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
            self.0 = snapshot.to_vec();
            Ok(())
        }
    }

    fn held_in_memory(sm: &StateMachine<Blob>) -> Option<u64> {
        let current = sm.current.lock().unwrap();
        current
            .as_ref()
            .and_then(|c| c.data.as_ref().map(|d| d.len()))
    }

    fn bytes(data: &SnapshotData) -> Vec<u8> {
        data.read_at(0, usize::MAX).unwrap()
    }

    fn in_file(data: &SnapshotData) -> bool {
        matches!(data, SnapshotData::File { .. })
    }

    /// A server's current snapshot (a copy of its whole database) lives in its file only, and
    /// is read back from there when a follower needs it — also after a restart.
    #[tokio::test]
    async fn a_snapshot_with_a_file_is_not_also_kept_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("snapshot.bin");
        let state: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut sm = StateMachine::new(Blob(state.clone()), Some(file.clone()), true).unwrap();
        let built = sm.build_snapshot().await.unwrap();
        assert!(in_file(&built.snapshot));
        assert_eq!(bytes(&built.snapshot), state);
        assert_eq!(
            built.snapshot.read_at(999_998, 10).unwrap(),
            state[999_998..]
        );
        assert!(built.snapshot.read_at(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(held_in_memory(&sm), None);
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert!(in_file(&current.snapshot));
        assert_eq!(
            (current.meta, bytes(&current.snapshot)),
            (built.meta.clone(), state.clone())
        );

        let mut restarted = StateMachine::new(Blob(Vec::new()), Some(file), true).unwrap();
        assert_eq!(held_in_memory(&restarted), None);
        let current = restarted.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(
            (current.meta.clone(), bytes(&current.snapshot)),
            (built.meta, state.clone())
        );
        // Installing it elsewhere reads it from the file.
        let mut other = StateMachine::new(Blob(Vec::new()), None, false).unwrap();
        other
            .install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(other.machine.lock().unwrap().0, state);
    }

    /// A machine whose copy is a file (as the store's SQL machine makes it) hands it over:
    /// it becomes the snapshot file, never read into memory, and is removed.
    #[tokio::test]
    async fn a_copy_in_a_file_becomes_the_snapshot_file() {
        struct FileCopy(PathBuf);
        impl Machine for FileCopy {
            fn apply(&mut self, c: &[Option<&[u8]>], _: &[u8]) -> io::Result<Vec<Vec<u8>>> {
                Ok(vec![Vec::new(); c.len()])
            }
            fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
                Ok(None)
            }
            fn snapshot(&mut self) -> io::Result<Vec<u8>> {
                Err(io::Error::other("copies go through a file"))
            }
            fn start_snapshot(&mut self) -> io::Result<SnapshotJob> {
                let path = self.0.clone();
                Ok(Box::new(move || {
                    std::fs::write(&path, b"a copy made on disk")?;
                    Ok(SnapshotCopy {
                        data: CopiedState::File(path),
                        position: None,
                    })
                }))
            }
            fn install(&mut self, _: &[u8]) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.tmp");
        let file = dir.path().join("snapshot.bin");
        let mut sm = StateMachine::new(FileCopy(copy.clone()), Some(file), true).unwrap();
        let built = sm.build_snapshot().await.unwrap();
        assert!(in_file(&built.snapshot));
        assert_eq!(bytes(&built.snapshot), b"a copy made on disk");
        assert!(!copy.exists(), "the copy was taken over");
    }

    /// A snapshot file written whole by an earlier version (postcard's encoding of the
    /// metadata and the bytes together) opens as before.
    #[test]
    fn a_snapshot_file_of_an_earlier_version_opens() {
        #[derive(Serialize)]
        struct Earlier<'a> {
            meta: &'a SnapshotMeta,
            #[serde(serialize_with = "crate::types::bytes_as_seq::serialize")]
            data: &'a [u8],
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.bin");
        let meta = SnapshotMeta::default();
        let data = vec![7u8; 300];
        std::fs::write(
            &path,
            postcard::to_allocvec(&Earlier {
                meta: &meta,
                data: &data,
            })
            .unwrap(),
        )
        .unwrap();
        let (read, got) = read_stored(&path).unwrap();
        assert_eq!((read, bytes(&got)), (meta, data));
        // A file cut short is refused, not read as a shorter snapshot.
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..whole.len() - 1]).unwrap();
        let err = read_stored(&path).err().unwrap();
        assert!(err.to_string().contains("bytes on disk"), "{err}");
    }

    /// Without a file (simulations) the memory is the only copy, and it is kept.
    #[tokio::test]
    async fn a_snapshot_without_a_file_is_kept_in_memory() {
        let mut sm = StateMachine::new(Blob(vec![1, 2, 3]), None, false).unwrap();
        sm.build_snapshot().await.unwrap();
        assert_eq!(held_in_memory(&sm), Some(3));
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(bytes(&current.snapshot), vec![1, 2, 3]);
        assert_eq!(current.snapshot.read_at(2, 10).unwrap(), vec![3]);
        assert!(current.snapshot.read_at(10, 4).unwrap().is_empty());
    }
}
