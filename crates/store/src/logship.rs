//! Log shipping, the secondary's side: the copy job brings new backups from the share into
//! the secondary's own copy folder, and the restore job applies them to the secondary's
//! database after the configured delay; the database stays read-only (standby) between
//! restores. The state of both jobs is kept in a file beside the copy folder, so they resume
//! where they stopped after a restart, and [`Secondary::status`] reports it with the lag and
//! the alerts of the classic log-shipping monitor.
//!
//! The copy folder has the share's layout (`<store>/full`, `<store>/log`), so the backup
//! module's functions read it as they read the share.

use crate::backup::{self, Target};
use crate::machine::{self, StoreError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How a secondary is set up (from the topology's log-shipping link).
#[derive(Debug, Clone)]
pub struct SecondaryConfig {
    /// The link's name.
    pub link: String,
    /// The primary store, whose backups the share holds.
    pub primary: String,
    /// The secondary store.
    pub secondary: String,
    pub share: PathBuf,
    /// The secondary's copy folder.
    pub copy_dir: PathBuf,
    /// The secondary's database.
    pub db: PathBuf,
    pub copy_interval: Duration,
    pub restore_interval: Duration,
    pub restore_delay: Duration,
    pub backup_alert: Duration,
    pub restore_alert: Duration,
    /// How long copied backups are kept (beyond what is not restored yet).
    pub retention: Duration,
    /// "standby" or "no-recovery".
    pub mode: String,
}

/// The jobs' state, kept in `<copy_dir>/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub last_copy_ms: u64,
    /// The newest LSN in the copy folder.
    pub last_copied_lsn: u64,
    pub last_restore_ms: u64,
    pub last_restored_lsn: u64,
    /// When the last restored command was applied on the primary (unix ms).
    pub last_restored_commit_ms: u64,
    /// What stopped the last copy or restore, naming the file and the position.
    pub error: Option<String>,
}

/// `tandem logship status`: one link as its secondary (or its primary) sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// "secondary": the copy and restore side; "primary": the backup side.
    pub side: String,
    pub link: String,
    pub primary: String,
    pub secondary: String,
    pub mode: String,
    /// The newest backup on the share (log or full): its last LSN and when it was taken.
    pub last_backup_lsn: u64,
    pub last_backup_ms: u64,
    /// The copy and restore jobs (null on the primary's side).
    pub last_copied_lsn: Option<u64>,
    pub last_copy_ms: Option<u64>,
    pub last_restored_lsn: Option<u64>,
    pub last_restore_ms: Option<u64>,
    /// On the secondary: commands on the share not yet restored here. On the primary:
    /// commands not yet on the share — what losing the primary's site without a tail-log
    /// backup would lose now.
    pub lag_tx: u64,
    /// Seconds since the oldest of those commands was applied on the primary (0 when there
    /// is none).
    pub lag_s: f64,
    /// On the primary: its LSN now.
    pub primary_lsn: Option<u64>,
    pub alert: bool,
    /// Why, when `alert`.
    pub alerts: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running secondary.
pub struct Secondary {
    cfg: SecondaryConfig,
    state: Mutex<JobState>,
    /// When the jobs started (unix ms): a link with nothing yet alerts only once a threshold
    /// has passed since.
    started_ms: u64,
    /// Held by a copy, a restore or the failover: one at a time.
    job: Mutex<()>,
    /// After a failover: the secondary as a writable store.
    promoted: OnceLock<crate::Store>,
}

/// What `tandem logship failover` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverReport {
    pub link: String,
    pub primary: String,
    pub secondary: String,
    /// The tail-log backup: what it held, or why there was none.
    pub tail: String,
    pub tail_taken: bool,
    /// The last command restored: the secondary's state is the primary's after it.
    pub last_lsn: u64,
    pub last_commit_ms: Option<u64>,
    /// Why the restore stopped before the end of what the share holds (a bad file), if it did.
    pub stopped: Option<String>,
}

/// The marker a failover leaves on the share: the primary it replaced must not write again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedOver {
    pub link: String,
    pub secondary: String,
    pub lsn: u64,
    pub at_ms: u64,
}

/// The failover marker of `primary` on `share`, if a failover left one.
pub fn failed_over(share: &std::path::Path, primary: &str) -> Option<FailedOver> {
    let bytes = std::fs::read(share.join(primary).join("failed-over.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Secondary {
    /// Loads the jobs' state and starts them.
    pub fn start(cfg: SecondaryConfig) -> Result<Arc<Secondary>, StoreError> {
        std::fs::create_dir_all(&cfg.copy_dir).map_err(|e| {
            StoreError::Storage(format!("cannot create {}: {e}", cfg.copy_dir.display()))
        })?;
        let state = match std::fs::read(cfg.copy_dir.join("state.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Storage(format!(
                    "{}: unreadable job state: {e}",
                    cfg.copy_dir.join("state.json").display()
                ))
            })?,
            Err(_) => JobState::default(),
        };
        let s = Arc::new(Secondary {
            cfg,
            state: Mutex::new(state),
            started_ms: now_ms(),
            job: Mutex::new(()),
            promoted: OnceLock::new(),
        });
        tokio::spawn(s.clone().run());
        Ok(s)
    }

    pub fn config(&self) -> &SecondaryConfig {
        &self.cfg
    }

    fn state(&self) -> JobState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn save(&self, st: &JobState) {
        if let Ok(mut s) = self.state.lock() {
            *s = st.clone();
        }
        let path = self.cfg.copy_dir.join("state.json");
        let written = serde_json::to_vec_pretty(st)
            .map_err(|e| e.to_string())
            .and_then(|b| backup::write_file_atomic(&path, &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(link = %self.cfg.link, error = %e, "cannot save the log-shipping state");
        }
    }

    async fn run(self: Arc<Self>) {
        let tick = self
            .cfg
            .copy_interval
            .min(self.cfg.restore_interval)
            .max(Duration::from_millis(100));
        let (mut next_copy, mut next_restore) = (0u64, 0u64);
        loop {
            if self.promoted.get().is_some() {
                return;
            }
            let now = now_ms();
            if now >= next_copy {
                next_copy = now + self.cfg.copy_interval.as_millis() as u64;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.copy_once()).await;
            }
            if now >= next_restore {
                next_restore = now + self.cfg.restore_interval.as_millis() as u64;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.restore_once()).await;
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// The copy job: every full backup and segment on the share that the copy folder lacks,
    /// copied atomically (manifest last).
    pub fn copy_once(&self) {
        let Ok(_job) = self.job.lock() else { return };
        if self.promoted.get().is_some() {
            return;
        }
        let mut st = self.state();
        let restored = st.last_restored_lsn;
        match backup::copy_new(
            &self.cfg.share,
            &self.cfg.copy_dir,
            &self.cfg.primary,
            restored,
        ) {
            Ok(newest) => {
                st.last_copy_ms = now_ms();
                st.last_copied_lsn = st.last_copied_lsn.max(newest);
                // The copy folder keeps what is not restored yet, whatever its age.
                if let Err(e) = backup::prune(
                    &self.cfg.copy_dir,
                    &self.cfg.primary,
                    self.cfg.retention,
                    Some(st.last_restored_lsn),
                ) {
                    tracing::warn!(link = %self.cfg.link, error = %e, "cannot apply the retention to the copy folder");
                }
                if st.error.as_ref().is_some_and(|e| e.starts_with("copy")) {
                    st.error = None;
                }
            }
            Err(e) => {
                tracing::warn!(link = %self.cfg.link, error = %e, "log shipping: copy failed");
                st.error = Some(format!("copy: {e}"));
            }
        }
        self.save(&st);
    }

    /// The restore job: seeds the database from the newest full backup when it has none, then
    /// applies the copied segments' commands applied on the primary at least the delay ago.
    pub fn restore_once(&self) {
        let Ok(_job) = self.job.lock() else { return };
        if self.promoted.get().is_some() {
            return;
        }
        let mut st = self.state();
        let target =
            Target::Time(now_ms().saturating_sub(self.cfg.restore_delay.as_millis() as u64));
        match self.restore_to(target) {
            Ok((lsn, commit_ms)) => {
                st.last_restore_ms = now_ms();
                st.last_restored_lsn = lsn;
                if let Some(ms) = commit_ms {
                    st.last_restored_commit_ms = ms;
                }
                if st.error.as_ref().is_some_and(|e| e.starts_with("restore")) {
                    st.error = None;
                }
            }
            Err(e) => {
                tracing::warn!(link = %self.cfg.link, error = %e, "log shipping: restore stopped");
                if let Ok(conn) = rusqlite::Connection::open_with_flags(
                    &self.cfg.db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                ) && let Ok(lsn) = machine::lsn(&conn)
                {
                    st.last_restored_lsn = lsn;
                }
                st.error = Some(format!("restore: {e}"));
            }
        }
        self.save(&st);
    }

    fn restore_to(&self, target: Target) -> Result<(u64, Option<u64>), StoreError> {
        if !self.cfg.db.exists() {
            // Seeding: the newest full backup in the copy folder taken at least the delay
            // ago (everything in it was committed before it was taken).
            let fulls: Vec<backup::Manifest> = backup::list(&self.cfg.copy_dir, &self.cfg.primary)?
                .into_iter()
                .filter_map(|f| f.manifest.ok())
                .collect();
            let until = match target {
                Target::Time(t) => t,
                _ => u64::MAX,
            };
            let Some(full) = fulls.iter().rev().find(|m| m.taken_ms <= until) else {
                return Ok((0, None));
            };
            backup::restore_full(&self.cfg.copy_dir, full, &self.cfg.db)?;
            tracing::info!(link = %self.cfg.link, lsn = full.lsn, "log shipping: secondary seeded from a full backup");
        }
        let conn = crate::sqlite::open_connection(&self.cfg.db, crate::sqlite::Sync::Full)?;
        machine::init_schema(&conn)?;
        let from = machine::lsn(&conn)?;
        let (lsn, last_ms, _) =
            backup::catch_up(&self.cfg.copy_dir, &self.cfg.primary, target, from, &conn)?;
        Ok((lsn, last_ms))
    }

    /// After a failover, the secondary as a writable store.
    pub fn promoted(&self) -> Option<&crate::Store> {
        self.promoted.get()
    }

    /// Brings the secondary online as a writable store: stops the jobs, takes a tail-log
    /// backup from the primary's database file when `tail_from` names one that can still be
    /// read (`tail` says what the caller did otherwise), copies and restores everything on
    /// the share (no delay), leaves a marker on the share so the old primary never writes
    /// again, and opens the database for writes.
    pub fn failover(
        &self,
        tail_from: Option<&std::path::Path>,
        mut tail: (String, bool),
    ) -> Result<FailoverReport, StoreError> {
        let _job = self
            .job
            .lock()
            .map_err(|_| StoreError::Storage("the log-shipping jobs failed".into()))?;
        if self.promoted.get().is_some() {
            return Err(StoreError::Invalid(format!(
                "{} is already online: the link was failed over",
                self.cfg.secondary
            )));
        }
        if let Some(file) = tail_from {
            tail = match backup::take_log(file, &self.cfg.share, &self.cfg.primary, "tail-log") {
                Ok(Some(seg)) => (
                    format!(
                        "tail-log backup of {}: LSN {}..{}",
                        file.display(),
                        seg.first,
                        seg.last
                    ),
                    true,
                ),
                Ok(None) => (
                    format!(
                        "tail-log backup of {}: nothing after the last backup",
                        file.display()
                    ),
                    true,
                ),
                Err(e) => (format!("no tail-log backup: {e}"), false),
            };
        }
        // A bad file stops the copy and the restore at the last good command: the secondary
        // comes online there, and the report says why.
        let restored = self.state().last_restored_lsn;
        let copied = backup::copy_new(
            &self.cfg.share,
            &self.cfg.copy_dir,
            &self.cfg.primary,
            restored,
        );
        let restored = self.restore_to(Target::Latest);
        if !self.cfg.db.exists() {
            return Err(StoreError::Invalid(format!(
                "{} holds nothing yet (no full backup was restored): nothing to fail over to",
                self.cfg.secondary
            )));
        }
        let (lsn, last_ms, stopped) = match restored {
            Ok((lsn, ms)) => (lsn, ms, copied.err().map(|e| e.to_string())),
            Err(e) => {
                let conn =
                    crate::sqlite::open_connection(&self.cfg.db, crate::sqlite::Sync::ReadOnly)?;
                (machine::lsn(&conn)?, None, Some(e.to_string()))
            }
        };
        let marker = FailedOver {
            link: self.cfg.link.clone(),
            secondary: self.cfg.secondary.clone(),
            lsn,
            at_ms: now_ms(),
        };
        let bytes = serde_json::to_vec_pretty(&marker)
            .map_err(|e| StoreError::Storage(format!("cannot encode the marker: {e}")))?;
        let dir = self.cfg.share.join(&self.cfg.primary);
        std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        backup::write_file_atomic(&dir.join("failed-over.json"), &bytes)?;
        let store = crate::Store::open_local(&self.cfg.db, crate::Options::default())?;
        let _ = self.promoted.set(store);
        let mut st = self.state();
        st.last_restored_lsn = lsn;
        st.last_restore_ms = now_ms();
        if let Some(ms) = last_ms {
            st.last_restored_commit_ms = ms;
        }
        st.error = None;
        self.save(&st);
        tracing::warn!(link = %self.cfg.link, lsn, "log shipping: failed over; the secondary is online");
        Ok(FailoverReport {
            link: self.cfg.link.clone(),
            primary: self.cfg.primary.clone(),
            secondary: self.cfg.secondary.clone(),
            tail: tail.0,
            tail_taken: tail.1,
            last_lsn: lsn,
            last_commit_ms: last_ms.or(Some(st.last_restored_commit_ms).filter(|m| *m > 0)),
            stopped,
        })
    }

    /// The link as this secondary sees it now.
    pub fn status(&self) -> LinkStatus {
        let st = self.state();
        let now = now_ms();
        let segments: Vec<backup::SegmentManifest> =
            backup::list_segments(&self.cfg.share, &self.cfg.primary)
                .map(|v| v.into_iter().filter_map(|f| f.manifest.ok()).collect())
                .unwrap_or_default();
        let (last_backup_lsn, last_backup_ms) =
            newest_backup(&self.cfg.share, &self.cfg.primary, &segments);
        let lag_tx = last_backup_lsn.saturating_sub(st.last_restored_lsn);
        // The oldest command waiting: the first segment past what is restored.
        let waiting_since = segments
            .iter()
            .filter(|m| m.last > st.last_restored_lsn)
            .map(|m| {
                if m.first > st.last_restored_lsn {
                    m.first_ms
                } else {
                    st.last_restored_commit_ms.max(m.first_ms)
                }
            })
            .min();
        let lag_s = match waiting_since {
            Some(t) if lag_tx > 0 => now.saturating_sub(t) as f64 / 1000.0,
            _ => 0.0,
        };
        let mut alerts = Vec::new();
        let since = |t: u64| now.saturating_sub(t);
        let last_or_start = |t: u64| if t == 0 { self.started_ms } else { t };
        if since(last_or_start(last_backup_ms)) > self.cfg.backup_alert.as_millis() as u64 {
            alerts.push(format!(
                "no log backup for more than {} s",
                self.cfg.backup_alert.as_secs()
            ));
        }
        if since(last_or_start(st.last_restore_ms)) > self.cfg.restore_alert.as_millis() as u64 {
            alerts.push(format!(
                "no restore for more than {} s",
                self.cfg.restore_alert.as_secs()
            ));
        }
        if let Some(e) = &st.error {
            alerts.push(e.clone());
        }
        LinkStatus {
            side: "secondary".into(),
            link: self.cfg.link.clone(),
            primary: self.cfg.primary.clone(),
            secondary: self.cfg.secondary.clone(),
            mode: self.cfg.mode.clone(),
            last_backup_lsn,
            last_backup_ms,
            last_copied_lsn: Some(st.last_copied_lsn),
            last_copy_ms: Some(st.last_copy_ms),
            last_restored_lsn: Some(st.last_restored_lsn),
            last_restore_ms: Some(st.last_restore_ms),
            lag_tx,
            lag_s,
            primary_lsn: None,
            alert: !alerts.is_empty(),
            alerts,
        }
    }
}

/// The newest backup of `store` on `share`, log or full (a chain starts with a full one):
/// its last LSN and when it was taken; `(0, 0)` when there is none.
fn newest_backup(
    share: &std::path::Path,
    store: &str,
    segments: &[backup::SegmentManifest],
) -> (u64, u64) {
    let fulls = backup::list(share, store)
        .map(|v| {
            v.into_iter()
                .filter_map(|f| f.manifest.ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    segments
        .iter()
        .map(|m| (m.last, m.taken_ms))
        .chain(fulls.iter().map(|m| (m.lsn, m.taken_ms)))
        .max()
        .unwrap_or((0, 0))
}

/// A log-shipping link as its primary's server sees it.
#[derive(Debug, Clone)]
pub struct PrimaryLink {
    pub link: String,
    pub primary: String,
    pub secondary: String,
    pub share: PathBuf,
    /// The primary's database as this server holds it.
    pub db: PathBuf,
    pub backup_alert: Duration,
    /// When this server started (unix ms).
    pub started_ms: u64,
}

impl PrimaryLink {
    /// The link from the primary's side: its LSN, the newest backup on the share, and what
    /// is not on the share yet (the commands after the last log backup, the truncation that
    /// followed it aside).
    pub fn status(&self) -> LinkStatus {
        let now = now_ms();
        let segments: Vec<backup::SegmentManifest> =
            backup::list_segments(&self.share, &self.primary)
                .map(|v| v.into_iter().filter_map(|f| f.manifest.ok()).collect())
                .unwrap_or_default();
        let (last_backup_lsn, last_backup_ms) =
            newest_backup(&self.share, &self.primary, &segments);
        let mut alerts = Vec::new();
        let read = || -> Result<(u64, u64, Option<u64>), StoreError> {
            let conn = crate::sqlite::open_connection(&self.db, crate::sqlite::Sync::ReadOnly)?;
            let lsn = machine::lsn(&conn)?;
            if !machine::txlog_on(&conn)? {
                // Nothing is logged yet: everything after the last backup is at risk.
                return Ok((lsn, lsn.saturating_sub(last_backup_lsn), None));
            }
            let mut stmt = conn.prepare("SELECT at_ms, envelope FROM txlog WHERE lsn > ?1")?;
            let rows = stmt
                .query_map([last_backup_lsn as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let pending: Vec<u64> = rows
                .into_iter()
                .filter(|(_, env)| {
                    !postcard::from_bytes::<crate::Envelope>(env).is_ok_and(|e| {
                        matches!(e.cmd, crate::Command::TruncateTransactionLog { .. })
                    })
                })
                .map(|(at, _)| at)
                .collect();
            Ok((lsn, pending.len() as u64, pending.iter().min().copied()))
        };
        let (primary_lsn, lag_tx, oldest) = match read() {
            Ok((lsn, n, oldest)) => (Some(lsn), n, oldest),
            Err(e) => {
                alerts.push(format!("cannot read the primary's database: {e}"));
                (None, 0, None)
            }
        };
        let since_backup = now.saturating_sub(if last_backup_ms == 0 {
            self.started_ms
        } else {
            last_backup_ms
        });
        if since_backup > self.backup_alert.as_millis() as u64 {
            alerts.push(format!(
                "no log backup for more than {} s",
                self.backup_alert.as_secs()
            ));
        }
        LinkStatus {
            side: "primary".into(),
            link: self.link.clone(),
            primary: self.primary.clone(),
            secondary: self.secondary.clone(),
            mode: String::new(),
            last_backup_lsn,
            last_backup_ms,
            last_copied_lsn: None,
            last_copy_ms: None,
            last_restored_lsn: None,
            last_restore_ms: None,
            lag_tx,
            lag_s: oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0),
            primary_lsn,
            alert: !alerts.is_empty(),
            alerts,
        }
    }
}
