//! The store's state machine under replication: the same SQL machine, applied in the
//! replicated log's order, with the log position stored in the same transaction as the data.
//!
//! The database is a file written with `synchronous=NORMAL`: the replicated log (fsynced on a
//! majority) is the durable copy, and a process crash keeps every committed SQLite transaction
//! anyway. A routing group's database is kept in memory instead ([`Db::Memory`]):
//! on start it is rebuilt from the replica's snapshot file and log.

use crate::machine::{self, StoreError};
use crate::model::{Applied, Envelope};
use crate::sqlite::{Db, Sync};
use rusqlite::Connection;
use std::io;
use std::path::{Path, PathBuf};

/// A command's outcome as carried back through the log: the machine's result.
pub type Outcome = Result<Applied, StoreError>;

/// Encodes a command for the log.
pub fn encode_command(env: &Envelope) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(env)
        .map_err(|e| StoreError::Storage(format!("cannot encode a command: {e}")))
}

/// Decodes a command's outcome from the log's response.
pub fn decode_outcome(bytes: &[u8]) -> Result<Outcome, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Storage(format!("unreadable outcome: {e}")))
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The SQL machine as a replica's [`replica::Machine`].
pub struct SqliteMachine {
    conn: Connection,
    db: Db,
    /// The database's file, or for one in memory the file name its copies are made beside.
    path: PathBuf,
    /// The position stored in the database, once read or written here: this connection is
    /// the database's only writer, and the adapter asks for the position before every batch.
    /// `None` until known, and again after anything that replaces it wholesale.
    position: Option<Option<Vec<u8>>>,
}

impl SqliteMachine {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteMachine, StoreError> {
        SqliteMachine::open_db(Db::File(path.to_path_buf()), path)
    }

    /// Opens (creating if needed) `db`; `path` is its file, or for a database in memory the
    /// file name its copies are made beside.
    pub fn open_db(db: Db, path: &Path) -> Result<SqliteMachine, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Storage(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let conn = db.open(Sync::Normal)?;
        machine::init_schema(&conn)?;
        Ok(SqliteMachine {
            conn,
            db,
            path: path.to_path_buf(),
            position: None,
        })
    }

    /// Marks the database as a routing group's, whose users live in the pool's store
    /// ([`machine::set_users_elsewhere`]).
    pub fn users_elsewhere(self) -> Result<SqliteMachine, StoreError> {
        machine::set_users_elsewhere(&self.conn)?;
        Ok(self)
    }

    /// Runs a read on the machine's own connection.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.conn)
    }

    /// Copies the database into the file `to` (replaced), fsynced: a standalone copy, with
    /// the position it holds.
    pub fn copy_to(&self, to: &Path) -> Result<(), StoreError> {
        let tmp = to.with_extension("copy.tmp");
        let _ = std::fs::remove_file(&tmp);
        let written = copy_database(&self.conn, &tmp)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, to));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Storage(format!(
                "cannot write {}: {e}",
                to.display()
            )));
        }
        if let Some(dir) = to.parent() {
            crate::sqlite::sync_dir(dir)?;
        }
        Ok(())
    }

    /// Replaces the database with the one in the file `from` (left in place).
    pub fn load_from(&mut self, from: &Path) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("load.tmp");
        std::fs::copy(from, &tmp)
            .map_err(|e| StoreError::Storage(format!("cannot copy {}: {e}", from.display())))?;
        self.install_file(&tmp)
            .map_err(|e| StoreError::Storage(format!("cannot load {}: {e}", from.display())))
    }

    /// Forgets the replicated position (the data stays): for a member that starts a new
    /// group from its current state (forced service).
    pub fn forget_position(&mut self) -> Result<(), StoreError> {
        self.position = None;
        self.conn
            .execute("DELETE FROM meta_blob WHERE key = 'position'", [])?;
        Ok(())
    }

    /// Empties the database: for a member about to be reseeded from a snapshot.
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.position = None;
        machine::reset(&self.conn)
    }
}

impl replica::Machine for SqliteMachine {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        /// What each log entry is to the machine.
        enum Slot {
            /// No command (blank or membership entry).
            Empty,
            /// The i-th decoded command.
            Command(usize),
            /// Bytes that do not decode: refused, the same way on every member.
            Undecodable(String),
        }
        let mut envs = Vec::with_capacity(commands.len());
        let mut slots = Vec::with_capacity(commands.len());
        for c in commands {
            slots.push(match c {
                None => Slot::Empty,
                Some(bytes) => match postcard::from_bytes::<Envelope>(bytes) {
                    Ok(env) => {
                        envs.push(env);
                        Slot::Command(envs.len() - 1)
                    }
                    Err(e) => Slot::Undecodable(e.to_string()),
                },
            });
        }
        // Unknown until the batch is known to have committed (or not).
        self.position = None;
        let results =
            machine::apply_batch_at(&self.conn, envs.iter(), Some(position)).map_err(io_err)?;
        self.position = Some(Some(position.to_vec()));
        let mut out = Vec::with_capacity(commands.len());
        for slot in slots {
            out.push(match slot {
                Slot::Empty => Vec::new(),
                Slot::Undecodable(why) => {
                    let refused: Outcome =
                        Err(StoreError::Storage(format!("undecodable command: {why}")));
                    postcard::to_allocvec(&refused).map_err(io_err)?
                }
                Slot::Command(i) => {
                    let r = results.get(i).ok_or_else(|| io_err("missing result"))?;
                    postcard::to_allocvec(r).map_err(io_err)?
                }
            });
        }
        Ok(out)
    }

    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let Some(known) = &self.position {
            return Ok(known.clone());
        }
        let stored = machine::position(&self.conn).map_err(io_err)?;
        self.position = Some(stored.clone());
        Ok(stored)
    }

    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        // VACUUM INTO writes a consistent, compact copy of the database.
        let tmp = self.path.with_extension("snapshot.tmp");
        let _ = std::fs::remove_file(&tmp);
        self.conn
            .execute("VACUUM INTO ?1", [tmp.to_string_lossy().as_ref()])
            .map_err(io_err)?;
        let bytes = std::fs::read(&tmp)?;
        let _ = std::fs::remove_file(&tmp);
        Ok(bytes)
    }

    fn start_snapshot(&mut self) -> io::Result<replica::SnapshotJob> {
        if let Db::Memory(_) = self.db {
            // In memory, the database's image is read in place (a memdb serializes without a
            // copy) and copied once, here, between two applies: a copy on a connection of its
            // own would hold a read lock the writer's next commit, and every reader behind
            // that commit, would wait out (memdb has no WAL).
            let position = replica::Machine::position(self)?;
            let image = self
                .conn
                .serialize(rusqlite::MAIN_DB)
                .map_err(io_err)?
                .to_vec();
            return Ok(Box::new(move || {
                Ok(replica::SnapshotCopy {
                    data: replica::CopiedState::Bytes(image),
                    position,
                })
            }));
        }
        // The copy is made on a connection of its own: VACUUM INTO reads inside one read
        // transaction, a consistent view that in WAL mode does not hold up the writer, so
        // applies go on while a large database is copied. The position comes from the copy.
        let (path, db) = (self.path.clone(), self.db.clone());
        Ok(Box::new(move || {
            let tmp = path.with_extension("snapshot.tmp");
            let _ = std::fs::remove_file(&tmp);
            let result = (|| {
                // Copied inside one read transaction of a connection of its own: consistent,
                // and in WAL mode the writer goes on (in memory, it waits out the copy).
                let reader = db.open(Sync::ReadOnly).map_err(io_err)?;
                copy_database(&reader, &tmp)?;
                drop(reader);
                let copy =
                    Connection::open_with_flags(&tmp, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .map_err(io_err)?;
                let position = machine::position(&copy).map_err(io_err)?;
                drop(copy);
                // The copy stays in its file: the replica takes it over as its snapshot
                // file, and a database is never read into memory whole.
                Ok(replica::SnapshotCopy {
                    data: replica::CopiedState::File(tmp.clone()),
                    position,
                })
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }))
    }

    /// Only a database: a witness's snapshot (which holds no data) or anything else would
    /// replace this replica's data with nothing.
    fn accepts_snapshot(&mut self, head: &[u8]) -> Result<(), String> {
        if head.starts_with(crate::witness::SQLITE_HEADER) {
            Ok(())
        } else if head.starts_with(crate::witness::WITNESS_SNAPSHOT) {
            Err("a data replica never installs a witness's snapshot (it holds no data)".into())
        } else {
            Err("the snapshot is not a database".into())
        }
    }

    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("install.tmp");
        std::fs::write(&tmp, snapshot)?;
        self.install_file(&tmp)
    }

    fn install_data(&mut self, snapshot: &replica::SnapshotData) -> io::Result<()> {
        // A piece at a time into a file of its own (the snapshot may be a range of a larger
        // file): a database is never read into memory whole.
        let tmp = self.path.with_extension("install.tmp");
        snapshot.save(&tmp)?;
        self.install_file(&tmp)
    }
}

impl SqliteMachine {
    /// Installs the database in file `tmp` (removed afterwards).
    fn install_file(&mut self, tmp: &Path) -> io::Result<()> {
        // The snapshot replaces the live database page by page (SQLite's backup API), so open
        // readers simply see the new state.
        self.position = None;
        let result = (|| -> rusqlite::Result<()> {
            let src = Connection::open_with_flags(tmp, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let backup = rusqlite::backup::Backup::new(&src, &mut self.conn)?;
            backup.run_to_completion(1024, std::time::Duration::ZERO, None)
        })();
        let _ = std::fs::remove_file(tmp);
        result.map_err(io_err)?;
        machine::init_schema(&self.conn).map_err(io_err)
    }
}

/// Copies the database of `from` into a new file `to` as a standalone rollback-journal
/// database: SQLite's backup API in one step, a page-for-page copy inside one read
/// transaction (VACUUM INTO rebuilt every table and index instead, at several times the CPU).
fn copy_database(from: &Connection, to: &Path) -> io::Result<()> {
    let mut copy = Connection::open(to).map_err(io_err)?;
    let backup = rusqlite::backup::Backup::new(from, &mut copy).map_err(io_err)?;
    match backup.step(-1).map_err(io_err)? {
        rusqlite::backup::StepResult::Done => {}
        other => return Err(io_err(format!("the copy stopped: {other:?}"))),
    }
    drop(backup);
    // The copied header says WAL when the source's does: a copy standing alone is a
    // rollback-journal database.
    let _: String = copy
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(io_err)?;
    Ok(())
}

/// A snapshot copy as the replica hands it back: the file it was written to, open.
#[cfg(test)]
pub(crate) fn copied(copy: &replica::SnapshotCopy) -> replica::SnapshotData {
    match &copy.data {
        replica::CopiedState::Bytes(b) => replica::SnapshotData::Memory(b.clone().into()),
        replica::CopiedState::File(path) => {
            replica::SnapshotData::whole_file(std::fs::File::open(path).expect("the copy's file"))
                .expect("the copy's size")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Command, User};
    use replica::Machine;

    fn add_user(m: &mut SqliteMachine, i: u64) {
        let env = Envelope {
            request: None,
            cmd: Command::AddUser {
                user: User {
                    aor: format!("sip:u{i}@example.com"),
                    username: format!("u{i}"),
                    realm: "example.com".into(),
                    ha1_md5: "m".into(),
                    ha1_sha256: "s".into(),
                    created_ms: 0,
                },
            },
        };
        let cmd = encode_command(&env).unwrap();
        m.apply(&[Some(&cmd)], &i.to_be_bytes()).unwrap();
    }

    /// The position the machine reports (kept in memory) is the one stored in the database,
    /// through applies, forgetting, resetting and installing.
    #[test]
    fn the_reported_position_is_the_stored_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sqlite");
        let stored = |path: &Path| SqliteMachine::open(path).unwrap().position().unwrap();
        let mut m = SqliteMachine::open(&path).unwrap();
        assert_eq!(m.position().unwrap(), None);
        add_user(&mut m, 1);
        add_user(&mut m, 2);
        assert_eq!(m.position().unwrap(), Some(2u64.to_be_bytes().to_vec()));
        assert_eq!(stored(&path), m.position().unwrap());
        let copy = m.start_snapshot().unwrap()().unwrap();
        add_user(&mut m, 3);
        m.forget_position().unwrap();
        assert_eq!(m.position().unwrap(), None);
        assert_eq!(stored(&path), None);
        add_user(&mut m, 4);
        assert_eq!(m.position().unwrap(), Some(4u64.to_be_bytes().to_vec()));
        m.install_data(&copied(&copy)).unwrap();
        assert_eq!(m.position().unwrap(), Some(2u64.to_be_bytes().to_vec()));
        assert_eq!(stored(&path), m.position().unwrap());
        m.reset().unwrap();
        assert_eq!(m.position().unwrap(), None);
        assert_eq!(stored(&path), None);
    }

    /// A database in memory snapshots the state of the position it reports, read in place,
    /// and the snapshot installs into another database in memory.
    #[test]
    fn an_in_memory_snapshot_holds_its_position_and_installs_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let scratch = dir.path().join("store.sqlite");
        let mut m = SqliteMachine::open_db(Db::new_memory(), &scratch).unwrap();
        for i in 1..=50 {
            add_user(&mut m, i);
        }
        let job = m.start_snapshot().unwrap();
        // Applies after the copy was started are not in it.
        add_user(&mut m, 51);
        let copy = job().unwrap();
        assert_eq!(copy.position, Some(50u64.to_be_bytes().to_vec()));
        let mut b = SqliteMachine::open_db(Db::new_memory(), &scratch).unwrap();
        b.install_data(&copied(&copy)).unwrap();
        assert_eq!(b.position().unwrap(), Some(50u64.to_be_bytes().to_vec()));
        assert_eq!(machine::users(&b.conn, 0).unwrap().len(), 50);
        assert!(
            !scratch.exists(),
            "nothing of it is written to a database file"
        );
        assert_eq!(machine::users(&m.conn, 0).unwrap().len(), 51);
    }

    /// A snapshot copied while applies go on holds exactly the data of the position it
    /// reports, and installs as such: users 1..=p for position p.
    #[test]
    fn a_snapshot_made_during_applies_is_consistent_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = SqliteMachine::open(&dir.path().join("a.sqlite")).unwrap();
        for i in 1..=200 {
            add_user(&mut m, i);
        }
        let job = m.start_snapshot().unwrap();
        let copying = std::thread::spawn(job);
        let mut i = 200;
        while !copying.is_finished() && i < 5_000 {
            i += 1;
            add_user(&mut m, i);
        }
        let copy = copying.join().unwrap().unwrap();
        let position = u64::from_be_bytes(copy.position.clone().unwrap().try_into().unwrap());
        assert!(
            (200..=i).contains(&position),
            "position {position}, applied {i}"
        );

        let mut b = SqliteMachine::open(&dir.path().join("b.sqlite")).unwrap();
        add_user(&mut b, 9_999);
        b.install_data(&copied(&copy)).unwrap();
        assert_eq!(b.position().unwrap(), Some(position.to_be_bytes().to_vec()));
        let users = machine::users(&b.conn, 0).unwrap();
        assert_eq!(
            users.len() as u64,
            position,
            "the copy holds users 1..={position}"
        );
        assert!(
            machine::user(&b.conn, &format!("sip:u{position}@example.com"))
                .unwrap()
                .is_some()
        );
        assert!(
            machine::user(&b.conn, "sip:u9999@example.com")
                .unwrap()
                .is_none()
        );
        // The applying machine went on and has everything it applied.
        assert_eq!(machine::users(&m.conn, 0).unwrap().len() as u64, i);
    }
}
