//! The durable log under a replica: append-only segment files of checksummed records, with
//! group commit, truncation of the tail, purge of the head, and a small metadata file (vote,
//! committed position, purge point) replaced atomically.
//!
//! Layout of `dir`:
//! - `seg-<first index, 20 digits>.log`: records `[len u32][crc32c u32][index u64][payload]`,
//!   the checksum covering index and payload, then zeros. A new segment starts past
//!   `SEGMENT_BYTES`. The writer extends a segment with zeros ahead of its records
//!   ([`PREALLOCATE_BYTES`] at a time), so an append overwrites bytes the file already has and
//!   its `fdatasync` writes the data alone, not the inode's new size as well: on ext4 that
//!   halves the time and CPU of the sync every commit waits for. A zero header cannot be a
//!   record (the checksum of index 0 is not 0), so zeros to the end of the file end it.
//! - `meta.json`: `{vote, committed, last_purged}` as opaque strings, written to a temporary
//!   file, fsynced, renamed over the old one, and the directory fsynced.
//!
//! On open, every segment is read back and checked. A torn or corrupt record at the end of
//! the last segment is a crash in the middle of a write: the file is cut there (those records
//! were never acknowledged). Anything wrong earlier is corruption: opening fails and says where.
//!
//! All writes go through one thread, in submission order; an append's callback runs only after
//! `fdatasync` returned, and appends queued together share one `fdatasync`.
//!
//! Readers see records in memory until the writer has written them; then only the newest
//! [`WalOptions::memory_bytes`] stay there and older ones are read back from their segment
//! (checked again) when asked for — a lagging follower's catch-up, a restart's replay. A log
//! that keeps 100,000 entries between snapshots therefore does not keep them all in memory.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};

/// A segment grows to about this size before a new one starts.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Largest record accepted (a record claiming more is corruption).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER: usize = 4 + 4 + 8;
/// Zeros written ahead of the records each time a segment runs out of them.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// What `meta.json` holds: opaque to the log, interpreted by the consensus layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub vote: Option<String>,
    pub committed: Option<String>,
    pub last_purged: Option<String>,
    /// Index of the last purged entry (entries at or below are gone).
    pub purged_index: Option<u64>,
}

/// Called once an append is durable (or failed).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Job {
    Append {
        records: Vec<(u64, Arc<Vec<u8>>)>,
        done: Done,
    },
    Truncate {
        after: Option<u64>,
        reply: mpsc::Sender<io::Result<()>>,
    },
    Purge {
        upto: u64,
        reply: mpsc::Sender<io::Result<()>>,
    },
    Meta {
        meta: Meta,
        reply: mpsc::Sender<io::Result<()>>,
    },
}

/// Where a record's bytes are.
#[derive(Clone)]
enum Slot {
    /// In memory: records not written yet, and the newest written ones.
    Memory(Arc<Vec<u8>>),
    /// Only in segment `segment` (named by its first index), header at `offset`.
    Disk { segment: u64, offset: u64, len: u32 },
}

/// A record the writer has written and that is still in memory.
struct Written {
    index: u64,
    body: Arc<Vec<u8>>,
    segment: u64,
    offset: u64,
}

/// The records by index (what readers see): the log's content between purge point and end.
#[derive(Default)]
struct Index {
    entries: BTreeMap<u64, Slot>,
    /// Bytes of the records held in memory.
    resident: u64,
    /// Written records still in memory, oldest first: the first to leave it.
    written: VecDeque<Written>,
}

impl Index {
    fn insert(&mut self, index: u64, body: Arc<Vec<u8>>) {
        self.resident += body.len() as u64;
        if let Some(Slot::Memory(old)) = self.entries.insert(index, Slot::Memory(body)) {
            self.resident -= old.len() as u64;
        }
    }

    /// Forgets the records in `removed` (cut off the end or purged from the start).
    fn forget(&mut self, removed: BTreeMap<u64, Slot>) {
        for slot in removed.into_values() {
            if let Slot::Memory(b) = slot {
                self.resident -= b.len() as u64;
            }
        }
    }

    /// Whether the index still holds `w`'s record, in memory (not one cut off, purged, or
    /// appended again since).
    fn holds(&self, w: &Written) -> bool {
        matches!(self.entries.get(&w.index), Some(Slot::Memory(b)) if Arc::ptr_eq(b, &w.body))
    }

    /// Records that `written` are on disk, then lets the oldest written records leave memory
    /// until at most `limit` bytes stay. A record truncated and appended again since it was
    /// written is a different `Arc`: its old location is never used.
    fn on_written(&mut self, written: Vec<Written>, limit: u64) {
        self.written.extend(written);
        // Records purged or cut off since they were written leave the queue once they reach
        // its front (purged ones are there first), so their bytes are not held past them.
        while let Some(w) = self.written.front() {
            if self.holds(w) {
                break;
            }
            self.written.pop_front();
        }
        while self.resident > limit {
            let Some(w) = self.written.pop_front() else {
                break;
            };
            if self.holds(&w) {
                self.resident -= w.body.len() as u64;
                self.entries.insert(
                    w.index,
                    Slot::Disk {
                        segment: w.segment,
                        offset: w.offset,
                        len: w.body.len() as u32,
                    },
                );
            }
        }
    }
}

/// How a log is run.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// fsync writes (always, outside simulations).
    pub sync: bool,
    /// Do the writes on the caller's thread instead of a writer thread (simulations under a
    /// paused clock, where a thread the runtime cannot see would let the clock jump).
    pub inline: bool,
    /// Bytes of written records kept in memory (the newest); older ones are read from disk.
    pub memory_bytes: u64,
}

/// Default of [`WalOptions::memory_bytes`]: a few thousand typical entries per log.
pub const MEMORY_BYTES: u64 = 8 * 1024 * 1024;

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            sync: true,
            inline: false,
            memory_bytes: MEMORY_BYTES,
        }
    }
}

enum Backend {
    Thread(mpsc::Sender<Job>),
    Inline(Arc<std::sync::Mutex<(Writer, Vec<Done>)>>),
}

/// A handle on an open log; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    jobs: Arc<Backend>,
    index: Arc<RwLock<Index>>,
    meta: Arc<RwLock<Meta>>,
    dir: PathBuf,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A record header's fields: body length, checksum, index.
fn header_fields(head: &[u8; HEADER]) -> (u32, u32, u64) {
    let [
        l0,
        l1,
        l2,
        l3,
        c0,
        c1,
        c2,
        c3,
        i0,
        i1,
        i2,
        i3,
        i4,
        i5,
        i6,
        i7,
    ] = *head;
    (
        u32::from_be_bytes([l0, l1, l2, l3]),
        u32::from_be_bytes([c0, c1, c2, c3]),
        u64::from_be_bytes([i0, i1, i2, i3, i4, i5, i6, i7]),
    )
}

/// The checksum a record carries: of its index, then its body.
fn checksum(index: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&index.to_be_bytes()), body)
}

/// A segment on disk: its first index, path, and (index -> offset) of each record in it.
struct Segment {
    first: u64,
    path: PathBuf,
    offsets: Vec<(u64, u64)>,
    len: u64,
}

/// A segment read back: the segment, its good records, and what was wrong after them.
type SegmentRead = (Segment, Vec<(u64, Vec<u8>)>, Option<String>);

/// Reads one segment, checking every record. Returns the segment, the records, and whether
/// it ended with a bad record (and where the good part ends).
fn read_segment(path: &Path, first: u64) -> io::Result<SegmentRead> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut pos = 0usize;
    let mut records = Vec::new();
    let mut offsets = Vec::new();
    let mut problem = None;
    while pos < data.len() {
        let head = &data[pos..data.len().min(pos + HEADER)];
        if head.iter().all(|b| *b == 0) {
            // Zeros written ahead: the end, if nothing but zeros follows.
            if !data[pos..].iter().all(|b| *b == 0) {
                problem = Some(format!(
                    "a zero record header at offset {pos} followed by data"
                ));
            }
            break;
        }
        if data.len() - pos < HEADER {
            problem = Some(format!(
                "{} bytes of a record header at offset {pos}",
                data.len() - pos
            ));
            break;
        }
        let Ok(head) = <&[u8; HEADER]>::try_from(&data[pos..pos + HEADER]) else {
            break;
        };
        let (len, crc, index) = header_fields(head);
        if len > MAX_RECORD_BYTES || data.len() - pos - HEADER < len as usize {
            problem = Some(format!(
                "record at offset {pos} claims {len} bytes, {} remain",
                data.len() - pos - HEADER
            ));
            break;
        }
        let body = &data[pos + HEADER..pos + HEADER + len as usize];
        if checksum(index, body) != crc {
            problem = Some(format!(
                "checksum mismatch in the record at offset {pos} (index {index})"
            ));
            break;
        }
        let expected = records
            .last()
            .map(|(i, _): &(u64, Vec<u8>)| i + 1)
            .unwrap_or(first);
        if index != expected {
            problem = Some(format!(
                "record at offset {pos} has index {index}, expected {expected}"
            ));
            break;
        }
        offsets.push((index, pos as u64));
        records.push((index, body.to_vec()));
        pos += HEADER + len as usize;
    }
    let seg = Segment {
        first,
        path: path.to_path_buf(),
        offsets,
        len: pos as u64,
    };
    Ok((seg, records, problem))
}

/// An fdatasync of the log taking this long is reported (the disk is the likely cause of a
/// pause every commit then shares).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(200);

struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: Option<File>,
    /// Bytes the open file has: its records, then zeros written ahead.
    allocated: u64,
    /// fsync data and directories (off only in simulations).
    sync: bool,
    /// The readers' index, told where written records are.
    index: Arc<RwLock<Index>>,
    memory_bytes: u64,
}

impl Writer {
    fn current(&mut self, next_index: u64) -> io::Result<&mut File> {
        // A record that does not follow the segment's last one (the first after a snapshot
        // installed past the end of the log, which purged everything) starts a new segment:
        // within a segment, reading back takes a gap for a torn tail and cuts it.
        let roll = match self.segments.last() {
            None => true,
            Some(s) => {
                s.len >= SEGMENT_BYTES || s.offsets.last().is_some_and(|(i, _)| i + 1 != next_index)
            }
        };
        if roll || self.file.is_none() {
            if roll {
                // The segment left behind may hold records of this batch: they are made
                // durable here, since the batch's flush syncs only the new segment.
                if let Some(old) = &self.file
                    && self.sync
                {
                    old.sync_data()?;
                }
                let path = self.dir.join(segment_name(next_index));
                let f = OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .write(true)
                    .open(&path)?;
                if self.sync {
                    f.sync_all()?;
                }
                self.sync_dir()?;
                self.segments.push(Segment {
                    first: next_index,
                    path,
                    offsets: Vec::new(),
                    len: 0,
                });
                self.file = Some(f);
                self.allocated = 0;
            } else if let Some(s) = self.segments.last() {
                let mut f = OpenOptions::new().write(true).open(&s.path)?;
                f.seek(SeekFrom::Start(s.len))?;
                self.allocated = f.metadata()?.len();
                self.file = Some(f);
            }
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("no open segment"))
    }

    /// Writes a job's records (consecutive indexes), one write per segment they go to, then
    /// tells the index where they are.
    fn append(&mut self, records: &[(u64, Arc<Vec<u8>>)]) -> io::Result<()> {
        let mut run = Vec::new();
        let mut offsets = Vec::new();
        let mut written = Vec::with_capacity(records.len());
        for (index, body) in records {
            let len = u32::try_from(body.len())
                .map_err(|_| corrupt(format!("record {index} too large")))?;
            let seg_len = self.segments.last().map_or(0, |s| s.len);
            if !run.is_empty() && seg_len + run.len() as u64 >= SEGMENT_BYTES {
                self.write_run(&mut run, &mut offsets, &mut written)?;
            }
            if run.is_empty() {
                // Opens the segment, or starts the next one.
                self.current(*index)?;
            }
            let h = checksum(*index, body);
            offsets.push((*index, run.len() as u64, body.clone()));
            run.extend_from_slice(&len.to_be_bytes());
            run.extend_from_slice(&h.to_be_bytes());
            run.extend_from_slice(&index.to_be_bytes());
            run.extend_from_slice(body);
        }
        self.write_run(&mut run, &mut offsets, &mut written)?;
        self.index
            .write()
            .map_err(|_| io::Error::other("log index poisoned"))?
            .on_written(written, self.memory_bytes);
        Ok(())
    }

    /// Writes `run` (records whose offsets within it are `offsets`) at the end of the open
    /// segment, empties both, and adds the records to `written`.
    fn write_run(
        &mut self,
        run: &mut Vec<u8>,
        offsets: &mut Vec<(u64, u64, Arc<Vec<u8>>)>,
        written: &mut Vec<Written>,
    ) -> io::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let start = self.segments.last().map_or(0, |s| s.len);
        self.write_ahead(start + run.len() as u64)?;
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("no open segment"))?;
        file.write_all(run)?;
        if let Some(seg) = self.segments.last_mut() {
            for (index, o, body) in offsets.drain(..) {
                seg.offsets.push((index, start + o));
                written.push(Written {
                    index,
                    body,
                    segment: seg.first,
                    offset: start + o,
                });
            }
            seg.len += run.len() as u64;
        }
        run.clear();
        Ok(())
    }

    /// Extends the open segment with zeros so that it holds at least `end` bytes (and
    /// [`PREALLOCATE_BYTES`] more); the next sync makes the new size durable once.
    fn write_ahead(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no open segment"))?;
        let to = end + PREALLOCATE_BYTES;
        let zeros = vec![0u8; (to - self.allocated) as usize];
        file.write_all_at(&zeros, self.allocated)?;
        self.allocated = to;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        match &self.file {
            Some(f) if self.sync => {
                let start = std::time::Instant::now();
                let synced = f.sync_data();
                // Every commit waits for this: a disk that stalls shows up as a pause of the
                // whole group, and should be named as the cause.
                let took = start.elapsed();
                if took >= SLOW_SYNC {
                    tracing::warn!(log = %self.dir.display(), took_ms = took.as_millis() as u64, "slow fdatasync of the replicated log");
                }
                synced
            }
            _ => Ok(()),
        }
    }

    fn sync_dir(&self) -> io::Result<()> {
        if self.sync {
            sync_dir(&self.dir)
        } else {
            Ok(())
        }
    }

    /// Runs one job; appends wait in `pending` for the next `flush`.
    fn run(&mut self, job: Job, pending: &mut Vec<Done>) {
        match job {
            Job::Append { records, done } => match self.append(&records) {
                Ok(()) => pending.push(done),
                Err(e) => {
                    flush(self, pending);
                    done(Err(e));
                }
            },
            Job::Truncate { after, reply } => {
                flush(self, pending);
                let _ = reply.send(self.truncate(after));
            }
            Job::Purge { upto, reply } => {
                flush(self, pending);
                let _ = reply.send(self.purge(upto));
            }
            Job::Meta { meta, reply } => {
                flush(self, pending);
                let _ = reply.send(write_meta(&self.dir, &meta, self.sync));
            }
        }
    }

    /// Removes every record above `after` (all when `None`), from the end backwards, so a crash
    /// in the middle leaves a shorter log, never one with a hole.
    fn truncate(&mut self, after: Option<u64>) -> io::Result<()> {
        let keep_below = after.map_or(0, |a| a + 1);
        self.file = None;
        while self.segments.last().is_some_and(|s| s.first >= keep_below) {
            if let Some(seg) = self.segments.pop() {
                std::fs::remove_file(&seg.path)?;
            }
        }
        if let Some(seg) = self.segments.last_mut()
            && let Some(pos) = seg.offsets.iter().position(|(i, _)| *i >= keep_below)
        {
            let offset = seg.offsets[pos].1;
            seg.offsets.truncate(pos);
            let f = OpenOptions::new().write(true).open(&seg.path)?;
            f.set_len(offset)?;
            if self.sync {
                f.sync_all()?;
            }
            seg.len = offset;
        }
        self.sync_dir()
    }

    /// Deletes whole segments whose records are all at or below `upto`.
    fn purge(&mut self, upto: u64) -> io::Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 {
            let next_first = self.segments[1].first;
            if next_first <= upto + 1 {
                let seg = self.segments.remove(0);
                std::fs::remove_file(&seg.path)?;
                removed = true;
            } else {
                break;
            }
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }
}

fn write_meta(dir: &Path, meta: &Meta, sync: bool) -> io::Result<()> {
    let tmp = dir.join("meta.json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
    {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        if sync {
            f.sync_all()?;
        }
    }
    std::fs::rename(&tmp, dir.join("meta.json"))?;
    if sync { sync_dir(dir) } else { Ok(()) }
}

impl Wal {
    /// Opens (or creates) the log in `dir`, checking every record.
    pub fn open(dir: &Path) -> io::Result<Wal> {
        Wal::open_with(dir, WalOptions::default())
    }

    /// Opens the log with explicit options.
    pub fn open_with(dir: &Path, options: WalOptions) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        sync_dir(dir.parent().unwrap_or(dir))?;
        let meta: Meta = match std::fs::read(dir.join("meta.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| corrupt(format!("{}: {e}", dir.join("meta.json").display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(num) = name
                .strip_prefix("seg-")
                .and_then(|n| n.strip_suffix(".log"))
            {
                let first = num
                    .parse::<u64>()
                    .map_err(|_| corrupt(format!("unexpected file {name} in {}", dir.display())))?;
                names.push((first, entry.path()));
            }
        }
        names.sort();
        let mut index = Index::default();
        let mut segments = Vec::new();
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let (seg, records, problem) = read_segment(&path, first)?;
            if let Some(why) = problem {
                if i + 1 < count {
                    return Err(corrupt(format!(
                        "log segment {} is corrupt ({why}) and later segments exist: refusing to start",
                        path.display()
                    )));
                }
                tracing::warn!(segment = %path.display(), %why, "cutting the torn tail of the log (never acknowledged)");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(seg.len)?;
                f.sync_all()?;
            }
            // A gap between segments is fine where everything before it was purged.
            if let (Some(last), Some((next, _))) =
                (index.entries.keys().next_back(), records.first())
                && *next != last + 1
                && meta.purged_index.is_none_or(|p| p + 1 < *next)
            {
                return Err(corrupt(format!(
                    "log segment {} starts at {next}, after {last}: a hole",
                    path.display()
                )));
            }
            // Segment by segment, so a long log is never all in memory at once.
            let mut written = Vec::with_capacity(records.len());
            for ((i, body), (_, offset)) in records.into_iter().zip(&seg.offsets) {
                let body = Arc::new(body);
                index.insert(i, body.clone());
                written.push(Written {
                    index: i,
                    body,
                    segment: seg.first,
                    offset: *offset,
                });
            }
            index.on_written(written, options.memory_bytes);
            segments.push(seg);
        }
        // Entries at or below the purge point may remain in a partly purged segment.
        if let Some(p) = meta.purged_index {
            let kept = index.entries.split_off(&(p + 1));
            let gone = std::mem::replace(&mut index.entries, kept);
            index.forget(gone);
        }
        let index = Arc::new(RwLock::new(index));
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            segments,
            file: None,
            allocated: 0,
            sync: options.sync,
            index: index.clone(),
            memory_bytes: options.memory_bytes,
        };
        let backend = if options.inline {
            Backend::Inline(Arc::new(std::sync::Mutex::new((writer, Vec::new()))))
        } else {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || {
                    let mut pending: Vec<Done> = Vec::new();
                    while let Ok(first) = rx.recv() {
                        writer.run(first, &mut pending);
                        while let Ok(job) = rx.try_recv() {
                            writer.run(job, &mut pending);
                        }
                        flush(&mut writer, &mut pending);
                    }
                })?;
            Backend::Thread(tx)
        };
        Ok(Wal {
            jobs: Arc::new(backend),
            index,
            meta: Arc::new(RwLock::new(meta)),
            dir: dir.to_path_buf(),
        })
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        match &*self.jobs {
            Backend::Thread(tx) => tx
                .send(job)
                .map_err(|_| io::Error::other("log writer stopped")),
            Backend::Inline(w) => {
                let mut guard = w
                    .lock()
                    .map_err(|_| io::Error::other("log writer poisoned"))?;
                let (writer, pending) = &mut *guard;
                writer.run(job, pending);
                flush(writer, pending);
                Ok(())
            }
        }
    }

    /// Appends records (indexes must follow the last one). They are readable at once; `done`
    /// runs when they are on disk.
    pub fn append(&self, records: Vec<(u64, Vec<u8>)>, done: Done) -> io::Result<()> {
        let records: Vec<(u64, Arc<Vec<u8>>)> =
            records.into_iter().map(|(i, b)| (i, Arc::new(b))).collect();
        {
            let mut idx = self
                .index
                .write()
                .map_err(|_| io::Error::other("log index poisoned"))?;
            for (i, body) in &records {
                if let Some(last) = idx.entries.keys().next_back()
                    && *i != last + 1
                {
                    return Err(io::Error::other(format!(
                        "append of index {i} after {last} would leave a hole"
                    )));
                }
                idx.insert(*i, body.clone());
            }
        }
        self.submit(Job::Append { records, done })
    }

    fn call(&self, make: impl FnOnce(mpsc::Sender<io::Result<()>>) -> Job) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.submit(make(tx))?;
        rx.recv()
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    /// Removes every record above `after` (all when `None`); durable when it returns.
    pub fn truncate_after(&self, after: Option<u64>) -> io::Result<()> {
        {
            let mut idx = self
                .index
                .write()
                .map_err(|_| io::Error::other("log index poisoned"))?;
            let from = after.map_or(0, |a| a + 1);
            let gone = idx.entries.split_off(&from);
            idx.forget(gone);
        }
        self.call(|reply| Job::Truncate { after, reply })
    }

    /// Forgets every record at or below `upto`: the purge point is made durable first, then
    /// whole segments are deleted.
    pub fn purge(&self, upto: u64, last_purged: String) -> io::Result<()> {
        let mut meta = self.meta()?;
        meta.purged_index = Some(upto);
        meta.last_purged = Some(last_purged);
        self.save_meta(meta)?;
        {
            let mut idx = self
                .index
                .write()
                .map_err(|_| io::Error::other("log index poisoned"))?;
            let kept = idx.entries.split_off(&(upto + 1));
            let gone = std::mem::replace(&mut idx.entries, kept);
            idx.forget(gone);
        }
        self.call(|reply| Job::Purge { upto, reply })
    }

    /// Replaces the metadata, durably.
    pub fn save_meta(&self, meta: Meta) -> io::Result<()> {
        self.call(|reply| Job::Meta {
            meta: meta.clone(),
            reply,
        })?;
        *self
            .meta
            .write()
            .map_err(|_| io::Error::other("log meta poisoned"))? = meta;
        Ok(())
    }

    /// The current metadata.
    pub fn meta(&self) -> io::Result<Meta> {
        Ok(self
            .meta
            .read()
            .map_err(|_| io::Error::other("log meta poisoned"))?
            .clone())
    }

    /// Records in `[from, to)`, as many as present.
    pub fn range(&self, from: u64, to: u64) -> io::Result<Vec<(u64, Arc<Vec<u8>>)>> {
        let idx = self
            .index
            .read()
            .map_err(|_| io::Error::other("log index poisoned"))?;
        // Read under the lock: a record's segment is truncated or deleted only after the
        // record left the index, which takes the lock.
        self.load(idx.entries.range(from..to))
    }

    /// The last record, if any.
    pub fn last(&self) -> io::Result<Option<(u64, Arc<Vec<u8>>)>> {
        let idx = self
            .index
            .read()
            .map_err(|_| io::Error::other("log index poisoned"))?;
        Ok(self.load(idx.entries.iter().next_back().into_iter())?.pop())
    }

    /// Bytes of records held in memory.
    pub fn resident_bytes(&self) -> io::Result<u64> {
        Ok(self
            .index
            .read()
            .map_err(|_| io::Error::other("log index poisoned"))?
            .resident)
    }

    /// The records of `slots`, in order: those on disk are read back, one read per run of
    /// adjacent records, and checked as on open.
    fn load<'a>(
        &self,
        slots: impl Iterator<Item = (&'a u64, &'a Slot)>,
    ) -> io::Result<Vec<(u64, Arc<Vec<u8>>)>> {
        let mut out = Vec::new();
        // Adjacent records on disk not read yet: (segment, first header offset, end, indexes).
        let mut run: Option<(u64, u64, u64, Vec<u64>)> = None;
        for (&i, slot) in slots {
            match slot {
                Slot::Memory(b) => {
                    if let Some(r) = run.take() {
                        self.read_run(r, &mut out)?;
                    }
                    out.push((i, b.clone()));
                }
                &Slot::Disk {
                    segment,
                    offset,
                    len,
                } => {
                    let end = offset + HEADER as u64 + u64::from(len);
                    match &mut run {
                        Some((s, _, e, indexes)) if *s == segment && *e == offset => {
                            *e = end;
                            indexes.push(i);
                        }
                        _ => {
                            if let Some(r) = run.replace((segment, offset, end, vec![i])) {
                                self.read_run(r, &mut out)?;
                            }
                        }
                    }
                }
            }
        }
        if let Some(r) = run {
            self.read_run(r, &mut out)?;
        }
        Ok(out)
    }

    fn read_run(
        &self,
        (segment, start, end, indexes): (u64, u64, u64, Vec<u64>),
        out: &mut Vec<(u64, Arc<Vec<u8>>)>,
    ) -> io::Result<()> {
        let path = self.dir.join(segment_name(segment));
        let file = File::open(&path)?;
        let mut data = vec![0u8; (end - start) as usize];
        file.read_exact_at(&mut data, start)?;
        let mut pos = 0usize;
        for index in indexes {
            let bad = || {
                corrupt(format!(
                    "log record {index} in {} at offset {} does not read back",
                    path.display(),
                    start + pos as u64
                ))
            };
            let head = data
                .get(pos..pos + HEADER)
                .and_then(|h| <&[u8; HEADER]>::try_from(h).ok())
                .ok_or_else(bad)?;
            let (len, crc, at) = header_fields(head);
            let len = len as usize;
            let body = data.get(pos + HEADER..pos + HEADER + len).ok_or_else(bad)?;
            if at != index || checksum(index, body) != crc {
                return Err(bad());
            }
            out.push((index, Arc::new(body.to_vec())));
            pos += HEADER + len;
        }
        Ok(())
    }

    /// The first record's index, if any.
    pub fn first_index(&self) -> io::Result<Option<u64>> {
        let idx = self
            .index
            .read()
            .map_err(|_| io::Error::other("log index poisoned"))?;
        Ok(idx.entries.keys().next().copied())
    }

    /// The log directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Makes pending appends durable with one `fdatasync`, then tells their callers.
fn flush(writer: &mut Writer, pending: &mut Vec<Done>) {
    if pending.is_empty() {
        return;
    }
    let result = writer.sync();
    for done in pending.drain(..) {
        done(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    /// A directory of its own for one test, removed when the test is done with it.
    fn dir(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("tandem-wal-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn append_sync(w: &Wal, records: Vec<(u64, Vec<u8>)>) {
        let (tx, rx) = channel();
        w.append(records, Box::new(move |r| tx.send(r).unwrap_or(())))
            .unwrap();
        rx.recv().unwrap().unwrap();
    }

    fn bodies(w: &Wal) -> Vec<u64> {
        w.range(0, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    /// Where the records of a segment end (zeros written ahead follow).
    fn data_end(seg: &Path, first: u64) -> u64 {
        read_segment(seg, first).unwrap().0.len
    }

    #[test]
    fn zeros_written_ahead_end_a_segment_and_appends_overwrite_them() {
        // A zero header is never a record: the checksum of index 0 is not 0.
        assert_ne!(crc32c::crc32c(&0u64.to_be_bytes()), 0);
        let tmp = dir("ahead");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, (0..=9).map(|i| (i, vec![i as u8; 100])).collect());
        let seg = d.join(segment_name(0));
        let (len, end) = (std::fs::metadata(&seg).unwrap().len(), data_end(&seg, 0));
        assert_eq!(end, 10 * (HEADER as u64 + 100));
        assert!(len >= end + PREALLOCATE_BYTES, "{len} bytes on disk");
        // The next append overwrites the zeros; the file does not grow.
        append_sync(&w, vec![(10, vec![])]);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), (0..=10).collect::<Vec<_>>());
        append_sync(&w, vec![(11, b"after a reopen".to_vec())]);
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(&*w.last().unwrap().unwrap().1, b"after a reopen");
    }

    #[test]
    fn data_after_the_zeros_is_cut_at_the_tail_and_refused_earlier() {
        let tmp = dir("after-zeros");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, (1..=5).map(|i| (i, vec![5u8; 64])).collect());
        drop(w);
        // A later record's block reached the disk and an earlier one's did not: a crash
        // before the sync. The records after the hole were never acknowledged.
        let seg = d.join(segment_name(1));
        let mut data = std::fs::read(&seg).unwrap();
        let end = data_end(&seg, 1) as usize;
        let third = 2 * (HEADER + 64);
        data[third..third + HEADER + 64].fill(0);
        std::fs::write(&seg, &data[..end + 4096]).unwrap();
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), vec![1, 2]);
        append_sync(&w, (3..=5).map(|i| (i, vec![6u8; 64])).collect());
        drop(w);
        // The same in a segment followed by another is corruption.
        std::fs::write(d.join(segment_name(100)), b"").unwrap();
        let mut data = std::fs::read(&seg).unwrap();
        data[2 * (HEADER + 64)..3 * (HEADER + 64)].fill(0);
        std::fs::write(&seg, &data).unwrap();
        let err = Wal::open(&d)
            .err()
            .expect("data after zeros must refuse to open");
        assert!(err.to_string().contains("refusing to start"), "{err}");
    }

    #[test]
    fn appended_records_survive_a_reopen() {
        let tmp = dir("reopen");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(
            &w,
            (1..=100)
                .map(|i| (i, format!("entry {i}").into_bytes()))
                .collect(),
        );
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), (1..=100).collect::<Vec<_>>());
        assert_eq!(&*w.range(42, 43).unwrap()[0].1, b"entry 42");
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_rest_kept() {
        let tmp = dir("torn");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, (1..=10).map(|i| (i, vec![i as u8; 100])).collect());
        drop(w);
        // Cut the last record in half, as a crash mid-write would.
        let seg = d.join(segment_name(1));
        let len = data_end(&seg, 1);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 50)
            .unwrap();
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), (1..=9).collect::<Vec<_>>());
        // Appending continues from there.
        append_sync(&w, vec![(10, b"again".to_vec())]);
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(&*w.last().unwrap().unwrap().1, b"again");
    }

    #[test]
    fn a_flipped_bit_in_the_tail_is_cut_but_earlier_corruption_refuses_to_open() {
        let tmp = dir("bitflip");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, (1..=5).map(|i| (i, vec![7u8; 64])).collect());
        drop(w);
        let seg = d.join(segment_name(1));
        let mut data = std::fs::read(&seg).unwrap();
        let last = data_end(&seg, 1) as usize - 10;
        data[last] ^= 1;
        std::fs::write(&seg, &data).unwrap();
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), vec![1, 2, 3, 4]);
        drop(w);
        // Corruption in a segment followed by another: refuse.
        std::fs::write(d.join(segment_name(100)), b"").unwrap();
        let mut data = std::fs::read(&seg).unwrap();
        data[HEADER + 3] ^= 1;
        std::fs::write(&seg, &data).unwrap();
        let err = Wal::open(&d).err().expect("corruption must refuse to open");
        assert!(err.to_string().contains("refusing to start"), "{err}");
    }

    #[test]
    fn truncate_and_purge_leave_no_hole() {
        let tmp = dir("truncate");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, (1..=20).map(|i| (i, vec![1u8; 10])).collect());
        w.truncate_after(Some(15)).unwrap();
        assert_eq!(bodies(&w).last(), Some(&15));
        append_sync(&w, vec![(16, b"new".to_vec())]);
        w.purge(5, "lp".into()).unwrap();
        assert_eq!(w.first_index().unwrap(), Some(6));
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), (6..=16).collect::<Vec<_>>());
        assert_eq!(&*w.last().unwrap().unwrap().1, b"new");
        assert_eq!(w.meta().unwrap().purged_index, Some(5));
        w.truncate_after(None).unwrap();
        assert!(bodies(&w).is_empty());
    }

    #[test]
    fn segments_roll_and_purge_deletes_whole_ones() {
        let tmp = dir("roll");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        let big = vec![3u8; 1024 * 1024];
        append_sync(&w, (1..=40).map(|i| (i, big.clone())).collect());
        let segs = || {
            std::fs::read_dir(&d)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("seg-")
                })
                .count()
        };
        assert!(segs() >= 2, "40 MiB rolls past one 16 MiB segment");
        w.purge(39, "lp".into()).unwrap();
        assert_eq!(segs(), 1);
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), vec![40]);
    }

    #[test]
    fn meta_is_replaced_atomically() {
        let tmp = dir("meta");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        let m = Meta {
            vote: Some("v1".into()),
            committed: Some("c".into()),
            ..Meta::default()
        };
        w.save_meta(m.clone()).unwrap();
        drop(w);
        let w = Wal::open(&d).unwrap();
        assert_eq!(w.meta().unwrap(), m);
    }

    fn open_limited(d: &Path, memory_bytes: u64) -> Wal {
        Wal::open_with(
            d,
            WalOptions {
                memory_bytes,
                ..WalOptions::default()
            },
        )
        .unwrap()
    }

    fn numbered(from: u64, to: u64, tag: &str) -> Vec<(u64, Vec<u8>)> {
        (from..=to)
            .map(|i| (i, format!("{tag} {i:>96}").into_bytes()))
            .collect()
    }

    fn contents(w: &Wal) -> Vec<(u64, Vec<u8>)> {
        w.range(0, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|(i, b)| (i, b.to_vec()))
            .collect()
    }

    #[test]
    fn only_the_newest_records_stay_in_memory_and_the_rest_read_back_from_disk() {
        let tmp = dir("memory");
        let d = tmp.path().to_path_buf();
        let w = open_limited(&d, 1000);
        for batch in 0..10 {
            append_sync(&w, numbered(batch * 10 + 1, batch * 10 + 10, "entry"));
            assert!(w.resident_bytes().unwrap() <= 1000);
        }
        let all = numbered(1, 100, "entry");
        assert_eq!(contents(&w), all);
        assert_eq!(w.range(37, 44).unwrap().len(), 7);
        assert_eq!(&*w.range(37, 38).unwrap()[0].1, &all[36].1[..]);
        drop(w);
        // A reopened log keeps the same bound, reading segment by segment.
        let w = open_limited(&d, 1000);
        assert!(w.resident_bytes().unwrap() <= 1000);
        assert_eq!(contents(&w), all);
        // With no bound at all, everything stays in memory.
        drop(w);
        let w = open_limited(&d, u64::MAX);
        assert!(w.resident_bytes().unwrap() >= 100 * 100);
    }

    #[test]
    fn records_cut_off_and_appended_again_read_back_as_the_new_ones() {
        let tmp = dir("memory-truncate");
        let d = tmp.path().to_path_buf();
        // Room for about 30 records: 21..=50 are in memory, written, when 31..=50 are cut
        // off; the ones appended again are longer, so their old places hold other bytes.
        let w = open_limited(&d, 3000);
        append_sync(&w, numbered(1, 50, "old"));
        w.truncate_after(Some(30)).unwrap();
        for from in (31..=80).step_by(10) {
            append_sync(&w, numbered(from, from + 9, "appended again"));
        }
        assert!(w.resident_bytes().unwrap() <= 3000);
        let mut want = numbered(1, 30, "old");
        want.extend(numbered(31, 80, "appended again"));
        assert_eq!(contents(&w), want);
        assert_eq!(&*w.last().unwrap().unwrap().1, &want[79].1[..]);
        w.purge(10, "lp".into()).unwrap();
        assert_eq!(contents(&w), want[10..].to_vec());
        drop(w);
        assert_eq!(contents(&open_limited(&d, 0)), want[10..].to_vec());
    }

    #[test]
    fn purged_records_do_not_stay_in_memory_below_the_bound() {
        let tmp = dir("memory-purged");
        let d = tmp.path().to_path_buf();
        let w = open_limited(&d, u64::MAX);
        append_sync(&w, numbered(1, 100, "entry"));
        w.purge(90, "lp".into()).unwrap();
        append_sync(&w, numbered(101, 101, "entry"));
        let idx = w.index.read().unwrap();
        assert_eq!(idx.resident, 11 * 102);
        assert_eq!(idx.written.len(), 11, "purged records are let go");
    }

    #[test]
    fn a_record_that_does_not_read_back_is_an_error_not_other_bytes() {
        let tmp = dir("memory-corrupt");
        let d = tmp.path().to_path_buf();
        let w = open_limited(&d, 0);
        append_sync(&w, numbered(1, 5, "entry"));
        let seg = d.join(segment_name(1));
        let mut data = std::fs::read(&seg).unwrap();
        data[2 * (HEADER + 102) + HEADER + 5] ^= 1;
        std::fs::write(&seg, &data).unwrap();
        let err = w.range(1, 6).expect_err("a flipped bit must not read back");
        assert!(err.to_string().contains("log record 3"), "{err}");
        assert_eq!(w.range(1, 3).unwrap().len(), 2);
    }

    #[test]
    fn appending_with_a_hole_is_refused() {
        let tmp = dir("hole");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, vec![(1, vec![]), (2, vec![])]);
        assert!(w.append(vec![(4, vec![])], Box::new(|_| {})).is_err());
    }
}
