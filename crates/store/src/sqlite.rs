//! SQLite plumbing shared by the engines: connections set up the way the state machine needs
//! them, and a pool of reader threads.

use crate::machine::{self, StoreError};
use crate::model::{Query, QueryResult};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
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
    let conn = open_set_up(path, false, sync, "WAL", Wait::Sleep)?;
    if sync != Sync::ReadOnly {
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

/// How a connection waits for a lock another connection holds.
enum Wait {
    /// SQLite's handler, sleeping between tries, for up to 10 s (a file's connections).
    Sleep,
    /// [`memory_busy`] (an in-memory database's).
    Yield,
}

/// Opens `target` (a path, or with `uri` a URI) and sets it up as every connection is: the
/// statement cache, the query planner stability guarantee, and for a writer 1 KiB pages and
/// the journal mode `journal` (checked).
fn open_set_up(
    target: &Path,
    uri: bool,
    sync: Sync,
    journal: &str,
    wait: Wait,
) -> Result<Connection, StoreError> {
    let mut flags = if sync == Sync::ReadOnly {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    if uri {
        flags |= OpenFlags::SQLITE_OPEN_URI;
    }
    let mut conn = Connection::open_with_flags(target, flags)
        .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", target.display())))?;
    match wait {
        Wait::Sleep => conn.busy_timeout(std::time::Duration::from_secs(10))?,
        Wait::Yield => conn.busy_handler(Some(memory_busy))?,
    }
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
        let mode: String =
            conn.query_row(&format!("PRAGMA journal_mode = {journal}"), [], |r| {
                r.get(0)
            })?;
        if !mode.eq_ignore_ascii_case(journal) {
            return Err(StoreError::Storage(format!(
                "cannot set the journal mode of {} to {journal} (got {mode})",
                target.display()
            )));
        }
    }
    Ok(conn)
}

/// Where a database lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Db {
    /// A file, in WAL mode.
    File(PathBuf),
    /// Memory, shared by every connection of this process that opens the same name (SQLite's
    /// `memdb`), and gone when the last of them closes. For a replica whose log and snapshot
    /// file are the durable copy: the state is rebuilt from them on start.
    Memory(String),
}

impl Db {
    /// A new in-memory database, under a name no other of the process has: each opening of
    /// a replica starts from nothing, as after a restart.
    pub fn new_memory() -> Db {
        // A name of hex digits needs no escaping in the URI.
        Db::Memory(format!("/tandem-{:032x}", crate::node::random_id()))
    }

    /// Opens a connection to it, set up as [`open_connection`] does.
    pub fn open(&self, sync: Sync) -> Result<Connection, StoreError> {
        match self {
            Db::File(path) => open_connection(path, sync),
            Db::Memory(name) => open_memory(name, sync),
        }
    }
}

/// Waits for a lock another connection of the process holds on an in-memory database: such a
/// lock is held for microseconds (a commit copying pages in memory, a point read), so the
/// wait yields the thread rather than sleeping the millisecond SQLite's default handler does.
/// Gives up after about 10 s, as a file's connections do.
fn memory_busy(attempt: i32) -> bool {
    if attempt < 200 {
        std::thread::yield_now();
        true
    } else if attempt < 100_200 {
        std::thread::sleep(std::time::Duration::from_micros(100));
        true
    } else {
        false
    }
}

/// Opens a connection to the in-memory database `name` (created by the first writer).
fn open_memory(name: &str, sync: Sync) -> Result<Connection, StoreError> {
    // The rollback journal in memory too (memdb has no WAL): a reader waits out a commit,
    // which copies a few pages in memory.
    let uri = format!("file:{name}?vfs=memdb");
    open_set_up(Path::new(&uri), true, sync, "MEMORY", Wait::Yield)
}

type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// Reader threads, each with its own read-only connection; they see every committed write.
/// One more connection answers point reads on the caller's thread ([`Readers::read_point`]).
#[derive(Clone)]
pub struct Readers {
    jobs: mpsc::SyncSender<ReadJob>,
    here: Arc<Mutex<Connection>>,
}

impl Readers {
    /// Starts `count` readers on the database at `path`, with `queue_depth` reads queued at most.
    pub fn open(path: &Path, count: usize, queue_depth: usize) -> Result<Readers, StoreError> {
        Readers::open_db(&Db::File(path.to_path_buf()), count, queue_depth)
    }

    /// As [`Readers::open`], on a database wherever it lives.
    pub fn open_db(db: &Db, count: usize, queue_depth: usize) -> Result<Readers, StoreError> {
        let (tx, rx) = mpsc::sync_channel::<ReadJob>(queue_depth.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..count.max(1) {
            let conn = db.open(Sync::ReadOnly)?;
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
        let here = Arc::new(Mutex::new(db.open(Sync::ReadOnly)?));
        Ok(Readers { jobs: tx, here })
    }

    /// Answers a query: a point read ([`Query::is_point`]) as [`Readers::read_point`] does, a
    /// scan on a reader thread.
    pub async fn query(&self, query: Query) -> Result<QueryResult, StoreError> {
        if query.is_point() {
            self.read_point(move |c| machine::query(c, &query)).await
        } else {
            self.read(move |c| machine::query(c, &query)).await
        }
    }

    /// Runs `f`, a read of a few rows by key, on this thread's connection when it is free (no
    /// trip to a reader thread and back: two thread wake-ups less for every SIP request that
    /// looks up a user's bindings), and on a reader thread when another read holds it. Not for
    /// scans: the caller's thread may be a runtime's worker.
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if let Ok(conn) = self.here.try_lock() {
            return f(&conn);
        }
        self.read(f).await
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report
    use super::*;

    /// A point read runs on the caller's thread and sees what was committed; one that finds
    /// that connection busy is answered by a reader thread instead of waiting for it.
    #[tokio::test]
    #[allow(clippy::await_holding_lock)] // held on purpose: the read must not wait for it
    async fn point_reads_run_here_when_the_connection_is_free_and_on_a_reader_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.sqlite");
        let writer = open_connection(&path, Sync::Full).unwrap();
        writer
            .execute_batch(
                "CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT); INSERT INTO t VALUES ('a', '1');",
            )
            .unwrap();
        let readers = Readers::open(&path, 1, 8).unwrap();
        let value = |c: &Connection| -> Result<(String, std::thread::ThreadId), StoreError> {
            let v = c.query_row("SELECT v FROM t WHERE k = 'a'", [], |r| r.get(0))?;
            Ok((v, std::thread::current().id()))
        };
        let here = std::thread::current().id();

        let (v, ran_on) = readers.read_point(value).await.unwrap();
        assert_eq!((v.as_str(), ran_on), ("1", here));

        writer
            .execute("UPDATE t SET v = '2' WHERE k = 'a'", [])
            .unwrap();
        let (v, _) = readers.read_point(value).await.unwrap();
        assert_eq!(v, "2", "a point read sees the last commit");

        let busy = readers.here.lock().unwrap();
        let (v, ran_on) = readers.read_point(value).await.unwrap();
        drop(busy);
        assert_eq!(v, "2");
        assert_ne!(
            ran_on, here,
            "a busy connection sends the read to a reader thread"
        );
    }

    /// An in-memory database is shared by the process's connections to it, is gone once the
    /// last one closes, and a reader holding a read transaction delays a writer's commit
    /// without failing it.
    #[test]
    fn an_in_memory_database_lives_while_a_connection_holds_it() {
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        let db = Db::new_memory();
        assert_ne!(db, Db::new_memory(), "every opening gets a name of its own");
        let writer = db.open(Sync::Normal).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let reader = db.open(Sync::ReadOnly).unwrap();
        assert_eq!(count(&reader), 1);
        assert!(
            reader.execute("INSERT INTO t VALUES (2)", []).is_err(),
            "a reader cannot write"
        );
        // A read transaction open on another thread for a while: the commit waits it out.
        let (started, go) = std::sync::mpsc::channel();
        let held = std::thread::spawn(move || {
            reader.execute_batch("BEGIN").unwrap();
            assert_eq!(count(&reader), 1);
            started.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
            reader.execute_batch("COMMIT").unwrap();
            reader
        });
        go.recv().unwrap();
        writer.execute("INSERT INTO t VALUES (2)", []).unwrap();
        let reader = held.join().unwrap();
        assert_eq!(count(&reader), 2);
        drop(reader);
        drop(writer);
        let again = db.open(Sync::Normal).unwrap();
        assert!(
            again
                .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .is_err(),
            "the data went with the last connection"
        );
    }
}
