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
pub struct Found {
    pub path: PathBuf,
    pub manifest: Result<Manifest, String>,
}

/// The full backups of `store` on `share`, by LSN then time (unreadable manifests last).
pub fn list(share: &Path, store: &str) -> Result<Vec<Found>, StoreError> {
    check_store_name(store)?;
    let dir = full_dir(share, store);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(storage("cannot list", &dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| storage("cannot list", &dir, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let manifest = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).map_err(|e| e.to_string()))
            .and_then(|m| {
                if m.store != store {
                    Err(format!("the manifest is for store {}", m.store))
                } else if m.format != FORMAT {
                    Err(format!("unknown share format {}", m.format))
                } else if m.file.contains('/') || m.file.contains('\\') || m.file.starts_with('.') {
                    Err(format!("the manifest names a file elsewhere: {}", m.file))
                } else {
                    Ok(m)
                }
            });
        found.push(Found { path, manifest });
    }
    found.sort_by(|a, b| match (&a.manifest, &b.manifest) {
        (Ok(x), Ok(y)) => (x.lsn, x.taken_ms).cmp(&(y.lsn, y.taken_ms)),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.path.cmp(&b.path),
    });
    Ok(found)
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
}
