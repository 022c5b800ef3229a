//! The machine behind a store replica: the SQL database, or — for a mirroring witness — no
//! database at all.
//!
//! A witness votes and holds the replicated log (so the mirror cannot be elected while it
//! lacks a committed transaction only the witness holds: Raft's vote check refuses a candidate
//! whose log is behind), but applies nothing: its machine keeps only the log position. A
//! snapshot it receives (a whole database, when it fell behind the principal's purge point)
//! is read for its position and dropped.
//!
//! The witness trap: when the principal (or a failover cluster's owner) is lost while the
//! other data member lacks a commit that only the witness holds, no data member can win an
//! election. So a witness campaigns too, and when it wins, it brings the others up to date
//! and hands leadership to one that holds its whole log ([`hand_over`]); it never serves.

use crate::machine;
use crate::node::MemberSpec;
use crate::replicated::SqliteMachine;
use rusqlite::Connection;
use std::io;
use std::path::PathBuf;

/// How a witness's own snapshots start (the rest is the position).
pub(crate) const WITNESS_SNAPSHOT: &[u8] = b"tandem-witness-snapshot\n";
/// How every SQLite database file starts.
pub(crate) const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// Called by a witness that leads (`st` is its status): hands leadership to one of `data`
/// (the data-holding members) that holds the witness's whole log, if one does yet.
pub async fn hand_over<'a, M: replica::Machine>(
    store: &str,
    replica: &replica::Replica<M>,
    st: &replica::Status,
    data: impl Iterator<Item = &'a MemberSpec>,
) {
    let last = st.last_log_index.unwrap_or(0);
    let caught_up = |id: &u64| {
        st.voters.contains_key(id)
            && st
                .replication
                .get(id)
                .and_then(|p| p.matched)
                .is_some_and(|m| m >= last)
    };
    let target = data
        .map(|m| replica::node_id(&m.server))
        .find(|id| *id != st.id && caught_up(id));
    if let Some(target) = target {
        tracing::info!(
            store,
            "witness: a data member holds the whole log; handing leadership over"
        );
        if let Err(e) = replica.transfer_leader(target).await {
            tracing::debug!(store, error = %e, "witness: hand-over not done yet");
        }
    }
}

/// A witness's machine: the log position, in memory (after a restart openraft rebuilds it
/// from the snapshot and the log, which cost nothing to apply here).
pub struct WitnessMachine {
    position: Option<Vec<u8>>,
    /// Where a received database is put while its position is read.
    scratch: PathBuf,
}

impl WitnessMachine {
    /// A witness whose scratch files go in `dir`.
    pub fn new(dir: PathBuf) -> WitnessMachine {
        WitnessMachine {
            position: None,
            scratch: dir.join("witness-install.tmp"),
        }
    }
}

impl replica::Machine for WitnessMachine {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.position = Some(position.to_vec());
        Ok(vec![Vec::new(); commands.len()])
    }

    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.position.clone())
    }

    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        let mut out = WITNESS_SNAPSHOT.to_vec();
        out.extend(self.position.as_deref().unwrap_or_default());
        Ok(out)
    }

    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        if let Some(position) = snapshot.strip_prefix(WITNESS_SNAPSHOT) {
            self.position = (!position.is_empty()).then(|| position.to_vec());
            return Ok(());
        }
        if !snapshot.starts_with(SQLITE_HEADER) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot is neither a database nor a witness's",
            ));
        }
        // A principal's database: only its position matters here.
        if let Some(dir) = self.scratch.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.scratch, snapshot)?;
        self.position_from_scratch()
    }

    fn install_data(&mut self, snapshot: &replica::SnapshotData) -> io::Result<()> {
        // A principal's database goes to the scratch file a piece at a time (it is as large as
        // the store); a witness's snapshot is a few bytes.
        let head = snapshot.read_at(0, SQLITE_HEADER.len())?;
        if head != SQLITE_HEADER {
            return self.install(&snapshot.read_at(0, usize::MAX)?);
        }
        if let Some(dir) = self.scratch.parent() {
            std::fs::create_dir_all(dir)?;
        }
        snapshot.save(&self.scratch)?;
        self.position_from_scratch()
    }
}

impl WitnessMachine {
    /// Takes the position of the database in the scratch file, and removes the file.
    fn position_from_scratch(&mut self) -> io::Result<()> {
        let position = (|| {
            let conn = Connection::open_with_flags(
                &self.scratch,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(io::Error::other)?;
            machine::position(&conn).map_err(|e| io::Error::other(e.to_string()))
        })();
        let _ = std::fs::remove_file(&self.scratch);
        self.position = position?;
        Ok(())
    }
}

/// The machine a store node runs: its database, or a witness's position.
pub enum NodeMachine {
    Data(SqliteMachine),
    Witness(WitnessMachine),
}

impl replica::Machine for NodeMachine {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        match self {
            NodeMachine::Data(m) => m.apply(commands, position),
            NodeMachine::Witness(m) => m.apply(commands, position),
        }
    }

    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self {
            NodeMachine::Data(m) => m.position(),
            NodeMachine::Witness(m) => m.position(),
        }
    }

    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        match self {
            NodeMachine::Data(m) => m.snapshot(),
            NodeMachine::Witness(m) => m.snapshot(),
        }
    }

    fn start_snapshot(&mut self) -> io::Result<replica::SnapshotJob> {
        match self {
            NodeMachine::Data(m) => m.start_snapshot(),
            NodeMachine::Witness(m) => m.start_snapshot(),
        }
    }

    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        match self {
            NodeMachine::Data(m) => m.install(snapshot),
            NodeMachine::Witness(m) => m.install(snapshot),
        }
    }

    fn install_data(&mut self, snapshot: &replica::SnapshotData) -> io::Result<()> {
        match self {
            NodeMachine::Data(m) => m.install_data(snapshot),
            NodeMachine::Witness(m) => m.install_data(snapshot),
        }
    }

    fn accepts_snapshot(&mut self, head: &[u8]) -> Result<(), String> {
        match self {
            NodeMachine::Data(m) => m.accepts_snapshot(head),
            NodeMachine::Witness(m) => m.accepts_snapshot(head),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use replica::Machine;

    /// A witness keeps positions only, survives its own snapshot, takes a principal's
    /// database snapshot for its position, and refuses bytes that are neither.
    #[test]
    fn a_witness_keeps_the_position_and_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WitnessMachine::new(dir.path().to_path_buf());
        assert_eq!(w.apply(&[Some(b"x"), None], b"p1").unwrap().len(), 2);
        assert_eq!(w.position().unwrap(), Some(b"p1".to_vec()));
        let own = w.snapshot().unwrap();
        let mut again = WitnessMachine::new(dir.path().to_path_buf());
        again.install(&own).unwrap();
        assert_eq!(again.position().unwrap(), Some(b"p1".to_vec()));

        let mut db = SqliteMachine::open(&dir.path().join("p.sqlite")).unwrap();
        db.apply(&[None], b"p9").unwrap();
        let job = db.start_snapshot().unwrap();
        let copy = crate::replicated::copied(&job().unwrap());
        again.install_data(&copy).unwrap();
        assert_eq!(again.position().unwrap(), Some(b"p9".to_vec()));
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("witness")),
            "no database left behind"
        );

        // A data replica refuses the witness's snapshot before anything is installed.
        let refused = db.accepts_snapshot(&own[..own.len().min(replica::machine::SNAPSHOT_HEAD)]);
        assert!(refused.is_err_and(|e| e.contains("witness")));
        assert!(db.accepts_snapshot(&copy.read_at(0, 64).unwrap()).is_ok());
        let err = again.install(b"garbage").unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
        assert_eq!(again.position().unwrap(), Some(b"p9".to_vec()));
    }
}
