//! The durable log under replicas: append-only segment files of checksummed records, with
//! group commit, truncation of a tail, purge of a head, and a small metadata file per log
//! (vote, purge point) replaced atomically.
//!
//! One [`LogSet`] (a directory of segments and one writer thread) holds the logs of any
//! number of replicas — a server's routing groups share one — so a commit round writes every
//! group's records with one `write` and makes them durable with one `fdatasync`, however many
//! groups the server holds. A log of its own ([`Wal::open`]) is a set holding one log.
//!
//! Layout of a set's directory:
//! - `log-<sequence, 20 digits>.wal`: records `[len u32][crc32c u32][kind u8][key u64]
//!   [index u64][body]`, the checksum covering kind, key, index and body, then zeros. `key`
//!   names the log (a random number drawn when the log is created, kept in its `meta.json`).
//!   Kinds: an *entry*; a *truncation* (the log's entries from `index` on are gone); a *copy*
//!   (an entry moved forward out of an old segment, replacing nothing else); a *claim* (the
//!   log's directory, relative to the set's). A new segment starts past `SEGMENT_BYTES`, with
//!   a claim of every live log. The writer extends a segment with zeros ahead of its records
//!   ([`PREALLOCATE_BYTES`] at a time), so an append overwrites bytes the file already has and
//!   its `fdatasync` writes the data alone, not the inode's new size as well: on ext4 that
//!   halves the time and CPU of the sync every commit waits for. A record's kind is never 0,
//!   so a zero header ends a segment.
//! - A log's `meta.json` (in the log's own directory): `{vote, committed, last_purged,
//!   purged_index, key}`, written to a temporary file, fsynced, renamed over the old one, and
//!   the directory fsynced.
//!
//! On open, every segment is read back and checked. A torn or corrupt record at the end of
//! the last segment is a crash in the middle of a write: the file is cut there (those records
//! were never acknowledged). Anything wrong earlier is corruption: opening fails and says where.
//! A log whose directory no longer holds its key (removed, or created again) is gone: its
//! records are dead.
//!
//! All writes go through one thread, in submission order; an append's callback runs only after
//! `fdatasync` returned, and appends queued together — of any log of the set — share one
//! `fdatasync`. Segments are deleted from the oldest on, once no live record is in them (so
//! a truncation or a claim is never outlived by what it refers to); when more than
//! [`COPY_AFTER_SEGMENTS`] are kept and the oldest holds little that is live (a quiet group's
//! entries), those records are copied forward so that it can go.
//!
//! Readers see records in memory until the writer has written them; then only the newest
//! [`WalOptions::memory_bytes`] of each log stay there and older ones are read back from their
//! segment (checked again) when asked for — a lagging follower's catch-up, a restart's replay.
//! A log that keeps 100,000 entries between snapshots therefore does not keep them in memory.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

/// A segment grows to about this size before a new one starts.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Largest record accepted (a record claiming more is corruption).
pub const MAX_RECORD_BYTES: u32 = 256 * 1024 * 1024;
const HEADER: usize = 4 + 4 + 1 + 8 + 8;
/// Zeros written ahead of the records each time a segment runs out of them.
pub const PREALLOCATE_BYTES: u64 = 1024 * 1024;
/// With more segments than this, an oldest one that holds at most half a segment of live
/// records has them copied forward and goes.
pub const COPY_AFTER_SEGMENTS: usize = 4;

const ENTRY: u8 = 1;
const TRUNCATE: u8 = 2;
const COPY: u8 = 3;
const CLAIM: u8 = 4;

/// What a log's `meta.json` holds: opaque to the log, interpreted by the consensus layer,
/// and the log's key in its set.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub vote: Option<String>,
    pub committed: Option<String>,
    pub last_purged: Option<String>,
    /// Index of the last purged entry (entries at or below are gone).
    pub purged_index: Option<u64>,
    /// The log's key in its set (0: not drawn yet).
    #[serde(default)]
    pub key: u64,
}

/// Called once an append is durable (or failed).
pub type Done = Box<dyn FnOnce(io::Result<()>) + Send>;

enum Job {
    Append {
        key: u64,
        records: Vec<(u64, Arc<Vec<u8>>)>,
        done: Done,
    },
    Truncate {
        key: u64,
        from: u64,
        done: Done,
    },
    Claim {
        key: u64,
        dir: PathBuf,
        index: Arc<RwLock<Index>>,
        done: Done,
    },
    Meta {
        dir: PathBuf,
        meta: Meta,
        reply: mpsc::Sender<io::Result<()>>,
    },
    Collect {
        reply: mpsc::Sender<io::Result<()>>,
    },
}

/// Where a written record is: segment (by sequence number), header offset, body length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

/// A written record of a log: index, bytes, place.
type Placed = (u64, Arc<Vec<u8>>, Loc);
/// A live record to copy forward: key, index, bytes, place.
type Live = (u64, u64, Arc<Vec<u8>>, Loc);
/// Adjacent records on disk to read at once: segment, first header offset, end, and each
/// record's index and length.
type Run = (u64, u64, u64, Vec<(u64, u32)>);

/// A record of a log: its bytes while in memory, its place once written (at least one).
#[derive(Clone)]
struct Slot {
    body: Option<Arc<Vec<u8>>>,
    at: Option<Loc>,
}

/// The records of one log by index (what readers see): its content between purge point and
/// end.
#[derive(Default)]
pub(crate) struct Index {
    entries: BTreeMap<u64, Slot>,
    /// Bytes of the records held in memory.
    resident: u64,
    /// Written records still in memory, oldest first: the first to leave it.
    written: VecDeque<(u64, Arc<Vec<u8>>)>,
}

impl Index {
    fn insert(&mut self, index: u64, body: Arc<Vec<u8>>, at: Option<Loc>) {
        self.resident += body.len() as u64;
        let old = self.entries.insert(
            index,
            Slot {
                body: Some(body),
                at,
            },
        );
        if let Some(Slot { body: Some(b), .. }) = old {
            self.resident -= b.len() as u64;
        }
    }

    /// Forgets the records from `from` on.
    fn cut_from(&mut self, from: u64) {
        let gone = self.entries.split_off(&from);
        self.forget(gone);
    }

    /// Forgets the records at or below `upto`.
    fn cut_upto(&mut self, upto: u64) {
        let kept = self.entries.split_off(&(upto.saturating_add(1)));
        let gone = std::mem::replace(&mut self.entries, kept);
        self.forget(gone);
    }

    fn forget(&mut self, removed: BTreeMap<u64, Slot>) {
        for slot in removed.into_values() {
            if let Some(b) = slot.body {
                self.resident -= b.len() as u64;
            }
        }
    }

    /// Whether the index still holds this record in memory (not one cut off, purged, or
    /// appended again since).
    fn holds(&self, index: u64, body: &Arc<Vec<u8>>) -> bool {
        matches!(self.entries.get(&index), Some(Slot { body: Some(b), .. }) if Arc::ptr_eq(b, body))
    }

    /// Records where `written` records are, then lets the oldest written records leave memory
    /// until at most `limit` bytes stay. A record truncated and appended again since it was
    /// written is a different `Arc`: its old place is never used.
    fn on_written(&mut self, written: Vec<Placed>, limit: u64) {
        for (index, body, loc) in written {
            if let Some(slot) = self.entries.get_mut(&index)
                && matches!(&slot.body, Some(b) if Arc::ptr_eq(b, &body))
            {
                slot.at = Some(loc);
                self.written.push_back((index, body));
            }
        }
        // Records purged or cut off since they were written leave the queue once they reach
        // its front (purged ones are there first), so their bytes are not held past them.
        while let Some((i, b)) = self.written.front() {
            if self.holds(*i, b) {
                break;
            }
            self.written.pop_front();
        }
        while self.resident > limit {
            let Some((index, body)) = self.written.pop_front() else {
                break;
            };
            if self.holds(index, &body)
                && let Some(slot) = self.entries.get_mut(&index)
                && slot.at.is_some()
            {
                self.resident -= body.len() as u64;
                slot.body = None;
            }
        }
    }

    /// Moves a record written at `from` to `to` (copied forward), unless it changed since.
    fn relocate(&mut self, index: u64, from: Loc, to: Loc) {
        if let Some(slot) = self.entries.get_mut(&index)
            && slot.at == Some(from)
        {
            slot.at = Some(to);
        }
    }

    fn uses(&self, segment: u64) -> bool {
        self.entries
            .values()
            .any(|s| s.at.is_some_and(|l| l.segment == segment))
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
    /// Bytes of written records kept in memory per log (the newest); older ones are read
    /// from disk.
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

/// A log of the set, as the writer knows it.
struct Group {
    /// The log's directory (where its `meta.json` is).
    dir: PathBuf,
    /// The same, relative to the set's directory, as claims record it.
    claim: String,
    index: Arc<RwLock<Index>>,
}

type Groups = Arc<Mutex<BTreeMap<u64, Group>>>;

enum Backend {
    Thread(mpsc::Sender<Job>),
    Inline(Arc<Mutex<Writer>>),
}

/// A directory of segments shared by several logs, with the thread that writes them; cheap
/// to clone.
#[derive(Clone)]
pub struct LogSet {
    jobs: Arc<Backend>,
    groups: Groups,
    dir: Arc<Path>,
    options: WalOptions,
}

impl std::fmt::Debug for LogSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSet").field("dir", &self.dir).finish()
    }
}

/// A handle on one log of a set; cheap to clone.
#[derive(Clone)]
pub struct Wal {
    set: LogSet,
    key: u64,
    index: Arc<RwLock<Index>>,
    meta: Arc<RwLock<Meta>>,
    /// Shared, not copied: openraft clones a log's handle for every read.
    dir: Arc<Path>,
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn poisoned() -> io::Error {
    io::Error::other("log index poisoned")
}

fn segment_name(seq: u64) -> String {
    format!("log-{seq:020}.wal")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A record header's fields: body length, checksum, kind, key, index.
fn header_fields(head: &[u8; HEADER]) -> (u32, u32, u8, u64, u64) {
    let (len, rest) = head.split_at(4);
    let (crc, rest) = rest.split_at(4);
    let (kind, rest) = rest.split_at(1);
    let (key, index) = rest.split_at(8);
    let u32_of = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap_or([0; 4]));
    let u64_of = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    (
        u32_of(len),
        u32_of(crc),
        kind[0],
        u64_of(key),
        u64_of(index),
    )
}

/// The checksum a record carries: of its kind, key and index, then its body.
fn checksum(kind: u8, key: u64, index: u64, body: &[u8]) -> u32 {
    let mut head = [0u8; 17];
    head[0] = kind;
    head[1..9].copy_from_slice(&key.to_be_bytes());
    head[9..].copy_from_slice(&index.to_be_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&head), body)
}

fn encode(buf: &mut Vec<u8>, kind: u8, key: u64, index: u64, body: &[u8]) -> io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD_BYTES)
        .ok_or_else(|| corrupt(format!("record {index} too large")))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&checksum(kind, key, index, body).to_be_bytes());
    buf.push(kind);
    buf.extend_from_slice(&key.to_be_bytes());
    buf.extend_from_slice(&index.to_be_bytes());
    buf.extend_from_slice(body);
    Ok(())
}

/// A record read back from a segment.
struct Record {
    kind: u8,
    key: u64,
    index: u64,
    offset: u64,
    body: Vec<u8>,
}

/// Reads one segment, checking every record. Returns its records, where the good part ends,
/// and what was wrong after it, if anything.
fn read_segment(path: &Path) -> io::Result<(Vec<Record>, u64, Option<String>)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    let mut pos = 0usize;
    let mut records = Vec::new();
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
        let Some(head) = data
            .get(pos..pos + HEADER)
            .and_then(|h| <&[u8; HEADER]>::try_from(h).ok())
        else {
            problem = Some(format!(
                "{} bytes of a record header at offset {pos}",
                data.len() - pos
            ));
            break;
        };
        let (len, crc, kind, key, index) = header_fields(head);
        if len > MAX_RECORD_BYTES || data.len() - pos - HEADER < len as usize {
            problem = Some(format!(
                "record at offset {pos} claims {len} bytes, {} remain",
                data.len() - pos - HEADER
            ));
            break;
        }
        let body = &data[pos + HEADER..pos + HEADER + len as usize];
        if checksum(kind, key, index, body) != crc || !(ENTRY..=CLAIM).contains(&kind) {
            problem = Some(format!(
                "checksum mismatch in the record at offset {pos} (index {index})"
            ));
            break;
        }
        records.push(Record {
            kind,
            key,
            index,
            offset: pos as u64,
            body: body.to_vec(),
        });
        pos += HEADER + len as usize;
    }
    Ok((records, pos as u64, problem))
}

/// `to` relative to `from` (both absolute and canonical).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    out
}

/// Whether the log `key` is gone from `dir`: its `meta.json` is missing or names another
/// key. Anything else (a file that cannot be read now) keeps it: only a log known to be gone
/// loses its records.
fn gone_from(dir: &Path, key: u64) -> bool {
    match std::fs::read(dir.join("meta.json")) {
        Err(e) => e.kind() == io::ErrorKind::NotFound,
        Ok(bytes) => serde_json::from_slice::<Meta>(&bytes).is_ok_and(|m| m.key != key),
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

/// An fdatasync of the log taking this long is reported (the disk is the likely cause of a
/// pause every commit then shares).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(200);

/// A segment on disk: its sequence number, path and length of its records.
struct Segment {
    seq: u64,
    path: PathBuf,
    len: u64,
}

/// A record waiting in the writer's buffer.
struct Staged {
    key: u64,
    index: u64,
    /// Where its header is in the buffer.
    at: u64,
    /// An entry's body, to tell its log where it is once written.
    body: Option<Arc<Vec<u8>>>,
    /// A copy: where the record was.
    moved_from: Option<Loc>,
}

struct Writer {
    dir: PathBuf,
    segments: Vec<Segment>,
    file: Option<File>,
    /// Bytes the open file has: its records, then zeros written ahead.
    allocated: u64,
    /// fsync data and directories (off only in simulations).
    sync: bool,
    groups: Groups,
    memory_bytes: u64,
    /// Records encoded and not yet written, all for the last segment.
    buf: Vec<u8>,
    staged: Vec<Staged>,
    /// Callers waiting for the next sync.
    pending: Vec<Done>,
    /// A write of this round failed and its records were dropped: the round's callers are
    /// told so, whatever the later writes and the sync do.
    lost: Option<(io::ErrorKind, String)>,
    /// A segment was started since the last collection.
    rolled: bool,
}

impl Writer {
    /// Opens the last segment for appending, or starts the first.
    fn open_file(&mut self) -> io::Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        match self.segments.last() {
            Some(s) => {
                let f = OpenOptions::new().write(true).open(&s.path)?;
                self.allocated = f.metadata()?.len();
                self.file = Some(f);
                Ok(())
            }
            None => self.roll(),
        }
    }

    /// Starts a new segment (the current one made durable first: the round's sync covers only
    /// the new one) and claims every live log in it, so that deleting older segments never
    /// loses the claim of a log with records in newer ones.
    fn roll(&mut self) -> io::Result<()> {
        self.write_out()?;
        if let Some(old) = &self.file
            && self.sync
        {
            old.sync_data()?;
        }
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = self.dir.join(segment_name(seq));
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        if self.sync {
            f.sync_all()?;
        }
        self.sync_dir()?;
        self.segments.push(Segment { seq, path, len: 0 });
        self.file = Some(f);
        self.allocated = 0;
        self.rolled = true;
        let claims: Vec<(u64, String)> = self
            .groups
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(k, g)| (*k, g.claim.clone()))
            .collect();
        for (key, claim) in claims {
            self.stage(CLAIM, key, 0, claim.as_bytes(), None, None)?;
        }
        Ok(())
    }

    /// Encodes a record into the buffer, starting a new segment first when the current one
    /// is full.
    fn stage(
        &mut self,
        kind: u8,
        key: u64,
        index: u64,
        body: &[u8],
        entry: Option<Arc<Vec<u8>>>,
        moved_from: Option<Loc>,
    ) -> io::Result<()> {
        self.open_file()?;
        let used = self.segments.last().map_or(0, |s| s.len) + self.buf.len() as u64;
        if used >= SEGMENT_BYTES && kind != CLAIM {
            self.roll()?;
        }
        let at = self.buf.len() as u64;
        encode(&mut self.buf, kind, key, index, body)?;
        if entry.is_some() {
            self.staged.push(Staged {
                key,
                index,
                at,
                body: entry,
                moved_from,
            });
        }
        Ok(())
    }

    /// Writes the buffer at the end of the last segment, then tells each log where its
    /// records are.
    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let (seq, start) = self
            .segments
            .last()
            .map(|s| (s.seq, s.len))
            .ok_or_else(|| io::Error::other("no open segment"))?;
        self.write_ahead(start + self.buf.len() as u64)?;
        let file = self
            .file
            .as_ref()
            .ok_or_else(|| io::Error::other("no open segment"))?;
        let written = file.write_all_at(&self.buf, start);
        let len = self.buf.len() as u64;
        self.buf.clear();
        let staged = std::mem::take(&mut self.staged);
        if let Err(e) = written {
            self.lost = Some((e.kind(), e.to_string()));
            return Err(e);
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.len += len;
        }
        let mut by_key: BTreeMap<u64, Vec<Staged>> = BTreeMap::new();
        for s in staged {
            by_key.entry(s.key).or_default().push(s);
        }
        for (key, records) in by_key {
            let Some(index) = self.index_of(key)? else {
                continue;
            };
            let mut idx = index.write().map_err(|_| poisoned())?;
            let mut fresh = Vec::new();
            for s in records {
                let Some(body) = s.body else { continue };
                let loc = Loc {
                    segment: seq,
                    offset: start + s.at,
                    len: body.len() as u32,
                };
                match s.moved_from {
                    Some(from) => idx.relocate(s.index, from, loc),
                    None => fresh.push((s.index, body, loc)),
                }
            }
            idx.on_written(fresh, self.memory_bytes);
        }
        Ok(())
    }

    fn index_of(&self, key: u64) -> io::Result<Option<Arc<RwLock<Index>>>> {
        Ok(self
            .groups
            .lock()
            .map_err(|_| poisoned())?
            .get(&key)
            .map(|g| g.index.clone()))
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
                // Every commit waits for this: a disk that stalls shows up as a pause of every
                // group, and should be named as the cause.
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

    /// Makes every staged record durable with one `fdatasync`, then tells the callers.
    fn flush(&mut self) {
        if self.pending.is_empty() && self.buf.is_empty() {
            return;
        }
        let result = self.write_out().and_then(|()| self.sync());
        let result = match self.lost.take() {
            Some((kind, msg)) => Err(io::Error::new(kind, msg)),
            None => result,
        };
        for done in self.pending.drain(..) {
            done(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }

    /// Runs one job; records wait in the buffer for the next `flush`.
    fn run(&mut self, job: Job) {
        match job {
            Job::Append { key, records, done } => {
                let staged = records.into_iter().try_for_each(|(i, body)| {
                    self.stage(ENTRY, key, i, &body, Some(body.clone()), None)
                });
                self.after_stage(staged, done);
            }
            Job::Truncate { key, from, done } => {
                let staged = self.stage(TRUNCATE, key, from, &[], None, None);
                self.after_stage(staged, done);
            }
            Job::Claim {
                key,
                dir,
                index,
                done,
            } => {
                let claim = relative(&self.dir, &dir).to_string_lossy().into_owned();
                // A first segment started now claims the logs registered before this one.
                let opened = self.open_file();
                let registered = opened
                    .and_then(|()| self.groups.lock().map_err(|_| poisoned()))
                    .map(|mut g| {
                        g.entry(key).or_insert(Group {
                            dir,
                            claim: claim.clone(),
                            index,
                        });
                    });
                let staged = registered
                    .and_then(|()| self.stage(CLAIM, key, 0, claim.as_bytes(), None, None));
                self.after_stage(staged, done);
            }
            Job::Meta { dir, meta, reply } => {
                self.flush();
                let _ = reply.send(write_meta(&dir, &meta, self.sync));
            }
            Job::Collect { reply } => {
                self.flush();
                let _ = reply.send(self.collect());
            }
        }
    }

    fn after_stage(&mut self, staged: io::Result<()>, done: Done) {
        match staged {
            Ok(()) => self.pending.push(done),
            Err(e) => {
                // The other jobs' records staged before it are written and synced (or their
                // callers learn they were lost); this job's caller learns it failed.
                self.flush();
                done(Err(e));
            }
        }
    }

    /// Forgets logs whose directory no longer holds their key, deletes the oldest segments
    /// while no live record is in them, and copies the live records of a mostly dead oldest
    /// segment forward when too many are kept. Runs between rounds: a copy that failed to be
    /// written lost no caller's record (the originals stay where they were).
    fn collect(&mut self) -> io::Result<()> {
        let result = self.collect_round();
        self.lost = None;
        result
    }

    fn collect_round(&mut self) -> io::Result<()> {
        self.rolled = false;
        {
            let mut groups = self.groups.lock().map_err(|_| poisoned())?;
            groups.retain(|key, g| {
                let live = !gone_from(&g.dir, *key);
                if !live {
                    tracing::info!(log = %g.dir.display(), "log removed: its records in the shared log are dead");
                }
                live
            });
        }
        self.delete_dead()?;
        if self.segments.len() > COPY_AFTER_SEGMENTS
            && let Some(head) = self.segments.first().map(|s| s.seq)
        {
            let live = self.live_in(head)?;
            let bytes: u64 = live.iter().map(|(_, _, b, _)| b.len() as u64).sum();
            if bytes <= SEGMENT_BYTES / 2 {
                let moved = live.len();
                for (key, index, body, from) in live {
                    self.stage(COPY, key, index, &body, Some(body.clone()), Some(from))?;
                }
                self.write_out()?;
                self.sync()?;
                tracing::info!(
                    segment = head,
                    records = moved,
                    bytes,
                    "copied the live records of the oldest log segment forward"
                );
                self.delete_dead()?;
            }
        }
        Ok(())
    }

    /// Deletes the oldest segments (never the last) while no live record is in them.
    fn delete_dead(&mut self) -> io::Result<()> {
        let mut deleted = false;
        while self.segments.len() > 1 {
            let seq = self.segments[0].seq;
            let indexes: Vec<Arc<RwLock<Index>>> = self
                .groups
                .lock()
                .map_err(|_| poisoned())?
                .values()
                .map(|g| g.index.clone())
                .collect();
            let mut used = false;
            for index in indexes {
                if index.read().map_err(|_| poisoned())?.uses(seq) {
                    used = true;
                    break;
                }
            }
            if used {
                break;
            }
            let seg = self.segments.remove(0);
            std::fs::remove_file(&seg.path)?;
            deleted = true;
        }
        if deleted {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// The live records in segment `seq`: key, index, body, place.
    fn live_in(&self, seq: u64) -> io::Result<Vec<Live>> {
        let groups: Vec<(u64, Arc<RwLock<Index>>)> = self
            .groups
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(k, g)| (*k, g.index.clone()))
            .collect();
        let mut out = Vec::new();
        for (key, index) in groups {
            let idx = index.read().map_err(|_| poisoned())?;
            for (i, slot) in &idx.entries {
                let Some(loc) = slot.at.filter(|l| l.segment == seq) else {
                    continue;
                };
                let body = match &slot.body {
                    Some(b) => b.clone(),
                    None => Arc::new(read_one(&self.dir, key, *i, loc)?),
                };
                out.push((key, *i, body, loc));
            }
        }
        Ok(out)
    }
}

/// Reads back and checks one record.
fn read_one(dir: &Path, key: u64, index: u64, loc: Loc) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    read_run(
        dir,
        key,
        loc.segment,
        loc.offset,
        &[(index, loc.len)],
        &mut out,
    )?;
    out.pop()
        .map(|(_, b)| b.as_ref().clone())
        .ok_or_else(|| io::Error::other("record not read"))
}

/// Reads adjacent records of log `key` starting at `start` in segment `segment`, checking
/// each as on open.
fn read_run(
    dir: &Path,
    key: u64,
    segment: u64,
    start: u64,
    records: &[(u64, u32)],
    out: &mut Vec<(u64, Arc<Vec<u8>>)>,
) -> io::Result<()> {
    let path = dir.join(segment_name(segment));
    let file = File::open(&path)?;
    let total: u64 = records
        .iter()
        .map(|(_, len)| HEADER as u64 + u64::from(*len))
        .sum();
    let mut data = vec![0u8; total as usize];
    file.read_exact_at(&mut data, start)?;
    let mut pos = 0usize;
    for &(index, len) in records {
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
        let (l, crc, kind, k, at) = header_fields(head);
        let body = data
            .get(pos + HEADER..pos + HEADER + len as usize)
            .ok_or_else(bad)?;
        if l != len || k != key || at != index || checksum(kind, k, at, body) != crc {
            return Err(bad());
        }
        out.push((index, Arc::new(body.to_vec())));
        pos += HEADER + len as usize;
    }
    Ok(())
}

/// Refuses a directory holding a log of the format before sets (`seg-*.log`, records
/// without a key): opened as a new log, its entries would be silently lost while its vote
/// stayed.
fn refuse_earlier_format(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("seg-") && name.ends_with(".log") {
            return Err(corrupt(format!(
                "{} is a log segment of an earlier Tandem, which this version cannot read: \
                 start this replica from an empty directory (it is seeded from the others)",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// What replaying a set's segments found for one log.
struct Replayed {
    index: Index,
    claim: Option<String>,
}

impl LogSet {
    /// Opens (or creates) the set in `dir`, reading back and checking every segment.
    pub fn open(dir: &Path, options: WalOptions) -> io::Result<LogSet> {
        std::fs::create_dir_all(dir)?;
        sync_dir(dir.parent().unwrap_or(dir))?;
        let dir = dir.canonicalize()?;
        refuse_earlier_format(&dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(num) = name
                .strip_prefix("log-")
                .and_then(|n| n.strip_suffix(".wal"))
            {
                let seq = num
                    .parse::<u64>()
                    .map_err(|_| corrupt(format!("unexpected file {name} in {}", dir.display())))?;
                names.push((seq, entry.path()));
            }
        }
        names.sort();
        let mut logs: BTreeMap<u64, Replayed> = BTreeMap::new();
        let mut segments = Vec::new();
        let count = names.len();
        for (n, (seq, path)) in names.into_iter().enumerate() {
            let (records, len, problem) = read_segment(&path)?;
            if let Some(why) = problem {
                if n + 1 < count {
                    return Err(corrupt(format!(
                        "log segment {} is corrupt ({why}) and later segments exist: refusing to start",
                        path.display()
                    )));
                }
                tracing::warn!(segment = %path.display(), %why, "cutting the torn tail of the log (never acknowledged)");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(len)?;
                f.sync_all()?;
            }
            // Segment by segment, so a long log is never all in memory at once.
            let mut written: BTreeMap<u64, Vec<Placed>> = BTreeMap::new();
            for r in records {
                let log = logs.entry(r.key).or_insert(Replayed {
                    index: Index::default(),
                    claim: None,
                });
                let loc = Loc {
                    segment: seq,
                    offset: r.offset,
                    len: r.body.len() as u32,
                };
                match r.kind {
                    ENTRY => {
                        if let Some(last) = log.index.entries.keys().next_back()
                            && r.index <= *last
                        {
                            return Err(corrupt(format!(
                                "log segment {} holds entry {} of log {:016x} after entry {last}: refusing to start",
                                path.display(),
                                r.index,
                                r.key
                            )));
                        }
                        let body = Arc::new(r.body);
                        log.index.insert(r.index, body.clone(), None);
                        written.entry(r.key).or_default().push((r.index, body, loc));
                    }
                    COPY => {
                        let body = Arc::new(r.body);
                        log.index.insert(r.index, body.clone(), None);
                        written.entry(r.key).or_default().push((r.index, body, loc));
                    }
                    TRUNCATE => log.index.cut_from(r.index),
                    _ => log.claim = Some(String::from_utf8_lossy(&r.body).into_owned()),
                }
            }
            for (key, w) in written {
                if let Some(log) = logs.get_mut(&key) {
                    log.index.on_written(w, options.memory_bytes);
                }
            }
            segments.push(Segment { seq, path, len });
        }
        // A log whose directory no longer holds its key is gone.
        let mut groups = BTreeMap::new();
        for (key, log) in logs {
            let Some(claim) = log.claim else { continue };
            let gdir = dir.join(&claim);
            if !gone_from(&gdir, key) {
                groups.insert(
                    key,
                    Group {
                        dir: gdir,
                        claim,
                        index: Arc::new(RwLock::new(log.index)),
                    },
                );
            }
        }
        let groups: Groups = Arc::new(Mutex::new(groups));
        let writer = Writer {
            dir: dir.clone(),
            segments,
            file: None,
            allocated: 0,
            sync: options.sync,
            groups: groups.clone(),
            memory_bytes: options.memory_bytes,
            buf: Vec::new(),
            staged: Vec::new(),
            pending: Vec::new(),
            lost: None,
            rolled: true,
        };
        let backend = if options.inline {
            Backend::Inline(Arc::new(Mutex::new(writer)))
        } else {
            let (tx, rx) = mpsc::channel::<Job>();
            let mut writer = writer;
            std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        writer.run(first);
                        while let Ok(job) = rx.try_recv() {
                            writer.run(job);
                        }
                        writer.flush();
                        if writer.rolled
                            && let Err(e) = writer.collect()
                        {
                            tracing::warn!(log = %writer.dir.display(), error = %e, "cannot delete old log segments");
                        }
                    }
                })?;
            Backend::Thread(tx)
        };
        Ok(LogSet {
            jobs: Arc::new(backend),
            groups,
            dir: dir.into(),
            options,
        })
    }

    fn submit(&self, job: Job) -> io::Result<()> {
        match &*self.jobs {
            Backend::Thread(tx) => tx
                .send(job)
                .map_err(|_| io::Error::other("log writer stopped")),
            Backend::Inline(w) => {
                let mut writer = w
                    .lock()
                    .map_err(|_| io::Error::other("log writer poisoned"))?;
                writer.run(job);
                writer.flush();
                if writer.rolled {
                    writer.collect()?;
                }
                Ok(())
            }
        }
    }

    /// Submits a job and waits for its result.
    fn call(&self, make: impl FnOnce(mpsc::Sender<io::Result<()>>) -> Job) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.submit(make(tx))?;
        rx.recv()
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    /// Submits a job that ends with a sync, and waits for it.
    fn call_synced(&self, make: impl FnOnce(Done) -> Job) -> io::Result<()> {
        self.call(|tx| {
            make(Box::new(move |r| {
                let _ = tx.send(r);
            }))
        })
    }

    /// The set's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segment files the set has now.
    pub fn segments(&self) -> io::Result<usize> {
        Ok(std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
            .count())
    }
}

impl Wal {
    /// Opens (or creates) a log of its own in `dir`, checking every record.
    pub fn open(dir: &Path) -> io::Result<Wal> {
        Wal::open_with(dir, WalOptions::default())
    }

    /// Opens a log of its own with explicit options: a set in `dir` holding this one log.
    pub fn open_with(dir: &Path, options: WalOptions) -> io::Result<Wal> {
        let set = LogSet::open(dir, options)?;
        Wal::open_in(&set, dir)
    }

    /// Opens (or creates) the log whose metadata is in `dir`, in `set`. The log's records are
    /// checked for holes; a log created again in a directory (a new `meta.json`) starts empty
    /// whatever the set held for the one before.
    pub fn open_in(set: &LogSet, dir: &Path) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        refuse_earlier_format(&dir)?;
        let mut meta: Meta = match std::fs::read(dir.join("meta.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| corrupt(format!("{}: {e}", dir.join("meta.json").display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        if meta.key == 0 {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| io::Error::other(e.to_string()))?;
            meta.key = u64::from_le_bytes(b).max(1);
            write_meta(&dir, &meta, set.options.sync)?;
        }
        let key = meta.key;
        let known = set
            .groups
            .lock()
            .map_err(|_| poisoned())?
            .get(&key)
            .map(|g| g.index.clone());
        let claimed = known.is_some();
        let index = known.unwrap_or_default();
        {
            let mut idx = index.write().map_err(|_| poisoned())?;
            if let Some(p) = meta.purged_index {
                idx.cut_upto(p);
            }
            // Entries follow each other, from just past the purge point when there is one.
            let mut expect = meta.purged_index.map(|p| p + 1);
            for i in idx.entries.keys() {
                if expect.is_some_and(|e| e != *i) {
                    return Err(corrupt(format!(
                        "the log in {} has entry {i} where {} was expected: a hole",
                        dir.display(),
                        expect.unwrap_or_default()
                    )));
                }
                expect = Some(i + 1);
            }
        }
        // A new log claims its key in the set (opening an existing one writes nothing).
        if !claimed {
            let index = index.clone();
            let dir = dir.clone();
            set.call_synced(|done| Job::Claim {
                key,
                dir,
                index,
                done,
            })?;
        }
        Ok(Wal {
            set: set.clone(),
            key,
            index,
            meta: Arc::new(RwLock::new(meta)),
            dir: dir.into(),
        })
    }

    /// Appends records (indexes must follow the last one). They are readable at once; `done`
    /// runs when they are on disk.
    pub fn append(&self, records: Vec<(u64, Vec<u8>)>, done: Done) -> io::Result<()> {
        let records: Vec<(u64, Arc<Vec<u8>>)> =
            records.into_iter().map(|(i, b)| (i, Arc::new(b))).collect();
        {
            let mut idx = self.index.write().map_err(|_| poisoned())?;
            for (i, body) in &records {
                if let Some(last) = idx.entries.keys().next_back()
                    && *i != last + 1
                {
                    return Err(io::Error::other(format!(
                        "append of index {i} after {last} would leave a hole"
                    )));
                }
                idx.insert(*i, body.clone(), None);
            }
        }
        self.set.submit(Job::Append {
            key: self.key,
            records,
            done,
        })
    }

    /// Removes every record above `after` (all when `None`); durable when it returns.
    pub fn truncate_after(&self, after: Option<u64>) -> io::Result<()> {
        let from = after.map_or(0, |a| a + 1);
        self.index.write().map_err(|_| poisoned())?.cut_from(from);
        let key = self.key;
        self.set
            .call_synced(|done| Job::Truncate { key, from, done })
    }

    /// Forgets every record at or below `upto`: the purge point is made durable first, then
    /// the segments no log needs any more are deleted.
    pub fn purge(&self, upto: u64, last_purged: String) -> io::Result<()> {
        let mut meta = self.meta()?;
        meta.purged_index = Some(upto);
        meta.last_purged = Some(last_purged);
        self.save_meta(meta)?;
        self.index.write().map_err(|_| poisoned())?.cut_upto(upto);
        self.set.call(|reply| Job::Collect { reply })
    }

    /// Replaces the metadata, durably.
    pub fn save_meta(&self, mut meta: Meta) -> io::Result<()> {
        meta.key = self.key;
        let dir = self.dir.to_path_buf();
        let saved = meta.clone();
        self.set.call(|reply| Job::Meta { dir, meta, reply })?;
        *self
            .meta
            .write()
            .map_err(|_| io::Error::other("log meta poisoned"))? = saved;
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
        let idx = self.index.read().map_err(|_| poisoned())?;
        // Read under the lock: a record's segment is deleted only after no index refers to
        // it, which takes the lock.
        self.load(idx.entries.range(from..to))
    }

    /// The last record, if any.
    pub fn last(&self) -> io::Result<Option<(u64, Arc<Vec<u8>>)>> {
        let idx = self.index.read().map_err(|_| poisoned())?;
        Ok(self.load(idx.entries.iter().next_back().into_iter())?.pop())
    }

    /// Bytes of records held in memory.
    pub fn resident_bytes(&self) -> io::Result<u64> {
        Ok(self.index.read().map_err(|_| poisoned())?.resident)
    }

    /// The records of `slots`, in order: those on disk are read back, one read per run of
    /// adjacent records, and checked as on open.
    fn load<'a>(
        &self,
        slots: impl Iterator<Item = (&'a u64, &'a Slot)>,
    ) -> io::Result<Vec<(u64, Arc<Vec<u8>>)>> {
        let mut out = Vec::new();
        // Adjacent records on disk not read yet: segment, first header offset, end, records.
        let mut run: Option<Run> = None;
        let flush_run = |run: Option<Run>, out: &mut Vec<(u64, Arc<Vec<u8>>)>| match run {
            Some((segment, start, _, records)) => {
                read_run(&self.set.dir, self.key, segment, start, &records, out)
            }
            None => Ok(()),
        };
        for (&i, slot) in slots {
            match (&slot.body, slot.at) {
                (Some(b), _) => {
                    flush_run(run.take(), &mut out)?;
                    out.push((i, b.clone()));
                }
                (None, Some(loc)) => {
                    let end = loc.offset + HEADER as u64 + u64::from(loc.len);
                    match &mut run {
                        Some((s, _, e, records)) if *s == loc.segment && *e == loc.offset => {
                            *e = end;
                            records.push((i, loc.len));
                        }
                        _ => {
                            let next = (loc.segment, loc.offset, end, vec![(i, loc.len)]);
                            flush_run(run.replace(next), &mut out)?;
                        }
                    }
                }
                (None, None) => return Err(io::Error::other(format!("log record {i} is lost"))),
            }
        }
        flush_run(run, &mut out)?;
        Ok(out)
    }

    /// The first record's index, if any.
    pub fn first_index(&self) -> io::Result<Option<u64>> {
        Ok(self
            .index
            .read()
            .map_err(|_| poisoned())?
            .entries
            .keys()
            .next()
            .copied())
    }

    /// The log's directory (its `meta.json`).
    pub fn dir(&self) -> &Path {
        &self.dir
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
    fn data_end(seg: &Path) -> u64 {
        read_segment(seg).unwrap().1
    }

    /// The claim a log of its own starts its first segment with (an empty path).
    const CLAIM0: usize = HEADER;

    #[test]
    fn zeros_written_ahead_end_a_segment_and_appends_overwrite_them() {
        let tmp = dir("ahead");
        let d = tmp.path().to_path_buf();
        let w = Wal::open(&d).unwrap();
        append_sync(&w, (0..=9).map(|i| (i, vec![i as u8; 100])).collect());
        let seg = d.join(segment_name(1));
        let (len, end) = (std::fs::metadata(&seg).unwrap().len(), data_end(&seg));
        assert_eq!(end, (CLAIM0 + 10 * (HEADER + 100)) as u64);
        assert!(len >= PREALLOCATE_BYTES && len > end, "{len} bytes on disk");
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
        let end = data_end(&seg) as usize;
        let third = CLAIM0 + 2 * (HEADER + 64);
        data[third..third + HEADER + 64].fill(0);
        std::fs::write(&seg, &data[..end + 4096]).unwrap();
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), vec![1, 2]);
        append_sync(&w, (3..=5).map(|i| (i, vec![6u8; 64])).collect());
        drop(w);
        // The same in a segment followed by another is corruption.
        std::fs::write(d.join(segment_name(100)), b"").unwrap();
        let mut data = std::fs::read(&seg).unwrap();
        data[CLAIM0 + 2 * (HEADER + 64)..CLAIM0 + 3 * (HEADER + 64)].fill(0);
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
        let len = data_end(&seg);
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
        let last = data_end(&seg) as usize - 10;
        data[last] ^= 1;
        std::fs::write(&seg, &data).unwrap();
        let w = Wal::open(&d).unwrap();
        assert_eq!(bodies(&w), vec![1, 2, 3, 4]);
        drop(w);
        // Corruption in a segment followed by another: refuse.
        std::fs::write(d.join(segment_name(100)), b"").unwrap();
        let mut data = std::fs::read(&seg).unwrap();
        data[CLAIM0 + HEADER + 3] ^= 1;
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
                        .ends_with(".wal")
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
        let back = w.meta().unwrap();
        assert_eq!((back.vote, back.committed), (m.vote, m.committed));
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
        data[CLAIM0 + 2 * (HEADER + 102) + HEADER + 5] ^= 1;
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

    /// A set in `root/log` and logs `root/g<n>` in it.
    fn set_with(root: &Path, n: usize, memory_bytes: u64) -> (LogSet, Vec<Wal>) {
        let options = WalOptions {
            memory_bytes,
            ..WalOptions::default()
        };
        let set = LogSet::open(&root.join("log"), options).unwrap();
        let logs = (0..n)
            .map(|g| Wal::open_in(&set, &root.join(format!("g{g}"))).unwrap())
            .collect();
        (set, logs)
    }

    #[test]
    fn logs_of_one_set_keep_their_own_records_truncations_and_purges() {
        let tmp = dir("set");
        let root = tmp.path();
        let (set, logs) = set_with(root, 3, u64::MAX);
        // Interleaved appends, queued together without waiting: one writer, one file.
        let (tx, rx) = channel();
        for round in 0..20u64 {
            for (g, w) in logs.iter().enumerate() {
                let tx = tx.clone();
                let body = format!("log {g} entry {round}").into_bytes();
                w.append(
                    vec![(round + 1, body)],
                    Box::new(move |r| tx.send(r).unwrap()),
                )
                .unwrap();
            }
        }
        for _ in 0..60 {
            rx.recv().unwrap().unwrap();
        }
        logs[1].truncate_after(Some(10)).unwrap();
        append_sync(&logs[1], vec![(11, b"log 1 again".to_vec())]);
        logs[2].purge(15, "lp".into()).unwrap();
        assert_eq!(set.segments().unwrap(), 1, "one file for every log");
        drop((set, logs));
        let (_set, logs) = set_with(root, 3, 0);
        assert_eq!(bodies(&logs[0]), (1..=20).collect::<Vec<_>>());
        assert_eq!(bodies(&logs[1]), (1..=11).collect::<Vec<_>>());
        assert_eq!(bodies(&logs[2]), (16..=20).collect::<Vec<_>>());
        assert_eq!(&*logs[0].range(7, 8).unwrap()[0].1, b"log 0 entry 6");
        assert_eq!(&*logs[1].last().unwrap().unwrap().1, b"log 1 again");
        assert_eq!(&*logs[2].range(16, 17).unwrap()[0].1, b"log 2 entry 15");
    }

    #[test]
    fn a_round_torn_by_a_crash_is_cut_from_every_log_and_earlier_rounds_kept() {
        let tmp = dir("set-torn");
        let root = tmp.path();
        let (set, logs) = set_with(root, 2, u64::MAX);
        append_sync(&logs[0], numbered(1, 3, "a"));
        append_sync(&logs[1], numbered(1, 3, "b"));
        let seg = set.dir().join(segment_name(1));
        let durable = data_end(&seg);
        // A later round of both logs, then a crash that tore its last record.
        append_sync(&logs[0], numbered(4, 4, "a"));
        append_sync(&logs[1], numbered(4, 4, "b"));
        drop((set, logs));
        let end = data_end(&seg);
        assert!(end > durable);
        let mut data = std::fs::read(&seg).unwrap();
        data[end as usize - 3] ^= 0xff;
        std::fs::write(&seg, &data).unwrap();
        let (_set, logs) = set_with(root, 2, 0);
        assert_eq!(contents(&logs[0]), numbered(1, 4, "a"));
        assert_eq!(contents(&logs[1]), numbered(1, 3, "b"));
        // Appending goes on where the good records end.
        append_sync(&logs[1], numbered(4, 5, "b again"));
        assert_eq!(bodies(&logs[1]), (1..=5).collect::<Vec<_>>());
    }

    #[test]
    fn a_removed_log_loses_its_records_and_a_new_one_in_its_place_starts_empty() {
        let tmp = dir("set-removed");
        let root = tmp.path();
        let (set, logs) = set_with(root, 2, u64::MAX);
        append_sync(&logs[0], numbered(1, 5, "kept"));
        append_sync(&logs[1], numbered(1, 5, "removed"));
        drop(logs);
        std::fs::remove_dir_all(root.join("g1")).unwrap();
        let again = Wal::open_in(&set, &root.join("g1")).unwrap();
        assert!(
            bodies(&again).is_empty(),
            "a log created again starts empty"
        );
        append_sync(&again, numbered(1, 2, "new"));
        drop((set, again));
        let (_set, logs) = set_with(root, 2, 0);
        assert_eq!(contents(&logs[0]), numbered(1, 5, "kept"));
        assert_eq!(contents(&logs[1]), numbered(1, 2, "new"));
    }

    #[test]
    fn a_quiet_logs_records_are_copied_forward_so_old_segments_go() {
        let tmp = dir("set-copy");
        let root = tmp.path();
        let (set, logs) = set_with(root, 2, 0);
        append_sync(&logs[0], numbered(1, 10, "quiet"));
        // The busy log writes many segments, purging as it goes (as after snapshots).
        let big = vec![9u8; 1024 * 1024];
        for i in 1..=120u64 {
            append_sync(&logs[1], vec![(i, big.clone())]);
            if i % 10 == 0 {
                logs[1].purge(i - 1, "lp".into()).unwrap();
            }
        }
        let kept = set.segments().unwrap();
        assert!(
            kept <= COPY_AFTER_SEGMENTS + 1,
            "{kept} segments kept for 1 MiB of live records"
        );
        assert!(!set.dir().join(segment_name(1)).exists());
        assert_eq!(contents(&logs[0]), numbered(1, 10, "quiet"));
        drop((set, logs));
        let (_set, logs) = set_with(root, 2, 0);
        assert_eq!(contents(&logs[0]), numbered(1, 10, "quiet"));
        assert_eq!(bodies(&logs[1]), vec![120]);
        append_sync(&logs[0], numbered(11, 11, "quiet"));
        assert_eq!(contents(&logs[0]), numbered(1, 11, "quiet"));
    }

    #[test]
    fn a_set_moved_with_its_logs_opens_where_it_is() {
        let tmp = dir("set-moved");
        let (set, logs) = set_with(&tmp.path().join("before"), 2, u64::MAX);
        append_sync(&logs[1], numbered(1, 3, "moved"));
        drop((set, logs));
        std::fs::rename(tmp.path().join("before"), tmp.path().join("after")).unwrap();
        let (_set, logs) = set_with(&tmp.path().join("after"), 2, 0);
        assert_eq!(contents(&logs[1]), numbered(1, 3, "moved"));
    }

    #[test]
    fn a_log_of_an_earlier_version_is_refused_with_a_reason() {
        let tmp = dir("old-format");
        std::fs::write(tmp.path().join("seg-00000000000000000001.log"), b"x").unwrap();
        let err = Wal::open(tmp.path())
            .err()
            .expect("an old log must not open");
        assert!(err.to_string().contains("earlier Tandem"), "{err}");
        // The same for a log opened in a set: its directory holds the old segments.
        let (set, _) = set_with(&tmp.path().join("pool"), 0, 0);
        let err = Wal::open_in(&set, tmp.path())
            .err()
            .expect("an old log must not open in a set");
        assert!(err.to_string().contains("earlier Tandem"), "{err}");
    }
}
