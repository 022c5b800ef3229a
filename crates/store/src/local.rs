//! The local engine: one SQLite database on this server's disk, for a `standalone` store.
//!
//! Writes go to one writer thread that applies them in batches (group commit): every command
//! waiting when the writer becomes free runs in one transaction, each inside its own savepoint
//! so that a refused command changes nothing, and the batch commits with one fsync
//! (`journal_mode=WAL`, `synchronous=FULL`). A command's result is released only after that
//! commit returned: an acknowledged write is on disk. Reads run on a small pool of reader
//! threads with their own connections and see every acknowledged write.

use crate::machine::{self, StoreError};
use crate::model::{Applied, Command, Envelope, Query, QueryResult};
use crate::sqlite::{Readers, Sync, open_connection};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, oneshot};

/// Tuning of the local engine.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Most commands in one group commit.
    pub max_batch: usize,
    /// Reader threads (each with its own connection).
    pub readers: usize,
    /// Writes queued before `apply` waits for room.
    pub queue_depth: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_batch: 1024,
            readers: 2,
            queue_depth: 8192,
        }
    }
}

/// Counters of the engine, for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Committed transactions (each one fsync).
    pub commits: AtomicU64,
    /// Commands applied successfully.
    pub applied: AtomicU64,
    /// Commands refused by the state machine (rolled back, nothing changed).
    pub refused: AtomicU64,
    /// Commands lost to a storage failure (not acknowledged).
    pub failed: AtomicU64,
}

type WriteJob = (Envelope, oneshot::Sender<Result<Applied, StoreError>>);

/// The fencing token a failover-cluster storage held before, and the owner that took it.
pub type PreviousOwner = (u64, Option<String>);

/// A handle on a local store; cheap to clone.
#[derive(Clone)]
pub struct LocalStore {
    writes: mpsc::Sender<WriteJob>,
    readers: Readers,
    stats: Arc<Stats>,
    path: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) the database at `path` and starts its threads.
    pub fn open(path: &Path, options: Options) -> Result<LocalStore, StoreError> {
        Self::open_with(path, options, None).map(|(store, _)| store)
    }

    /// Opens the database on a failover cluster's shared storage for the owner of fencing
    /// token `token` (named `owner`): takes the storage's fence first, then every batch checks
    /// it inside its transaction (see [`machine::apply_batch_fenced`]). Returns the store and
    /// the previous token with its owner.
    pub fn open_fenced(
        path: &Path,
        options: Options,
        token: u64,
        owner: &str,
    ) -> Result<(LocalStore, PreviousOwner), StoreError> {
        Self::open_with(path, options, Some((token, owner)))
            .map(|(store, previous)| (store, previous.unwrap_or((0, None))))
    }

    fn open_with(
        path: &Path,
        options: Options,
        fence: Option<(u64, &str)>,
    ) -> Result<(LocalStore, Option<PreviousOwner>), StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let writer = open_connection(path, Sync::Full)?;
        machine::init_schema(&writer)?;
        if let Some(dir) = path.parent() {
            crate::sqlite::sync_dir(dir)?;
        }
        let previous = match fence {
            Some((token, owner)) => Some(machine::take_fence(&writer, token, owner)?),
            None => None,
        };
        let token = fence.map(|(t, _)| t);
        let stats = Arc::new(Stats::default());
        let (wtx, mut wrx) = mpsc::channel::<WriteJob>(options.queue_depth.max(1));
        let writer_stats = stats.clone();
        let max_batch = options.max_batch.max(1);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut batch: Vec<WriteJob> = Vec::with_capacity(max_batch);
                while let Some(first) = wrx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < max_batch {
                        match wrx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    commit_batch(&writer, &mut batch, &writer_stats, token);
                }
            })
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;

        let readers = Readers::open(path, options.readers, options.queue_depth)?;
        let store = LocalStore {
            writes: wtx,
            readers,
            stats,
            path: path.to_path_buf(),
        };
        Ok((store, previous))
    }

    /// Applies a command; returns once it is committed to disk (or refused).
    pub async fn apply(&self, cmd: Command) -> Result<Applied, StoreError> {
        self.apply_envelope(Envelope { request: None, cmd }).await
    }

    /// Applies a command with its request id (a retried request gets its first outcome).
    pub async fn apply_envelope(&self, env: Envelope) -> Result<Applied, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writes
            .send((env, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a query on a reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.readers.read(f).await
    }

    /// Answers a query ([`Readers::query`]).
    pub async fn query(&self, query: Query) -> Result<QueryResult, StoreError> {
        self.readers.query(query).await
    }

    /// Engine counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn commit_batch(conn: &Connection, batch: &mut Vec<WriteJob>, stats: &Stats, fence: Option<u64>) {
    let commands = batch.iter().map(|(cmd, _)| cmd);
    let outcome = match fence {
        Some(token) => machine::apply_batch_fenced(conn, commands, token),
        None => machine::apply_batch(conn, commands),
    };
    match outcome {
        Ok(results) => {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            for ((_, reply), result) in batch.drain(..).zip(results) {
                let counter = if result.is_ok() {
                    &stats.applied
                } else {
                    &stats.refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, commands = batch.len(), "store commit failed; nothing in the batch is acknowledged");
            stats
                .failed
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
