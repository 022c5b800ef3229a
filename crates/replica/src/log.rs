//! openraft's log storage on the durable [`Wal`](crate::wal::Wal): entries are postcard
//! records keyed by index; the vote and the purge point live in the log's metadata file.
//!
//! The committed position is not saved (`save_committed` keeps openraft's no-op): the state
//! machine persists its applied position with its data, and leaders are not restored without
//! an election after a restart (`Config::enable_leader_restore` is off), so a restarted node
//! never serves from state it had not applied.

use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::Wal;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

/// The log of one replica; cheap to clone (readers share the same log).
#[derive(Clone)]
pub struct LogStore {
    wal: Wal,
}

fn decode<T: serde::de::DeserializeOwned>(
    text: &Option<String>,
    what: &str,
) -> io::Result<Option<T>> {
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(t).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stored {what} is unreadable: {e}"),
            )
        }),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> io::Result<String> {
    serde_json::to_string(v).map_err(io::Error::other)
}

impl LogStore {
    /// The log in `dir`: in `set` when given (its metadata in `dir`), else a log of its own.
    pub fn open(
        dir: &std::path::Path,
        options: crate::wal::WalOptions,
        set: Option<&crate::wal::LogSet>,
    ) -> io::Result<LogStore> {
        let wal = match set {
            Some(set) => Wal::open_in(set, dir)?,
            None => Wal::open_with(dir, options)?,
        };
        Ok(LogStore { wal })
    }

    pub(crate) fn entries(&self, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        self.wal
            .range(from, to)?
            .into_iter()
            .map(|(i, bytes)| {
                postcard::from_bytes::<Entry>(&bytes).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("log entry {i} is unreadable: {e}"),
                    )
                })
            })
            .collect()
    }

    /// The last entry's log id, if any entry is present.
    pub fn last_log_id(&self) -> io::Result<Option<LogId>> {
        match self.wal.last()? {
            Some((i, bytes)) => postcard::from_bytes::<Entry>(&bytes)
                .map(|e| Some(e.log_id))
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("log entry {i} is unreadable: {e}"),
                    )
                }),
            None => Ok(None),
        }
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (from, to) = bounds(&range);
        self.entries(from, to)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        decode(&self.wal.meta()?.vote, "vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = decode(&self.wal.meta()?.last_purged, "purge point")?;
        let last = self.last_log_id()?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut meta = self.wal.meta()?;
        meta.vote = Some(encode(vote)?);
        self.wal.save_meta(meta)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        for e in entries {
            let bytes = postcard::to_allocvec(&e).map_err(io::Error::other)?;
            records.push((e.index(), bytes));
        }
        if records.is_empty() {
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.wal.append(
            records,
            Box::new(move |result| callback.io_completed(result)),
        )
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.wal.truncate_after(last_log_id.map(|l| l.index()))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.wal.purge(log_id.index(), encode(&log_id)?)
    }
}
