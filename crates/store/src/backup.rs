//! Backups of a store on a backup share: full backups now; closed log segments join them for
//! log shipping and point-in-time restore.
//!
//! The share is a directory (local or mounted) laid out as
//!
//! ```text
//! <share>/<store>/full/<lsn, 20 digits>-<taken, unix ms>.sqlite   the database, compacted
//! <share>/<store>/full/<lsn, 20 digits>-<taken, unix ms>.json     its manifest
//! ```
//!
//! A full backup is a consistent copy of the database (`VACUUM INTO` inside one read
//! transaction, so the store keeps serving) as of its log sequence number
//! ([`crate::machine::lsn`]: the commands applied so far, the same number on every replica).
//! Its manifest names the store, the LSN, when and where it was taken, its size and SHA-256.
//! Every file is written under a temporary name, fsynced, renamed into place, and the
//! directory fsynced; the manifest goes last, so a backup exists once its manifest does and a
//! crash leaves at most a stray temporary file. Verifying rereads the file against the
//! manifest, runs SQLite's integrity check and reads the LSN inside; restoring verifies, then
//! writes the copy to a new path the same atomic way.

use crate::machine::{self, StoreError};
use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The manifest of one full backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version of the share.
    pub format: u32,
    pub store: String,
    pub kind: String,
    /// The database's log sequence number at the copy.
    pub lsn: u64,
    /// When the copy was taken (unix ms).
    pub taken_ms: u64,
    /// The server that took it.
    pub server: String,
    /// The database file's name, next to the manifest.
    pub file: String,
    pub bytes: u64,
    /// SHA-256 of the database file, hex.
    pub sha256: String,
}

const FORMAT: u32 = 1;

fn storage(what: &str, path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("{what} {}: {e}", path.display()))
}

/// The directory of `store`'s full backups on `share`.
pub fn full_dir(share: &Path, store: &str) -> PathBuf {
    share.join(store).join("full")
}

/// Checks that a store name can be a directory name on the share.
fn check_store_name(store: &str) -> Result<(), StoreError> {
    let ok = !store.is_empty()
        && store
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && store != "."
        && store != "..";
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "`{store}` cannot name a directory on the backup share"
        )))
    }
}

/// SHA-256 of a file, hex, and its size.
fn digest(path: &Path) -> Result<(String, u64), StoreError> {
    let mut f = std::fs::File::open(path).map_err(|e| storage("cannot read", path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(|e| storage("cannot read", path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

fn fsync_file(path: &Path) -> Result<(), StoreError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| storage("cannot fsync", path, e))
}

/// Renames `tmp` to `to` and fsyncs the directory (the file itself was fsynced).
fn publish(tmp: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::rename(tmp, to).map_err(|e| storage("cannot rename into", to, e))?;
    match to.parent() {
        Some(dir) => crate::sqlite::sync_dir(dir),
        None => Ok(()),
    }
}

/// Writes `bytes` to `to` atomically (temporary file, fsync, rename, fsync of the directory).
fn write_atomic(to: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = to.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| storage("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| storage("cannot write", &tmp, e))?;
    drop(f);
    publish(&tmp, to)
}

/// Writes `bytes` to `to` atomically: for state files beside the backups.
pub fn write_file_atomic(to: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic(to, bytes)
}

/// Copies a file atomically (temporary name, fsync, rename, fsync of the directory).
fn copy_atomic(from: &Path, to: &Path) -> Result<(), StoreError> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(|e| storage("cannot copy into", &tmp, e))?;
    fsync_file(&tmp)?;
    publish(&tmp, to)
}

/// The copy job of log shipping: every full backup and log segment of `store` on `share`
/// that `copy` (a folder with the share's layout) lacks, verified, then copied atomically,
/// the manifest last. Returns the newest LSN the copy folder holds. Stops at the first file
/// that fails verification, naming it. Backups a restore past `restored` cannot need (full
/// backups at or before it, segments ending at or before it) are not copied.
pub fn copy_new(share: &Path, copy: &Path, store: &str, restored: u64) -> Result<u64, StoreError> {
    let mut newest = 0;
    for dir in [full_dir(copy, store), log_dir(copy, store)] {
        std::fs::create_dir_all(&dir).map_err(|e| storage("cannot create", &dir, e))?;
    }
    for f in list(share, store)? {
        let Ok(m) = f.manifest else { continue };
        newest = newest.max(m.lsn);
        let to = full_dir(copy, store).join(&m.file);
        let manifest_to = to.with_extension("json");
        if manifest_to.exists() || (restored > 0 && m.lsn <= restored) {
            continue;
        }
        verify(share, &m).map_err(StoreError::Invalid)?;
        copy_atomic(&full_dir(share, store).join(&m.file), &to)?;
        copy_atomic(&f.path, &manifest_to)?;
    }
    for f in list_segments(share, store)? {
        let Ok(m) = f.manifest else { continue };
        let to = log_dir(copy, store).join(&m.file);
        let manifest_to = to.with_extension("json");
        if !manifest_to.exists() && m.last > restored {
            verify_segment(share, &m).map_err(StoreError::Invalid)?;
            copy_atomic(&log_dir(share, store).join(&m.file), &to)?;
            copy_atomic(&f.path, &manifest_to)?;
        }
        newest = newest.max(m.last);
    }
    Ok(newest)
}

/// The LSN a database file holds, read on a read-only connection.
fn lsn_of(db: &Path) -> Result<u64, StoreError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| storage("cannot open", db, e))?;
    machine::lsn(&conn)
}

/// Takes a full backup of the database at `db` (a live store's: it keeps serving) onto
/// `share`, as `server`. Returns its manifest.
pub fn take_full(
    db: &Path,
    share: &Path,
    store: &str,
    server: &str,
) -> Result<Manifest, StoreError> {
    check_store_name(store)?;
    let dir = full_dir(share, store);
    std::fs::create_dir_all(&dir).map_err(|e| storage("cannot create", &dir, e))?;
    let taken_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let tmp = dir.join(format!(
        "taking-{taken_ms}-{}.sqlite.tmp",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let reader = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| storage("cannot open", db, e))?;
        reader.busy_timeout(std::time::Duration::from_secs(10))?;
        // One read transaction: a consistent copy, while the writer goes on (WAL mode).
        reader
            .execute("VACUUM INTO ?1", [tmp.to_string_lossy().as_ref()])
            .map_err(|e| storage("cannot copy", db, e))?;
        drop(reader);
        fsync_file(&tmp)?;
        let lsn = lsn_of(&tmp)?;
        let (sha256, bytes) = digest(&tmp)?;
        let stem = format!("{lsn:020}-{taken_ms}");
        let file = format!("{stem}.sqlite");
        publish(&tmp, &dir.join(&file))?;
        let manifest = Manifest {
            format: FORMAT,
            store: store.to_string(),
            kind: "full".into(),
            lsn,
            taken_ms,
            server: server.to_string(),
            file,
            bytes,
            sha256,
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| StoreError::Storage(format!("cannot encode a manifest: {e}")))?;
        write_atomic(&dir.join(format!("{stem}.json")), &json)?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// One manifest found on the share: what it says, or why it cannot be read.
#[derive(Debug)]
pub struct Found<M = Manifest> {
    pub path: PathBuf,
    pub manifest: Result<M, String>,
}

/// A log backup's manifest found on the share.
pub type FoundSegment = Found<SegmentManifest>;

/// What listing needs of a manifest, full or log.
trait Listed: serde::de::DeserializeOwned {
    fn store(&self) -> &str;
    fn format(&self) -> u32;
    fn file(&self) -> &str;
    /// Sorting key: by LSN, then time.
    fn order(&self) -> (u64, u64);
    /// Further checks of the manifest's own fields.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Listed for Manifest {
    fn store(&self) -> &str {
        &self.store
    }
    fn format(&self) -> u32 {
        self.format
    }
    fn file(&self) -> &str {
        &self.file
    }
    fn order(&self) -> (u64, u64) {
        (self.lsn, self.taken_ms)
    }
}

impl Listed for SegmentManifest {
    fn store(&self) -> &str {
        &self.store
    }
    fn format(&self) -> u32 {
        self.format
    }
    fn file(&self) -> &str {
        &self.file
    }
    fn order(&self) -> (u64, u64) {
        (self.first, self.last)
    }
    fn check(&self) -> Result<(), String> {
        if self.first > self.last {
            return Err(format!(
                "the manifest's range {}..{} is empty",
                self.first, self.last
            ));
        }
        Ok(())
    }
}

/// The manifests in `dir` of `store`'s backups, in order (unreadable ones last, with why).
fn read_manifests<M: Listed>(dir: &Path, store: &str) -> Result<Vec<Found<M>>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(storage("cannot list", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| storage("cannot list", dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let manifest = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<M>(&b).map_err(|e| e.to_string()))
            .and_then(|m| {
                let file = m.file();
                if m.store() != store {
                    Err(format!("the manifest is for store {}", m.store()))
                } else if m.format() != FORMAT {
                    Err(format!("unknown share format {}", m.format()))
                } else if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                    Err(format!("the manifest names a file elsewhere: {file}"))
                } else {
                    m.check().map(|()| m)
                }
            });
        found.push(Found { path, manifest });
    }
    found.sort_by(|a, b| match (&a.manifest, &b.manifest) {
        (Ok(x), Ok(y)) => x.order().cmp(&y.order()),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.path.cmp(&b.path),
    });
    Ok(found)
}

/// The full backups of `store` on `share`, by LSN then time (unreadable manifests last).
pub fn list(share: &Path, store: &str) -> Result<Vec<Found>, StoreError> {
    check_store_name(store)?;
    read_manifests(&full_dir(share, store), store)
}

/// Checks a full backup against its manifest: the file is there, has the size and SHA-256
/// the manifest states, passes SQLite's integrity check, and holds the manifest's LSN.
/// `Err` says what is wrong, naming the file.
pub fn verify(share: &Path, m: &Manifest) -> Result<(), String> {
    let path = full_dir(share, &m.store).join(&m.file);
    let (sha256, bytes) = digest(&path).map_err(|e| e.to_string())?;
    if bytes != m.bytes {
        return Err(format!(
            "{}: {bytes} bytes, the manifest says {}",
            path.display(),
            m.bytes
        ));
    }
    if sha256 != m.sha256 {
        return Err(format!(
            "{}: the SHA-256 differs from the manifest's (the file changed or is corrupt)",
            path.display()
        ));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("{}: integrity check failed: {e}", path.display()))?;
    if check != "ok" {
        return Err(format!("{}: integrity check: {check}", path.display()));
    }
    let lsn = machine::lsn(&conn).map_err(|e| format!("{}: {e}", path.display()))?;
    if lsn != m.lsn {
        return Err(format!(
            "{}: holds LSN {lsn}, the manifest says {}",
            path.display(),
            m.lsn
        ));
    }
    Ok(())
}

/// Restores a full backup into a new database file at `into` (which must not exist): verified
/// first, then copied atomically. Returns the LSN it holds.
pub fn restore_full(share: &Path, m: &Manifest, into: &Path) -> Result<u64, StoreError> {
    if into.exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists: restore into a new path",
            into.display()
        )));
    }
    verify(share, m).map_err(StoreError::Invalid)?;
    if let Some(dir) = into.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| storage("cannot create", dir, e))?;
    }
    let from = full_dir(share, &m.store).join(&m.file);
    let tmp = into.with_extension("restoring.tmp");
    std::fs::copy(&from, &tmp).map_err(|e| storage("cannot copy into", &tmp, e))?;
    fsync_file(&tmp)?;
    // The copy is what was verified: check it once more where it lands.
    let (sha256, _) = digest(&tmp)?;
    if sha256 != m.sha256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Storage(format!(
            "{}: the copy differs from the backup",
            tmp.display()
        )));
    }
    publish(&tmp, into)?;
    lsn_of(into)
}

/// The directory of `store`'s log backups on `share`.
pub fn log_dir(share: &Path, store: &str) -> PathBuf {
    share.join(store).join("log")
}

/// The manifest of one log backup: a segment of the transaction log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentManifest {
    pub format: u32,
    pub store: String,
    pub kind: String,
    /// The LSNs of its first and last commands.
    pub first: u64,
    pub last: u64,
    /// When its first and last commands were applied (unix ms).
    pub first_ms: u64,
    pub last_ms: u64,
    pub taken_ms: u64,
    pub server: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What a log backup did: a full backup first when the share had none to start from, and
/// the new segment (none when nothing was logged since the last one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBackup {
    pub full: Option<Manifest>,
    pub segment: Option<SegmentManifest>,
}

/// How a segment file starts.
const SEGMENT_MAGIC: &[u8] = b"TANDEM-LOG-SEGMENT 1\n";
/// Most commands in one segment.
const SEGMENT_MAX: i64 = 100_000;

/// One command of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: u64,
    pub at_ms: u64,
    /// The command's envelope, as the store encodes it (postcard).
    pub envelope: Vec<u8>,
}

fn record_crc(lsn: u64, at_ms: u64, payload: &[u8]) -> u32 {
    let mut c = crc32c::crc32c(&lsn.to_be_bytes());
    c = crc32c::crc32c_append(c, &at_ms.to_be_bytes());
    crc32c::crc32c_append(c, payload)
}

/// Encodes records: `[lsn u64][at_ms u64][len u32][crc32c u32][envelope]`, big-endian, after
/// the magic line.
fn encode_segment(records: &[Record]) -> Vec<u8> {
    let mut out = SEGMENT_MAGIC.to_vec();
    for r in records {
        out.extend(r.lsn.to_be_bytes());
        out.extend(r.at_ms.to_be_bytes());
        out.extend((r.envelope.len() as u32).to_be_bytes());
        out.extend(record_crc(r.lsn, r.at_ms, &r.envelope).to_be_bytes());
        out.extend(&r.envelope);
    }
    out
}

/// Decodes a segment's records up to the first one that is damaged or cut short; `Err` says
/// where it stopped (the records before it are good).
pub fn decode_segment(bytes: &[u8]) -> (Vec<Record>, Result<(), String>) {
    let mut records = Vec::new();
    let Some(mut rest) = bytes.strip_prefix(SEGMENT_MAGIC) else {
        return (records, Err("not a log segment".into()));
    };
    while !rest.is_empty() {
        let Some((head, body)) = rest.split_at_checked(24) else {
            return (records, Err("cut short in a record's header".into()));
        };
        let num = |r: std::ops::Range<usize>| {
            head.get(r)
                .map(|b| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
                .unwrap_or(0)
        };
        let (lsn, at_ms, len, crc) = (num(0..8), num(8..16), num(16..20) as usize, num(20..24));
        let Some((payload, after)) = body.split_at_checked(len) else {
            return (
                records,
                Err(format!("cut short in the record of LSN {lsn}")),
            );
        };
        if u64::from(record_crc(lsn, at_ms, payload)) != crc {
            return (
                records,
                Err(format!("the record of LSN {lsn} fails its checksum")),
            );
        }
        records.push(Record {
            lsn,
            at_ms,
            envelope: payload.to_vec(),
        });
        rest = after;
    }
    (records, Ok(()))
}

/// The log backups of `store` on `share`, by first LSN (unreadable manifests last).
pub fn list_segments(share: &Path, store: &str) -> Result<Vec<FoundSegment>, StoreError> {
    check_store_name(store)?;
    read_manifests(&log_dir(share, store), store)
}

/// Takes a log backup of the database at `db`: the commands of its transaction log after
/// the last segment on the share (all of them when there is none), as a new segment. `None`
/// when nothing new was logged. The caller then truncates the log up to the segment's last
/// LSN (a replicated command, [`crate::Command::TruncateTransactionLog`]).
pub fn take_log(
    db: &Path,
    share: &Path,
    store: &str,
    server: &str,
) -> Result<Option<SegmentManifest>, StoreError> {
    check_store_name(store)?;
    let shipped = list_segments(share, store)?
        .into_iter()
        .filter_map(|f| f.manifest.ok())
        .map(|m| m.last)
        .max()
        .unwrap_or(0);
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| storage("cannot open", db, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut stmt = conn
        .prepare("SELECT lsn, at_ms, envelope FROM txlog WHERE lsn > ?1 ORDER BY lsn LIMIT ?2")?;
    let records = stmt
        .query_map(rusqlite::params![shipped as i64, SEGMENT_MAX], |r| {
            Ok(Record {
                lsn: r.get::<_, i64>(0)? as u64,
                at_ms: r.get::<_, i64>(1)? as u64,
                envelope: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<Record>, _>>()?;
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(None);
    };
    // Only the truncation that followed the last log backup: nothing to ship yet (shipping
    // it would log another truncation, and an idle store would ship one every interval).
    let only_truncations = records.iter().all(|r| {
        postcard::from_bytes::<crate::Envelope>(&r.envelope)
            .is_ok_and(|e| matches!(e.cmd, crate::Command::TruncateTransactionLog { .. }))
    });
    if only_truncations {
        return Ok(None);
    }
    let dir = log_dir(share, store);
    std::fs::create_dir_all(&dir).map_err(|e| storage("cannot create", &dir, e))?;
    let stem = format!("{:020}-{:020}", first.lsn, last.lsn);
    let file = format!("{stem}.seg");
    let bytes = encode_segment(&records);
    write_atomic(&dir.join(&file), &bytes)?;
    let manifest = SegmentManifest {
        format: FORMAT,
        store: store.to_string(),
        kind: "log".into(),
        first: first.lsn,
        last: last.lsn,
        first_ms: first.at_ms,
        last_ms: last.at_ms,
        taken_ms: now_ms(),
        server: server.to_string(),
        file,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| StoreError::Storage(format!("cannot encode a manifest: {e}")))?;
    write_atomic(&dir.join(format!("{stem}.json")), &json)?;
    Ok(Some(manifest))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks a log backup against its manifest: the SHA-256, every record's checksum, and the
/// LSNs running from the manifest's first to its last without a gap. `Err` names the file.
pub fn verify_segment(share: &Path, m: &SegmentManifest) -> Result<(), String> {
    let path = log_dir(share, &m.store).join(&m.file);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (records, damaged) = decode_segment(&bytes);
    damaged.map_err(|why| format!("{}: {why}", path.display()))?;
    if hex::encode(Sha256::digest(&bytes)) != m.sha256 {
        return Err(format!(
            "{}: the SHA-256 differs from the manifest's",
            path.display()
        ));
    }
    let expected = m.first..=m.last;
    if records.len() as u64 != m.last - m.first + 1
        || !records.iter().zip(expected).all(|(r, lsn)| r.lsn == lsn)
    {
        return Err(format!(
            "{}: does not hold LSN {}..{} in order",
            path.display(),
            m.first,
            m.last
        ));
    }
    Ok(())
}

/// What [`prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    pub files: Vec<String>,
}

/// The retention policy: removes `store`'s backups that no restore within the last
/// `retention` can need. Kept: the newest full backup taken at or before the window's start
/// (the base of a restore to its first moment; the oldest full if none is that old), every
/// newer full backup, and every segment after the base's LSN — and, with `keep_after`, every
/// segment after that LSN too (what a secondary has not restored yet). A backup's manifest
/// goes before its file, so a half-removed backup is never listed as whole.
pub fn prune(
    share: &Path,
    store: &str,
    retention: std::time::Duration,
    keep_after: Option<u64>,
) -> Result<Pruned, StoreError> {
    let window_start = now_ms().saturating_sub(retention.as_millis() as u64);
    let fulls: Vec<(PathBuf, Manifest)> = list(share, store)?
        .into_iter()
        .filter_map(|f| f.manifest.ok().map(|m| (f.path, m)))
        .collect();
    let Some(base) = fulls
        .iter()
        .rev()
        .find(|(_, m)| m.taken_ms <= window_start)
        .or(fulls.first())
        .map(|(_, m)| m.clone())
    else {
        return Ok(Pruned::default());
    };
    let mut out = Pruned::default();
    let mut remove = |manifest: &Path, file: PathBuf| -> Result<(), StoreError> {
        std::fs::remove_file(manifest).map_err(|e| storage("cannot remove", manifest, e))?;
        let _ = std::fs::remove_file(&file);
        if let Some(name) = file.file_name() {
            out.files.push(name.to_string_lossy().into_owned());
        }
        Ok(())
    };
    for (path, m) in &fulls {
        if (m.lsn, m.taken_ms) < (base.lsn, base.taken_ms) {
            remove(path, full_dir(share, store).join(&m.file))?;
        }
    }
    let floor = keep_after.map_or(base.lsn, |k| k.min(base.lsn));
    for f in list_segments(share, store)? {
        if let Ok(m) = f.manifest
            && m.last <= floor
            && m.taken_ms < window_start
        {
            remove(&f.path, log_dir(share, store).join(&m.file))?;
        }
    }
    for dir in [full_dir(share, store), log_dir(share, store)] {
        if dir.exists() {
            crate::sqlite::sync_dir(&dir)?;
        }
    }
    Ok(out)
}

/// Whether a log backup must take a full backup first: when the share holds no backup of
/// `store` yet (the chain starts), when the transaction log no longer joins the share's chain
/// (`first_logged`, its oldest LSN, is past what the newest segment or full backup covers),
/// or when the newest full backup is older than `full_every` (a restore then replays a
/// bounded log, and the retention policy can let older backups go). A full backup alone
/// starts a chain: an idle store does not take another at every interval.
pub fn needs_full(
    share: &Path,
    store: &str,
    first_logged: Option<u64>,
    full_every: Option<std::time::Duration>,
) -> Result<bool, StoreError> {
    let shipped = list_segments(share, store)?
        .into_iter()
        .filter_map(|f| f.manifest.ok())
        .map(|m| m.last)
        .max();
    let fulls: Vec<Manifest> = list(share, store)?
        .into_iter()
        .filter_map(|f| f.manifest.ok())
        .collect();
    let covered = shipped.max(fulls.iter().map(|m| m.lsn).max());
    let Some(last) = covered else {
        return Ok(true);
    };
    if first_logged.is_some_and(|f| f > last + 1) {
        return Ok(true);
    }
    let Some(every) = full_every else {
        return Ok(false);
    };
    let newest = fulls.iter().map(|m| m.taken_ms).max();
    Ok(newest.is_none_or(|t| now_ms().saturating_sub(t) >= every.as_millis() as u64))
}

/// Where a restore lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// As far as the backups go.
    Latest,
    /// Exactly after the command with this LSN.
    Lsn(u64),
    /// After the last command applied at or before this time (unix ms).
    Time(u64),
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The LSN the new database holds.
    pub lsn: u64,
    /// When its last command was applied at the source (unix ms), if it came from the log.
    pub last_ms: Option<u64>,
    /// The full backup it started from, and how many log segments were applied on it.
    pub full: String,
    pub segments: usize,
}

/// Restores `store` from `share` into a new database file at `into`: the latest full backup
/// at or before the target, then the log segments after it, command by command, up to the
/// target. A segment that is corrupt, cut short, missing from the chain, or that overlaps
/// another stops the restore at the last good command: the error names the file and the
/// LSN, nothing after it is applied, and `into` is not created (`--to-lsn` that LSN lands
/// there). The copy takes writes even if its source had closed them.
pub fn restore(
    share: &Path,
    store: &str,
    target: Target,
    into: &Path,
) -> Result<Restored, StoreError> {
    if into.exists() {
        return Err(StoreError::Invalid(format!(
            "{} exists: restore into a new path",
            into.display()
        )));
    }
    let fulls: Vec<Manifest> = list(share, store)?
        .into_iter()
        .filter_map(|f| f.manifest.ok())
        .collect();
    let full = fulls
        .iter()
        .rev()
        .find(|m| match target {
            Target::Latest => true,
            Target::Lsn(n) => m.lsn <= n,
            Target::Time(t) => m.taken_ms <= t,
        })
        .ok_or_else(|| {
            StoreError::Invalid(format!(
                "no full backup of {store} in {} to start from at {target:?} (full backups at LSN {})",
                share.display(),
                fulls.iter().map(|m| m.lsn.to_string()).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let tmp = into.with_extension("restoring");
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        restore_full(share, full, &tmp)?;
        let conn = crate::sqlite::open_connection(&tmp, crate::sqlite::Sync::Full)?;
        machine::init_schema(&conn)?;
        let (lsn, last_ms, segments) = replay(share, store, target, full.lsn, &conn)?;
        // A new store of its own: a source that closed its writes (a log-shipping hand-over
        // in the chain) does not close the copy's.
        machine::reopen_writes(&conn)?;
        drop(conn);
        fsync_file(&tmp)?;
        Ok(Restored {
            lsn,
            last_ms,
            full: full.file.clone(),
            segments,
        })
    })();
    match result {
        Ok(r) => {
            // The WAL was checkpointed into the file as the connection closed.
            publish(&tmp, into)?;
            Ok(r)
        }
        Err(e) => {
            for p in [
                tmp.clone(),
                tmp.with_extension("restoring-wal"),
                tmp.with_extension("restoring-shm"),
            ] {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// Brings the database on `conn` (holding LSN `from`) forward with the log segments in
/// `share` up to `target`: what a log-shipping secondary's restore job does. Returns the LSN
/// reached, the time of its command, and the segments used; a bad segment stops it at the
/// last good command (the error names the file and the LSN).
pub fn catch_up(
    share: &Path,
    store: &str,
    target: Target,
    from: u64,
    conn: &Connection,
) -> Result<(u64, Option<u64>, usize), StoreError> {
    replay(share, store, target, from, conn)
}

/// Applies the log after `from` on `conn` up to the target; returns the LSN reached, the
/// time of its command and the segments used. Stops with an error at the first command that
/// cannot be trusted (see [`restore`]).
fn replay(
    share: &Path,
    store: &str,
    target: Target,
    from: u64,
    conn: &Connection,
) -> Result<(u64, Option<u64>, usize), StoreError> {
    let segments: Vec<SegmentManifest> = list_segments(share, store)?
        .into_iter()
        .filter_map(|f| f.manifest.ok())
        .collect();
    // Two segments over one LSN mean two histories (a duplicated file, or two primaries
    // shipping): nothing from the first doubtful LSN on is applied.
    let mut limit = u64::MAX;
    let mut conflict = None;
    for w in segments.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.first <= a.last && b.last > from {
            limit = (b.first - 1).max(from);
            conflict = Some((
                b.file.clone(),
                format!(
                    "LSN {}..{} is also in {} (LSN {}..{}): a duplicated or out-of-order segment",
                    b.first, b.last, a.file, a.first, a.last
                ),
            ));
            break;
        }
    }
    let stop = |file: &str, current: u64, why: String| {
        StoreError::Invalid(format!(
            "restore stopped at LSN {current}: {file}: {why}; nothing after it was applied \
             (restore --to-lsn {current} lands there)"
        ))
    };
    let mut current = from;
    let mut last_ms = None;
    let mut used = 0;
    // The target was met: a command after it was seen, or its LSN reached.
    let mut met = false;
    for seg in &segments {
        if met || current >= limit {
            break;
        }
        if seg.last <= current {
            continue;
        }
        match target {
            Target::Lsn(n) if seg.first > n => break,
            Target::Time(t) if seg.first_ms > t => {
                met = true;
                break;
            }
            _ => {}
        }
        if seg.first > current + 1 {
            return Err(stop(
                &seg.file,
                current,
                format!(
                    "no segment holds LSN {}..{} (missing)",
                    current + 1,
                    seg.first - 1
                ),
            ));
        }
        let path = log_dir(share, store).join(&seg.file);
        let bytes = std::fs::read(&path).map_err(|e| stop(&seg.file, current, e.to_string()))?;
        let (records, damaged) = decode_segment(&bytes);
        // A segment holds what its manifest says, from its first LSN on.
        if let Some(r) = records.first()
            && r.lsn != seg.first
        {
            return Err(stop(
                &seg.file,
                current,
                format!("holds LSN {} where {} was due", r.lsn, seg.first),
            ));
        }
        let mut batch: Vec<crate::Envelope> = Vec::new();
        let mut failure = None;
        for r in records.iter().filter(|r| r.lsn > current) {
            let beyond = match target {
                Target::Latest => false,
                Target::Lsn(n) => r.lsn > n,
                Target::Time(t) => r.at_ms > t,
            };
            if beyond {
                met = true;
                break;
            }
            if r.lsn > limit {
                break;
            }
            let due = current + batch.len() as u64 + 1;
            if r.lsn != due || r.lsn > seg.last {
                failure = Some(format!("holds LSN {} where {due} was due", r.lsn));
                break;
            }
            match postcard::from_bytes::<crate::Envelope>(&r.envelope) {
                Ok(env) => batch.push(env),
                Err(e) => {
                    failure = Some(format!("the command of LSN {} cannot be read: {e}", r.lsn));
                    break;
                }
            }
            last_ms = Some(r.at_ms);
        }
        for chunk in batch.chunks(1000) {
            machine::apply_batch(conn, chunk.iter())?;
        }
        current += batch.len() as u64;
        used += 1;
        if matches!(target, Target::Lsn(n) if current >= n) {
            met = true;
        }
        if let Some(why) = failure {
            return Err(stop(&seg.file, current, why));
        }
        if met || current >= limit {
            break;
        }
        if let Err(why) = damaged {
            return Err(stop(&seg.file, current, why));
        }
        if hex::encode(Sha256::digest(&bytes)) != seg.sha256 {
            return Err(stop(
                &seg.file,
                current,
                "the SHA-256 differs from the manifest's".into(),
            ));
        }
    }
    if let Some((file, why)) = conflict
        && !met
        && current >= limit
    {
        return Err(stop(&file, current, why));
    }
    if machine::lsn(conn)? != current {
        return Err(StoreError::Storage(format!(
            "the restored database holds LSN {}, the log says {current}",
            machine::lsn(conn)?
        )));
    }
    if let Target::Lsn(n) = target
        && current != n
    {
        return Err(StoreError::Invalid(format!(
            "the backups of {store} reach LSN {current}, not {n}"
        )));
    }
    Ok((current, last_ms, used))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Command, Envelope, User};

    fn store_with_users(path: &Path, n: usize) -> crate::LocalStore {
        let store = crate::LocalStore::open(path, crate::Options::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for i in 0..n {
            let user = User {
                aor: format!("sip:u{i}@example.com"),
                username: format!("u{i}"),
                realm: "example.com".into(),
                ha1_md5: "00".repeat(16),
                ha1_sha256: "00".repeat(32),
                created_ms: 0,
            };
            rt.block_on(store.apply_envelope(Envelope {
                request: None,
                cmd: Command::AddUser { user },
            }))
            .unwrap();
        }
        store
    }

    fn users(db: &Path) -> i64 {
        let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap()
    }

    /// A full backup of a live store lands on the share with a manifest naming its LSN; it
    /// verifies, and restores into a new file holding exactly the backed-up state. A later
    /// backup sorts after it.
    #[test]
    fn a_full_backup_verifies_and_restores_at_its_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.sqlite");
        let store = store_with_users(&db, 25);
        let share = dir.path().join("share");
        let m = take_full(&db, &share, "store-a", "s1").unwrap();
        assert_eq!(m.lsn, 25);
        assert_eq!(verify(&share, &m), Ok(()));
        drop(store);
        let into = dir.path().join("restored/store.sqlite");
        assert_eq!(restore_full(&share, &m, &into).unwrap(), 25);
        assert_eq!(users(&into), 25);
        // Never over an existing file.
        let again = restore_full(&share, &m, &into).unwrap_err();
        assert!(again.to_string().contains("exists"), "{again}");
        let listed = list(&share, "store-a").unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].manifest.as_ref().unwrap(), &m);
        // Nothing temporary is left on the share.
        let names: Vec<String> = std::fs::read_dir(full_dir(&share, "store-a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    /// A backup file that was changed, truncated or removed fails verification with the file
    /// named, and restoring it is refused without creating anything.
    #[test]
    fn a_damaged_backup_fails_verification_and_is_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.sqlite");
        let _store = store_with_users(&dir.path().join("live.sqlite"), 10);
        let share = dir.path().join("share");
        let m = take_full(&db, &share, "s", "s1").unwrap();
        let file = full_dir(&share, "s").join(&m.file);
        let good = std::fs::read(&file).unwrap();

        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        std::fs::write(&file, &flipped).unwrap();
        let err = verify(&share, &m).unwrap_err();
        assert!(err.contains(&m.file) && err.contains("SHA-256"), "{err}");
        let into = dir.path().join("r.sqlite");
        assert!(restore_full(&share, &m, &into).is_err());
        assert!(!into.exists());

        std::fs::write(&file, &good[..good.len() / 2]).unwrap();
        let err = verify(&share, &m).unwrap_err();
        assert!(err.contains("bytes, the manifest says"), "{err}");

        std::fs::remove_file(&file).unwrap();
        let err = verify(&share, &m).unwrap_err();
        assert!(err.contains(&m.file), "{err}");
    }

    /// Manifests that cannot be read, or that point outside their directory, are listed as
    /// such rather than trusted; a store name that is not a plain name is refused.
    #[test]
    fn bad_manifests_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().to_path_buf();
        let d = full_dir(&share, "s");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("garbage.json"), b"{not json").unwrap();
        let outside = Manifest {
            format: FORMAT,
            store: "s".into(),
            kind: "full".into(),
            lsn: 1,
            taken_ms: 1,
            server: "x".into(),
            file: "../../etc/passwd".into(),
            bytes: 1,
            sha256: String::new(),
        };
        std::fs::write(
            d.join("outside.json"),
            serde_json::to_vec(&outside).unwrap(),
        )
        .unwrap();
        let found = list(&share, "s").unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|f| f.manifest.is_err()), "{found:?}");
        assert!(list(&share, "../x").is_err());
        assert!(take_full(&d.join("none.sqlite"), &share, "a/b", "x").is_err());
    }

    /// A chain of log backups on a live store: the store's transaction log on, a full
    /// backup, then a segment every 10 commands (each followed by the truncation a backup
    /// job applies). Returns the share, the users present after each LSN, and the runtime's
    /// store (kept open).
    fn chain(dir: &Path, n: usize) -> (PathBuf, Vec<Vec<String>>, crate::LocalStore) {
        let db = dir.join("live.sqlite");
        let store = crate::LocalStore::open(&db, crate::Options::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let apply = |cmd: Command| {
            rt.block_on(store.apply_envelope(Envelope { request: None, cmd }))
                .unwrap();
        };
        let share = dir.join("share");
        apply(Command::SetTransactionLog { on: true });
        take_full(&db, &share, "s", "s1").unwrap();
        // states[k]: the users after LSN k.
        let mut states = vec![Vec::new(); 2];
        for i in 0..n {
            let aor = format!("sip:u{i:03}@example.com");
            apply(Command::AddUser {
                user: User {
                    aor: aor.clone(),
                    username: format!("u{i}"),
                    realm: "example.com".into(),
                    ha1_md5: "00".repeat(16),
                    ha1_sha256: "00".repeat(32),
                    created_ms: 0,
                },
            });
            let mut now = states.last().unwrap().clone();
            now.push(aor);
            states.push(now);
            if i % 10 == 9 {
                let seg = take_log(&db, &share, "s", "s1").unwrap().unwrap();
                apply(Command::TruncateTransactionLog { upto: seg.last });
                // The truncation is a command too: the state does not change.
                states.push(states.last().unwrap().clone());
            }
        }
        (share, states, store)
    }

    fn users_in(db: &Path) -> Vec<String> {
        let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        c.prepare("SELECT aor FROM users ORDER BY aor")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap()
    }

    /// Point-in-time restore: to any LSN, the new database holds exactly the state after that
    /// command; to a time, the state after the last command applied by then; to the latest,
    /// everything backed up. The transaction log forgets what a log backup holds.
    #[test]
    fn log_backups_restore_to_any_lsn_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let (share, states, store) = chain(dir.path(), 35);
        let segments: Vec<SegmentManifest> = list_segments(&share, "s")
            .unwrap()
            .into_iter()
            .map(|f| f.manifest.unwrap())
            .collect();
        assert_eq!(segments.len(), 3);
        let last = segments.last().unwrap().last;
        for (k, lsn) in [1u64, 2, 11, 12, 13, 27, last].into_iter().enumerate() {
            let into = dir.path().join(format!("r{k}.sqlite"));
            let r = restore(&share, "s", Target::Lsn(lsn), &into).unwrap();
            assert_eq!(r.lsn, lsn);
            assert_eq!(users_in(&into), states[lsn as usize], "at LSN {lsn}");
        }
        let into = dir.path().join("latest.sqlite");
        assert_eq!(
            restore(&share, "s", Target::Latest, &into).unwrap().lsn,
            last
        );
        // To a time: the last command applied at or before it, as the segments record.
        let records: Vec<Record> = segments
            .iter()
            .flat_map(|m| {
                let bytes = std::fs::read(log_dir(&share, "s").join(&m.file)).unwrap();
                decode_segment(&bytes).0
            })
            .collect();
        let t = records[records.len() / 2].at_ms;
        let expect = records
            .iter()
            .filter(|r| r.at_ms <= t)
            .map(|r| r.lsn)
            .max()
            .unwrap();
        let into = dir.path().join("at-time.sqlite");
        let r = restore(&share, "s", Target::Time(t), &into).unwrap();
        assert_eq!(r.lsn, expect);
        assert_eq!(users_in(&into), states[expect as usize]);
        // Nothing backed up is kept in the log: only what came after the last segment.
        let live = Connection::open_with_flags(
            dir.path().join("live.sqlite"),
            OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let kept: i64 = live
            .query_row("SELECT count(*) FROM txlog", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept as u64, machine::lsn(&live).unwrap() - last);
        drop(store);
    }

    /// Bad segments: corrupt, cut short, missing, duplicated or out of order. Each stops the
    /// restore at the last good command with the file and the LSN named, creates nothing, and
    /// a restore to that LSN lands there.
    #[test]
    fn a_bad_segment_stops_restore_at_the_last_good_command() {
        let dir = tempfile::tempdir().unwrap();
        let (share, states, _store) = chain(dir.path(), 35);
        let segs: Vec<SegmentManifest> = list_segments(&share, "s")
            .unwrap()
            .into_iter()
            .map(|f| f.manifest.unwrap())
            .collect();
        let seg = &segs[1];
        let path = log_dir(&share, "s").join(&seg.file);
        let good = std::fs::read(&path).unwrap();
        let check = |case: &str, want: &str| {
            let into = dir.path().join(format!("{case}.sqlite"));
            let err = restore(&share, "s", Target::Latest, &into)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{case}: {err}");
            assert!(!into.exists(), "{case}: a database was left");
            let stopped: u64 = err
                .split("stopped at LSN ")
                .nth(1)
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{case}: no LSN in {err}"));
            assert!(
                stopped >= seg.first - 1 && stopped < seg.last,
                "{case}: {err}"
            );
            let back = dir.path().join(format!("{case}-back.sqlite"));
            let r = restore(&share, "s", Target::Lsn(stopped), &back).unwrap();
            assert_eq!(users_in(&back), states[r.lsn as usize], "{case}");
            stopped
        };
        // A flipped byte in the fifth record: the four before it are applied.
        let mut bad = good.clone();
        let at = SEGMENT_MAGIC.len() + 4 * (good.len() - SEGMENT_MAGIC.len()) / 11 + 30;
        bad[at] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        let stopped = check("corrupt", &seg.file);
        assert!(
            stopped > seg.first,
            "the good records before the damage are applied"
        );
        // Cut short.
        std::fs::write(&path, &good[..good.len() * 2 / 3]).unwrap();
        check("truncated", "cut short");
        // Missing: the segment's files are gone.
        std::fs::remove_file(&path).unwrap();
        let manifest = path.with_extension("json");
        let kept = std::fs::read(&manifest).unwrap();
        std::fs::remove_file(&manifest).unwrap();
        check("missing", "missing");
        std::fs::write(&path, &good).unwrap();
        std::fs::write(&manifest, &kept).unwrap();
        // Duplicated: a second segment over part of the same range.
        let mut dup = seg.clone();
        dup.first = seg.first + 3;
        dup.file = "dup.seg".into();
        std::fs::write(log_dir(&share, "s").join("dup.seg"), &good).unwrap();
        std::fs::write(
            log_dir(&share, "s").join("dup.json"),
            serde_json::to_vec(&dup).unwrap(),
        )
        .unwrap();
        let into = dir.path().join("dup.sqlite");
        let err = restore(&share, "s", Target::Latest, &into)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dup.seg") && err.contains("duplicated"),
            "{err}"
        );
        assert!(!into.exists());
        std::fs::remove_file(log_dir(&share, "s").join("dup.json")).unwrap();
        // Out of order: a segment whose records are not the ones its place calls for.
        let third = log_dir(&share, "s").join(&segs[2].file);
        let third_good = std::fs::read(&third).unwrap();
        std::fs::write(&third, &good).unwrap();
        let mut m = segs[2].clone();
        m.sha256 = hex::encode(Sha256::digest(&good));
        m.bytes = good.len() as u64;
        std::fs::write(
            third.with_extension("json"),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        let into = dir.path().join("order.sqlite");
        let err = restore(&share, "s", Target::Latest, &into)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&segs[2].file) && err.contains("was due"),
            "{err}"
        );
        assert!(
            err.contains(&format!("stopped at LSN {}", seg.last)),
            "{err}"
        );
        std::fs::write(&third, &third_good).unwrap();
    }

    /// Retention: backups older than the window go, except what a restore to the window's
    /// first moment needs (the newest full before it and the segments after that full);
    /// a restore to the latest still works after pruning.
    #[test]
    fn pruning_keeps_what_the_retention_window_needs() {
        let dir = tempfile::tempdir().unwrap();
        let (share, states, _store) = chain(dir.path(), 35);
        let db = dir.path().join("live.sqlite");
        // A second full backup, then everything counts as older than a zero window.
        let second = take_full(&db, &share, "s", "s1").unwrap();
        let pruned = prune(&share, "s", std::time::Duration::ZERO, None).unwrap();
        let fulls: Vec<Manifest> = list(&share, "s")
            .unwrap()
            .into_iter()
            .map(|f| f.manifest.unwrap())
            .collect();
        assert_eq!(fulls, vec![second.clone()], "only the newest full stays");
        assert!(
            pruned.files.iter().any(|f| f.ends_with(".sqlite")),
            "{pruned:?}"
        );
        assert!(
            list_segments(&share, "s")
                .unwrap()
                .iter()
                .all(|f| f.manifest.as_ref().unwrap().last > second.lsn),
            "segments the newest full covers are gone"
        );
        let into = dir.path().join("after-prune.sqlite");
        let r = restore(&share, "s", Target::Latest, &into).unwrap();
        assert_eq!(users_in(&into), states[r.lsn as usize]);
        // A long window removes nothing.
        assert!(
            prune(&share, "s", std::time::Duration::from_secs(3600), None)
                .unwrap()
                .files
                .is_empty()
        );
    }

    /// An idle store ships no new segment: what follows the last log backup is only the
    /// truncation that backup caused.
    #[test]
    fn an_idle_store_ships_nothing_new() {
        let dir = tempfile::tempdir().unwrap();
        let (share, _states, _store) = chain(dir.path(), 10);
        let db = dir.path().join("live.sqlite");
        let before = list_segments(&share, "s").unwrap().len();
        assert_eq!(take_log(&db, &share, "s", "s1").unwrap(), None);
        assert_eq!(list_segments(&share, "s").unwrap().len(), before);
    }

    /// When a log backup starts with a full one: no chain yet, a log that no longer joins the
    /// chain, or a newest full backup older than the interval.
    #[test]
    fn a_full_backup_starts_a_chain_and_comes_back_on_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty-share");
        assert!(
            needs_full(&empty, "s", Some(1), None).unwrap(),
            "no chain yet"
        );
        let (share, _states, _store) = chain(dir.path(), 10);
        let last = list_segments(&share, "s")
            .unwrap()
            .into_iter()
            .map(|f| f.manifest.unwrap().last)
            .max()
            .unwrap();
        let hour = Some(std::time::Duration::from_secs(3600));
        assert!(!needs_full(&share, "s", Some(last + 1), hour).unwrap());
        assert!(!needs_full(&share, "s", Some(last + 1), None).unwrap());
        assert!(
            needs_full(&share, "s", Some(last + 5), hour).unwrap(),
            "the log no longer joins the chain"
        );
        assert!(
            needs_full(&share, "s", Some(last + 1), Some(std::time::Duration::ZERO)).unwrap(),
            "the newest full backup is older than the interval"
        );
        // A full backup alone starts a chain: an idle store (nothing logged since) does not
        // take another one at every interval; a log that no longer joins it still does.
        let db = dir.path().join("idle.sqlite");
        let conn = crate::sqlite::open_connection(&db, crate::sqlite::Sync::Full).unwrap();
        crate::machine::init_schema(&conn).unwrap();
        drop(conn);
        let only_full = dir.path().join("only-full");
        let full = take_full(&db, &only_full, "s", "s1").unwrap();
        assert!(!needs_full(&only_full, "s", None, hour).unwrap());
        assert!(!needs_full(&only_full, "s", Some(full.lsn + 1), hour).unwrap());
        assert!(needs_full(&only_full, "s", Some(full.lsn + 2), hour).unwrap());
    }
}
