//! SQLite plumbing shared by the engines: connections set up the way the state machine needs
//! them, and a pool of reader threads.

use crate::machine::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::oneshot;

/// How a writer connection commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Every commit fsyncs the WAL before it returns (the database is the durable copy).
    Full,
    /// Commits reach the OS, not necessarily the disk (a replicated log is the durable copy).
    Normal,
    /// A read-only connection.
    ReadOnly,
}

/// Opens a connection: WAL mode for writers, every statement through a large statement cache,
/// and the query planner stability guarantee on (SQLite built with STAT4 otherwise re-prepares
/// a statement whenever a parameter it could plan on changes — on almost every execution).
pub fn open_connection(path: &Path, sync: Sync) -> Result<Connection, StoreError> {
    let flags = if sync == Sync::ReadOnly {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(128);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    if sync != Sync::ReadOnly {
        // 1 KiB pages (for a new database; an existing one keeps its size): a transaction
        // writes every page it dirtied to the WAL, and a command dirties a few index leaves
        // at random places (entity-tags, request ids), so smaller pages write less for the
        // same rows — measured 40% fewer bytes written per commit and 20% more commits/s.
        conn.execute_batch("PRAGMA page_size = 1024;")?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Storage(format!(
                "cannot switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        let level = if sync == Sync::Full { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!("PRAGMA synchronous = {level};"))?;
        if sync == Sync::Normal {
            // A replica's durable copy is its log; checkpoint every 128 MiB of WAL (131,072
            // pages of 1 KiB) rather than every 1,000 pages, so hot pages (index roots, the
            // position row) are copied back to the database once per many transactions, and
            // the checkpoints, which stall the applying thread, are rare.
            conn.execute_batch("PRAGMA wal_autocheckpoint = 131072;")?;
        }
    }
    Ok(conn)
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Reader threads, each with its own read-only connection; they see every committed write.
#[derive(Clone)]
pub struct Readers {
    jobs: mpsc::SyncSender<ReadJob>,
}

impl Readers {
    /// Starts `count` readers on the database at `path`, with `queue_depth` reads queued at most.
    pub fn open(path: &Path, count: usize, queue_depth: usize) -> Result<Readers, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<ReadJob>(queue_depth.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..count.max(1) {
            let conn = open_connection(path, Sync::ReadOnly)?;
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("store-reader-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let Ok(guard) = rx.lock() else { return };
                            match guard.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        job(&conn);
                    }
                })
                .map_err(|e| StoreError::Storage(format!("cannot start a reader thread: {e}")))?;
        }
        Ok(Readers { jobs: tx })
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        let jobs = self.jobs.clone();
        // The queue is bounded: a full queue waits on a blocking thread, not on the runtime.
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                tokio::task::spawn_blocking(move || jobs.send(job))
                    .await
                    .map_err(|_| StoreError::Closed)?
                    .map_err(|_| StoreError::Closed)?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(StoreError::Closed),
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// fsyncs a directory, so that a file created in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Storage(format!("cannot fsync {}: {e}", dir.display())))
}
